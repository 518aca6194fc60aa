//! Stock and reservation behaviour.

use std::time::Duration;

use tonic::Code;
use zentra_proto::inventory::v1::{self as pb, ReservationStatus};

use crate::helpers::{Options, TestApp, reserve_request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_reservations_of_ten_units_sell_exactly_ten() {
    let app = TestApp::spawn("oversell").await;
    app.create_product("SKU-RACE", 10).await;

    let attempts = (0..100).map(|i| {
        let app = &app;
        async move { app.reserve("SKU-RACE", 1, &format!("race-{i}")).await }
    });
    let results = futures::future::join_all(attempts).await;

    let succeeded = results.iter().filter(|result| result.is_ok()).count();
    let refused: Vec<Code> = results
        .iter()
        .filter_map(|result| result.as_ref().err().map(|status| status.code()))
        .collect();
    assert_eq!(succeeded, 10);
    assert_eq!(refused.len(), 90);
    assert!(
        refused.iter().all(|code| *code == Code::FailedPrecondition),
        "{refused:?}"
    );

    let product = app.product("SKU-RACE").await;
    assert_eq!(product.available, 0);
    assert_eq!(product.reserved, 10);
    assert_eq!(app.count("reservations").await, 10);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeating_a_reservation_with_its_key_returns_it_and_reserves_once() {
    let app = TestApp::spawn("idempotent").await;
    app.create_product("SKU-IDEM", 5).await;
    let request = reserve_request("SKU-IDEM", 2, "order-1-reserve");

    let first = app
        .client
        .clone()
        .reserve_stock(request.clone())
        .await
        .expect("first");
    let again = app
        .client
        .clone()
        .reserve_stock(request.clone())
        .await
        .expect("again");
    assert_eq!(first.get_ref().reservation, again.get_ref().reservation);

    // The same key fired concurrently still reserves once.
    let storm = (0..10).map(|_| {
        let mut client = app.client.clone();
        let request = request.clone();
        async move { client.reserve_stock(request).await }
    });
    for response in futures::future::join_all(storm).await {
        assert_eq!(
            response.expect("replayed").get_ref().reservation,
            first.get_ref().reservation
        );
    }
    assert_eq!(app.product("SKU-IDEM").await.available, 3);
    assert_eq!(app.count("reservations").await, 1);

    // The same key with a different payload is refused and changes nothing.
    let mut different = request.clone();
    different.lines[0].quantity = 1;
    let refused = app
        .client
        .clone()
        .reserve_stock(different)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::AlreadyExists);
    assert_eq!(app.product("SKU-IDEM").await.available, 3);
    assert_eq!(app.count("reservations").await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_reservation_gives_its_stock_back() {
    let app = TestApp::spawn_with(
        "expiry",
        Options {
            sweep: Duration::from_millis(50),
            ..Options::default()
        },
    )
    .await;
    app.create_product("SKU-EXP", 4).await;
    let mut request = reserve_request("SKU-EXP", 3, "expire-me");
    request.hold_duration = Some(prost_types::Duration {
        seconds: 0,
        nanos: 300_000_000,
    });
    let reservation = app
        .client
        .clone()
        .reserve_stock(request)
        .await
        .expect("reserved")
        .into_inner()
        .reservation
        .expect("reservation");
    assert_eq!(app.product("SKU-EXP").await.available, 1);

    let expired = zentra_test_support::eventually(Duration::from_secs(10), || {
        let mut client = app.client.clone();
        let id = reservation.reservation_id.clone();
        async move {
            let current = client
                .get_reservation(pb::GetReservationRequest { reservation_id: id })
                .await
                .ok()?
                .into_inner()
                .reservation?;
            (current.status == ReservationStatus::Expired as i32).then_some(current)
        }
    })
    .await
    .expect("reservation expires");
    assert_eq!(expired.release_reason, "hold expired");
    let product = app.product("SKU-EXP").await;
    assert_eq!(
        (product.available, product.reserved, product.sold),
        (4, 0, 0)
    );

    // An expired reservation cannot be confirmed any more.
    let confirm = app
        .confirm(&reservation.reservation_id, "confirm-late")
        .await
        .expect_err("too late");
    assert_eq!(confirm.code(), Code::FailedPrecondition);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_stock_is_sold_and_can_no_longer_be_released() {
    let app = TestApp::spawn("confirm").await;
    app.create_product("SKU-CONF", 5).await;
    let reservation = app
        .reserve("SKU-CONF", 2, "reserve-c")
        .await
        .expect("reserved");
    let confirmed = app
        .confirm(&reservation.reservation_id, "confirm-c")
        .await
        .expect("confirmed");
    assert_eq!(confirmed.status, ReservationStatus::Confirmed as i32);
    let product = app.product("SKU-CONF").await;
    assert_eq!(
        (product.available, product.reserved, product.sold),
        (3, 0, 2)
    );

    let release = app
        .client
        .clone()
        .release_reservation(pb::ReleaseReservationRequest {
            reservation_id: reservation.reservation_id,
            reason: "customer changed mind".to_owned(),
            idempotency_key: "release-c".to_owned(),
        })
        .await
        .expect_err("refused");
    assert_eq!(release.code(), Code::FailedPrecondition);
    assert_eq!(app.product("SKU-CONF").await.sold, 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_returns_stock_and_lists_filter_by_order_and_status() {
    let app = TestApp::spawn("release").await;
    app.create_product("SKU-REL", 5).await;
    let kept = app.reserve("SKU-REL", 1, "keep").await.expect("reserved");
    let released = app.reserve("SKU-REL", 2, "drop").await.expect("reserved");
    app.client
        .clone()
        .release_reservation(pb::ReleaseReservationRequest {
            reservation_id: released.reservation_id.clone(),
            reason: "payment declined".to_owned(),
            idempotency_key: "release-drop".to_owned(),
        })
        .await
        .expect("released");
    assert_eq!(app.product("SKU-REL").await.available, 4);

    let list = |status: ReservationStatus, order_id: String| {
        let mut client = app.client.clone();
        async move {
            client
                .list_reservations(pb::ListReservationsRequest {
                    page: None,
                    order_id,
                    status: status as i32,
                })
                .await
                .expect("listed")
                .into_inner()
                .reservations
                .into_iter()
                .map(|r| r.reservation_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(ReservationStatus::Released, String::new()).await,
        vec![released.reservation_id.clone()]
    );
    assert_eq!(
        list(ReservationStatus::Unspecified, kept.order_id.clone()).await,
        vec![kept.reservation_id.clone()]
    );
    // Newest first.
    assert_eq!(
        list(ReservationStatus::Unspecified, String::new()).await,
        [released.reservation_id, kept.reservation_id]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_page_through_in_sku_order() {
    let app = TestApp::spawn("paging").await;
    for sku in ["P-C", "P-A", "P-B", "Q-A"] {
        app.create_product(sku, 1).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .clone()
            .list_products(pb::ListProductsRequest {
                page: Some(zentra_proto::common::v1::PageRequest {
                    page_size: 2,
                    page_token: token,
                }),
                sku_prefix: "P-".to_owned(),
                low_stock_only: false,
            })
            .await
            .expect("listed")
            .into_inner();
        seen.extend(page.products.into_iter().map(|p| p.sku));
        token = page.page.map(|p| p.next_page_token).unwrap_or_default();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["P-A", "P-B", "P-C"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_past_its_expiry_cannot_be_confirmed_even_before_the_sweep() {
    let app = TestApp::spawn_with(
        "latehold",
        Options {
            sweep: Duration::from_secs(3600),
            ..Options::default()
        },
    )
    .await;
    app.create_product("SKU-LATE", 2).await;
    let mut request = reserve_request("SKU-LATE", 1, "late-hold");
    request.hold_duration = Some(prost_types::Duration {
        seconds: 0,
        nanos: 200_000_000,
    });
    let reservation = app
        .client
        .clone()
        .reserve_stock(request)
        .await
        .expect("reserved")
        .into_inner()
        .reservation
        .expect("reservation");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = app
        .confirm(&reservation.reservation_id, "confirm-late-hold")
        .await
        .expect_err("hold ran out");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(app.product("SKU-LATE").await.sold, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_reservation_outlives_its_hold_and_can_always_be_confirmed() {
    let app = TestApp::spawn_with(
        "pinned",
        Options {
            sweep: Duration::from_millis(50),
            ..Options::default()
        },
    )
    .await;
    app.create_product("SKU-PIN", 2).await;
    let short_hold = Some(prost_types::Duration {
        seconds: 0,
        nanos: 400_000_000,
    });
    let reserve = |sku: &str, key: &str| {
        let mut request = reserve_request(sku, 1, key);
        request.hold_duration = short_hold;
        let mut client = app.client.clone();
        async move {
            client
                .reserve_stock(request)
                .await
                .expect("reserved")
                .into_inner()
                .reservation
                .expect("reservation")
        }
    };
    let pin = |reservation_id: String, key: &str| {
        let mut client = app.client.clone();
        let request = pb::PinReservationRequest {
            reservation_id,
            idempotency_key: key.to_owned(),
        };
        async move { client.pin_reservation(request).await }
    };
    let pinned = reserve("SKU-PIN", "pin-me").await;
    let unpinned = reserve("SKU-PIN", "leave-me").await;

    let answer = pin(pinned.reservation_id.clone(), "pin-1")
        .await
        .expect("pinned")
        .into_inner()
        .reservation
        .expect("reservation");
    assert!(answer.pin_time.is_some());
    assert!(answer.expire_time.is_none(), "a pinned hold has no expiry");
    // Pinning again, under another key, changes nothing.
    let again = pin(pinned.reservation_id.clone(), "pin-2")
        .await
        .expect("pinned again")
        .into_inner()
        .reservation
        .expect("reservation");
    assert_eq!(again.pin_time, answer.pin_time);

    // The unpinned hold runs out and its unit goes back on sale; the pinned one stays held.
    zentra_test_support::eventually(Duration::from_secs(10), || {
        let mut client = app.client.clone();
        let id = unpinned.reservation_id.clone();
        async move {
            let current = client
                .get_reservation(pb::GetReservationRequest { reservation_id: id })
                .await
                .ok()?
                .into_inner()
                .reservation?;
            (current.status == ReservationStatus::Expired as i32).then_some(())
        }
    })
    .await
    .expect("the unpinned reservation expires");
    let late = pin(unpinned.reservation_id.clone(), "pin-late")
        .await
        .expect_err("an expired hold cannot be pinned");
    assert_eq!(late.code(), Code::FailedPrecondition);
    let product = app.product("SKU-PIN").await;
    assert_eq!((product.available, product.reserved), (1, 1));

    // Well past its hold, the pinned reservation is still pending and confirms.
    let confirmed = app
        .confirm(&pinned.reservation_id, "confirm-pinned")
        .await
        .expect("a pinned reservation always confirms");
    assert_eq!(confirmed.status, ReservationStatus::Confirmed as i32);
    let product = app.product("SKU-PIN").await;
    assert_eq!(
        (product.available, product.reserved, product.sold),
        (1, 0, 1)
    );
    // Pinning a confirmed reservation is a no-op; a malformed id is refused before any lookup.
    pin(pinned.reservation_id.clone(), "pin-3")
        .await
        .expect("no-op");
    let bad = pin("not-a-uuid".to_owned(), "pin-4")
        .await
        .expect_err("malformed");
    assert_eq!(bad.code(), Code::InvalidArgument);
    app.stop().await;
}
