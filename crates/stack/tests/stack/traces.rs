//! One trace per order: every process of the stack exports its spans to a receiver inside the
//! test, and an order is followed from the gateway through the order service, the Kafka hop to
//! the saga, each step's client and server spans, the commands over Kafka and their consumers,
//! the fulfillment worker and notification's deliveries, all under one trace id with each
//! span's parent present.
//!
//! `ZENTRA_TRACE_WATERFALL=<file.svg>` also draws the completed order's trace as a waterfall (the
//! picture in docs/OBSERVABILITY.md).

use std::{collections::BTreeSet, fmt::Write as _, time::Duration};

use zentra_proto::{
    common::v1::Money,
    saga::v1::{Saga, SagaState},
};
use zentra_test_support::{
    eventually,
    otlp::{CollectedSpan, Collector},
};

use crate::helpers::{Scratch, dev_key, gateway_channel, order_through_gateway, saga_where};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_across_every_service_and_kafka_hop() {
    let collector = Collector::start().await;
    let scratch = Scratch::for_platform("traces").await;
    let stack = scratch
        .start_platform(
            vec![
                ("ZENTRA_TELEMETRY__OTLP_ENDPOINT", collector.endpoint()),
                // Export every 200 ms rather than every 5 s.
                ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
            ],
            &[],
        )
        .await;
    let viewer = dev_key(&scratch.state_dir, "ZENTRA_VIEWER_KEY");
    let operator = dev_key(&scratch.state_dir, "ZENTRA_OPERATOR_KEY");
    let gateway = gateway_channel(scratch.gateway_port).await;
    let price = Money {
        currency_code: "USD".to_owned(),
        amount_minor: 1250,
    };

    // Completed: every forward step, the shipment dispatched by the worker, the mails.
    let order = order_through_gateway(
        &gateway,
        &operator,
        "TRACE-MUG",
        price.clone(),
        2,
        "tok_approve",
    )
    .await;
    let saga = ended_saga(&gateway, &viewer, &order.order_id).await;
    assert_eq!(saga.state, SagaState::Completed as i32, "{saga:?}");
    let spans = whole_trace(
        &collector,
        &saga,
        &Expected {
            spans: &COMPLETED_SPANS,
            hops: &[
                ("saga", "order.events", "order"),
                ("saga", "fulfillment.events", "fulfillment"),
                ("notification", "order.events", "order"),
                ("notification", "fulfillment.events", "fulfillment"),
            ],
            retried: None,
        },
    )
    .await;
    if let Ok(path) = std::env::var("ZENTRA_TRACE_WATERFALL") {
        let svg = waterfall(&spans, &order.order_id, &scratch.topic_prefix);
        std::fs::write(&path, svg).expect("write the waterfall");
    }

    // Compensated: payment authorized on its second attempt (a transient processor error
    // first), the shipment fails, and the void and the release go out as commands over Kafka.
    let order = order_through_gateway(
        &gateway,
        &operator,
        "NOSHIP-TRACE",
        price,
        1,
        "tok_transient",
    )
    .await;
    let saga = ended_saga(&gateway, &viewer, &order.order_id).await;
    assert_eq!(saga.state, SagaState::Compensated as i32, "{saga:?}");
    whole_trace(
        &collector,
        &saga,
        &Expected {
            spans: &COMPENSATED_SPANS,
            hops: &[
                ("saga", "order.events", "order"),
                ("saga", "fulfillment.events", "fulfillment"),
                ("inventory", "inventory.commands", "saga"),
                ("payment", "payment.commands", "saga"),
                ("saga", "saga.command-acks", "inventory"),
                ("saga", "saga.command-acks", "payment"),
            ],
            retried: Some("AUTHORIZE_PAYMENT"),
        },
    )
    .await;

    stack.stop().await;
    scratch.clean_up().await;
}

/// Spans (service, name or its prefix) each kind of order's trace must hold.
const COMPLETED_SPANS: [(&str, &str); 12] = [
    ("gateway", "zentra.order.v1.OrderService/PlaceOrder"),
    ("order", "zentra.order.v1.OrderService/PlaceOrder"),
    ("saga", "process "),
    ("saga", "RESERVE_STOCK"),
    (
        "inventory",
        "zentra.inventory.v1.InventoryService/ReserveStock",
    ),
    ("payment", "zentra.payment.v1.PaymentService/Authorize"),
    (
        "fulfillment",
        "zentra.fulfillment.v1.FulfillmentService/CreateShipment",
    ),
    ("fulfillment", "advance shipment"),
    ("payment", "zentra.payment.v1.PaymentService/Capture"),
    ("order", "zentra.order.v1.OrderService/ConfirmOrder"),
    ("notification", "deliver OrderPlaced"),
    ("notification", "deliver OrderConfirmed"),
];

