//! Shipments progress asynchronously, survive restarts, fail on purpose, and can be cancelled
//! until dispatched.

use tonic::Code;
use zentra_proto::fulfillment::v1::{self as pb, ShipmentStatus};
use zentra_runtime::events::payload;
use zentra_test_support::EventCollector;

use crate::helpers::{TestApp, shipment_request};

async fn create(app: &TestApp, request: pb::CreateShipmentRequest) -> pb::Shipment {
    app.client
        .clone()
        .create_shipment(request)
        .await
        .expect("created")
        .into_inner()
        .shipment
        .expect("shipment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_interrupted_by_a_restart_still_dispatches_exactly_once() {
    let app = TestApp::spawn("shiprestart").await;
    let shipment = create(&app, shipment_request("ship-1", "US", "MUG-1")).await;
    assert_eq!(shipment.status, ShipmentStatus::Pending as i32);
    app.wait_for(&shipment.shipment_id, ShipmentStatus::Picking)
        .await;

    let app = app.crash_and_restart().await;
    let dispatched = app
        .wait_for(&shipment.shipment_id, ShipmentStatus::Dispatched)
        .await;
    assert!(dispatched.tracking_number.starts_with("ZT"));
    assert!(dispatched.picking_start_time.is_some() && dispatched.pack_time.is_some());

    let stored = app
        .count("SELECT count(*) FROM outbox WHERE event_type = 'zentra.fulfillment.v1.ShipmentDispatched'")
        .await;
    assert_eq!(stored, 1);
    let events = EventCollector::start(
        &app.env.common_config().kafka,
        std::slice::from_ref(&app.events_topic),
    )
    .await
    .collect(1)
    .await;
    assert!(
        events
            .iter()
            .all(|e| zentra_proto::PLATFORM_EVENTS.contains(&e.envelope.event_type.as_str())),
        "only events the platform reads are published by default"
    );
    let dispatches: Vec<pb::ShipmentDispatched> =
        events.iter().filter_map(|e| payload(&e.envelope)).collect();
    assert_eq!(dispatches.len(), 1, "dispatched exactly once on the broker");
    assert_eq!(dispatches[0].tracking_number, dispatched.tracking_number);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_that_take_no_time_are_taken_in_one_transaction() {
    let app = TestApp::spawn_with_step_delay("shipinstant", std::time::Duration::ZERO).await;
    let shipment = create(&app, shipment_request("ship-now", "US", "MUG-1")).await;
    let dispatched = app
        .wait_for(&shipment.shipment_id, ShipmentStatus::Dispatched)
        .await;
    // now() is the transaction's start: equal times mean one transaction took every step.
    assert!(dispatched.picking_start_time.is_some());
    assert_eq!(dispatched.picking_start_time, dispatched.pack_time);
    assert_eq!(dispatched.pack_time, dispatched.dispatch_time);
    let stored = app
        .count("SELECT count(*) FROM outbox WHERE event_type = 'zentra.fulfillment.v1.ShipmentDispatched'")
        .await;
    assert_eq!(stored, 1, "dispatched once");

    let unshippable = create(&app, shipment_request("ship-nowhere", "AQ", "MUG-1")).await;
    let failed = app
        .wait_for(&unshippable.shipment_id, ShipmentStatus::Failed)
        .await;
    assert_eq!(failed.picking_start_time, failed.fail_time);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unshippable_destination_fails_the_shipment_with_an_event() {
    let app = TestApp::spawn("shipfail").await;
    let shipment = create(&app, shipment_request("ship-aq", "AQ", "MUG-1")).await;
    let failed = app
        .wait_for(&shipment.shipment_id, ShipmentStatus::Failed)
        .await;
    assert_eq!(failed.failure_reason, "no carrier serves AQ");
    let sku = create(&app, shipment_request("ship-noship", "US", "NOSHIP-7")).await;
    let failed = app.wait_for(&sku.shipment_id, ShipmentStatus::Failed).await;
    assert_eq!(failed.failure_reason, "NOSHIP-7 cannot be shipped");

    let events = EventCollector::start(
        &app.env.common_config().kafka,
        std::slice::from_ref(&app.events_topic),
    )
    .await
    .collect(2)
    .await;
    let failures: Vec<pb::ShipmentFailed> =
        events.iter().filter_map(|e| payload(&e.envelope)).collect();
    assert_eq!(failures.len(), 2);
    assert_eq!(
        events.len(),
        2,
        "ShipmentCreated is published only when asked for"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_can_be_cancelled_until_it_is_dispatched() {
    let app = TestApp::spawn("shipcancel").await;
    let early = create(&app, shipment_request("ship-early", "US", "MUG-1")).await;
    let cancel = |id: &str, key: &str| pb::CancelShipmentRequest {
        shipment_id: id.to_owned(),
        reason: "order rejected".to_owned(),
        idempotency_key: key.to_owned(),
    };
    let cancelled = app
        .client
        .clone()
        .cancel_shipment(cancel(&early.shipment_id, "cancel-early"))
        .await
        .expect("cancelled")
        .into_inner()
        .shipment
        .expect("shipment");
    assert_eq!(cancelled.status, ShipmentStatus::Cancelled as i32);
    // The worker never moves a cancelled shipment.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(
        app.shipment(&early.shipment_id).await.status,
        ShipmentStatus::Cancelled as i32
    );

    let late = create(&app, shipment_request("ship-late", "US", "MUG-1")).await;
    app.wait_for(&late.shipment_id, ShipmentStatus::Dispatched)
        .await;
    let refused = app
        .client
        .clone()
        .cancel_shipment(cancel(&late.shipment_id, "cancel-late"))
        .await
        .expect_err("already dispatched");
    assert_eq!(refused.code(), Code::FailedPrecondition);

    let mut second = shipment_request("ship-again", "US", "MUG-1");
    second.order_id = late.order_id.clone();
    let duplicate = app
        .client
        .clone()
        .create_shipment(second)
        .await
        .expect_err("one shipment per order");
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_shipments_are_refused_and_store_nothing() {
    let app = TestApp::spawn("shiphostile").await;
    let cases: Vec<(&str, pb::CreateShipmentRequest)> = vec![
        ("empty", pb::CreateShipmentRequest::default()),
        (
            "bad order id",
            pb::CreateShipmentRequest {
                order_id: "42".to_owned(),
                ..shipment_request("h1", "US", "MUG-1")
            },
        ),
        (
            "no address",
            pb::CreateShipmentRequest {
                shipping_address: None,
                ..shipment_request("h2", "US", "MUG-1")
            },
        ),
        ("bad country", shipment_request("h3", "usa", "MUG-1")),
        ("bad sku", shipment_request("h4", "US", "mug\u{0}1")),
        (
            "10,000 lines",
            pb::CreateShipmentRequest {
                lines: (0..10_000)
                    .map(|i| pb::ShipmentLine {
                        sku: format!("S-{i}"),
                        quantity: 1,
                    })
                    .collect(),
                ..shipment_request("h5", "US", "MUG-1")
            },
        ),
        (
            "negative quantity",
            pb::CreateShipmentRequest {
                lines: vec![pb::ShipmentLine {
                    sku: "MUG-1".to_owned(),
                    quantity: -1,
                }],
                ..shipment_request("h6", "US", "MUG-1")
            },
        ),
    ];
    for (case, request) in cases {
        let status = app
            .client
            .clone()
            .create_shipment(request)
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}");
    }
    for table in ["shipments", "shipment_lines", "outbox", "idempotency_keys"] {
        assert_eq!(
            app.count(&format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cancel_and_read_requests_are_refused_with_details() {
    let app = TestApp::spawn("shiphostile2").await;
    let shipment = create(&app, shipment_request("base", "US", "MUG-1")).await;
    let mut client = app.client.clone();
    let statuses = vec![
        client
            .cancel_shipment(pb::CancelShipmentRequest {
                shipment_id: "nope".to_owned(),
                reason: "r".to_owned(),
                idempotency_key: "c1".to_owned(),
            })
            .await
            .expect_err("malformed id"),
        client
            .cancel_shipment(pb::CancelShipmentRequest {
                shipment_id: shipment.shipment_id.clone(),
                reason: "r".repeat(100_000),
                idempotency_key: "c2".to_owned(),
            })
            .await
            .expect_err("oversized reason"),
        client
            .cancel_shipment(pb::CancelShipmentRequest {
                shipment_id: shipment.shipment_id.clone(),
                reason: "r".to_owned(),
                idempotency_key: String::new(),
            })
            .await
            .expect_err("missing key"),
        client
            .get_shipment(pb::GetShipmentRequest {
                shipment_id: String::new(),
            })
            .await
            .expect_err("missing id"),
        client
            .list_shipments(pb::ListShipmentsRequest {
                status: 77,
                ..Default::default()
            })
            .await
            .expect_err("unknown status"),
    ];
    for status in statuses {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            !zentra_test_support::violated_fields(&status).is_empty(),
            "details: {status:?}"
        );
    }
    assert_ne!(
        app.shipment(&shipment.shipment_id).await.status,
        ShipmentStatus::Cancelled as i32
    );
    app.stop().await;
}
