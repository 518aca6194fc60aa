//! The stack binary itself, with one real service and the gateway under it: a kill fault sent
//! through the gateway takes the service down, the supervisor brings it back healthy, and the
//! service's audit trail names the admin who killed it; a log level set through ops changes the
//! log at once; SIGTERM stops everything cleanly.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use zentra_proto::ops::v1::{self as ops, ops_service_client::OpsServiceClient};
use zentra_runtime::pki::{Layout, TOOLS_CERT};
use zentra_test_support::eventually;

use crate::helpers::{Scratch, dev_key, service_channel};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_comes_back_its_audit_trail_names_the_killer_and_log_levels_change_live() {
    let scratch = Scratch::new("stack", &["inventory"]).await;
    let stack = scratch.start("inventory,gateway", Vec::new(), &[]).await;
    let (state_dir, port, gateway_port) = (
        &scratch.state_dir,
        scratch.base_port + 1,
        scratch.gateway_port,
    );
    let output = stack.output.clone();
    assert!(output.contains(|line| line.contains("viewer    zk_viewer_")));

    let mut client = OpsServiceClient::new(service_channel(state_dir, port).await);
    // At the default level a finished call is not logged...
    client
        .get_build_info(ops::GetBuildInfoRequest {})
        .await
        .expect("build info");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let finished = |line: &str| line.contains("inventory |") && line.contains("rpc finished");
    assert_eq!(output.count(finished), 0, "{}", output.dump());
    let admin_key = dev_key(state_dir, "ZENTRA_ADMIN_KEY");
    fn as_admin<T>(key: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert("x-api-key", MetadataValue::try_from(key).expect("ascii"));
        metadata.insert("x-zentra-service", MetadataValue::from_static("inventory"));
        request
    }
    let mut gateway = OpsServiceClient::connect(format!("http://127.0.0.1:{gateway_port}"))
        .await
        .expect("connect to the gateway");
    // Straight to the service's port nobody may change it: only the gateway vouches for admins.
    let refused = client
        .set_log_level(ops::SetLogLevelRequest {
            filter: "trace".to_owned(),
            idempotency_key: "log-direct".to_owned(),
            reason: String::new(),
        })
        .await
        .expect_err("an unsigned admin action is refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // ...after a change through the gateway it is, by the same process.
    gateway
        .set_log_level(as_admin(
            &admin_key,
            ops::SetLogLevelRequest {
                filter: "info,zentra_runtime::server=debug".to_owned(),
                idempotency_key: "log-1".to_owned(),
                reason: "watching calls".to_owned(),
            },
        ))
        .await
        .expect("log level set");
    client
        .get_build_info(ops::GetBuildInfoRequest {})
        .await
        .expect("build info");
    output
        .wait_for(
            "a debug line after the change",
            Duration::from_secs(5),
            finished,
        )
        .await;
    assert!(!output.contains(|line| line.contains("restarted")));

    // Kill, by an admin through the gateway: the service dies as a crash would, and the
    // supervisor starts it again.
    gateway
        .inject_fault(as_admin(
            &admin_key,
            ops::InjectFaultRequest {
                fault: Some(ops::Fault {
                    kind: ops::FaultKind::Kill as i32,
                    ..Default::default()
                }),
                idempotency_key: "kill-1".to_owned(),
                reason: "rehearsing a crash".to_owned(),
            },
        ))
        .await
        .expect("kill accepted");
    output
        .wait_for("the exit", Duration::from_secs(10), |line| {
            line.contains("inventory |") && line.contains("exited (exit code 137)")
        })
        .await;
    output
        .wait_for("the restart", Duration::from_secs(10), |line| {
            line.contains("inventory |") && line.contains("restarted")
        })
        .await;
    let url = format!("https://localhost:{port}");
    let tls = Layout::of_stack(state_dir).client_tls(TOOLS_CERT);
    let (url_ref, tls_ref) = (&url, &tls);
    let healthy = eventually(Duration::from_secs(60), || async move {
        zentra_stack::health::serving(url_ref, Some(tls_ref))
            .await
            .then_some(())
    })
    .await;
    assert!(healthy.is_some(), "healthy again:\n{}", output.dump());
    // A new process: the log level is its configured one again, and the kill fault is gone.
    let mut client = OpsServiceClient::new(service_channel(state_dir, port).await);
    let faults = client
        .list_faults(ops::ListFaultsRequest {})
        .await
        .expect("faults")
        .into_inner()
        .faults;
    assert!(faults.is_empty());
    // The new process reads the kill from the trail the old one wrote before it died.
    let records = gateway
        .list_audit_records(as_admin(
            &admin_key,
            ops::ListAuditRecordsRequest {
                action: "zentra.ops.v1.OpsService/InjectFault".to_owned(),
                ..Default::default()
            },
        ))
        .await
        .expect("audit records")
        .into_inner()
        .audit_records;
    let [kill] = records.as_slice() else {
        panic!("one kill recorded: {records:?}");
    };
    assert_eq!(kill.service, "inventory");
    assert_eq!(kill.target, "faults/KILL");
    assert_eq!(kill.caller, "key:dev-admin");
    assert_eq!(kill.role, "admin");
    assert_eq!(kill.reason, "rehearsing a crash");
    assert_eq!(kill.outcome, ops::AuditOutcome::Succeeded as i32);
    assert_eq!(kill.status_code, "OK");
    assert!(kill.request_time.is_some() && kill.finish_time.is_some());
    // Both log level changes are recorded: the refused one as unverified, the other by the admin.
    let changes = gateway
        .list_audit_records(as_admin(
            &admin_key,
            ops::ListAuditRecordsRequest {
                action: "zentra.ops.v1.OpsService/SetLogLevel".to_owned(),
                ..Default::default()
            },
        ))
        .await
        .expect("audit records")
        .into_inner()
        .audit_records;
    let outcomes: Vec<(&str, &str)> = changes
        .iter()
        .map(|record| (record.caller.as_str(), record.status_code.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("key:dev-admin", "OK"),
            ("unverified:anonymous", "PERMISSION_DENIED")
        ],
        "{changes:?}"
    );

    // SIGTERM: everything stops, and the stack says so.
    let exit = stack.stop().await;
    assert!(exit.success(), "{exit:?}:\n{}", output.dump());
    output
        .wait_for("the last line", Duration::from_secs(2), |line| {
            line.ends_with("| stopped")
        })
        .await;
    assert!(!zentra_stack::health::serving(&url, Some(&tls)).await);

    scratch.clean_up().await;
}
