//! Building event envelopes: ids, times, correlation and the current trace context.

use std::{collections::HashMap, time::SystemTime};

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;
use zentra_proto::events::v1::{EventEnvelope, TraceContext};

/// Who and what an event is about.
#[derive(Debug, Clone)]
pub struct EventMeta<'a> {
    /// Producing service.
    pub producer: &'a str,
    /// Aggregate kind, for example "reservation".
    pub aggregate_type: &'a str,
    /// Aggregate id; also the Kafka key.
    pub aggregate_id: String,
    /// Business flow id (the order id).
    pub correlation_id: String,
    /// The event or command that caused this one, if any.
    pub causation_id: String,
}

/// Wraps `payload` in an envelope with a new time-ordered id and the current span's trace context.
pub fn envelope<M: prost::Name>(payload: &M, meta: EventMeta<'_>) -> EventEnvelope {
    EventEnvelope {
        event_id: Uuid::now_v7().to_string(),
        event_type: M::full_name(),
        occur_time: Some(prost_types::Timestamp::from(SystemTime::now())),
        aggregate_type: meta.aggregate_type.to_owned(),
        aggregate_id: meta.aggregate_id,
        correlation_id: meta.correlation_id,
        causation_id: meta.causation_id,
        trace_context: Some(current_trace_context()),
        producer: meta.producer.to_owned(),
        payload: prost_types::Any::from_msg(payload).ok(),
    }
}

/// The W3C trace context of the current span (empty when there is none).
pub fn current_trace_context() -> TraceContext {
    let context = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    TraceContext {
        traceparent: carrier.remove("traceparent").unwrap_or_default(),
        tracestate: carrier.remove("tracestate").unwrap_or_default(),
    }
}

/// Decodes an envelope's payload as `M`; `None` when the type differs or the bytes are bad.
pub fn payload<M: prost::Name + Default>(envelope: &EventEnvelope) -> Option<M> {
    envelope.payload.as_ref()?.to_msg::<M>().ok()
}
