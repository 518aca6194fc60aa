//! Placing orders: pricing, idempotency, events, and hostile input.

use tonic::Code;
use tonic_types::StatusExt as _;
use zentra_proto::order::v1::{self as pb, OrderStatus};
use zentra_runtime::events::payload;
use zentra_test_support::{EventCollector, violated_fields};

use crate::helpers::{TestApp, order_request, usd};

/// The request without any unit price: the customer leaves pricing to the catalogue.
fn unpriced(mut request: pb::PlaceOrderRequest) -> pb::PlaceOrderRequest {
    for line in &mut request.lines {
        line.unit_price = None;
    }
    request
}

const STORED: [&str; 5] = [
    "orders",
    "order_lines",
    "order_history",
    "outbox",
    "idempotency_keys",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_priced_from_the_catalogue_and_a_new_price_is_charged_from_the_next_order_on() {
    let app = TestApp::spawn("placeprice").await;
    let first = app
        .place(unpriced(order_request("priced-1")))
        .await
        .expect("placed");
    assert_eq!(
        first.lines[0].unit_price,
        usd(1299),
        "the catalogue's price"
    );
    assert_eq!(first.total, usd(2 * 1299 + 550));

    app.set_price("MUG-1", 1500).await;
    let second = app
        .place(unpriced(order_request("priced-2")))
        .await
        .expect("placed at the new price");
    assert_eq!(second.lines[0].unit_price, usd(1500));
    assert_eq!(second.total, usd(2 * 1500 + 550));

    // A retry of the first placement replays it as placed, at the old price.
    let replayed = app
        .place(unpriced(order_request("priced-1")))
        .await
        .expect("replayed");
    assert_eq!(replayed, first);
    // A client that names the new price gets it.
    let named = app
        .place(pb::PlaceOrderRequest {
            lines: vec![pb::OrderLine {
                sku: "MUG-1".to_owned(),
                quantity: 1,
                unit_price: usd(1500),
                line_total: None,
            }],
            ..order_request("priced-3")
        })
        .await
        .expect("placed at the named price");
    assert_eq!(named.total, usd(1500));
    assert_eq!(app.count("SELECT count(*) FROM orders").await, 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_the_catalogue_does_not_confirm_is_refused_with_the_current_price_and_stores_nothing()
 {
    let app = TestApp::spawn("placestale").await;
    // The client thinks a mug costs 0.01 USD, asks for a EUR kettle in a USD order, and for a
    // product that does not exist.
    let mut request = order_request("stale-1");
    request.lines[0].unit_price = usd(1);
    request.lines.push(pb::OrderLine {
        sku: "KETTLE-EU".to_owned(),
        quantity: 1,
        unit_price: None,
        line_total: None,
    });
    request.lines.push(pb::OrderLine {
        sku: "NO-SUCH-THING".to_owned(),
        quantity: 1,
        unit_price: None,
        line_total: None,
    });
    let refused = app.place(request).await.expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let details = refused.get_error_details();
    let violations: Vec<(String, String)> = details
        .precondition_failure()
        .expect("precondition failure details")
        .violations
        .iter()
        .map(|violation| (violation.r#type.clone(), violation.subject.clone()))
        .collect();
    let expected = [
        ("PRICE_CHANGED", "lines[0].unit_price"),
        ("CURRENCY_MISMATCH", "lines[2].sku"),
        ("UNKNOWN_PRODUCT", "lines[3].sku"),
    ]
    .map(|(kind, subject)| (kind.to_owned(), subject.to_owned()));
    assert_eq!(violations, expected);
    let info = details.error_info().expect("error info");
    assert_eq!(info.reason, "PRICE_CHANGED");
    assert_eq!(
        info.metadata.get("MUG-1").map(String::as_str),
        Some("1299 USD"),
        "the current price, machine-readable"
    );
    for table in STORED {
        assert_eq!(
            app.count(&format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }

    // The refusal did not use up the key: the corrected request goes through under it.
    let placed = app
        .place(unpriced(order_request("stale-1")))
        .await
        .expect("corrected order placed");
    assert_eq!(placed.total, usd(2 * 1299 + 550));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_catalogue_the_service_refuses_orders_as_unavailable_and_stores_nothing() {
    let mut app = TestApp::spawn("placenocat").await;
    app.stop_catalogue().await;
    let refused = app
        .place(order_request("nocat-1"))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("same idempotency key"));
    for table in STORED {
        assert_eq!(
            app.count(&format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
    app.stop().await;
}

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
        (
            "a customer id for an e-mail address",
            pb::PlaceOrderRequest {
                customer_email: "customer-42".to_owned(),
                ..order_request("h8")
            },
            "customer_email",
        ),
        (
            "a mail header smuggled into the address",
            pb::PlaceOrderRequest {
                customer_email: "ada@example.com\r\nBcc: all@example.com".to_owned(),
                ..order_request("h9")
            },
            "customer_email",
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
        (
            "price in another currency than the order",
            line(
                "MUG-1",
                1,
                Some(zentra_proto::common::v1::Money {
                    currency_code: "EUR".to_owned(),
                    amount_minor: 1299,
                }),
            ),
            "lines[0].unit_price.currency_code",
        ),
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

    for table in STORED {
        assert_eq!(
            app.count(&format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
    app.stop().await;
}
