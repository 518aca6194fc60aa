//! The audit trail through the gateway: an operator's dead-letter dismissal is stored by the
//! service that took it, with the caller and role the gateway authenticated, the reason and the
//! outcome; refused attempts are recorded too; viewers can read neither the trail nor act.

use tonic::Code;
use zentra_proto::{
    ops::v1::{self as ops, ops_service_client::OpsServiceClient},
    saga::v1::{self as saga, dead_letter_service_client::DeadLetterServiceClient},
};

use crate::helpers::{GatewayOptions, Platform, for_service, with_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_dismissal_is_in_the_audit_trail_with_the_operator_who_did_it() {
    let mut platform = Platform::start("gw-audit").await;
    let (_, channel) = platform.gateway(&GatewayOptions::default()).await;
    let keys = platform.keys.clone();
    let parked = platform.park_dead_letter(b"not a command").await;
    let mut dead_letters = DeadLetterServiceClient::new(channel.clone());
    let mut ops = OpsServiceClient::new(channel);
    let dismiss = |id: &str, reason: &str, key: &str| saga::DismissDeadLetterRequest {
        dead_letter_id: id.to_owned(),
        reason: reason.to_owned(),
        idempotency_key: key.to_owned(),
    };
    let trail = |filter: ops::ListAuditRecordsRequest, key: &str| {
        for_service(with_key(filter, key), "inventory")
    };

    // A viewer may neither act nor read who did.
    let denied = dead_letters
        .dismiss_dead_letter(for_service(
            with_key(dismiss(&parked, "not mine to dismiss", "v-1"), &keys.viewer),
            "inventory",
        ))
        .await
        .expect_err("a viewer cannot dismiss");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = ops
        .list_audit_records(trail(Default::default(), &keys.viewer))
        .await
        .expect_err("a viewer cannot read the trail");
    assert_eq!(denied.code(), Code::PermissionDenied);

    // The operator dismisses it; a hostile reason and an unknown id are refused, and recorded.
    let reason = "the order was cancelled by the customer";
    dead_letters
        .dismiss_dead_letter(for_service(
            with_key(dismiss(&parked, reason, "op-1"), &keys.operator),
            "inventory",
        ))
        .await
        .expect("an operator dismisses");
    let hostile = dead_letters
        .dismiss_dead_letter(for_service(
            with_key(dismiss(&parked, "bell\u{7}\0", "op-2"), &keys.operator),
            "inventory",
        ))
        .await
        .expect_err("control characters are refused");
    assert_eq!(hostile.code(), Code::InvalidArgument);
    let unknown = "0190c0de-0000-7000-8000-000000000000";
    let missing = dead_letters
        .dismiss_dead_letter(for_service(
            with_key(dismiss(unknown, "gone", "op-3"), &keys.operator),
            "inventory",
        ))
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), Code::NotFound);

    let records = ops
        .list_audit_records(trail(
            ops::ListAuditRecordsRequest {
                target: format!("dead-letters/{parked}"),
                outcome: ops::AuditOutcome::Succeeded as i32,
                ..Default::default()
            },
            &keys.operator,
        ))
        .await
        .expect("an operator reads the trail")
        .into_inner()
        .audit_records;
    let [dismissal] = records.as_slice() else {
        panic!("one dismissal: {records:?}");
    };
    assert_eq!(dismissal.service, "inventory");
    assert_eq!(
        dismissal.action,
        "zentra.saga.v1.DeadLetterService/DismissDeadLetter"
    );
    assert_eq!(dismissal.caller, "key:operator");
    assert_eq!(dismissal.role, "operator");
    assert_eq!(dismissal.reason, reason);
    assert_eq!(dismissal.status_code, "OK");
    assert!(dismissal.peer.starts_with("127.0.0.1:"), "{dismissal:?}");

    // Every attempt is there, newest first, refusals with their code.
    let all = ops
        .list_audit_records(trail(Default::default(), &keys.operator))
        .await
        .expect("trail")
        .into_inner()
        .audit_records;
    let seen: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|record| {
            (
                record.target.as_str(),
                record.reason.as_str(),
                record.status_code.as_str(),
            )
        })
        .collect();
    let parked_target = format!("dead-letters/{parked}");
    let unknown_target = format!("dead-letters/{unknown}");
    assert_eq!(
        seen,
        vec![
            (unknown_target.as_str(), "gone", "NOT_FOUND"),
            (parked_target.as_str(), "bell", "INVALID_ARGUMENT"),
            (parked_target.as_str(), reason, "OK"),
        ]
    );
    assert!(
        all.iter()
            .all(|record| record.caller == "key:operator" && record.finish_time.is_some())
    );
    let failed = ops
        .list_audit_records(trail(
            ops::ListAuditRecordsRequest {
                outcome: ops::AuditOutcome::Failed as i32,
                page: Some(zentra_proto::common::v1::PageRequest {
                    page_size: 1,
                    page_token: String::new(),
                }),
                ..Default::default()
            },
            &keys.operator,
        ))
        .await
        .expect("trail")
        .into_inner();
    assert_eq!(failed.audit_records.len(), 1);
    assert!(!failed.page.unwrap_or_default().next_page_token.is_empty());

    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_claims_a_role_without_the_gateways_signature_is_refused_and_recorded() {
    let mut platform = Platform::start("gw-forged").await;
    let (_, channel) = platform.gateway(&GatewayOptions::default()).await;
    let parked = platform.park_dead_letter(b"not a command").await;
    // Straight to the service's port, claiming to be an admin the gateway vouched for.
    let direct =
        tonic::transport::Channel::from_shared(format!("http://{}", platform.inventory_addr()))
            .expect("url")
            .connect()
            .await
            .expect("inventory");
    fn forged<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        metadata.insert("x-zentra-caller", "key:admin".parse().expect("ascii"));
        metadata.insert("x-zentra-role", "admin".parse().expect("ascii"));
        metadata.insert(
            "x-zentra-assertion",
            format!("v1.{}.{}", 1_900_000_000, "ab".repeat(32))
                .parse()
                .expect("ascii"),
        );
        request
    }
    let refused = OpsServiceClient::new(direct.clone())
        .set_log_level(forged(ops::SetLogLevelRequest {
            filter: "trace".to_owned(),
            idempotency_key: "forged-1".to_owned(),
            reason: "I am the admin".to_owned(),
        }))
        .await
        .expect_err("a forged admin is refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = DeadLetterServiceClient::new(direct)
        .dismiss_dead_letter(forged(saga::DismissDeadLetterRequest {
            dead_letter_id: parked.clone(),
            reason: "covering my tracks".to_owned(),
            idempotency_key: "forged-2".to_owned(),
        }))
        .await
        .expect_err("a forged operator is refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // The record says who claimed what, from where; the dead letter is untouched.
    let records = OpsServiceClient::new(channel.clone())
        .list_audit_records(for_service(
            with_key(
                ops::ListAuditRecordsRequest::default(),
                &platform.keys.operator,
            ),
            "inventory",
        ))
        .await
        .expect("trail")
        .into_inner()
        .audit_records;
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(
        records
            .iter()
            .all(|record| record.caller == "unverified:key:admin"
                && record.status_code == "PERMISSION_DENIED")
    );
    let letter = DeadLetterServiceClient::new(channel)
        .get_dead_letter(for_service(
            with_key(
                saga::GetDeadLetterRequest {
                    dead_letter_id: parked,
                },
                &platform.keys.operator,
            ),
            "inventory",
        ))
        .await
        .expect("dead letter")
        .into_inner()
        .dead_letter
        .expect("dead letter");
    assert_eq!(letter.status, saga::DeadLetterStatus::Pending as i32);
    platform.stop().await;
}
