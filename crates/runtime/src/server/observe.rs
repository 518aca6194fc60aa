//! Per-RPC span and metrics. The span's parent is the caller's W3C trace context, so the trace
//! continues across services and into the events the handler writes.

use std::{
    collections::HashSet,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{rpc_stats::RpcStats, telemetry::names};

/// Wraps services with [`Observe`].
#[derive(Clone)]
pub struct ObserveLayer {
    /// `service/method` paths served here; any other path is labelled `unknown`, so callers
    /// cannot grow the number of time series.
    known_methods: Arc<HashSet<String>>,
    /// The rolling window the ops snapshot reads, fed by the RPCs of these services.
    window: Option<(RpcStats, Arc<HashSet<String>>)>,
    /// Paths of streaming RPCs: counted, but kept out of the latency histogram and the window,
    /// whose durations would otherwise mix stream starts with unary calls.
    streaming: Arc<HashSet<String>>,
}

impl ObserveLayer {
    /// Observes RPCs of the given `service/method` paths.
    pub fn new(known_methods: impl IntoIterator<Item = String>) -> Self {
        Self {
            known_methods: Arc::new(known_methods.into_iter().collect()),
            window: None,
            streaming: Arc::default(),
        }
    }

    /// Marks these of the known paths as streaming RPCs.
    pub fn streaming(mut self, paths: impl IntoIterator<Item = String>) -> Self {
        self.streaming = Arc::new(paths.into_iter().collect());
        self
    }

    /// Also records the RPCs of `services` (the domain, not ops or health) into `stats`.
    pub fn recording(
        mut self,
        stats: RpcStats,
        services: impl IntoIterator<Item = String>,
    ) -> Self {
        self.window = Some((stats, Arc::new(services.into_iter().collect())));
        self
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            known_methods: self.known_methods.clone(),
            window: self.window.clone(),
            streaming: self.streaming.clone(),
        }
    }
}

/// Records a span, a request count, an error count and a latency histogram per RPC.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    known_methods: Arc<HashSet<String>>,
    window: Option<(RpcStats, Arc<HashSet<String>>)>,
    streaming: Arc<HashSet<String>>,
}

impl<S, B, ResBody> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Take the service that was driven to readiness; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some((service, method)) = rpc_name(request.uri().path(), &self.known_methods) else {
            return Box::pin(inner.call(request));
        };

        let span = tracing::info_span!(
            "rpc",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        let _ = span.set_parent(parent);

        let path = format!("{service}/{method}");
        let streaming = self.streaming.contains(&path);
        let window = self
            .window
            .as_ref()
            .filter(|(_, services)| !streaming && services.contains(&service))
            .map(|(stats, _)| stats.clone());
        let started = Instant::now();
        let future = inner.call(request);
        Box::pin(
            async move {
                let result = future.await;
                let code = match &result {
                    Ok(response) => grpc_status(response.headers()),
                    Err(_) => tonic::Code::Internal as i32,
                };
                tracing::Span::current().record("rpc.grpc.status_code", code);
                let code_name = code_name(code);
                metrics::counter!(names::GRPC_REQUESTS, "service" => service.clone(), "method" => method.clone(), "code" => code_name)
                    .increment(1);
                if code != 0 {
                    metrics::counter!(names::GRPC_ERRORS, "service" => service.clone(), "method" => method.clone(), "code" => code_name)
                        .increment(1);
                }
                let elapsed = started.elapsed();
                if let Some(window) = window {
                    window.record(&path, code == 0, elapsed);
                }
                // A stream's call ends when it starts: its time says nothing a caller waits for.
                if !streaming {
                    metrics::histogram!(names::GRPC_DURATION, "service" => service, "method" => method)
                        .record(elapsed.as_secs_f64());
                }
                tracing::debug!(code = code_name, elapsed_ms = elapsed.as_millis() as u64, "rpc finished");
                result
            }
            .instrument(span),
        )
    }
}

/// `(service, method)` of a gRPC path; `None` for other HTTP paths such as `/metrics`.
fn rpc_name(path: &str, known: &HashSet<String>) -> Option<(String, String)> {
    let full = path.strip_prefix('/')?;
    let (service, method) = full.split_once('/')?;
    if known.contains(full) {
        Some((service.to_owned(), method.to_owned()))
    } else {
        Some(("unknown".to_owned(), "unknown".to_owned()))
    }
}

/// A failed unary call answers "trailers-only", with grpc-status in the headers; a successful one
/// puts it in the trailers, so no header means OK as far as the response head tells.
fn grpc_status(headers: &HeaderMap) -> i32 {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

fn code_name(code: i32) -> &'static str {
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}
