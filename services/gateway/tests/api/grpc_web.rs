//! Clients nobody here wrote, through the gateway: buf curl over grpc-web (HTTP/1.1, as a
//! browser speaks it) and grpcurl over gRPC with the gateway's reflection.

use std::process::Command;

use zentra_test_support::{http_get, http_get_with, run_tool, tool};

use crate::helpers::{GatewayOptions, Platform};

fn contracts() -> String {
    format!("{}/../../proto", env!("CARGO_MANIFEST_DIR"))
}

/// `buf curl` over grpc-web with the contracts as its schema; `header` (an API key) if given.
fn buf_web(header: Option<&str>, body: &str, url: &str) -> Command {
    let mut command = Command::new(tool("buf"));
    command.args(["curl", "--protocol", "grpcweb", "--schema", &contracts()]);
    if let Some(header) = header {
        command.args(["-H", header]);
    }
    command.args(["-d", body, url]);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buf_curl_over_grpc_web_places_an_order_through_the_gateway_and_reads_it_back() {
    let mut platform = Platform::start("gw-web").await;
    let (address, _) = platform.gateway(&GatewayOptions::default()).await;
    let url = format!("http://{address}");
    let operator = format!("x-api-key: {}", platform.keys.operator);
    let viewer = format!("x-api-key: {}", platform.keys.viewer);

    let placed = run_tool(&mut buf_web(
        Some(&operator),
        r#"{"customer_id":"cust-web","shipping_address":{"recipient":"Ada","lines":["1 Main St"],"city":"Springfield","postal_code":"12345","country_code":"US"},"lines":[{"sku":"SEED-MUG","quantity":1,"unit_price":{"currency_code":"USD","amount_minor":1299}}],"currency_code":"USD","payment_method_token":"tok_approve","idempotency_key":"web-1"}"#,
        &format!("{url}/zentra.order.v1.OrderService/PlaceOrder"),
    ));
    let placed: serde_json::Value = serde_json::from_str(&placed).expect("json");
    let order_id = placed["order"]["orderId"]
        .as_str()
        .expect("order id")
        .to_owned();

    let read = run_tool(&mut buf_web(
        Some(&viewer),
        &format!(r#"{{"order_id":"{order_id}"}}"#),
        &format!("{url}/zentra.order.v1.OrderService/GetOrder"),
    ));
    let read: serde_json::Value = serde_json::from_str(&read).expect("json");
    assert_eq!(read["order"]["orderId"], order_id.as_str());
    assert_eq!(read["order"]["customerId"], "cust-web");
    assert_eq!(read["order"]["status"], "ORDER_STATUS_PENDING");

    // The gateway's own services answer grpc-web too.
    let info = run_tool(&mut buf_web(
        Some(&viewer),
        "{}",
        &format!("{url}/zentra.ops.v1.OpsService/GetBuildInfo"),
    ));
    assert!(info.contains("\"service\": \"gateway\""), "{info}");

    // Without a key the grpc-web caller gets the status, not an HTTP error.
    let output = buf_web(
        None,
        &format!(r#"{{"order_id":"{order_id}"}}"#),
        &format!("{url}/zentra.order.v1.OrderService/GetOrder"),
    )
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

    let services = run_tool(Command::new(&grpcurl).args(["-plaintext", &target, "list"]));
    for service in [
        "zentra.order.v1.OrderService",
        "zentra.saga.v1.SagaService",
        "zentra.saga.v1.DeadLetterService",
        "zentra.inventory.v1.InventoryService",
        "zentra.ops.v1.OpsService",
    ] {
        assert!(services.contains(service), "{service} missing: {services}");
    }
    let products = run_tool(Command::new(&grpcurl).args([
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_centers_files_share_the_port_with_the_apis_as_soon_as_they_are_built() {
    let mut platform = Platform::start("gw-static").await;
    let dir = std::env::temp_dir().join(format!(
        "zentra-static-{}",
        zentra_test_support::unique_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let options = GatewayOptions {
        static_dir: Some(dir.clone()),
        ..GatewayOptions::default()
    };
    let (address, _) = platform.gateway(&options).await;
    // Not built yet: the page says how to build it.
    let (head, body) = http_get(address, "/").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(body.contains("just control-center"), "{body}");

    // Built while the gateway runs: served at once, no restart.
    std::fs::create_dir_all(dir.join("pkg")).expect("dir");
    std::fs::write(dir.join("pkg/app.js"), "export default 1;").expect("js");
    std::fs::write(dir.join("index.html"), "<html>control center</html>").expect("index");

    let (head, body) = http_get(address, "/").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("control center"));
    let (head, body) = http_get(address, "/pkg/app.js").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("javascript"), "{head}");
    assert!(body.contains("export default"));
    // The app routes on the client: a deep link gets the app.
    let (head, body) = http_get(address, "/sagas/0190f0c8").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("control center"));

    // Metrics share the port too, but only for a caller with a key (as Prometheus sends one).
    let (head, body) = http_get(address, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    assert!(!body.contains("zentra_"), "{body}");
    let (head, _) = http_get_with(
        address,
        "/metrics",
        &[("authorization", "Bearer zk_not_a_key")],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let bearer = format!("Bearer {}", platform.keys.viewer);
    let (head, body) = http_get_with(address, "/metrics", &[("authorization", &bearer)]).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body.contains("zentra_gateway_auth_failures_total"),
        "{body}"
    );

    // And the same port still answers grpc-web.
    let listed = run_tool(Command::new(tool("buf")).args([
        "curl",
        "--protocol",
        "grpcweb",
        "--schema",
        &contracts(),
        "-H",
        &format!("x-api-key: {}", platform.keys.viewer),
        "-d",
        "{}",
        &format!("http://{address}/zentra.order.v1.OrderService/ListOrders"),
    ]));
    assert!(listed.trim().starts_with('{'), "{listed}");
    let _ = std::fs::remove_dir_all(&dir);
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_no_contract_declares_is_unimplemented() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut platform = Platform::start("gw-unknown").await;
    let (address, _) = platform.gateway(&GatewayOptions::default()).await;
    // A grpc-web call over HTTP/1.1 with one empty message frame.
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream
        .write_all(
            format!(
                "POST /zentra.order.v1.OrderService/DropAllOrders HTTP/1.1\r\nhost: {address}\r\n\
                 content-type: application/grpc-web+proto\r\nx-api-key: {}\r\n\
                 content-length: 5\r\nconnection: close\r\n\r\n",
                platform.keys.admin
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    stream.write_all(&[0, 0, 0, 0, 0]).await.expect("frame");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(
        text.contains("grpc-status: 12") || text.contains("grpc-status:12"),
        "{text}"
    );
    // grpc-message is percent-encoded.
    assert!(
        text.contains("no%20rpc%20zentra.order.v1.orderservice/dropallorders"),
        "{text}"
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_cannot_be_read_are_invalid_argument_through_the_gateway() {
    use zentra_test_support::hostile::{
        WebEncoding, assert_invalid_argument, hostile_bodies, raw_grpc, raw_grpc_web, raw_http1,
    };
    let mut platform = Platform::start("gw-hostile").await;
    let (address, _) = platform.gateway(&GatewayOptions::default()).await;
    let operator = platform.keys.operator.clone();
    let admin = platform.keys.admin.clone();
    let stored = || async {
        let mut rows = Vec::new();
        for table in ["orders", "outbox", "idempotency_keys"] {
            let sql = format!("SELECT count(*) FROM {table}");
            rows.push(zentra_test_support::count(platform.order_db(), &sql).await);
        }
        rows
    };
    let before = stored().await;
    // Forwarded to a service, and served by the gateway itself.
    let paths = [
        (
            "/zentra.order.v1.OrderService/PlaceOrder",
            operator.as_str(),
        ),
        ("/zentra.ops.v1.OpsService/SetLogLevel", admin.as_str()),
    ];
    for (path, key) in paths {
        let headers = [("x-api-key", key)];
        for (case, body) in hostile_bodies() {
            let status = raw_grpc(address, path, &headers, body.clone())
                .await
                .unwrap_or_else(|error| panic!("{case} over gRPC to {path}: {error}"));
            assert_invalid_argument(&format!("{case} over gRPC to {path}"), &status);
            for encoding in [WebEncoding::Binary, WebEncoding::Text] {
                let status = raw_grpc_web(address, path, &headers, encoding, body.clone())
                    .await
                    .unwrap_or_else(|error| panic!("{case} over {encoding:?} to {path}: {error}"));
                assert_invalid_argument(&format!("{case} over {encoding:?} to {path}"), &status);
            }
        }
        let status = raw_http1(
            address,
            path,
            "application/grpc-web-text",
            &headers,
            b"!!not base64!!".to_vec(),
        )
        .await
        .expect("answered");
        assert_invalid_argument(&format!("invalid base64 to {path}"), &status);
    }
    assert_eq!(stored().await, before, "nothing stored");
    platform.stop().await;
}
