//! Bulk operations on real sagas: a dry run that counts and changes nothing, an operation that
//! acts at its rate and reports progress, idempotency by key, cancellation that leaves the rest
//! alone, a result and an audit record per saga, and precise refusals.

use std::time::Duration;

use tonic::Code;
use zentra_proto::saga::v1 as pb;
use zentra_test_support::{count, eventually, violated_fields};

use crate::helpers::{Stack, StackOptions, state_name};

/// How many sagas the operation takes.
const SAGAS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_cancel_counts_first_then_acts_at_its_rate_and_a_cancel_leaves_the_rest_alone() {
    let options = StackOptions {
        // The shipments never leave in time: every saga waits, cancellable.
        shipment_step_delay: Duration::from_secs(120),
        shipment_timeout: Duration::from_secs(300),
        ..StackOptions::default()
    };
    let stack = Stack::start("saga-bulk", options).await;
    stack.create_product("BULK-1", 100).await;
    let mut orders = Vec::new();
    for _ in 0..SAGAS {
        orders.push(stack.place_order("BULK-1", 1, "tok_approve", "US").await);
    }
    stack.await_shipments_waiting(&orders).await;
    let awaiting = pb::SagaState::AwaitingShipment as i32;
    let mut sagas = stack.sagas.clone();
    let cancel_all = |validate_only: bool, key: &str| pb::CreateBulkOperationRequest {
        action: pb::BulkAction::Cancel as i32,
        filter: Some(pb::SagaFilter {
            state: awaiting,
            order_ids: orders.clone(),
            ..Default::default()
        }),
        validate_only,
        sagas_per_second: 1,
        reason: "supplier recall".to_owned(),
        idempotency_key: key.to_owned(),
    };

    // Bad input is refused field by field, and creates nothing.
    let refused = sagas
        .create_bulk_operation(pb::CreateBulkOperationRequest {
            action: pb::BulkAction::Resume as i32,
            filter: Some(pb::SagaFilter {
                state: awaiting,
                order_ids: vec!["not-an-id".to_owned()],
                ..Default::default()
            }),
            sagas_per_second: 1000,
            reason: String::new(),
            idempotency_key: "bad-1".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("a resume of waiting sagas, at a flood rate, without a reason");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&refused),
        [
            "filter.state",
            "filter.order_ids[0]",
            "sagas_per_second",
            "reason"
        ]
    );
    let missing = sagas
        .create_bulk_operation(pb::CreateBulkOperationRequest {
            action: pb::BulkAction::Cancel as i32,
            reason: "no filter".to_owned(),
            idempotency_key: "bad-2".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("no filter");
    assert_eq!(violated_fields(&missing), ["filter"]);
    let everything = sagas
        .create_bulk_operation(pb::CreateBulkOperationRequest {
            filter: Some(pb::SagaFilter::default()),
            ..cancel_all(true, "")
        })
        .await
        .expect_err("a filter that takes every saga");
    assert_eq!(violated_fields(&everything), ["filter"]);

    // The dry run counts exactly the sagas the action applies to, and changes nothing.
    let dry = sagas
        .create_bulk_operation(cancel_all(true, ""))
        .await
        .expect("dry run")
        .into_inner();
    assert_eq!(dry.matched_count, SAGAS as i64);
    assert!(dry.operation.is_none(), "a dry run starts nothing");
    let retry_dry = sagas
        .create_bulk_operation(pb::CreateBulkOperationRequest {
            action: pb::BulkAction::Retry as i32,
            ..cancel_all(true, "")
        })
        .await;
    assert_eq!(
        retry_dry
            .expect_err("no retry applies to a waiting saga")
            .code(),
        Code::InvalidArgument,
        "a retry never applies to AWAITING_SHIPMENT"
    );
    let listed = sagas
        .list_bulk_operations(pb::ListBulkOperationsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.operations.is_empty(), "{listed:?}");

    // The operation takes every saga at once, then acts on them one a second.
    let created = sagas
        .create_bulk_operation(cancel_all(false, "recall-1"))
        .await
        .expect("created")
        .into_inner();
    let operation = created.operation.expect("operation");
    assert_eq!(created.matched_count, SAGAS as i64);
    assert_eq!(operation.total_count, SAGAS as i64);
    assert_eq!(operation.state, pb::BulkOperationState::Running as i32);
    assert_eq!(operation.sagas_per_second, 1);
    let id = operation.operation_id.clone();

    // The same key and request: the same operation, not a second one.
    let again = sagas
        .create_bulk_operation(cancel_all(false, "recall-1"))
        .await
        .expect("replayed")
        .into_inner()
        .operation
        .expect("operation");
    assert_eq!(again.operation_id, id);
    let reused = sagas
        .create_bulk_operation(pb::CreateBulkOperationRequest {
            sagas_per_second: 2,
            ..cancel_all(false, "recall-1")
        })
        .await
        .expect_err("the key of another request");
    assert_eq!(reused.code(), Code::AlreadyExists);

    // Progress, as it goes: some sagas acted on, some still to do.
    let get = |sagas: &mut pb::saga_service_client::SagaServiceClient<_>| {
        let mut sagas = sagas.clone();
        let id = id.clone();
        async move {
            sagas
                .get_bulk_operation(pb::GetBulkOperationRequest { operation_id: id })
                .await
                .expect("get")
                .into_inner()
                .operation
                .expect("operation")
        }
    };
    let midway = eventually(Duration::from_secs(30), || {
        let get = get(&mut sagas);
        async move {
            let operation = get.await;
            (operation.applied_count >= 2).then_some(operation)
        }
    })
    .await
    .expect("two sagas acted on");
    assert!(!midway.done);
    assert!(midway.pending_count > 0, "{midway:?}");

    // Cancelled: what was acted on stays so, the rest is left alone.
    let cancelled = sagas
        .cancel_bulk_operation(pb::CancelBulkOperationRequest {
            operation_id: id.clone(),
            reason: "enough for today".to_owned(),
            idempotency_key: "stop-1".to_owned(),
        })
        .await
        .expect("cancelled")
        .into_inner()
        .operation
        .expect("operation");
    assert_eq!(cancelled.state, pb::BulkOperationState::Cancelled as i32);
    assert!(cancelled.done);
    assert_eq!(cancelled.pending_count, 0);
    assert!(cancelled.cancelled_count >= 1, "{cancelled:?}");
    assert_eq!(
        cancelled.applied_count + cancelled.cancelled_count,
        SAGAS as i64
    );
    let twice = sagas
        .cancel_bulk_operation(pb::CancelBulkOperationRequest {
            operation_id: id.clone(),
            reason: String::new(),
            idempotency_key: "stop-2".to_owned(),
        })
        .await
        .expect_err("already cancelled");
    assert_eq!(twice.code(), Code::FailedPrecondition);

    // A result per saga, paged.
    let mut results = Vec::new();
    let mut token = String::new();
    loop {
        let page = sagas
            .list_bulk_operation_results(pb::ListBulkOperationResultsRequest {
                operation_id: id.clone(),
                page: Some(zentra_proto::common::v1::PageRequest {
                    page_size: 3,
                    page_token: token.clone(),
                }),
                ..Default::default()
            })
            .await
            .expect("results")
            .into_inner();
        results.extend(page.results);
        token = page.page.expect("paging").next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(results.len(), SAGAS);
    let applied: Vec<_> = results
        .iter()
        .filter(|result| result.outcome == pb::BulkResultOutcome::Applied as i32)
        .collect();
    assert_eq!(applied.len() as i64, cancelled.applied_count);

    // The sagas acted on compensate for real; the others still wait for their shipments.
    for result in &results {
        if result.outcome == pb::BulkResultOutcome::Applied as i32 {
            let saga = stack
                .finished_saga(&result.order_id, Duration::from_secs(60))
                .await;
            assert_eq!(state_name(&saga), "SAGA_STATE_COMPENSATED", "{saga:#?}");
        } else {
            assert_eq!(result.outcome, pb::BulkResultOutcome::Cancelled as i32);
            let saga = stack.saga_of(&result.order_id).await;
            assert_eq!(state_name(&saga), "SAGA_STATE_AWAITING_SHIPMENT");
        }
    }
    let after = get(&mut sagas).await;
    assert_eq!(
        (after.applied_count, after.cancelled_count),
        (cancelled.applied_count, cancelled.cancelled_count),
        "a cancelled operation does not move"
    );

    // Each saga acted on has its own audit record, naming the operation; so do the operation's
    // start and its cancellation.
    let db = stack.database("saga").await;
    let per_saga = count(
        &db,
        &format!(
            "SELECT count(*) FROM audit_records WHERE action = \
             'zentra.saga.v1.SagaService/CancelSaga' AND reason LIKE 'bulk operation {id}:%' \
             AND outcome = 'AUDIT_OUTCOME_SUCCEEDED'"
        ),
    )
    .await;
    assert_eq!(per_saga, cancelled.applied_count);
    let around = count(
        &db,
        "SELECT count(*) FROM audit_records WHERE action IN \
         ('zentra.saga.v1.SagaService/CreateBulkOperation', \
          'zentra.saga.v1.SagaService/CancelBulkOperation') AND outcome = 'AUDIT_OUTCOME_SUCCEEDED'",
    )
    .await;
    // The dry run, the start, its replay, and the cancel.
    assert_eq!(around, 4);
    stack.stop().await;
}
