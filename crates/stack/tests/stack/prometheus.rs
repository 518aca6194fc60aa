//! `just up --prometheus`: Prometheus beside the stack scrapes the gateway with a key and every
//! service over mutual TLS with a certificate of the stack's CA, loads the platform's alert rules
//! and evaluates them, and has the state gauges operators alert on; a saga parked by a permanent
//! compensation failure (its payment captured by hand, so the void can never succeed) makes the
//! parked alert fire.

use std::time::Duration;

use zentra_test_support::{
    TestDatabase, delete_topics_with_prefix, eventually, http_get, unique_suffix,
};

use crate::helpers::{RunningStack, StackOptions, free_base_port, free_port_besides};

/// How many times `needle` occurs in `haystack`.
fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_process_and_evaluates_the_alert_rules() {
    let suffix = unique_suffix();
    let db_prefix = format!("zt_prom_{suffix}_");
    let mut databases = Vec::new();
    for service in ["inventory", "saga"] {
        databases.push(
            TestDatabase::create_named(&format!("{db_prefix}{service}"))
                .await
                .expect("database"),
        );
    }
    let topic_prefix = format!("zt-prom-{suffix}.");
    let state_dir = std::env::temp_dir().join(format!("zentra-stack-prom-{suffix}"));
    let base_port = free_base_port(6);
    let gateway_port = free_port_besides(base_port, 6, &[]);
    let prometheus_port = free_port_besides(base_port, 6, &[gateway_port]);
    let stack = RunningStack::start(StackOptions {
        only: "inventory,saga,gateway",
        state_dir: &state_dir,
        base_port,
        gateway_port,
        db_prefix: &db_prefix,
        topic_prefix: &topic_prefix,
        env: vec![
            ("ZENTRA_STACK_PROMETHEUS_PORT", prometheus_port.to_string()),
            ("ZENTRA_STACK_PROMETHEUS_INTERVAL", "1s".to_owned()),
            ("ZENTRA_TELEMETRY__GAUGE_INTERVAL", "1s".to_owned()),
        ],
        args: &["--prometheus"],
    })
    .await;
    let prometheus: std::net::SocketAddr = ([127, 0, 0, 1], prometheus_port).into();

    // Three targets (gateway, inventory, saga), every one up: the key and the certificate work.
    let targets = eventually(Duration::from_secs(60), || async move {
        let (_, body) = http_get(prometheus, "/api/v1/targets?state=active").await;
        (occurrences(&body, "\"health\":\"up\"") == 3).then_some(body)
    })
    .await;
    assert!(
        targets.is_some(),
        "not every target is up:\n{}\n{}",
        http_get(prometheus, "/api/v1/targets").await.1,
        stack.output.dump()
    );

    // Every rule of deploy/observability/rules.yml is loaded and evaluates without error.
    let rule_count = occurrences(zentra_stack::prometheus::RULES, "- alert:");
    assert!(rule_count >= 10, "{rule_count} rules");
    let rules = eventually(Duration::from_secs(30), || async move {
        let (_, body) = http_get(prometheus, "/api/v1/rules").await;
        (occurrences(&body, "\"health\":\"ok\"") == rule_count).then_some(body)
    })
    .await;
    assert!(
        rules.is_some(),
        "not every rule evaluates:\n{}",
        http_get(prometheus, "/api/v1/rules").await.1
    );

    // The gauges operators alert on are there: sagas by state, breakers, build info.
    for query in [
        "zentra_sagas%7Bstate%3D%22COMPENSATION_FAILED%22%7D",
        "zentra_circuit_breaker_state",
        "zentra_build_info",
        "zentra_process_resident_memory_bytes",
        "zentra_gateway_auth_failures_total%20or%20zentra_grpc_server_requests_total%7Bjob%3D%22gateway%22%7D",
    ] {
        let found = eventually(Duration::from_secs(30), || async move {
            let (_, body) = http_get(prometheus, &format!("/api/v1/query?query={query}")).await;
            body.contains("\"metric\":{").then_some(())
        })
        .await;
        assert!(found.is_some(), "no series for {query}");
    }

    stack.stop().await;
    let _ = std::fs::remove_dir_all(&state_dir);
    delete_topics_with_prefix(&topic_prefix).await;
    for database in databases {
        database.drop_database().await.expect("drop database");
    }
}

