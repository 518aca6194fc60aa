//! Money invariants under concurrency, and hostile input.

use tonic::Code;
use zentra_proto::payment::v1::{self as pb, PaymentStatus};
use zentra_test_support::violated_fields;

use crate::helpers::{TestApp, authorize_request, usd};

fn capture(payment_id: &str, key: &str) -> pb::CaptureRequest {
    pb::CaptureRequest {
        payment_id: payment_id.to_owned(),
        amount: None,
        idempotency_key: key.to_owned(),
    }
}

fn refund(payment_id: &str, amount: i64, key: &str) -> pb::RefundRequest {
    pb::RefundRequest {
        payment_id: payment_id.to_owned(),
        amount: usd(amount),
        reason: "customer returned goods".to_owned(),
        idempotency_key: key.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_captures_capture_once_and_refunds_never_exceed_the_capture() {
    let app = TestApp::spawn("money").await;
    let payment = app
        .authorize("tok_approve", 1000, "m-auth")
        .await
        .expect("authorized");

    let captures = (0..10).map(|i| {
        let mut client = app.client.clone();
        let request = capture(&payment.payment_id, &format!("cap-{i}"));
        async move { client.capture(request).await }
    });
    let results = futures::future::join_all(captures).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "captured once"
    );
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|status| status.code() == Code::FailedPrecondition)
    );

    // 10 concurrent refunds of 300 against 1000 captured: at most 3 fit.
    let refunds = (0..10).map(|i| {
        let mut client = app.client.clone();
        let request = refund(&payment.payment_id, 300, &format!("ref-{i}"));
        async move { client.refund(request).await }
    });
    let results = futures::future::join_all(refunds).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);

    let stored = app
        .client
        .clone()
        .get_payment(pb::GetPaymentRequest {
            payment_id: payment.payment_id.clone(),
        })
        .await
        .expect("read")
        .into_inner()
        .payment
        .expect("payment");
    assert_eq!(stored.captured_amount, usd(1000));
    assert_eq!(stored.refunded_amount, usd(900));
    assert_eq!(stored.status, PaymentStatus::PartiallyRefunded as i32);

    let rest = app
        .client
        .clone()
        .refund(refund(&payment.payment_id, 100, "ref-rest"))
        .await
        .expect("last 100");
    assert_eq!(
        rest.into_inner().payment.map(|p| p.status),
        Some(PaymentStatus::Refunded as i32)
    );
    let over = app
        .client
        .clone()
        .refund(refund(&payment.payment_id, 1, "ref-over"))
        .await
        .expect_err("nothing left");
    assert_eq!(over.code(), Code::FailedPrecondition);

    let void = app
        .client
        .clone()
        .void(pb::VoidRequest {
            payment_id: payment.payment_id.clone(),
            reason: "too late".to_owned(),
            idempotency_key: "void-late".to_owned(),
        })
        .await
        .expect_err("captured payments cannot be voided");
    assert_eq!(void.code(), Code::FailedPrecondition);

    let entries = app
        .client
        .clone()
        .get_payment_ledger(pb::GetPaymentLedgerRequest {
            page: None,
            order_id: payment.order_id.clone(),
            payment_id: String::new(),
        })
        .await
        .expect("ledger")
        .into_inner()
        .entries;
    let types: Vec<i32> = entries.iter().map(|e| e.entry_type).collect();
    assert_eq!(
        types,
        [
            pb::LedgerEntryType::Authorization as i32,
            pb::LedgerEntryType::Capture as i32,
            pb::LedgerEntryType::Refund as i32,
            pb::LedgerEntryType::Refund as i32,
            pb::LedgerEntryType::Refund as i32,
            pb::LedgerEntryType::Refund as i32,
        ]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voided_authorization_cannot_be_captured() {
    let app = TestApp::spawn("void").await;
    let payment = app
        .authorize("tok_approve", 500, "v-auth")
        .await
        .expect("authorized");
    let voided = app
        .client
        .clone()
        .void(pb::VoidRequest {
            payment_id: payment.payment_id.clone(),
            reason: "order rejected".to_owned(),
            idempotency_key: "v-void".to_owned(),
        })
        .await
        .expect("voided")
        .into_inner()
        .payment
        .expect("payment");
    assert_eq!(voided.status, PaymentStatus::Voided as i32);
    let status = app
        .client
        .clone()
        .capture(capture(&payment.payment_id, "v-cap"))
        .await
        .expect_err("voided");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let over = app
        .client
        .clone()
        .capture(pb::CaptureRequest {
            payment_id: app
                .authorize("tok_approve", 500, "v-auth-2")
                .await
                .expect("authorized")
                .payment_id,
            amount: usd(501),
            idempotency_key: "v-over".to_owned(),
        })
        .await
        .expect_err("more than authorized");
    assert_eq!(over.code(), Code::FailedPrecondition);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payment_requests_are_refused_with_details_and_store_nothing() {
    let app = TestApp::spawn("payhostile").await;
    let cases: Vec<(&str, pb::AuthorizeRequest, &str)> = vec![
        ("empty", pb::AuthorizeRequest::default(), "idempotency_key"),
        (
            "malformed order",
            pb::AuthorizeRequest {
                order_id: "x".repeat(5000),
                ..authorize_request("tok_approve", 1, "h1")
            },
            "order_id",
        ),
        (
            "negative amount",
            authorize_request("tok_approve", -100, "h2"),
            "amount.amount_minor",
        ),
        (
            "zero amount",
            authorize_request("tok_approve", 0, "h3"),
            "amount.amount_minor",
        ),
        (
            "overflowing amount",
            authorize_request("tok_approve", i64::MAX, "h4"),
            "amount.amount_minor",
        ),
        (
            "unknown currency",
            pb::AuthorizeRequest {
                amount: Some(zentra_proto::common::v1::Money {
                    currency_code: "DOGE".to_owned(),
                    amount_minor: 5,
                }),
                ..authorize_request("tok_approve", 1, "h5")
            },
            "amount.currency_code",
        ),
        (
            "no amount",
            pb::AuthorizeRequest {
                amount: None,
                ..authorize_request("tok_approve", 1, "h6")
            },
            "amount",
        ),
        (
            "oversized token",
            authorize_request(&"t".repeat(10_000), 1, "h7"),
            "payment_method_token",
        ),
    ];
    for (case, request, field) in cases {
        let status = app.client.clone().authorize(request).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}");
        assert!(
            violated_fields(&status).iter().any(|f| f == field),
            "{case}: {:?}",
            violated_fields(&status)
        );
    }
    let bad_refund = app
        .client
        .clone()
        .refund(pb::RefundRequest {
            payment_id: "nope".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("bad refund");
    assert_eq!(bad_refund.code(), Code::InvalidArgument);
    let missing = app
        .client
        .clone()
        .capture(capture(&uuid::Uuid::now_v7().to_string(), "cap-missing"))
        .await
        .expect_err("absent");
    assert_eq!(missing.code(), Code::NotFound);
    for table in ["payments", "payment_ledger", "outbox", "idempotency_keys"] {
        assert_eq!(app.count(table).await, 0, "{table}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_capture_void_refund_and_reads_are_refused_with_details() {
    let app = TestApp::spawn("payhostile2").await;
    let payment = app
        .authorize("tok_approve", 500, "base")
        .await
        .expect("authorized");
    let mut client = app.client.clone();
    let huge = "x".repeat(100_000);
    let statuses = vec![
        client
            .capture(pb::CaptureRequest {
                payment_id: payment.payment_id.clone(),
                amount: usd(-1),
                idempotency_key: "c1".to_owned(),
            })
            .await
            .expect_err("negative capture"),
        client
            .capture(pb::CaptureRequest {
                payment_id: huge.clone(),
                amount: None,
                idempotency_key: "c2".to_owned(),
            })
            .await
            .expect_err("oversized id"),
        client
            .void(pb::VoidRequest {
                payment_id: payment.payment_id.clone(),
                reason: huge.clone(),
                idempotency_key: "v1".to_owned(),
            })
            .await
            .expect_err("oversized reason"),
        client
            .void(pb::VoidRequest {
                payment_id: payment.payment_id.clone(),
                reason: "ok".to_owned(),
                idempotency_key: String::new(),
            })
            .await
            .expect_err("missing key"),
        client
            .refund(pb::RefundRequest {
                payment_id: payment.payment_id.clone(),
                amount: usd(i64::MAX),
                reason: "r".to_owned(),
                idempotency_key: "r1".to_owned(),
            })
            .await
            .expect_err("overflowing refund"),
        client
            .get_payment(pb::GetPaymentRequest {
                payment_id: "42".to_owned(),
            })
            .await
            .expect_err("malformed id"),
        client
            .list_payments(pb::ListPaymentsRequest {
                status: 42,
                ..Default::default()
            })
            .await
            .expect_err("unknown status"),
        client
            .get_payment_ledger(pb::GetPaymentLedgerRequest::default())
            .await
            .expect_err("no filter"),
    ];
    for status in statuses {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(!violated_fields(&status).is_empty(), "details: {status:?}");
    }
    let unchanged = client
        .get_payment(pb::GetPaymentRequest {
            payment_id: payment.payment_id.clone(),
        })
        .await
        .expect("read")
        .into_inner()
        .payment
        .expect("payment");
    assert_eq!(unchanged.status, PaymentStatus::Authorized as i32);
    assert_eq!(app.count("payment_ledger").await, 1);
    app.stop().await;
}
