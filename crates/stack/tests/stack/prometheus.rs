//! `just up --prometheus`: Prometheus beside the stack scrapes the gateway with a key and every
//! service over mutual TLS with a certificate of the stack's CA, loads the platform's alert rules
//! and evaluates them, and has the state gauges operators alert on; a saga parked by a permanent
//! compensation failure (its payment captured by hand, so the void can never succeed) makes the
//! parked alert fire. Every panel of the dashboards in deploy/observability/dashboards and every
//! alert expression has series once an order went through.

use std::time::Duration;

use zentra_test_support::{eventually, http_get};

use crate::helpers::{
    RunningStack, Scratch, dev_key, gateway_channel, keyed, order_completes, order_through_gateway,
    saga_reaches,
};

/// Starts `only` (`None`: the whole platform) with Prometheus on the scratch's spare port,
/// scraping and sampling every second.
async fn start_with_prometheus(
    scratch: &Scratch,
    only: Option<&str>,
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
    match only {
        Some(only) => scratch.start(only, env, &["--prometheus"]).await,
        None => scratch.start_platform(env, &["--prometheus"]).await,
    }
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
    let stack = start_with_prometheus(&scratch, Some("inventory,saga,gateway"), Vec::new()).await;
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

    // The configuration the stack generated passes promtool's full check, certificate files,
    // key file and rules included.
    let promtool = std::env::var_os("ZENTRA_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".cache/zentra"))
        })
        .map(|cache| cache.join("bin/promtool"))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| "promtool".into());
    let checked = std::process::Command::new(promtool)
        .args(["check", "config"])
        .arg(
            scratch
                .state_dir
                .join(zentra_stack::prometheus::CONFIG_FILE),
        )
        .output()
        .expect("promtool runs");
    assert!(
        checked.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
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

    // The control center's Infrastructure page links to it (the session the gateway serves).
    {
        use zentra_proto::gateway::v1::{
            GetSessionRequest, gateway_service_client::GatewayServiceClient,
        };
        let viewer = dev_key(&scratch.state_dir, "ZENTRA_VIEWER_KEY");
        let session = GatewayServiceClient::new(gateway_channel(scratch.gateway_port).await)
            .get_session(keyed(GetSessionRequest {}, &viewer, None))
            .await
            .expect("session")
            .into_inner();
        assert!(session.service_history, "the gateway reads history from it");
        let url = format!("http://{prometheus}");
        assert!(
            session
                .links
                .iter()
                .any(|link| link.name == "prometheus" && link.url == url),
            "{session:?}"
        );
    }

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

/// `text` percent-encoded for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Every query of every panel of the dashboards in deploy/observability/dashboards, with the
/// panel it belongs to, and Grafana's variables replaced as "All" and a 1-minute rate window
/// would have them.
fn dashboard_queries() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/observability/dashboards");
    let mut queries = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("dashboards")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "the platform and saga dashboards: {files:?}"
    );
    for file in files {
        let text = std::fs::read_to_string(&file).expect("dashboard");
        let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
        let title = dashboard["title"].as_str().unwrap_or_default().to_owned();
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("expr");
                let expr = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$job", ".+")
                    .replace("$step", ".+");
                queries.push((
                    format!("{title} / {}", panel["title"].as_str().unwrap_or_default()),
                    expr,
                ));
            }
        }
    }
    queries
}

/// Whether `query` parses and returns at least one series within 30 s (the rates need a few
/// scrapes); else Prometheus's last answer.
async fn returns_series(prometheus: std::net::SocketAddr, query: &str) -> Result<(), String> {
    let path = format!("/api/v1/query?query={}", encode(query));
    let found = eventually(Duration::from_secs(30), || {
        let path = path.clone();
        async move {
            let (_, body) = http_get(prometheus, &path).await;
            let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
            let series = answer["data"]["result"].as_array()?.len();
            (answer["status"] == "success" && series > 0).then_some(())
        }
    })
    .await;
    match found {
        Some(()) => Ok(()),
        None => Err(http_get(prometheus, &path).await.1),
    }
}

/// The platform's metric names an expression reads (a fallback such as `or ... * 0` keeps an
/// expression's series when one of them is misspelt, so each is asked for on its own).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("zentra_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

