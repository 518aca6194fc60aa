//! One call sets up logs (with a filter that can change at runtime), OpenTelemetry traces (exported
//! over OTLP only when an endpoint is configured) and the Prometheus recorder. Telemetry is
//! process-wide: a second call (several services in one test process) reuses the first setup.

use std::sync::{Arc, Mutex, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer as _, Registry, filter::LevelFilter, layer::SubscriberExt as _, reload,
};

use crate::config::{LogFormat, TelemetryConfig};

pub mod names;

/// Marks `span` as failed, for `why`: its exported status is an error with that message. The
/// span must declare `otel.status_code` and `otel.status_message` (as `Empty`) to take them.
pub fn span_failed(span: &tracing::Span, why: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_message", why);
}

/// Handles to the process's telemetry; cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    log_filter: LogControl,
    prometheus: PrometheusHandle,
    tracer_provider: SdkTracerProvider,
}

impl Telemetry {
    /// Changes and reads the log filter at runtime.
    pub fn log_filter(&self) -> &LogControl {
        &self.log_filter
    }

    /// Renders the Prometheus exposition text.
    pub fn render_metrics(&self) -> String {
        self.prometheus.render()
    }

    /// Flushes buffered spans; call before exit.
    pub fn flush(&self) {
        if let Err(error) = self.tracer_provider.force_flush() {
            tracing::warn!(%error, "flushing spans failed");
        }
    }
}

/// Flushes spans when the binary's `main` returns.
pub struct TelemetryGuard(Telemetry);

impl TelemetryGuard {
    /// The telemetry handles.
    pub fn telemetry(&self) -> &Telemetry {
        &self.0
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// The runtime-changeable log filter.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Arc<Mutex<String>>,
}

/// A log filter that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid log filter {filter:?}: {reason}")]
pub struct InvalidLogFilter {
    /// The rejected filter.
    pub filter: String,
    /// Why it was rejected.
    pub reason: String,
}

impl LogControl {
    /// The filter in force.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .map(|current| current.clone())
            .unwrap_or_default()
    }

    /// Replaces the filter; returns the previous one.
    pub fn set(&self, filter: &str) -> Result<String, InvalidLogFilter> {
        let parsed = parse_filter(filter)?;
        self.handle
            .reload(parsed)
            .map_err(|error| InvalidLogFilter {
                filter: filter.to_owned(),
                reason: error.to_string(),
            })?;
        let mut current = self.current.lock().map_err(|_| InvalidLogFilter {
            filter: filter.to_owned(),
            reason: "log filter lock poisoned".to_owned(),
        })?;
        Ok(std::mem::replace(&mut *current, filter.to_owned()))
    }
}

fn parse_filter(filter: &str) -> Result<EnvFilter, InvalidLogFilter> {
    if filter.trim().is_empty() || filter.len() > 1024 {
        return Err(InvalidLogFilter {
            filter: filter.to_owned(),
            reason: "must be 1..=1024 characters".to_owned(),
        });
    }
    EnvFilter::builder()
        .parse(filter)
        .map_err(|error| InvalidLogFilter {
            filter: filter.to_owned(),
            reason: error.to_string(),
        })
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Initialises logs, traces and metrics for `service`; later calls return the first setup.
pub fn init(service: &str, config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    if let Some(existing) = TELEMETRY.get() {
        return Ok(TelemetryGuard(existing.clone()));
    }
    let telemetry = build(service, config)?;
    let telemetry = TELEMETRY.get_or_init(|| telemetry).clone();
    Ok(TelemetryGuard(telemetry))
}

fn build(service: &str, config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let filter = parse_filter(&config.log_filter)?;
    let (filter_layer, handle) = reload::Layer::new(filter);

    // Spans always get trace ids (so incoming trace context flows into events and logs); they
    // leave the process only when an OTLP endpoint is configured.
    let mut provider = SdkTracerProvider::builder().with_resource(
        Resource::builder()
            .with_service_name(service.to_owned())
            .build(),
    );
    if let Some(endpoint) = &config.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()?;
        provider = provider.with_batch_exporter(exporter);
    }
    let tracer_provider = provider.build();
    let tracer = tracer_provider.tracer(service.to_owned());

    let fmt_layer = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(true)
            // Colors only for a person at a terminal, not for a supervisor's pipe or a file.
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stdout())
                    && std::env::var_os("NO_COLOR").is_none(),
            )
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
    };
    // The runtime-changeable filter governs log output only: spans keep flowing to OpenTelemetry
    // (and so trace context keeps flowing into events) even when logs are quiet.
    let subscriber = tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter_layer))
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(LevelFilter::INFO),
        );
    // Another subscriber may already be installed (a test harness); ours then stays unused.
    let _ = tracing::subscriber::set_global_default(subscriber);

    let prometheus = install_prometheus()?;
    Ok(Telemetry {
        log_filter: LogControl {
            handle,
            current: Arc::new(Mutex::new(config.log_filter.clone())),
        },
        prometheus,
        tracer_provider,
    })
}

fn install_prometheus() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ],
        )?
        .install_recorder()?;
    names::describe();
    // Histograms are kept as bucket counts; upkeep drains their sample buffers.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("prometheus-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })?;
    Ok(handle)
}
