//! `just up --prometheus`: Prometheus beside the stack scrapes the gateway with a key and every
//! service over mutual TLS with a certificate of the stack's CA, loads the platform's alert rules
//! and evaluates them, and has the state gauges operators alert on; a saga parked by a permanent
//! compensation failure (its payment captured by hand, so the void can never succeed) makes the
//! parked alert fire.

use std::time::Duration;

use zentra_test_support::{eventually, http_get};

use crate::helpers::{
    RunningStack, Scratch, dev_key, gateway_channel, keyed, order_through_gateway, saga_reaches,
};

/// Starts `only` with Prometheus on the scratch's spare port, scraping and sampling every second.
async fn start_with_prometheus(
    scratch: &Scratch,
    only: &str,
    mut env: Vec<(&str, String)>,
) -> RunningStack {
    env.extend([
        (
            "ZENTRA_STACK_PROMETHEUS_PORT",
            scratch.spare_port.to_string(),
        ),
        ("ZENTRA_STACK_PROMETHEUS_INTERVAL", "1s".to_owned()),
        ("ZENTRA_TELEMETRY__GAUGE_INTERVAL", "1s".to_owned()),
    ]);
    scratch.start(only, env, &["--prometheus"]).await
}

impl Scratch {
    /// Where the stack's Prometheus listens.
    fn prometheus(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.spare_port).into()
    }
}

/// How many times `needle` occurs in `haystack`.
fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_process_and_evaluates_the_alert_rules() {
    let scratch = Scratch::new("prom", &["inventory", "saga"]).await;
    let stack = start_with_prometheus(&scratch, "inventory,saga,gateway", Vec::new()).await;
    let prometheus = scratch.prometheus();

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
    scratch.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_parked_by_a_permanent_compensation_failure_fires_the_parked_alert() {
    use zentra_proto::{
        common::v1::Money,
        payment::v1::{
            CaptureRequest, ListPaymentsRequest, PaymentStatus,
            payment_service_client::PaymentServiceClient,
        },
        saga::v1::SagaState,
    };

    let scratch = Scratch::new(
        "park",
        &["inventory", "order", "payment", "fulfillment", "saga"],
    )
    .await;
    let stack = start_with_prometheus(
        &scratch,
        "inventory,order,payment,fulfillment,saga,gateway",
        // Time to capture the payment by hand before the shipment fails.
        vec![("ZENTRA_FULFILLMENT__STEP_DELAY", "8s".to_owned())],
    )
    .await;
    let state_dir = &scratch.state_dir;
    let viewer = dev_key(state_dir, "ZENTRA_VIEWER_KEY");
    let operator = dev_key(state_dir, "ZENTRA_OPERATOR_KEY");
    let gateway = gateway_channel(scratch.gateway_port).await;

    // An order whose shipment will fail (an unshippable SKU), so the saga will compensate.
    let price = Money {
        currency_code: "USD".to_owned(),
        amount_minor: 500,
    };
    let order = order_through_gateway(&gateway, &operator, "NOSHIP-PARK", price.clone(), 1).await;

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
            None,
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
    PaymentServiceClient::new(
        crate::helpers::service_channel(state_dir, scratch.base_port + 3).await,
    )
    .capture(CaptureRequest {
        payment_id: authorized.payment_id.clone(),
        amount: Some(price),
        idempotency_key: "captured-by-hand".to_owned(),
    })
    .await
    .expect("captured by hand");

    // The shipment fails, the void is refused for good, and the saga parks.
    let parked = saga_reaches(
        &gateway,
        &viewer,
        &order.order_id,
        SagaState::CompensationFailed,
        Duration::from_secs(60),
    )
    .await;
    assert!(parked, "the saga did not park:\n{}", stack.output.dump());

    // Prometheus sees it, and a minute later the alert fires.
    let prometheus = scratch.prometheus();
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
    scratch.clean_up().await;
}
