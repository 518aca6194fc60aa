//! Hostile and malformed input: precise statuses, and nothing stored changes.

use tonic::Code;
use zentra_proto::inventory::v1 as pb;
use zentra_test_support::violated_fields;

use crate::helpers::{TestApp, reserve_request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reservations_are_refused_precisely_and_change_nothing() {
    let app = TestApp::spawn("badinput").await;
    app.create_product("SKU-OK", 5).await;
    let tables = [
        "products",
        "reservations",
        "reservation_lines",
        "outbox",
        "idempotency_keys",
    ];
    let mut before = Vec::new();
    for table in tables {
        before.push(app.count(table).await);
    }

    let cases: Vec<(&str, pb::ReserveStockRequest, &str)> = vec![
        (
            "empty request",
            pb::ReserveStockRequest::default(),
            "idempotency_key",
        ),
        (
            "missing key",
            reserve_request("SKU-OK", 1, ""),
            "idempotency_key",
        ),
        (
            "overlong key",
            reserve_request("SKU-OK", 1, &"k".repeat(129)),
            "idempotency_key",
        ),
        (
            "zero quantity",
            reserve_request("SKU-OK", 0, "q0"),
            "lines[0].quantity",
        ),
        (
            "negative quantity",
            reserve_request("SKU-OK", -3, "qn"),
            "lines[0].quantity",
        ),
        ("empty sku", reserve_request("", 1, "s0"), "lines[0].sku"),
        (
            "overlong sku",
            reserve_request(&"S".repeat(65), 1, "s1"),
            "lines[0].sku",
        ),
        (
            "malformed sku",
            reserve_request("sku with spaces;--", 1, "s2"),
            "lines[0].sku",
        ),
        (
            "malformed order id",
            pb::ReserveStockRequest {
                order_id: "order-1".to_owned(),
                ..reserve_request("SKU-OK", 1, "o1")
            },
            "order_id",
        ),
        (
            "overlong order id",
            pb::ReserveStockRequest {
                order_id: "0".repeat(1000),
                ..reserve_request("SKU-OK", 1, "o2")
            },
            "order_id",
        ),
        (
            "no lines",
            pb::ReserveStockRequest {
                lines: vec![],
                ..reserve_request("SKU-OK", 1, "l0")
            },
            "lines",
        ),
    ];
    for (case, request, field) in cases {
        let status = app
            .client
            .clone()
            .reserve_stock(request)
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            violated_fields(&status).iter().any(|f| f == field),
            "{case}: {:?}",
            violated_fields(&status)
        );
    }

    // An unknown SKU is NOT_FOUND, and the known line before it is not left taken.
    let mut request = reserve_request("SKU-OK", 1, "unknown-sku");
    request.lines.push(pb::ReservationLine {
        sku: "SKU-ZZZ".to_owned(),
        quantity: 1,
    });
    let status = app
        .client
        .clone()
        .reserve_stock(request)
        .await
        .expect_err("unknown sku");
    assert_eq!(status.code(), Code::NotFound);

    let get = app
        .client
        .clone()
        .get_reservation(pb::GetReservationRequest {
            reservation_id: "../../etc/passwd".to_owned(),
        })
        .await
        .expect_err("malformed id");
    assert_eq!(get.code(), Code::InvalidArgument);
    let missing = app
        .client
        .clone()
        .get_reservation(pb::GetReservationRequest {
            reservation_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("absent id");
    assert_eq!(missing.code(), Code::NotFound);

    let mut after = Vec::new();
    for table in tables {
        after.push(app.count(table).await);
    }
    assert_eq!(before, after, "tables {tables:?}");
    assert_eq!(app.product("SKU-OK").await.available, 5);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_product_and_stock_requests_are_refused() {
    let app = TestApp::spawn("badproduct").await;
    app.create_product("SKU-P", 1).await;
    let duplicate = app
        .client
        .clone()
        .create_product(pb::CreateProductRequest {
            sku: "SKU-P".to_owned(),
            name: "again".to_owned(),
            unit_price: Some(zentra_proto::common::v1::Money {
                currency_code: "USD".to_owned(),
                amount_minor: 1,
            }),
            idempotency_key: "other-key".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("duplicate sku");
    assert_eq!(duplicate.code(), Code::AlreadyExists);

    let invalid = app
        .client
        .clone()
        .create_product(pb::CreateProductRequest {
            sku: "SKU-Q".to_owned(),
            name: String::new(),
            initial_stock: -1,
            unit_price: Some(zentra_proto::common::v1::Money {
                currency_code: "dollars".to_owned(),
                amount_minor: -5,
            }),
            idempotency_key: "bad-product".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("invalid product");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&invalid),
        [
            "name",
            "initial_stock",
            "unit_price.amount_minor",
            "unit_price.currency_code"
        ]
    );

    let overdraw = app
        .client
        .clone()
        .adjust_stock(pb::AdjustStockRequest {
            sku: "SKU-P".to_owned(),
            delta: -2,
            reason: "damaged".to_owned(),
            idempotency_key: "overdraw".to_owned(),
        })
        .await
        .expect_err("would go negative");
    assert_eq!(overdraw.code(), Code::FailedPrecondition);
    assert_eq!(app.product("SKU-P").await.available, 1);

    // Control characters (PostgreSQL refuses NUL in text) are the caller's error, not ours.
    let nul = app
        .client
        .clone()
        .adjust_stock(pb::AdjustStockRequest {
            sku: "SKU-P".to_owned(),
            delta: 1,
            reason: "restock\0".to_owned(),
            idempotency_key: "nul".to_owned(),
        })
        .await
        .expect_err("nul in reason");
    assert_eq!(nul.code(), Code::InvalidArgument);
    let prefix = app
        .client
        .clone()
        .list_products(pb::ListProductsRequest {
            sku_prefix: "P\0".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("nul in prefix");
    assert_eq!(prefix.code(), Code::InvalidArgument);
    let token = app
        .client
        .clone()
        .list_products(pb::ListProductsRequest {
            page: Some(zentra_proto::common::v1::PageRequest {
                page_size: 1,
                page_token: "pt100".to_owned(),
            }),
            ..Default::default()
        })
        .await
        .expect_err("forged token");
    assert_eq!(token.code(), Code::InvalidArgument);
    assert_eq!(app.product("SKU-P").await.available, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_cannot_be_read_are_invalid_argument_on_grpc_grpc_web_and_text() {
    use zentra_test_support::hostile::{
        WebEncoding, assert_invalid_argument, hostile_bodies, raw_grpc, raw_grpc_web, raw_http1,
    };
    let app = TestApp::spawn("hostileframes").await;
    app.create_product("SKU-OK", 5).await;
    let tables = [
        "products",
        "stock_adjustments",
        "outbox",
        "idempotency_keys",
    ];
    let mut before = Vec::new();
    for table in tables {
        before.push(app.count(table).await);
    }
    let address = app.service.local_addr();
    // A mutating RPC: whatever it could not read, it must not have stored.
    let path = "/zentra.inventory.v1.InventoryService/AdjustStock";
    for (case, body) in hostile_bodies() {
        let status = raw_grpc(address, path, &[], body.clone())
            .await
            .unwrap_or_else(|error| panic!("{case} over gRPC: {error}"));
        assert_invalid_argument(&format!("{case} over gRPC"), &status);
        for encoding in [WebEncoding::Binary, WebEncoding::Text] {
            let status = raw_grpc_web(address, path, &[], encoding, body.clone())
                .await
                .unwrap_or_else(|error| panic!("{case} over {encoding:?}: {error}"));
            assert_invalid_argument(&format!("{case} over grpc-web {encoding:?}"), &status);
        }
    }
    let status = raw_http1(
        address,
        path,
        "application/grpc-web-text",
        &[],
        b"!!not base64!!".to_vec(),
    )
    .await
    .expect("answered");
    assert_invalid_argument("invalid base64", &status);

    for (table, count) in tables.iter().zip(before) {
        assert_eq!(app.count(table).await, count, "{table} unchanged");
    }

    // A well-formed request on the same path still works: the guard only reads statuses.
    let adjusted = app
        .client
        .clone()
        .adjust_stock(pb::AdjustStockRequest {
            sku: "SKU-OK".to_owned(),
            delta: 1,
            reason: "restock".to_owned(),
            idempotency_key: "adjust-after".to_owned(),
        })
        .await
        .expect("a readable request is served")
        .into_inner();
    assert_eq!(adjusted.product.expect("product").available, 6);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_are_set_idempotently_and_read_in_batches() {
    let app = TestApp::spawn("prices").await;
    app.create_product("LAMP-1", 5).await;
    app.create_product("LAMP-2", 5).await;
    let change = pb::SetProductPriceRequest {
        sku: "LAMP-1".to_owned(),
        unit_price: Some(zentra_proto::common::v1::Money {
            currency_code: "EUR".to_owned(),
            amount_minor: 2500,
        }),
        idempotency_key: "reprice-1".to_owned(),
    };
    let set = app
        .client
        .clone()
        .set_product_price(change.clone())
        .await
        .expect("price set")
        .into_inner()
        .product
        .expect("product");
    assert_eq!(set.unit_price, change.unit_price);
    let again = app
        .client
        .clone()
        .set_product_price(change.clone())
        .await
        .expect("replayed")
        .into_inner()
        .product
        .expect("product");
    assert_eq!(again, set, "a retry replays");

    let batch = app
        .client
        .clone()
        .batch_get_products(pb::BatchGetProductsRequest {
            skus: vec!["LAMP-2".to_owned(), "NOPE".to_owned(), "LAMP-1".to_owned()],
        })
        .await
        .expect("batch")
        .into_inner();
    let skus: Vec<_> = batch.products.iter().map(|p| p.sku.as_str()).collect();
    assert_eq!(skus, ["LAMP-2", "LAMP-1"], "in request order");
    assert_eq!(batch.missing_skus, ["NOPE"]);
    assert_eq!(batch.products[1].unit_price, change.unit_price);

    let missing = app
        .client
        .clone()
        .set_product_price(pb::SetProductPriceRequest {
            sku: "NOPE".to_owned(),
            idempotency_key: "reprice-2".to_owned(),
            ..change.clone()
        })
        .await
        .expect_err("unknown product");
    assert_eq!(missing.code(), Code::NotFound);
    for (case, request, field) in [
        (
            "no price",
            pb::SetProductPriceRequest {
                unit_price: None,
                idempotency_key: "bad-1".to_owned(),
                ..change.clone()
            },
            "unit_price",
        ),
        (
            "negative price",
            pb::SetProductPriceRequest {
                unit_price: Some(zentra_proto::common::v1::Money {
                    currency_code: "EUR".to_owned(),
                    amount_minor: -1,
                }),
                idempotency_key: "bad-2".to_owned(),
                ..change.clone()
            },
            "unit_price.amount_minor",
        ),
        (
            "unknown currency",
            pb::SetProductPriceRequest {
                unit_price: Some(zentra_proto::common::v1::Money {
                    currency_code: "XXX".to_owned(),
                    amount_minor: 1,
                }),
                idempotency_key: "bad-3".to_owned(),
                ..change.clone()
            },
            "unit_price.currency_code",
        ),
    ] {
        let refused = app
            .client
            .clone()
            .set_product_price(request)
            .await
            .expect_err(case);
        assert_eq!(refused.code(), Code::InvalidArgument, "{case}");
        assert!(
            violated_fields(&refused).iter().any(|f| f == field),
            "{case}"
        );
    }
    let too_many = app
        .client
        .clone()
        .batch_get_products(pb::BatchGetProductsRequest {
            skus: (0..101).map(|i| format!("S-{i}")).collect(),
        })
        .await
        .expect_err("too many");
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert_eq!(
        app.product("LAMP-1").await.unit_price,
        change.unit_price,
        "only the first change took effect"
    );
    app.stop().await;
}