/// A request through the gateway with `key`.
fn keyed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "x-api-key",
        tonic::metadata::MetadataValue::try_from(key).expect("ascii key"),
    );
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_parked_by_a_permanent_compensation_failure_fires_the_parked_alert() {
    use zentra_proto::{
        common::v1::{Address, Money},
        inventory::v1::{CreateProductRequest, inventory_service_client::InventoryServiceClient},
        order::v1::{OrderLine, PlaceOrderRequest, order_service_client::OrderServiceClient},
        payment::v1::{
            CaptureRequest, ListPaymentsRequest, PaymentStatus,
            payment_service_client::PaymentServiceClient,
        },
        saga::v1::{ListSagasRequest, SagaState, saga_service_client::SagaServiceClient},
    };

    let suffix = unique_suffix();
    let db_prefix = format!("zt_park_{suffix}_");
    let mut databases = Vec::new();
    for service in ["inventory", "order", "payment", "fulfillment", "saga"] {
        databases.push(
            TestDatabase::create_named(&format!("{db_prefix}{service}"))
                .await
                .expect("database"),
        );
    }
    let topic_prefix = format!("zt-park-{suffix}.");
    let state_dir = std::env::temp_dir().join(format!("zentra-stack-park-{suffix}"));
    let base_port = free_base_port(6);
    let gateway_port = free_port_besides(base_port, 6, &[]);
    let prometheus_port = free_port_besides(base_port, 6, &[gateway_port]);
    let stack = RunningStack::start(StackOptions {
        only: "inventory,order,payment,fulfillment,saga,gateway",
        state_dir: &state_dir,
        base_port,
        gateway_port,
        db_prefix: &db_prefix,
        topic_prefix: &topic_prefix,
        env: vec![
            ("ZENTRA_STACK_PROMETHEUS_PORT", prometheus_port.to_string()),
            ("ZENTRA_STACK_PROMETHEUS_INTERVAL", "1s".to_owned()),
            ("ZENTRA_TELEMETRY__GAUGE_INTERVAL", "1s".to_owned()),
            // Time to capture the payment by hand before the shipment fails.
            ("ZENTRA_FULFILLMENT__STEP_DELAY", "8s".to_owned()),
        ],
        args: &["--prometheus"],
    })
    .await;
    let keys =
        std::fs::read_to_string(state_dir.join(zentra_stack::keys::KEYS_FILE)).expect("dev keys");
    let key = |name: &str| {
        keys.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")).map(str::to_owned))
            .expect("key")
    };
    let (viewer, operator) = (key("ZENTRA_VIEWER_KEY"), key("ZENTRA_OPERATOR_KEY"));
    let gateway =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{gateway_port}"))
            .expect("url")
            .connect()
            .await
            .expect("gateway");

    // An order whose shipment will fail (an unshippable SKU), so the saga will compensate.
    let price = Money {
        currency_code: "USD".to_owned(),
        amount_minor: 500,
    };
    InventoryServiceClient::new(gateway.clone())
        .create_product(keyed(
            CreateProductRequest {
                sku: "NOSHIP-PARK".to_owned(),
                name: "Unshippable".to_owned(),
                initial_stock: 5,
                unit_price: Some(price.clone()),
                idempotency_key: "park-product".to_owned(),
                ..Default::default()
            },
            &operator,
        ))
        .await
        .expect("product");
    let order = OrderServiceClient::new(gateway.clone())
        .place_order(keyed(
            PlaceOrderRequest {
                customer_id: "park-customer".to_owned(),
                customer_email: "park@customers.zentra.test".to_owned(),
                shipping_address: Some(Address {
                    recipient: "Ada".to_owned(),
                    lines: vec!["1 Main St".to_owned()],
                    city: "Springfield".to_owned(),
                    postal_code: "12345".to_owned(),
                    country_code: "US".to_owned(),
                    ..Default::default()
                }),
                lines: vec![OrderLine {
                    sku: "NOSHIP-PARK".to_owned(),
                    quantity: 1,
                    unit_price: Some(price.clone()),
                    ..Default::default()
                }],
                currency_code: "USD".to_owned(),
                payment_method_token: "tok_approve".to_owned(),
                idempotency_key: "park-order".to_owned(),
            },
            &operator,
        ))
        .await
        .expect("order placed")
        .into_inner()
        .order
        .expect("order");

    // The permanent failure: while the shipment is still being picked, someone captures the
    // payment by hand on the payment service's port, so the saga's void can never succeed.
    let payments = PaymentServiceClient::new(gateway.clone());
    let order_id = order.order_id.clone();
    let authorized = eventually(Duration::from_secs(20), || {
        let mut payments = payments.clone();
        let request = keyed(
            ListPaymentsRequest {
                order_id: order_id.clone(),
                ..Default::default()
            },
            &viewer,
        );
        async move {
            let listed = payments.list_payments(request).await.ok()?.into_inner();
            listed
                .payments
                .into_iter()
                .find(|payment| payment.status == PaymentStatus::Authorized as i32)
        }
    })
    .await
    .expect("the payment is authorized");
    PaymentServiceClient::new(crate::helpers::service_channel(&state_dir, base_port + 3).await)
        .capture(CaptureRequest {
            payment_id: authorized.payment_id.clone(),
            amount: Some(price),
            idempotency_key: "captured-by-hand".to_owned(),
        })
        .await
        .expect("captured by hand");

    // The shipment fails, the void is refused for good, and the saga parks.
    let sagas = SagaServiceClient::new(gateway.clone());
    let parked = eventually(Duration::from_secs(60), || {
        let mut sagas = sagas.clone();
        let request = keyed(
            ListSagasRequest {
                order_id: order.order_id.clone(),
                ..Default::default()
            },
            &viewer,
        );
        async move {
            let listed = sagas.list_sagas(request).await.ok()?.into_inner().sagas;
            listed
                .first()
                .filter(|saga| saga.state == SagaState::CompensationFailed as i32)
                .map(|_| ())
        }
    })
    .await;
    assert!(
        parked.is_some(),
        "the saga did not park:\n{}",
        stack.output.dump()
    );

    // Prometheus sees it, and a minute later the alert fires.
    let prometheus: std::net::SocketAddr = ([127, 0, 0, 1], prometheus_port).into();
    let firing = eventually(Duration::from_secs(120), || async move {
        // ALERTS{alertname="ZentraSagaParked",alertstate="firing"}
        let query = "ALERTS%7Balertname%3D%22ZentraSagaParked%22%2Calertstate%3D%22firing%22%7D";
        let (_, body) = http_get(prometheus, &format!("/api/v1/query?query={query}")).await;
        body.contains("\"metric\":{").then_some(body)
    })
    .await;
    assert!(
        firing.is_some(),
        "ZentraSagaParked never fired:\n{}",
        http_get(prometheus, "/api/v1/alerts").await.1
    );

    stack.stop().await;
    let _ = std::fs::remove_dir_all(&state_dir);
    delete_topics_with_prefix(&topic_prefix).await;
    for database in databases {
        database.drop_database().await.expect("drop database");
    }
}