const COMPENSATED_SPANS: [(&str, &str); 10] = [
    ("gateway", "zentra.order.v1.OrderService/PlaceOrder"),
    ("saga", "AUTHORIZE_PAYMENT"),
    ("fulfillment", "advance shipment"),
    ("saga", "send VOID_PAYMENT"),
    ("payment", "process "),
    ("saga", "send RELEASE_STOCK"),
    ("inventory", "process "),
    ("order", "zentra.order.v1.OrderService/RejectOrder"),
    ("notification", "deliver OrderPlaced"),
    ("notification", "deliver OrderRejected"),
];

/// The saga of `order_id` once it ended.
async fn ended_saga(gateway: &tonic::transport::Channel, viewer: &str, order_id: &str) -> Saga {
    let ended = |saga: &Saga| {
        [
            SagaState::Completed,
            SagaState::Compensated,
            SagaState::CompensationFailed,
        ]
        .iter()
        .any(|state| saga.state == *state as i32)
    };
    saga_where(gateway, viewer, order_id, ended, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("the saga of order {order_id} never ended"))
}

/// What an order's trace must show besides one connected tree and a server span under every
/// step call.
struct Expected<'a> {
    /// (service, span name or its prefix) that must be in it.
    spans: &'a [(&'a str, &'a str)],
    /// (consumer, topic, producer): the consumer's span processing the topic is a child of a
    /// span of the producing service.
    hops: &'a [(&'a str, &'a str, &'a str)],
    /// A step whose first call failed and was retried.
    retried: Option<&'a str>,
}

/// The saga's trace once it shows everything `expected` asks (spans are exported as they end,
/// in batches, by seven processes, so the test waits for a snapshot that does); the failure of
/// the last snapshot when none does within 30 s.
async fn whole_trace(
    collector: &Collector,
    saga: &Saga,
    expected: &Expected<'_>,
) -> Vec<CollectedSpan> {
    assert_eq!(
        saga.trace_id.len(),
        32,
        "the saga names its trace: {saga:?}"
    );
    let mut last = (String::new(), Vec::new());
    let whole = eventually(Duration::from_secs(30), || {
        let all = collector.spans();
        let spans = collector.trace(&saga.trace_id);
        let checked = Tree::new(&spans, saga).check(expected, &all);
        let result = match checked {
            Ok(()) => Some(spans.clone()),
            Err(problem) => {
                last = (problem, spans);
                None
            }
        };
        async move { result }
    })
    .await;
    whole.unwrap_or_else(|| {
        panic!(
            "the trace of order {}: {}\n{}",
            saga.order_id,
            last.0,
            outline(&last.1)
        )
    })
}

/// One order's trace, with the questions the test asks of it.
struct Tree<'a> {
    spans: &'a [CollectedSpan],
    saga: &'a Saga,
}

impl<'a> Tree<'a> {
    fn new(spans: &'a [CollectedSpan], saga: &'a Saga) -> Self {
        Self { spans, saga }
    }

