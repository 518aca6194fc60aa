//! Spans leave the process over OTLP/gRPC when an endpoint is configured. This test binary is its
//! own process, so its telemetry setup does not meet other tests'.

use std::time::Duration;

use zentra_runtime::{config::TelemetryConfig, telemetry};
use zentra_test_support::{eventually, otlp::Collector};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_when_an_endpoint_is_configured() {
    let collector = Collector::start().await;
    let guard = telemetry::init(
        "otlp-test",
        &TelemetryConfig {
            log_filter: "off".to_owned(),
            otlp_endpoint: Some(collector.endpoint()),
            ..TelemetryConfig::default()
        },
    )
    .expect("telemetry");
    tracing::info_span!("reserve_checkout_stock").in_scope(|| {
        tracing::info!("inside the span");
    });
    let flushing = guard.telemetry().clone();
    tokio::task::spawn_blocking(move || flushing.flush())
        .await
        .expect("flushed");

    let span = eventually(Duration::from_secs(10), || {
        let found = collector
            .spans()
            .into_iter()
            .find(|span| span.name == "reserve_checkout_stock");
        async move { found }
    })
    .await
    .expect("the span arrives");
    assert_eq!(span.service, "otlp-test");
    assert_eq!(span.events, ["inside the span"]);
}
