//! Status changes: legal transitions, history, optimistic concurrency, listing.

use tonic::Code;
use zentra_proto::order::v1::{self as pb, OrderChangeCause, OrderStatus};

use crate::helpers::{TestApp, order_request};

fn confirm(order_id: &str, version: i64, key: &str) -> pb::ConfirmOrderRequest {
    pb::ConfirmOrderRequest {
        order_id: order_id.to_owned(),
        expected_version: version,
        idempotency_key: key.to_owned(),
    }
}

fn reject(order_id: &str, version: i64, key: &str) -> pb::RejectOrderRequest {
    pb::RejectOrderRequest {
        order_id: order_id.to_owned(),
        reason: "payment declined".to_owned(),
        expected_version: version,
        idempotency_key: key.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_change_is_recorded_and_illegal_ones_are_refused() {
    let app = TestApp::spawn("lifecycle").await;
    let order = app.place(order_request("life-1")).await.expect("placed");
    let mut client = app.client.clone();
    let cancelling = client
        .cancel_order(pb::CancelOrderRequest {
            order_id: order.order_id.clone(),
            reason: "changed my mind".to_owned(),
            expected_version: 1,
            idempotency_key: "cancel-1".to_owned(),
        })
        .await
        .expect("cancellation requested")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(cancelling.status, OrderStatus::CancellationRequested as i32);
    assert_eq!(cancelling.version, 2);

    let cancelled = client
        .complete_cancellation(pb::CompleteCancellationRequest {
            order_id: order.order_id.clone(),
            expected_version: 2,
            idempotency_key: "complete-1".to_owned(),
        })
        .await
        .expect("cancelled")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(cancelled.status, OrderStatus::Cancelled as i32);
    assert_eq!(cancelled.cancellation_reason, "changed my mind");

    let too_late = client
        .confirm_order(confirm(&order.order_id, 0, "confirm-1"))
        .await
        .expect_err("illegal");
    assert_eq!(too_late.code(), Code::FailedPrecondition);

    let history = client
        .get_order_history(pb::GetOrderHistoryRequest {
            order_id: order.order_id.clone(),
        })
        .await
        .expect("history")
        .into_inner()
        .changes;
    let causes: Vec<i32> = history.iter().map(|c| c.cause).collect();
    assert_eq!(
        causes,
        [
            OrderChangeCause::Placed as i32,
            OrderChangeCause::CustomerCancellation as i32,
            OrderChangeCause::SagaCancellationCompleted as i32
        ]
    );
    assert_eq!(history[1].reason, "changed my mind");
    assert!(history.iter().all(|c| c.change_time.is_some()));

    let missing = client
        .get_order_history(pb::GetOrderHistoryRequest {
            order_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("absent");
    assert_eq!(missing.code(), Code::NotFound);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_of_one_version_cannot_both_win() {
    let app = TestApp::spawn("occ").await;
    for round in 0..5 {
        let order = app
            .place(order_request(&format!("occ-{round}")))
            .await
            .expect("placed");
        let mut a = app.client.clone();
        let mut b = app.client.clone();
        let (confirmed, rejected) = tokio::join!(
            a.confirm_order(confirm(&order.order_id, 1, &format!("c-{round}"))),
            b.reject_order(reject(&order.order_id, 1, &format!("r-{round}"))),
        );
        let winners = [confirmed.is_ok(), rejected.is_ok()]
            .iter()
            .filter(|ok| **ok)
            .count();
        assert_eq!(winners, 1, "round {round}");
        let loser = confirmed.err().or(rejected.err()).expect("one lost");
        assert!(
            matches!(loser.code(), Code::Aborted | Code::FailedPrecondition),
            "{loser:?}"
        );
        let history_len = app
            .count(&format!(
                "SELECT count(*) FROM order_history WHERE order_id = '{}'",
                order.order_id
            ))
            .await;
        assert_eq!(history_len, 2, "placed + one change");
    }
    let stale = app
        .client
        .clone()
        .confirm_order(confirm(
            &app.place(order_request("stale"))
                .await
                .expect("placed")
                .order_id,
            7,
            "stale-c",
        ))
        .await
        .expect_err("stale version");
    assert_eq!(stale.code(), Code::Aborted);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_list_newest_first_filtered_by_status_and_customer_in_pages() {
    let app = TestApp::spawn("listorders").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut request = order_request(&format!("list-{i}"));
        if i == 4 {
            request.customer_id = "someone-else".to_owned();
        }
        ids.push(app.place(request).await.expect("placed").order_id);
    }
    app.client
        .clone()
        .confirm_order(confirm(&ids[1], 0, "list-confirm"))
        .await
        .expect("confirmed");

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .clone()
            .list_orders(pb::ListOrdersRequest {
                page: Some(zentra_proto::common::v1::PageRequest {
                    page_size: 2,
                    page_token: token,
                }),
                status: OrderStatus::Pending as i32,
                customer_id: "customer-42".to_owned(),
                create_time_range: None,
            })
            .await
            .expect("listed")
            .into_inner();
        seen.extend(page.orders.into_iter().map(|o| o.order_id));
        token = page.page.map(|p| p.next_page_token).unwrap_or_default();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, [ids[3].clone(), ids[2].clone(), ids[0].clone()]);
    // The created-time range filters too: nothing was created in the future.
    let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let none = app
        .client
        .clone()
        .list_orders(pb::ListOrdersRequest {
            customer_id: "customer-42".to_owned(),
            create_time_range: Some(zentra_proto::common::v1::TimeRange {
                start_time: Some(future.into()),
                end_time: None,
            }),
            ..Default::default()
        })
        .await
        .expect("listed")
        .into_inner()
        .orders;
    assert!(none.is_empty());
    let bad = app
        .client
        .clone()
        .list_orders(pb::ListOrdersRequest {
            status: 99,
            ..Default::default()
        })
        .await
        .expect_err("unknown status");
    assert_eq!(bad.code(), Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_status_change_and_read_requests_are_refused_with_details() {
    let app = TestApp::spawn("orderhostile").await;
    let order = app
        .place(order_request("hostile-base"))
        .await
        .expect("placed");
    let mut client = app.client.clone();
    let huge = "r".repeat(100_000);
    let statuses = vec![
        client
            .cancel_order(pb::CancelOrderRequest {
                order_id: "x".to_owned(),
                reason: "r".to_owned(),
                expected_version: 0,
                idempotency_key: "k1".to_owned(),
            })
            .await
            .expect_err("malformed id"),
        client
            .cancel_order(pb::CancelOrderRequest {
                order_id: order.order_id.clone(),
                reason: huge.clone(),
                expected_version: 0,
                idempotency_key: "k2".to_owned(),
            })
            .await
            .expect_err("oversized reason"),
        client
            .reject_order(pb::RejectOrderRequest {
                order_id: order.order_id.clone(),
                reason: String::new(),
                expected_version: -1,
                idempotency_key: String::new(),
            })
            .await
            .expect_err("missing fields"),
        client
            .confirm_order(confirm(&order.order_id, -5, "k3"))
            .await
            .expect_err("negative version"),
        client
            .complete_cancellation(pb::CompleteCancellationRequest {
                order_id: huge.clone(),
                expected_version: 0,
                idempotency_key: "k4".to_owned(),
            })
            .await
            .expect_err("oversized id"),
        client
            .get_order_history(pb::GetOrderHistoryRequest {
                order_id: String::new(),
            })
            .await
            .expect_err("missing id"),
        client
            .list_orders(pb::ListOrdersRequest {
                page: Some(zentra_proto::common::v1::PageRequest {
                    page_size: -1,
                    page_token: "forged".to_owned(),
                }),
                customer_id: huge,
                ..Default::default()
            })
            .await
            .expect_err("bad list"),
    ];
    for status in statuses {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            !zentra_test_support::violated_fields(&status).is_empty(),
            "details: {status:?}"
        );
    }
    let unchanged = client
        .get_order(pb::GetOrderRequest {
            order_id: order.order_id.clone(),
        })
        .await
        .expect("read");
    assert_eq!(
        unchanged.into_inner().order.map(|o| (o.status, o.version)),
        Some((OrderStatus::Pending as i32, 1))
    );
    assert_eq!(app.count("SELECT count(*) FROM order_history").await, 1);
    app.stop().await;
}
