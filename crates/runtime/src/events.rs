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

/// Makes `span` a child of the W3C context `traceparent` (and `tracestate`), carried by an event
/// or stored with a row, so work that resumes later, elsewhere, continues the trace it belongs
/// to. An empty or malformed context leaves `span` where it was.
pub fn continue_trace(span: &tracing::Span, traceparent: &str, tracestate: &str) {
    if traceparent.is_empty() {
        return;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if !tracestate.is_empty() {
        carrier.insert("tracestate".to_owned(), tracestate.to_owned());
    }
    let context = TraceContextPropagator::new().extract(&carrier);
    if opentelemetry::trace::TraceContextExt::span(&context)
        .span_context()
        .is_valid()
    {
        let _ = span.set_parent(context);
    }
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`); empty when it has none.
pub fn trace_id(traceparent: &str) -> &str {
    let mut parts = traceparent.split('-');
    match (parts.next(), parts.next()) {
        (Some(_), Some(id)) if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) => id,
        _ => "",
    }
}

/// Decodes an envelope's payload as `M`; `None` when the type differs or the bytes are bad.
pub fn payload<M: prost::Name + Default>(envelope: &EventEnvelope) -> Option<M> {
    envelope.payload.as_ref()?.to_msg::<M>().ok()
}

/// Every event type the contracts declare (the messages of each `events.proto`), by full name.
pub fn event_types() -> Vec<String> {
    use prost::Message as _;
    let Ok(set) = prost_types::FileDescriptorSet::decode(zentra_proto::FILE_DESCRIPTOR_SET) else {
        return Vec::new();
    };
    set.file
        .iter()
        .filter(|file| file.name().ends_with("/events.proto"))
        .flat_map(|file| {
            file.message_type
                .iter()
                .map(move |message| format!("{}.{}", file.package(), message.name()))
        })
        .collect()
}

/// A service's event topic and which of its events are published: those another service reads
/// ([`zentra_proto::PLATFORM_EVENTS`]) and those `outbox.publish` asks for.
#[derive(Debug, Clone)]
pub struct EventTopic {
    base: String,
    name: String,
    publish: std::sync::Arc<[String]>,
}

impl EventTopic {
    /// The topic `name` (full, with its prefix) of base name `base`, publishing besides the
    /// platform's events what `publish` lists (see `OutboxConfig::publish`).
    pub fn new(base: &str, name: String, publish: &[String]) -> Self {
        Self {
            base: base.to_owned(),
            name,
            publish: publish.into(),
        }
    }

    /// The full topic name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether events of `event_type` are published.
    pub fn publishes(&self, event_type: &str) -> bool {
        zentra_proto::PLATFORM_EVENTS.contains(&event_type)
            || self
                .publish
                .iter()
                .any(|entry| entry == "*" || *entry == self.base || entry == event_type)
    }

    /// Writes `payload` to the outbox in the caller's transaction when its type is published;
    /// whether it was.
    pub async fn emit<C: sea_orm::ConnectionTrait, M: prost::Name>(
        &self,
        tx: &C,
        payload: &M,
        meta: EventMeta<'_>,
    ) -> Result<bool, sea_orm::DbErr> {
        let mut rows = crate::outbox::Rows::default();
        if !self.push(&mut rows, payload, meta)? {
            return Ok(false);
        }
        crate::outbox::write(tx, rows).await?;
        Ok(true)
    }

    /// Adds `payload` to `rows` when its type is published, for a statement of the caller's to
    /// write; whether it was.
    pub fn push<M: prost::Name>(
        &self,
        rows: &mut crate::outbox::Rows,
        payload: &M,
        meta: EventMeta<'_>,
    ) -> Result<bool, sea_orm::DbErr> {
        if !self.publishes(&M::full_name()) {
            return Ok(false);
        }
        rows.push(&self.name, &envelope(payload, meta))?;
        let _ = EMITTED.try_with(|emitted| emitted.set(true));
        Ok(true)
    }
}

tokio::task_local! {
    static EMITTED: std::cell::Cell<bool>;
}

/// Runs `work` and tells whether it wrote an event to the outbox through an [`EventTopic`], so
/// the relay is woken after the commit only when there is something to publish.
pub async fn tracked<F: std::future::Future>(work: F) -> (F::Output, bool) {
    EMITTED
        .scope(std::cell::Cell::new(false), async {
            let output = work.await;
            (output, EMITTED.with(std::cell::Cell::get))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_platform_event_is_a_declared_event_type() {
        let known = event_types();
        assert!(
            known
                .iter()
                .any(|name| name == "zentra.inventory.v1.StockReserved")
        );
        for name in zentra_proto::PLATFORM_EVENTS {
            assert!(
                known.iter().any(|known| known == name),
                "{name} is not declared"
            );
        }
    }

    #[test]
    fn a_trace_id_is_read_only_from_a_well_formed_traceparent() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(&format!("00-{id}-00f067aa0ba902b7-01")), id);
        assert_eq!(trace_id(""), "");
        assert_eq!(trace_id("00-not-hex-01"), "");
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01"),
            ""
        );
    }

    #[tokio::test]
    async fn tracked_work_tells_whether_it_wrote_an_event() {
        let (value, emitted) = tracked(async { 7 }).await;
        assert_eq!((value, emitted), (7, false));
        let (_, emitted) = tracked(async {
            let _ = EMITTED.try_with(|emitted| emitted.set(true));
        })
        .await;
        assert!(emitted);
    }

    #[test]
    fn a_topic_publishes_platform_events_and_what_it_is_asked_for() {
        let none = EventTopic::new("inventory.events", "p.inventory.events".to_owned(), &[]);
        assert!(!none.publishes("zentra.inventory.v1.StockReserved"));
        let order = EventTopic::new("order.events", "p.order.events".to_owned(), &[]);
        assert!(order.publishes("zentra.order.v1.OrderPlaced"));
        for publish in ["*", "inventory.events", "zentra.inventory.v1.StockReserved"] {
            let topic = EventTopic::new(
                "inventory.events",
                "p.inventory.events".to_owned(),
                &[publish.to_owned()],
            );
            assert!(
                topic.publishes("zentra.inventory.v1.StockReserved"),
                "{publish}"
            );
        }
        let other = EventTopic::new(
            "inventory.events",
            "p.inventory.events".to_owned(),
            &["payment.events".to_owned()],
        );
        assert!(!other.publishes("zentra.inventory.v1.StockReserved"));
    }
}
