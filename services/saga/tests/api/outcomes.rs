//! Each way an order's saga can end, on the real services, PostgreSQL and broker: what happened
//! to stock, money, shipment and order, and the timeline the saga kept.

use std::time::Duration;

use prost_types::Timestamp;
use zentra_proto::{
    fulfillment::v1::ShipmentStatus,
    order::v1::OrderStatus,
    payment::v1::PaymentStatus,
    saga::v1::{self as pb, SagaStepStatus, StepAttemptOutcome},
};

use crate::helpers::{Stack, StackOptions, state_name, step_names};

const WITHIN: Duration = Duration::from_secs(40);

fn micros(time: Option<&Timestamp>) -> i64 {
    let time = time.expect("timestamp set");
    time.seconds * 1_000_000 + i64::from(time.nanos / 1000)
}

/// Every step succeeded, each attempt has its own start and end, in execution order.
fn assert_clean_timeline(saga: &pb::Saga) {
    let mut previous_end = 0;
    for step in &saga.steps {
        assert_eq!(step.status, SagaStepStatus::Succeeded as i32, "{step:?}");
        let attempt = step.attempts.last().expect("an attempt");
        assert_eq!(attempt.outcome, StepAttemptOutcome::Succeeded as i32);
        let start = micros(attempt.start_time.as_ref());
        let end = micros(attempt.end_time.as_ref());
        assert!(start <= end, "attempt ends after it starts: {step:?}");
        assert!(
            start >= previous_end,
            "steps run one after another: {saga:#?}"
        );
        previous_end = end;
        assert!(!step.idempotency_key.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_happy_path_reserves_charges_ships_and_confirms_with_a_timeline() {
    let stack = Stack::start("saga-happy", StackOptions::default()).await;
    stack.create_product("LAMP-1", 10).await;
    // Created at 12.50 USD, repriced before the order: the new price is what is charged.
    stack.set_price("LAMP-1", 1999).await;

    let order_id = stack.place_order("LAMP-1", 2, "tok_approve", "US").await;
    let saga = stack.finished_saga(&order_id, WITHIN).await;

    assert_eq!(state_name(&saga), "SAGA_STATE_COMPLETED", "{saga:#?}");
    assert_eq!(
        step_names(&saga),
        [
            "RESERVE_STOCK",
            "AUTHORIZE_PAYMENT",
            "PIN_RESERVATION",
            "CREATE_SHIPMENT",
            "CAPTURE_PAYMENT",
            "CONFIRM_RESERVATION",
            "CONFIRM_ORDER"
        ]
    );
    assert_clean_timeline(&saga);
    assert!(saga.end_time.is_some());
    // The order's trace, continued by every step (crates/stack/tests/stack/traces.rs follows it).
    assert!(
        saga.trace_id.len() == 32 && saga.trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{:?}",
        saga.trace_id
    );

    let product = stack.product("LAMP-1").await;
    assert_eq!(
        (product.available, product.reserved, product.sold),
        (8, 0, 2)
    );
    let payments = stack.payments_of(&order_id).await;
    assert_eq!(payments.len(), 1, "one authorization");
    assert_eq!(payments[0].status, PaymentStatus::Captured as i32);
    assert_eq!(
        payments[0]
            .captured_amount
            .as_ref()
            .map(|money| money.amount_minor),
        Some(2 * 1999),
        "the catalogue's current price is charged"
    );
    assert_eq!(
        stack.ledger_of(&order_id).await,
        [
            "LEDGER_ENTRY_TYPE_AUTHORIZATION",
            "LEDGER_ENTRY_TYPE_CAPTURE"
        ]
    );
    let shipments = stack.shipments_of(&order_id).await;
    assert_eq!(shipments.len(), 1);
    assert_eq!(shipments[0].status, ShipmentStatus::Dispatched as i32);
    assert_eq!(
        stack.order(&order_id).await.status,
        OrderStatus::Confirmed as i32
    );

    let notifications = stack
        .notifications_of(&order_id, "zentra.order.v1.OrderConfirmed")
        .await;
    let confirmations = notifications
        .iter()
        .filter(|notification| notification.trigger_event_type == "zentra.order.v1.OrderConfirmed")
        .count();
    assert_eq!(confirmations, 1, "one confirmation: {notifications:#?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_releases_the_stock_and_rejects_the_order_with_the_reason() {
    let stack = Stack::start("saga-declined", StackOptions::default()).await;
    stack.create_product("LAMP-2", 10).await;

    let order_id = stack.place_order("LAMP-2", 3, "tok_decline", "US").await;
    let saga = stack.finished_saga(&order_id, WITHIN).await;

    assert_eq!(state_name(&saga), "SAGA_STATE_COMPENSATED", "{saga:#?}");
    assert_eq!(
        step_names(&saga),
        [
            "RESERVE_STOCK",
            "AUTHORIZE_PAYMENT",
            "RELEASE_STOCK",
            "REJECT_ORDER"
        ]
    );
    assert_eq!(saga.failing_step, 0, "compensation finished");
    let authorize = &saga.steps[1];
    assert_eq!(authorize.status, SagaStepStatus::Failed as i32);
    assert_eq!(
        authorize.attempts.len(),
        1,
        "a decline is not retried: {authorize:?}"
    );
    assert_eq!(
        authorize.attempts[0].outcome,
        StepAttemptOutcome::PermanentFailure as i32
    );

    let order = stack.order(&order_id).await;
    assert_eq!(order.status, OrderStatus::Rejected as i32);
    assert!(order.rejection_reason.contains("declined"), "{order:?}");
    let product = stack.product("LAMP-2").await;
    assert_eq!(
        (product.available, product.reserved, product.sold),
        (10, 0, 0)
    );
    let payments = stack.payments_of(&order_id).await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].status, PaymentStatus::Declined as i32);
    assert!(
        stack.ledger_of(&order_id).await.is_empty(),
        "nothing authorized or captured"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_beyond_the_stock_charges_nothing_and_is_rejected() {
    let stack = Stack::start("saga-stock", StackOptions::default()).await;
    stack.create_product("LAMP-3", 1).await;

    let order_id = stack.place_order("LAMP-3", 5, "tok_approve", "US").await;
    let saga = stack.finished_saga(&order_id, WITHIN).await;

    assert_eq!(state_name(&saga), "SAGA_STATE_COMPENSATED", "{saga:#?}");
    assert_eq!(step_names(&saga), ["RESERVE_STOCK", "REJECT_ORDER"]);
    assert_eq!(
        stack.order(&order_id).await.status,
        OrderStatus::Rejected as i32
    );
    assert!(
        stack.payments_of(&order_id).await.is_empty(),
        "no payment at all"
    );
    let product = stack.product("LAMP-3").await;
    assert_eq!((product.available, product.reserved), (1, 0));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shipment_voids_the_payment_and_releases_the_stock() {
    let stack = Stack::start("saga-shipfail", StackOptions::default()).await;
    stack.create_product("LAMP-4", 10).await;

    // Fulfillment cannot ship to Antarctica: the shipment fails while picking.
    let order_id = stack.place_order("LAMP-4", 1, "tok_approve", "AQ").await;
    let saga = stack.finished_saga(&order_id, WITHIN).await;

    assert_eq!(state_name(&saga), "SAGA_STATE_COMPENSATED", "{saga:#?}");
    assert_eq!(
        step_names(&saga),
        [
            "RESERVE_STOCK",
            "AUTHORIZE_PAYMENT",
            "PIN_RESERVATION",
            "CREATE_SHIPMENT",
            "VOID_PAYMENT",
            "RELEASE_STOCK",
            "REJECT_ORDER"
        ]
    );
    assert!(saga.failure_reason.contains("shipment failed"), "{saga:?}");
    let payments = stack.payments_of(&order_id).await;
    assert_eq!(payments[0].status, PaymentStatus::Voided as i32);
    assert_eq!(
        stack.ledger_of(&order_id).await,
        [
            "LEDGER_ENTRY_TYPE_AUTHORIZATION",
            "LEDGER_ENTRY_TYPE_RELEASE"
        ]
    );
    let product = stack.product("LAMP-4").await;
    assert_eq!(
        (product.available, product.reserved, product.sold),
        (10, 0, 0)
    );
    assert_eq!(
        stack.order(&order_id).await.status,
        OrderStatus::Rejected as i32
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_that_is_not_dispatched_in_time_is_cancelled_and_everything_undone() {
    let options = StackOptions {
        // Fulfillment is far too slow for the saga's patience.
        shipment_step_delay: Duration::from_secs(60),
        shipment_timeout: Duration::from_secs(1),
        ..StackOptions::default()
    };
    let stack = Stack::start("saga-shiptimeout", options).await;
    stack.create_product("LAMP-5", 10).await;

    let order_id = stack.place_order("LAMP-5", 2, "tok_approve", "US").await;
    let saga = stack.finished_saga(&order_id, WITHIN).await;

    assert_eq!(state_name(&saga), "SAGA_STATE_COMPENSATED", "{saga:#?}");
    assert_eq!(
        step_names(&saga),
        [
            "RESERVE_STOCK",
            "AUTHORIZE_PAYMENT",
            "PIN_RESERVATION",
            "CREATE_SHIPMENT",
            "CANCEL_SHIPMENT",
            "VOID_PAYMENT",
            "RELEASE_STOCK",
            "REJECT_ORDER"
        ]
    );
    assert!(
        saga.failure_reason.contains("not dispatched within"),
        "{saga:?}"
    );
    let shipments = stack.shipments_of(&order_id).await;
    assert_eq!(shipments[0].status, ShipmentStatus::Cancelled as i32);
    assert_eq!(
        stack.payments_of(&order_id).await[0].status,
        PaymentStatus::Voided as i32
    );
    let product = stack.product("LAMP-5").await;
    assert_eq!((product.available, product.reserved), (10, 0));
    assert_eq!(
        stack.order(&order_id).await.status,
        OrderStatus::Rejected as i32
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_payment_error_is_retried_after_a_backoff_and_the_saga_completes() {
    let stack = Stack::start("saga-transient", StackOptions::default()).await;
    stack.create_product("LAMP-6", 10).await;

    // The simulated processor fails the first time per key, then approves.
    let order_id = stack.place_order("LAMP-6", 1, "tok_transient", "US").await;
    let saga = stack.finished_saga(&order_id, WITHIN).await;

    assert_eq!(state_name(&saga), "SAGA_STATE_COMPLETED", "{saga:#?}");
    let authorize = &saga.steps[1];
    assert_eq!(authorize.attempts.len(), 2, "{authorize:#?}");
    let (first, second) = (&authorize.attempts[0], &authorize.attempts[1]);
    assert_eq!(first.outcome, StepAttemptOutcome::RetryableFailure as i32);
    assert_eq!(first.error_code, "UNAVAILABLE");
    let retry_at = micros(first.next_retry_time.as_ref());
    assert!(
        retry_at > micros(first.end_time.as_ref()),
        "a backoff was scheduled"
    );
    assert!(
        micros(second.start_time.as_ref()) >= retry_at,
        "the retry waited for its time"
    );
    assert_eq!(second.outcome, StepAttemptOutcome::Succeeded as i32);
    // The same key on both attempts: one authorization, captured once.
    assert_eq!(stack.payments_of(&order_id).await.len(), 1);
    assert_eq!(
        stack.ledger_of(&order_id).await,
        [
            "LEDGER_ENTRY_TYPE_AUTHORIZATION",
            "LEDGER_ENTRY_TYPE_CAPTURE"
        ]
    );
    stack.stop().await;
}