    fn parent(&self, span: &CollectedSpan) -> Option<&'a CollectedSpan> {
        self.spans
            .iter()
            .find(|candidate| candidate.span_id == span.parent_span_id)
    }

    fn check(&self, expected: &Expected<'_>, all: &[CollectedSpan]) -> Result<(), String> {
        for (service, name) in expected.spans {
            if !self
                .spans
                .iter()
                .any(|span| span.service == *service && span.name.starts_with(name))
            {
                return Err(format!("no {service} span {name}"));
            }
        }
        self.one_connected_tree(all)?;
        self.every_step_call_served()?;
        self.kafka_hops(expected.hops)?;
        self.worker_and_deliveries()?;
        if let Some(step) = expected.retried {
            self.retry_visible(step)?;
        }
        Ok(())
    }

    /// One root (the gateway's), every other span's parent in the trace, every service present,
    /// and no span about this order, among `all` received, outside the trace.
    fn one_connected_tree(&self, all: &[CollectedSpan]) -> Result<(), String> {
        let roots: Vec<&CollectedSpan> = self
            .spans
            .iter()
            .filter(|span| span.parent_span_id.is_empty())
            .collect();
        if roots.len() != 1 || roots[0].service != "gateway" {
            return Err(format!(
                "one root, the gateway's, expected; roots: {roots:?}"
            ));
        }
        if let Some(orphan) = self
            .spans
            .iter()
            .find(|span| !span.parent_span_id.is_empty() && self.parent(span).is_none())
        {
            return Err(format!("the parent of {orphan:?} is not in the trace"));
        }
        let services: BTreeSet<&str> = self
            .spans
            .iter()
            .map(|span| span.service.as_str())
            .collect();
        let platform = zentra_stack::settings::SERVICES.map(|service| service.name());
        for service in platform.iter().chain(&["gateway"]) {
            if !services.contains(service) {
                return Err(format!("no span of {service} in the trace"));
            }
        }
        let order_id = &self.saga.order_id;
        for span in self.spans {
            let about = span.attribute("zentra.order_id");
            if !about.is_empty() && about != order_id {
                return Err(format!(
                    "a span of order {about} is in the trace of {order_id}: {span:?}"
                ));
            }
        }
        if let Some(stray) = all.iter().find(|span| {
            span.attribute("zentra.order_id") == order_id && span.trace_id != self.saga.trace_id
        }) {
            return Err(format!(
                "a span of order {order_id} in another trace: {stray:?}"
            ));
        }
        Ok(())
    }

    /// Every step call is a client span of the saga, named after the step, with the saga's and
    /// the order's ids, in a saga span, and the participant's server span is its child.
    fn every_step_call_served(&self) -> Result<(), String> {
        let calls: Vec<&CollectedSpan> = self
            .spans
            .iter()
            .filter(|span| span.service == "saga" && span.kind == "CLIENT")
            .collect();
        if calls.is_empty() {
            return Err("no step calls".to_owned());
        }
        for call in calls {
            let step = call.attribute("zentra.step");
            if call.attribute("zentra.saga_id") != self.saga.saga_id
                || call.attribute("zentra.order_id") != self.saga.order_id
                || step.is_empty()
                || !call.name.ends_with(step)
            {
                return Err(format!(
                    "a step call without its step, saga or order: {call:?}"
                ));
            }
            if self
                .parent(call)
                .is_none_or(|parent| parent.service != "saga")
            {
                return Err(format!("a step call outside a saga span: {call:?}"));
            }
            let served = self.spans.iter().any(|span| {
                span.kind == "SERVER"
                    && span.parent_span_id == call.span_id
                    && span.service != "saga"
            });
            if !served {
                return Err(format!("no server span under the call {}", call.name));
            }
        }
        Ok(())
    }

    /// Each `(consumer, topic, producer)`: the consumer's span processing `topic` is a child of a
    /// span of the producing service, with OpenTelemetry's messaging attributes.
    fn kafka_hops(&self, hops: &[(&str, &str, &str)]) -> Result<(), String> {
        for (consumer, topic, producer) in hops {
            let found = self.spans.iter().any(|span| {
                span.service == *consumer
                    && span.kind == "CONSUMER"
                    && span
                        .attribute("messaging.destination.name")
                        .ends_with(topic)
                    && span.attribute("messaging.system") == "kafka"
                    && span.attribute("messaging.operation.type") == "process"
                    && !span.attribute("messaging.message.id").is_empty()
                    && !span.attribute("messaging.kafka.offset").is_empty()
                    && self
                        .parent(span)
                        .is_some_and(|parent| parent.service == *producer)
            });
            if !found {
                return Err(format!(
                    "no {consumer} span processing {topic} as a child of a {producer} span"
                ));
            }
        }
        Ok(())
    }

    /// The fulfillment worker's steps continue the shipment's creation; each mail's delivery
    /// continues the consumption of the event it answers; there is at least one of each.
    fn worker_and_deliveries(&self) -> Result<(), String> {
        let (mut rounds, mut deliveries) = (0, 0);
        for span in self.spans {
            let parent = self.parent(span);
            if span.name == "advance shipment" {
                rounds += 1;
                if parent.is_none_or(|parent| {
                    !parent.name.ends_with("FulfillmentService/CreateShipment")
                }) {
                    return Err(format!("a worker round not under CreateShipment: {span:?}"));
                }
            }
            if span.name.starts_with("deliver ") {
                deliveries += 1;
                if parent.is_none_or(|parent| {
                    parent.service != "notification" || parent.kind != "CONSUMER"
                }) {
                    return Err(format!(
                        "a delivery not under its event's consumption: {span:?}"
                    ));
                }
            }
        }
        if rounds == 0 || deliveries == 0 {
            return Err(format!("{rounds} worker rounds, {deliveries} deliveries"));
        }
        Ok(())
    }

    /// `step` failed once, visibly (an error and the retry it scheduled), then succeeded.
    fn retry_visible(&self, step: &str) -> Result<(), String> {
        let calls: Vec<&CollectedSpan> = self
            .spans
            .iter()
            .filter(|span| span.kind == "CLIENT" && span.name == step)
            .collect();
        let failed = calls.iter().any(|call| {
            call.attribute("zentra.attempt") == "1"
                && call.error
                && call.events.iter().any(|event| event == "retry scheduled")
        });
        let succeeded = calls
            .iter()
            .any(|call| call.attribute("zentra.attempt") == "2" && !call.error);
        if !failed || !succeeded {
            return Err(format!(
                "{step}: a failed first attempt with its retry, then a success, expected"
            ));
        }
        Ok(())
    }
}

