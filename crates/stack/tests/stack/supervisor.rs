//! The stack binary itself, with one real service and the gateway under it: a kill fault sent
//! through the gateway takes the service down, the supervisor brings it back healthy, and the
//! service's audit trail names the admin who killed it; a log level set through ops changes the
//! log at once; SIGTERM stops everything cleanly.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::Command,
};
use tonic::metadata::MetadataValue;
use zentra_proto::ops::v1::{self as ops, ops_service_client::OpsServiceClient};
use zentra_test_support::{
    TestDatabase, delete_topics, eventually, kafka_bootstrap, unique_suffix,
};

/// The stack binary, and beside it the service binaries it runs (built if missing).
fn binaries() -> PathBuf {
    let stack = PathBuf::from(env!("CARGO_BIN_EXE_zentra-stack"));
    let dir = stack.parent().expect("bin dir").to_path_buf();
    if !dir.join("zentra-inventory").is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "-p",
                "zentra-inventory",
                "--bin",
                "zentra-inventory",
            ])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building zentra-inventory");
    }
    dir
}

/// A base port whose service port (base + 1) is free right now.
fn free_base_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port() - 1
}

/// Lines the stack printed so far.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<String>>>);

impl Output {
    fn contains(&self, predicate: impl Fn(&str) -> bool) -> bool {
        self.0
            .lock()
            .map(|lines| lines.iter().any(|line| predicate(line)))
            .unwrap_or(false)
    }

    fn count(&self, predicate: impl Fn(&str) -> bool) -> usize {
        self.0
            .lock()
            .map(|lines| lines.iter().filter(|line| predicate(line)).count())
            .unwrap_or(0)
    }

    fn dump(&self) -> String {
        self.0
            .lock()
            .map(|lines| lines.join("\n"))
            .unwrap_or_default()
    }

    async fn wait_for(&self, what: &str, within: Duration, predicate: impl Fn(&str) -> bool) {
        let seen = eventually(within, || {
            let found = self.contains(&predicate);
            async move { found.then_some(()) }
        })
        .await;
        assert!(seen.is_some(), "never saw {what}:\n{}", self.dump());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_comes_back_its_audit_trail_names_the_killer_and_log_levels_change_live() {
    let bin_dir = binaries();
    let suffix = unique_suffix();
    let db_prefix = format!("zt_stack_{suffix}_");
    let database = TestDatabase::create_named(&format!("{db_prefix}inventory"))
        .await
        .expect("database");
    let topic_prefix = format!("zt-stack-{suffix}.");
    let state_dir = std::env::temp_dir().join(format!("zentra-stack-{suffix}"));
    let base_port = free_base_port();
    let port = base_port + 1;
    let gateway_port = free_base_port() + 1;

    let mut stack = Command::new(bin_dir.join("zentra-stack"))
        .args(["--only", "inventory,gateway", "--state-dir"])
        .arg(&state_dir)
        .env("ZENTRA_STACK_BASE_PORT", base_port.to_string())
        .env("ZENTRA_STACK_GATEWAY_PORT", gateway_port.to_string())
        .env("ZENTRA_STACK_KAFKA", kafka_bootstrap())
        .env("ZENTRA_STACK_DB_PREFIX", &db_prefix)
        .env("ZENTRA_STACK_TOPIC_PREFIX", &topic_prefix)
        .env(
            "ZENTRA_STACK_PG_URL",
            database
                .url()
                .rsplit_once('/')
                .map(|(server, _)| server.to_owned())
                .expect("url"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("stack starts");
    let output = Output::default();
    for stream in [
        Box::new(stack.stdout.take().expect("stdout"))
            as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(stack.stderr.take().expect("stderr")),
    ] {
        let output = output.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(mut seen) = output.0.lock() {
                    seen.push(line);
                }
            }
        });
    }
    output
        .wait_for("the ready line", Duration::from_secs(90), |line| {
            line.contains(zentra_stack::READY)
        })
        .await;
    assert!(output.contains(|line| line.contains("viewer    zk_viewer_")));

    let mut client = OpsServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect");
    // At the default level a finished call is not logged...
    client
        .get_build_info(ops::GetBuildInfoRequest {})
        .await
        .expect("build info");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let finished = |line: &str| line.contains("inventory |") && line.contains("rpc finished");
    assert_eq!(output.count(finished), 0, "{}", output.dump());
    let admin_key = std::fs::read_to_string(state_dir.join(zentra_stack::keys::KEYS_FILE))
        .expect("dev keys")
        .lines()
        .find_map(|line| line.strip_prefix("ZENTRA_ADMIN_KEY=").map(str::to_owned))
        .expect("admin key");
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
    let healthy = eventually(Duration::from_secs(60), || async move {
        zentra_stack::health::serving(port).await.then_some(())
    })
    .await;
    assert!(healthy.is_some(), "healthy again:\n{}", output.dump());
    // A new process: the log level is its configured one again, and the kill fault is gone.
    let mut client = OpsServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("reconnect");
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
    let pid = stack.id().expect("pid").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), stack.wait())
        .await
        .expect("the stack stops")
        .expect("exit status");
    assert!(exit.success(), "{exit:?}:\n{}", output.dump());
    output
        .wait_for("the last line", Duration::from_secs(2), |line| {
            line.ends_with("| stopped")
        })
        .await;
    assert!(!zentra_stack::health::serving(port).await);

    let _ = std::fs::remove_dir_all(&state_dir);
    delete_topics(&[
        format!("{topic_prefix}inventory.events"),
        format!("{topic_prefix}inventory.commands"),
        format!("{topic_prefix}saga.command-acks"),
    ])
    .await;
    database.drop_database().await.expect("drop database");
}
