//! Placing orders: pricing, idempotency, events, and hostile input.

use tonic::Code;
use zentra_proto::order::v1::{self as pb, OrderStatus};
use zentra_runtime::events::payload;
use zentra_test_support::{EventCollector, violated_fields};

use crate::helpers::{TestApp, order_request, usd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placing_the_same_order_twice_with_one_key_creates_one_order_and_one_event() {
    let app = TestApp::spawn("placeonce").await;
    let first = app
        .place(order_request("checkout-1"))
        .await
        .expect("placed");
    assert_eq!(first.status, OrderStatus::Pending as i32);
    assert_eq!(first.total, usd(2 * 1299 + 550), "priced in minor units");
    assert_eq!(first.lines[0].line_total, usd(2598));
    let again = app
        .place(order_request("checkout-1"))
        .await
        .expect("replayed");
    assert_eq!(again, first);

    let mut different = order_request("checkout-1");
    different.lines[0].quantity = 3;
    let refused = app.place(different).await.expect_err("refused");
    assert_eq!(refused.code(), Code::AlreadyExists);

    assert_eq!(app.count("SELECT count(*) FROM orders").await, 1);
    let events = EventCollector::start(
        &app.env.common_config().kafka,
        std::slice::from_ref(&app.events_topic),
    )
    .await
    .collect(1)
    .await;
    assert_eq!(events.len(), 1, "one OrderPlaced on the broker");
    let placed: pb::OrderPlaced = payload(&events[0].envelope).expect("OrderPlaced");
    assert_eq!(placed.order_id, first.order_id);
    assert_eq!(placed.total, first.total);
    assert_eq!(placed.payment_method_token, "tok_approve");
    assert_eq!(events[0].key, first.order_id, "keyed by order");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_orders_are_refused_with_details_and_store_nothing() {
    let app = TestApp::spawn("placehostile").await;
    let many_lines: Vec<pb::OrderLine> = (0..10_000)
        .map(|i| pb::OrderLine {
            sku: format!("SKU-{i}"),
            quantity: 1,
            unit_price: usd(1),
            line_total: None,
        })
        .collect();
    let cases: Vec<(&str, pb::PlaceOrderRequest, &str)> = vec![
        ("empty", pb::PlaceOrderRequest::default(), "idempotency_key"),
        (
            "no customer",
            pb::PlaceOrderRequest {
                customer_id: String::new(),
                ..order_request("h1")
            },
            "customer_id",
        ),
        (
            "oversized customer",
            pb::PlaceOrderRequest {
                customer_id: "c".repeat(10_000),
                ..order_request("h2")
            },
            "customer_id",
        ),
        (
            "no address",
            pb::PlaceOrderRequest {
                shipping_address: None,
                ..order_request("h3")
            },
            "shipping_address",
        ),
        (
            "unknown currency",
            pb::PlaceOrderRequest {
                currency_code: "XYZ".to_owned(),
                ..order_request("h4")
            },
            "currency_code",
        ),
        (
            "no token",
            pb::PlaceOrderRequest {
                payment_method_token: String::new(),
                ..order_request("h5")
            },
            "payment_method_token",
        ),
        (
            "10,000 lines",
            pb::PlaceOrderRequest {
                lines: many_lines,
                ..order_request("h6")
            },
            "lines",
        ),
        (
            "no lines",
            pb::PlaceOrderRequest {
                lines: vec![],
                ..order_request("h7")
            },
            "lines",
        ),
    ];
    let line = |sku: &str, quantity: i64, unit_price| pb::OrderLine {
        sku: sku.to_owned(),
        quantity,
        unit_price,
        line_total: None,
    };
    let line_cases: Vec<(&str, pb::OrderLine, &str)> = vec![
        (
            "negative price",
            line("MUG-1", 1, usd(-1)),
            "lines[0].unit_price.amount_minor",
        ),
        (
            "overflowing price",
            line("MUG-1", 1, usd(i64::MAX)),
            "lines[0].unit_price.amount_minor",
        ),
        (
            "zero quantity",
            line("MUG-1", 0, usd(100)),
            "lines[0].quantity",
        ),
        (
            "negative quantity",
            line("MUG-1", -5, usd(100)),
            "lines[0].quantity",
        ),
        (
            "malformed sku",
            line("mug 1; drop", 1, usd(100)),
            "lines[0].sku",
        ),
        ("no price", line("MUG-1", 1, None), "lines[0].unit_price"),
    ];
    for (case, request, field) in cases {
        let status = app.place(request).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}");
        assert!(
            violated_fields(&status).iter().any(|f| f == field),
            "{case}: {:?}",
            violated_fields(&status)
        );
    }
    for (case, line, field) in line_cases {
        let request = pb::PlaceOrderRequest {
            lines: vec![line],
            ..order_request(case)
        };
        let status = app.place(request).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}");
        assert!(
            violated_fields(&status).iter().any(|f| f == field),
            "{case}: {:?}",
            violated_fields(&status)
        );
    }
    let bad_id = app
        .client
        .clone()
        .get_order(pb::GetOrderRequest {
            order_id: "'; DROP TABLE orders; --".to_owned(),
        })
        .await
        .expect_err("malformed id");
    assert_eq!(bad_id.code(), Code::InvalidArgument);

    for table in [
        "orders",
        "order_lines",
        "order_history",
        "outbox",
        "idempotency_keys",
    ] {
        assert_eq!(
            app.count(&format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
    app.stop().await;
}