/// The trace as an indented outline, for failure messages.
fn outline(spans: &[CollectedSpan]) -> String {
    let mut text = String::new();
    for span in roots_first(spans) {
        let _ = writeln!(
            text,
            "{}{} [{} {}] {}",
            "  ".repeat(span.1),
            span.0.name,
            span.0.service,
            span.0.kind,
            if span.0.error { "ERROR" } else { "" }
        );
    }
    text
}

/// Spans depth-first from the roots, children by start time; orphans at the end at depth 0.
fn roots_first(spans: &[CollectedSpan]) -> Vec<(&CollectedSpan, usize)> {
    fn visit<'a>(
        spans: &'a [CollectedSpan],
        span: &'a CollectedSpan,
        depth: usize,
        seen: &mut BTreeSet<&'a str>,
        out: &mut Vec<(&'a CollectedSpan, usize)>,
    ) {
        if !seen.insert(&span.span_id) {
            return;
        }
        out.push((span, depth));
        for child in spans
            .iter()
            .filter(|child| child.parent_span_id == span.span_id)
        {
            visit(spans, child, depth + 1, seen, out);
        }
    }
    let ids: BTreeSet<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for root in spans
        .iter()
        .filter(|span| !ids.contains(span.parent_span_id.as_str()))
    {
        visit(spans, root, 0, &mut seen, &mut out);
    }
    out
}

/// The trace as an SVG waterfall: one row per span, indented by depth, a bar from its start to
/// its end on a shared time axis, coloured by service; topic names without the test's prefix.
fn waterfall(spans: &[CollectedSpan], order_id: &str, topic_prefix: &str) -> String {
    const ROW: usize = 18;
    const LABEL: usize = 430;
    const CHART: usize = 660;
    const TOP: usize = 44;
    let rows = roots_first(spans);
    let start = spans.iter().map(|span| span.start_ns).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|span| span.end_ns)
        .max()
        .unwrap_or(start + 1);
    let total_ms = (end.saturating_sub(start) as f64 / 1e6).max(1.0);
    let x =
        |ns: u64| LABEL as f64 + (ns.saturating_sub(start) as f64 / 1e6) / total_ms * CHART as f64;
    const COLOURS: [(&str, &str); 7] = [
        ("gateway", "#6b7280"),
        ("order", "#2563eb"),
        ("saga", "#7c3aed"),
        ("inventory", "#059669"),
        ("payment", "#d97706"),
        ("fulfillment", "#0891b2"),
        ("notification", "#db2777"),
    ];
    let colour = |service: &str| {
        COLOURS
            .iter()
            .find(|(name, _)| *name == service)
            .map_or("#9ca3af", |(_, colour)| *colour)
    };
    let height = TOP + rows.len() * ROW + 30;
    let width = LABEL + CHART + 20;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r##"<text x="8" y="16" font-size="13" font-weight="bold">One order's trace ({} spans, {:.0} ms), exported by the stack's processes</text>"##,
        spans.len(),
        total_ms
    );
    let _ = writeln!(
        svg,
        r##"<text x="8" y="32" fill="#555">order {order_id}</text>"##
    );
    for (index, (service, colour)) in COLOURS.iter().enumerate() {
        let at = LABEL + index * 92;
        let _ = writeln!(
            svg,
            r##"<rect x="{at}" y="23" width="10" height="10" fill="{colour}"/><text x="{}" y="32">{service}</text>"##,
            at + 14
        );
    }
    // Time axis: a tick every tenth of the span.
    for tick in 0..=10 {
        let at = LABEL as f64 + tick as f64 * CHART as f64 / 10.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{at:.1}" y1="{TOP}" x2="{at:.1}" y2="{}" stroke="#e5e7eb"/><text x="{at:.1}" y="{}" text-anchor="middle" fill="#555">{:.0} ms</text>"##,
            height - 24,
            height - 10,
            total_ms * tick as f64 / 10.0
        );
    }
    for (row, (span, depth)) in rows.iter().enumerate() {
        let y = TOP + row * ROW;
        let name = span.name.replace(topic_prefix, "");
        let label = format!("{}{} · {name}", "  ".repeat(*depth), span.service);
        let label = xml(&label);
        let _ = writeln!(
            svg,
            r##"<text x="8" y="{}" xml:space="preserve">{label}</text>"##,
            y + 12
        );
        let (from, to) = (x(span.start_ns), x(span.end_ns));
        let _ = writeln!(
            svg,
            r##"<rect x="{from:.1}" y="{}" width="{:.1}" height="{}" fill="{}"{}/>"##,
            y + 3,
            (to - from).max(1.5),
            ROW - 6,
            colour(&span.service),
            if span.error {
                r##" stroke="#dc2626" stroke-width="2""##
            } else {
                ""
            }
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
