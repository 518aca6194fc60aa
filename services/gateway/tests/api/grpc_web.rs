//! Clients nobody here wrote, through the gateway: buf curl over grpc-web (HTTP/1.1, as a
//! browser speaks it) and grpcurl over gRPC with the gateway's reflection.

use std::process::Command;

use zentra_test_support::tool;

use crate::helpers::{GatewayOptions, Platform};

fn run(command: &mut Command) -> String {
    let output = command.output().expect("tool runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn contracts() -> String {
    format!("{}/../../proto", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buf_curl_over_grpc_web_places_an_order_through_the_gateway_and_reads_it_back() {
    let mut platform = Platform::start("gw-web").await;
    let (address, _) = platform.gateway(&GatewayOptions::default()).await;
    let buf = tool("buf");
    let url = format!("http://{address}");
    let operator = format!("x-api-key: {}", platform.keys.operator);
    let viewer = format!("x-api-key: {}", platform.keys.viewer);

    let placed = run(Command::new(&buf).args([
        "curl",
        "--protocol",
        "grpcweb",
        "--schema",
        &contracts(),
        "-H",
        &operator,
        "-d",
        r#"{"customer_id":"cust-web","shipping_address":{"recipient":"Ada","lines":["1 Main St"],"city":"Springfield","postal_code":"12345","country_code":"US"},"lines":[{"sku":"MUG-1","quantity":1,"unit_price":{"currency_code":"USD","amount_minor":500}}],"currency_code":"USD","payment_method_token":"tok_approve","idempotency_key":"web-1"}"#,
        &format!("{url}/zentra.order.v1.OrderService/PlaceOrder"),
    ]));
    let placed: serde_json::Value = serde_json::from_str(&placed).expect("json");
    let order_id = placed["order"]["orderId"]
        .as_str()
        .expect("order id")
        .to_owned();

    let read = run(Command::new(&buf).args([
        "curl",
        "--protocol",
        "grpcweb",
        "--schema",
        &contracts(),
        "-H",
        &viewer,
        "-d",
        &format!(r#"{{"order_id":"{order_id}"}}"#),
        &format!("{url}/zentra.order.v1.OrderService/GetOrder"),
    ]));
    let read: serde_json::Value = serde_json::from_str(&read).expect("json");
    assert_eq!(read["order"]["orderId"], order_id.as_str());
    assert_eq!(read["order"]["customerId"], "cust-web");
    assert_eq!(read["order"]["status"], "ORDER_STATUS_PENDING");

    // Without a key the grpc-web caller gets the status, not an HTTP error.
    let output = Command::new(&buf)
        .args([
            "curl",
            "--protocol",
            "grpcweb",
            "--schema",
            &contracts(),
            "-d",
            &format!(r#"{{"order_id":"{order_id}"}}"#),
            &format!("{url}/zentra.order.v1.OrderService/GetOrder"),
        ])
        .output()
        .expect("buf runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unauthenticated"), "{stderr}");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_explores_every_public_service_through_the_gateways_reflection() {
    let mut platform = Platform::start("gw-reflect").await;
    let (address, _) = platform.gateway(&GatewayOptions::default()).await;
    let grpcurl = tool("grpcurl");
    let target = address.to_string();

    let services = run(Command::new(&grpcurl).args(["-plaintext", &target, "list"]));
    for service in [
        "zentra.order.v1.OrderService",
        "zentra.saga.v1.SagaService",
        "zentra.saga.v1.DeadLetterService",
        "zentra.inventory.v1.InventoryService",
        "zentra.ops.v1.OpsService",
    ] {
        assert!(services.contains(service), "{service} missing: {services}");
    }
    let products = run(Command::new(&grpcurl).args([
        "-plaintext",
        "-H",
        &format!("x-api-key: {}", platform.keys.viewer),
        "-d",
        "{}",
        &target,
        "zentra.inventory.v1.InventoryService/ListProducts",
    ]));
    assert!(products.trim().starts_with('{'), "{products}");
    platform.stop().await;
}