/// An alert's expression made to keep every series it looks at, firing or not: each comparison
/// becomes a `bool` one (0 or 1 instead of a filter) and each `unless` an `or`.
fn every_series_of(alert_expr: &str) -> String {
    let mut expr = alert_expr.replace(" unless ", " or ");
    for op in [" >= ", " <= ", " == ", " != ", " > ", " < "] {
        expr = expr.replace(op, &format!("{} bool ", op.trim_end()));
    }
    expr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_and_alert_expression_returns_series_after_an_order() {
    use zentra_proto::common::v1::Money;

    let scratch = Scratch::for_platform("dash").await;
    let stack = start_with_prometheus(&scratch, None, Vec::new()).await;
    let viewer = dev_key(&scratch.state_dir, "ZENTRA_VIEWER_KEY");
    let operator = dev_key(&scratch.state_dir, "ZENTRA_OPERATOR_KEY");
    let gateway = gateway_channel(scratch.gateway_port).await;
    let price = Money {
        currency_code: "USD".to_owned(),
        amount_minor: 900,
    };
    order_completes(&stack, &gateway, (&operator, &viewer), "DASH-MUG", price).await;
    // And one request refused, so the error counters have series too.
    let refused =
        zentra_proto::order::v1::order_service_client::OrderServiceClient::new(gateway.clone())
            .get_order(keyed(
                zentra_proto::order::v1::GetOrderRequest {
                    order_id: "not-an-order-id".to_owned(),
                },
                &viewer,
                None,
            ))
            .await
            .expect_err("a malformed id is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let prometheus = scratch.prometheus();

    // Every dashboard panel's query parses and has series now that an order went through.
    let queries = dashboard_queries();
    assert!(queries.len() >= 25, "{} dashboard queries", queries.len());
    let mut metrics = std::collections::BTreeSet::new();
    for (panel, query) in queries {
        if let Err(answer) = returns_series(prometheus, &query).await {
            panic!("{panel}: no series for {query}\n{answer}");
        }
        metrics.extend(metric_names(&query));
    }

    // Every alert rule Prometheus loaded, its expression keeping every series it compares.
    let (_, body) = http_get(prometheus, "/api/v1/rules?type=alert").await;
    let rules: serde_json::Value = serde_json::from_str(&body).expect("rules JSON");
    let alerts: Vec<(String, String)> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .map(|rule| {
            (
                rule["name"].as_str().unwrap_or_default().to_owned(),
                rule["query"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        alerts.len(),
        occurrences(zentra_stack::prometheus::RULES, "- alert:"),
        "{body}"
    );
    for (alert, expr) in alerts {
        let query = every_series_of(&expr);
        if let Err(answer) = returns_series(prometheus, &query).await {
            panic!("{alert}: no series for {query}\n{answer}");
        }
        metrics.extend(metric_names(&expr));
    }
    // And every metric they read exists on its own.
    assert!(metrics.len() >= 15, "{metrics:?}");
    for metric in metrics {
        if let Err(answer) = returns_series(prometheus, &metric).await {
            panic!("no series of {metric}\n{answer}");
        }
    }

    // The control center's charts read the same history through the gateway: order's requests
    // and their p99, with NaN only where Prometheus has no sample yet.
    {
        use zentra_proto::gateway::v1::{
            GetServiceHistoryRequest, gateway_service_client::GatewayServiceClient,
        };
        let mut sessions = GatewayServiceClient::new(gateway.clone());
        let request = |service: &str| {
            keyed(
                GetServiceHistoryRequest {
                    service: service.to_owned(),
                    window: Some(prost_types::Duration {
                        seconds: 300,
                        nanos: 0,
                    }),
                },
                &viewer,
                None,
            )
        };
        // The order went through before Prometheus's first scrape, which a rate cannot see:
        // keep order busy meanwhile (a refused read is a request like any other).
        let orders =
            zentra_proto::order::v1::order_service_client::OrderServiceClient::new(gateway.clone());
        let history = eventually(Duration::from_secs(30), || {
            let mut sessions = sessions.clone();
            let mut orders = orders.clone();
            let read = keyed(
                zentra_proto::order::v1::GetOrderRequest {
                    order_id: "not-an-order-id".to_owned(),
                },
                &viewer,
                None,
            );
            async move {
                let _ = orders.get_order(read).await;
                // A slow answer from Prometheus is asked again.
                let history = sessions
                    .get_service_history(request("order"))
                    .await
                    .ok()?
                    .into_inner();
                let seen = |values: &[f64]| values.iter().any(|v| v.is_finite() && *v > 0.0);
                (seen(&history.requests_per_second) && seen(&history.latency_p99_ms))
                    .then_some(history)
            }
        })
        .await;
        let Some(history) = history else {
            let last = sessions
                .get_service_history(request("order"))
                .await
                .expect("history")
                .into_inner();
            let query = "sum(rate(zentra_grpc_server_requests_total{job=\"order\"}[1m]))";
            panic!(
                "order's requests and p99 are not in its history: {last:?}\nPrometheus: {}",
                returns_series(prometheus, query)
                    .await
                    .err()
                    .unwrap_or_default()
            );
        };
        assert_eq!(
            history.step.expect("step").seconds,
            3,
            "300 s over 120 points"
        );
        assert_eq!(history.requests_per_second.len(), 101);
        assert_eq!(history.latency_p99_ms.len(), 101);
        let unknown = sessions
            .get_service_history(request("billing"))
            .await
            .expect_err("no such process");
        assert_eq!(unknown.code(), tonic::Code::InvalidArgument, "{unknown:?}");
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
        Some("inventory,order,payment,fulfillment,saga,gateway"),
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
    let order = order_through_gateway(
        &gateway,
        &operator,
        "NOSHIP-PARK",
        price.clone(),
        1,
        "tok_approve",
    )
    .await;

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

    // Prometheus sees it, and a minute later the alert fires: it is in the alerts API.
    let prometheus = scratch.prometheus();
    let firing = eventually(Duration::from_secs(120), || async move {
        let (_, body) = http_get(prometheus, "/api/v1/alerts").await;
        let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
        answer["data"]["alerts"]
            .as_array()?
            .iter()
            .any(|alert| {
                alert["labels"]["alertname"] == "ZentraSagaParked" && alert["state"] == "firing"
            })
            .then_some(())
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
