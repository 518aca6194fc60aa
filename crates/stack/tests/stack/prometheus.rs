//! `just up --prometheus`: Prometheus beside the stack scrapes the gateway with a key and every
//! service over mutual TLS with a certificate of the stack's CA, loads the platform's alert rules
//! and evaluates them, and has the state gauges operators alert on.

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
