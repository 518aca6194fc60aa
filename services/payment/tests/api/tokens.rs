//! Each simulated payment token produces its documented outcome.

use std::time::Duration;

use tonic::Code;
use zentra_proto::payment::v1::{self as pb, DeclineReason, PaymentStatus};

use crate::helpers::{TestApp, authorize_request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_simulated_token_produces_its_documented_outcome() {
    let app = TestApp::spawn("tokens").await;

    let approved = app
        .authorize("tok_approve", 5000, "a-1")
        .await
        .expect("approved");
    assert_eq!(approved.status, PaymentStatus::Authorized as i32);
    assert!(approved.processor_reference.starts_with("sim_"));

    let declined = app
        .authorize("tok_decline", 5000, "a-2")
        .await
        .expect("answered");
    assert_eq!(declined.status, PaymentStatus::Declined as i32);
    assert_eq!(declined.decline_reason, DeclineReason::CardDeclined as i32);

    let broke = app
        .authorize("tok_insufficient_funds", 5000, "a-3")
        .await
        .expect("answered");
    assert_eq!(broke.status, PaymentStatus::Declined as i32);
    assert_eq!(
        broke.decline_reason,
        DeclineReason::InsufficientFunds as i32
    );

    // Transient: the first attempt fails and stores nothing; the retry with the same key succeeds.
    let request = authorize_request("tok_transient", 700, "a-4");
    let first = app
        .client
        .clone()
        .authorize(request.clone())
        .await
        .expect_err("transient");
    assert_eq!(first.code(), Code::Unavailable);
    let retried = app
        .client
        .clone()
        .authorize(request)
        .await
        .expect("retry succeeds")
        .into_inner();
    assert_eq!(
        retried.payment.map(|p| p.status),
        Some(PaymentStatus::Authorized as i32)
    );

    // Timeout: the processor is slower than the caller's deadline; the call fails and leaves
    // no payment behind.
    let mut slow = tonic::Request::new(authorize_request("tok_timeout", 900, "a-5"));
    slow.set_timeout(Duration::from_millis(300));
    let timed_out = app
        .client
        .clone()
        .authorize(slow)
        .await
        .expect_err("deadline");
    assert!(
        matches!(timed_out.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{timed_out:?}"
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.count("payments").await,
        4,
        "approve, decline, insufficient, transient retry"
    );
    assert_eq!(
        app.count("payment_ledger").await,
        2,
        "one AUTHORIZATION per approval"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizing_twice_with_one_key_charges_once() {
    let app = TestApp::spawn("authonce").await;
    let request = authorize_request("tok_approve", 1234, "auth-once");
    let first = app
        .client
        .clone()
        .authorize(request.clone())
        .await
        .expect("first")
        .into_inner();
    let again = app
        .client
        .clone()
        .authorize(request.clone())
        .await
        .expect("again")
        .into_inner();
    assert_eq!(first, again);
    let mut different = request;
    different.amount = crate::helpers::usd(1);
    let refused = app
        .client
        .clone()
        .authorize(different)
        .await
        .expect_err("key reused");
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert_eq!(app.count("payments").await, 1);

    let ledger = app
        .client
        .clone()
        .get_payment_ledger(pb::GetPaymentLedgerRequest {
            page: None,
            order_id: String::new(),
            payment_id: first.payment.map(|p| p.payment_id).unwrap_or_default(),
        })
        .await
        .expect("ledger")
        .into_inner()
        .entries;
    assert_eq!(ledger.len(), 1);
    app.stop().await;
}
