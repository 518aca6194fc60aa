//! Spans leave the process over OTLP/gRPC when an endpoint is configured. This test binary is its
//! own process, so its telemetry setup does not meet other tests'.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};
use zentra_runtime::{config::TelemetryConfig, telemetry};

/// A minimal OTLP collector: forwards every export to the test.
struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let _ = self.0.send(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_when_an_endpoint_is_configured() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (exports, mut received) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(exports)))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    let guard = telemetry::init(
        "otlp-test",
        &TelemetryConfig {
            log_filter: "off".to_owned(),
            otlp_endpoint: Some(format!("http://{addr}")),
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

    let export = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .expect("an export arrives")
        .expect("collector alive");
    let spans: Vec<_> = export
        .resource_spans
        .iter()
        .flat_map(|resource| &resource.scope_spans)
        .flat_map(|scope| &scope.spans)
        .map(|span| span.name.clone())
        .collect();
    assert!(
        spans.iter().any(|name| name == "reserve_checkout_stock"),
        "{spans:?}"
    );
    let service_name = export.resource_spans[0]
        .resource
        .as_ref()
        .and_then(|resource| {
            resource
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
        })
        .and_then(|kv| kv.value.as_ref())
        .map(|value| format!("{value:?}"))
        .unwrap_or_default();
    assert!(service_name.contains("otlp-test"), "{service_name}");
}
