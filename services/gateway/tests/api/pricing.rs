//! Prices through the gateway: an order is charged what the catalogue says, never what the client
//! says; a client's stale or foreign price is refused before anything is stored.

use tonic::Code;
use tonic_types::StatusExt as _;
use zentra_proto::{
    common::v1::Money,
    inventory::v1::{self as inventory, inventory_service_client::InventoryServiceClient},
    order::v1::order_service_client::OrderServiceClient,
};
use zentra_test_support::count;

use crate::helpers::{
    CATALOGUE_SKU, GatewayOptions, Platform, order_request, product_request, with_key,
};

fn money(currency_code: &str, amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: currency_code.to_owned(),
        amount_minor,
    })
}

async fn stored(platform: &Platform) -> Vec<(&'static str, i64)> {
    let mut rows = Vec::new();
    for table in ["orders", "order_lines", "outbox", "idempotency_keys"] {
        let sql = format!("SELECT count(*) FROM {table}");
        rows.push((table, count(platform.order_db(), &sql).await));
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_set_price_or_a_foreign_currency_is_refused_and_stores_nothing() {
    let mut platform = Platform::start("gw-price").await;
    let (_, channel) = platform.gateway(&GatewayOptions::default()).await;
    let operator = platform.keys.operator.clone();
    let mut orders = OrderServiceClient::new(channel.clone());
    let mut products = InventoryServiceClient::new(channel);
    let mut euro_kettle = product_request("KETTLE-EU", "create-kettle");
    euro_kettle.unit_price = money("EUR", 4500);
    products
        .create_product(with_key(euro_kettle, &operator))
        .await
        .expect("an operator creates a product priced in EUR");
    let before = stored(&platform).await;

    // A 12.99 USD mug offered at 0.01 USD.
    let mut cheap = order_request("cust-cheap", "cheap-1");
    cheap.lines[0].unit_price = money("USD", 1);
    let refused = orders
        .place_order(with_key(cheap, &operator))
        .await
        .expect_err("a client-set price is refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let info = refused.get_error_details();
    let info = info.error_info().expect("error info");
    assert_eq!(
        info.metadata.get(CATALOGUE_SKU).map(String::as_str),
        Some("1299 USD"),
        "the answer names the current price"
    );

    // The EUR kettle in a USD order, without a price, and with the order's currency on the line.
    for (case, unit_price) in [("no price", None), ("usd price", money("USD", 4500))] {
        let mut foreign = order_request(
            "cust-foreign",
            &format!("foreign-{}", case.replace(' ', "-")),
        );
        foreign.lines[0].sku = "KETTLE-EU".to_owned();
        foreign.lines[0].unit_price = unit_price;
        let refused = orders
            .place_order(with_key(foreign, &operator))
            .await
            .expect_err("a foreign currency is refused");
        assert_eq!(
            refused.code(),
            Code::FailedPrecondition,
            "{case}: {refused:?}"
        );
        let details = refused.get_error_details();
        let violation = &details
            .precondition_failure()
            .expect("precondition failure")
            .violations[0];
        assert_eq!(violation.r#type, "CURRENCY_MISMATCH", "{case}");
    }
    // Paying the kettle in EUR, in a USD order, is malformed.
    let mut mixed = order_request("cust-mixed", "mixed-1");
    mixed.lines[0].sku = "KETTLE-EU".to_owned();
    mixed.lines[0].unit_price = money("EUR", 4500);
    let refused = orders
        .place_order(with_key(mixed, &operator))
        .await
        .expect_err("a line in another currency than its order is refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    assert_eq!(stored(&platform).await, before, "nothing stored");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_an_operator_sets_is_charged_on_the_next_order() {
    let mut platform = Platform::start("gw-reprice").await;
    let (_, channel) = platform.gateway(&GatewayOptions::default()).await;
    let keys = &platform.keys;
    let mut orders = OrderServiceClient::new(channel.clone());
    let mut products = InventoryServiceClient::new(channel);
    let mut unpriced = order_request("cust-1", "before-1");
    unpriced.lines[0].unit_price = None;
    let before = orders
        .place_order(with_key(unpriced.clone(), &keys.operator))
        .await
        .expect("placed")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(before.total, money("USD", 2 * 1299));

    let change = |key: &str| inventory::SetProductPriceRequest {
        sku: CATALOGUE_SKU.to_owned(),
        unit_price: money("USD", 1499),
        idempotency_key: key.to_owned(),
    };
    let denied = products
        .set_product_price(with_key(change("price-1"), &keys.viewer))
        .await
        .expect_err("a viewer cannot set prices");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let product = products
        .set_product_price(with_key(change("price-1"), &keys.operator))
        .await
        .expect("an operator sets the price")
        .into_inner()
        .product
        .expect("product");
    assert_eq!(product.unit_price, money("USD", 1499));

    unpriced.idempotency_key = "after-1".to_owned();
    let after = orders
        .place_order(with_key(unpriced, &keys.operator))
        .await
        .expect("placed at the new price")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(after.lines[0].unit_price, money("USD", 1499));
    assert_eq!(after.total, money("USD", 2 * 1499));
    // The order placed before keeps its price.
    let kept = count(
        platform.order_db(),
        &format!(
            "SELECT total_minor FROM orders WHERE id = '{}'",
            before.order_id
        ),
    )
    .await;
    assert_eq!(kept, 2 * 1299);
    platform.stop().await;
}
