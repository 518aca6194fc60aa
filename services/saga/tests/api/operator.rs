//! The operator API: watching sagas live, cancelling, retrying now, resuming, breakers, and
//! precise refusals of bad requests.

use std::time::Duration;

use futures::StreamExt as _;
use tonic::Code;
use zentra_proto::{order::v1::OrderStatus, saga::v1 as pb};
use zentra_test_support::violated_fields;

use crate::helpers::{Stack, StackOptions, state_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_cancels_a_saga_while_watch_streams_each_transition_to_the_end() {
    let options = StackOptions {
        // The shipment never leaves in time: the saga sits waiting for it.
        shipment_step_delay: Duration::from_secs(60),
        shipment_timeout: Duration::from_secs(120),
        ..StackOptions::default()
    };
    let stack = Stack::start("saga-cancel", options).await;
    stack.create_product("OPS-1", 5).await;
    let order_id = stack.place_order("OPS-1", 2, "tok_approve", "US").await;
    let saga = stack.saga_of(&order_id).await;

    let mut watch = stack
        .sagas
        .clone()
        .watch_saga(pb::WatchSagaRequest {
            saga_id: saga.saga_id.clone(),
            ..Default::default()
        })
        .await
        .expect("watching")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(update) = watch.next().await {
        let update = update.expect("update").saga.expect("saga");
        let waiting = update.state == pb::SagaState::AwaitingShipment as i32;
        seen.push(update);
        if waiting {
            break;
        }
    }

    let mut sagas = stack.sagas.clone();
    let refused = sagas
        .cancel_saga(pb::CancelSagaRequest {
            saga_id: saga.saga_id.clone(),
            reason: "  ".to_owned(),
            idempotency_key: "cancel-blank".to_owned(),
        })
        .await
        .expect_err("a reason is required");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&refused), ["reason"]);

    let cancelled = sagas
        .cancel_saga(pb::CancelSagaRequest {
            saga_id: saga.saga_id.clone(),
            reason: "fraud suspected".to_owned(),
            idempotency_key: "cancel-1".to_owned(),
        })
        .await
        .expect("cancelled")
        .into_inner()
        .saga
        .expect("saga");
    assert_ne!(cancelled.state, pb::SagaState::AwaitingShipment as i32);
    assert_eq!(
        cancelled.compensation_cause,
        pb::SagaCompensationCause::OperatorCancelled as i32
    );

    // The stream goes on through the compensation and ends with the saga.
    let mut last = None;
    while let Some(update) = watch.next().await {
        let update = update.expect("update").saga.expect("saga");
        assert!(
            seen.last()
                .is_none_or(|previous| previous.version < update.version),
            "versions only grow"
        );
        seen.push(update.clone());
        last = Some(update);
    }
    let last = last.expect("updates after the cancel");
    assert_eq!(state_name(&last), "SAGA_STATE_COMPENSATED");
    assert!(last.failure_reason.contains("fraud suspected"));
    let order = stack.order(&order_id).await;
    assert_eq!(order.status, OrderStatus::Rejected as i32);
    let product = stack.product("OPS-1").await;
    assert_eq!((product.available, product.reserved), (5, 0));

    // Once it ended: nothing more to cancel, resume or retry.
    let again = sagas
        .cancel_saga(pb::CancelSagaRequest {
            saga_id: saga.saga_id.clone(),
            reason: "again".to_owned(),
            idempotency_key: "cancel-2".to_owned(),
        })
        .await
        .expect_err("ended");
    assert_eq!(again.code(), Code::FailedPrecondition);
    let resume = sagas
        .resume_saga(pb::ResumeSagaRequest {
            saga_id: saga.saga_id.clone(),
            skip_failed_step: false,
            reason: String::new(),
            idempotency_key: "resume-1".to_owned(),
        })
        .await
        .expect_err("not parked");
    assert_eq!(resume.code(), Code::FailedPrecondition);
    let retry = sagas
        .retry_saga(pb::RetrySagaRequest {
            saga_id: saga.saga_id.clone(),
            idempotency_key: "retry-1".to_owned(),
            reason: String::new(),
        })
        .await
        .expect_err("nothing scheduled");
    assert_eq!(retry.code(), Code::FailedPrecondition);

    // Unknown and malformed ids.
    let unknown = sagas
        .get_saga(pb::GetSagaRequest {
            saga_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    let malformed = sagas
        .watch_saga(pb::WatchSagaRequest {
            saga_id: "not-a-uuid".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("malformed");
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&malformed), ["saga_id"]);
    let bad_filter = sagas
        .list_sagas(pb::ListSagasRequest {
            state: 99,
            order_id: "nope".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("bad filters");
    assert_eq!(violated_fields(&bad_filter), ["state", "order_id"]);

    // Filters: by state and by the step it failed at.
    let compensated = sagas
        .list_sagas(pb::ListSagasRequest {
            state: pb::SagaState::Compensated as i32,
            ..Default::default()
        })
        .await
        .expect("listed")
        .into_inner()
        .sagas;
    assert_eq!(compensated.len(), 1);
    let running = sagas
        .list_sagas(pb::ListSagasRequest {
            state: pb::SagaState::Running as i32,
            ..Default::default()
        })
        .await
        .expect("listed")
        .into_inner()
        .sagas;
    assert!(running.is_empty());
    stack.stop().await;
}
