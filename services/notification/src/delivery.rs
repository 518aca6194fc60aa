//! Delivers due notifications by SMTP, records every attempt, retries with exponential backoff
//! and dead-letters a notification after the configured number of attempts.

use std::{sync::Arc, time::Duration};

use lettre::{
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor, message::header::ContentType,
};
use sea_orm::{DatabaseConnection, TransactionTrait as _};
use tokio::sync::Notify;
use tracing::Instrument as _;
use zentra_proto::notification::v1 as pb;
use zentra_runtime::{
    CancellationToken,
    events::{EventMeta, EventTopic},
    outbox::{self, OutboxWaker},
};

use crate::{
    config::NotificationSettings,
    store::{self, Notification},
};

/// Notifications a worker locks and sends at once, at most.
pub const BATCH: usize = 8;

/// The delivery worker.
#[derive(Clone)]
pub struct Delivery {
    db: DatabaseConnection,
    settings: NotificationSettings,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    events_topic: EventTopic,
    waker: OutboxWaker,
}

impl Delivery {
    /// A worker sending through the configured SMTP server.
    pub fn new(
        db: DatabaseConnection,
        settings: NotificationSettings,
        events_topic: EventTopic,
        waker: OutboxWaker,
    ) -> Self {
        let transport =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.smtp_host.clone())
                .port(settings.smtp_port)
                .timeout(Some(settings.smtp_timeout))
                .build();
        Self {
            db,
            settings,
            transport,
            events_topic,
            waker,
        }
    }

    async fn send(&self, notification: &Notification) -> Result<(), String> {
        let message = Message::builder()
            .from(
                self.settings
                    .from
                    .parse()
                    .map_err(|e| format!("sender: {e}"))?,
            )
            .to(notification
                .recipient
                .parse()
                .map_err(|e| format!("recipient: {e}"))?)
            .subject(notification.subject.clone())
            .header(ContentType::TEXT_PLAIN)
            .body(notification.body.clone())
            .map_err(|e| format!("message: {e}"))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Delivers the notifications due now, up to [`BATCH`], in one transaction: locks them in one
    /// statement, sends them concurrently and records every attempt and event in one statement.
    /// Returns whether more may be due: the batch was full, or a mail it sent was holding back a
    /// later one of its order.
    pub async fn deliver_due(&self) -> Result<bool, sea_orm::DbErr> {
        let tx = self.db.begin().await?;
        let due = store::lock_due(&tx, BATCH).await?;
        if due.is_empty() {
            tx.commit().await?;
            return Ok(false);
        }
        let spans: Vec<tracing::Span> = due.iter().map(deliver_span).collect();
        let outcomes = futures::future::join_all(
            due.iter()
                .zip(&spans)
                .map(|(notification, span)| self.send(notification).instrument(span.clone())),
        )
        .await;
        let mut attempted = Vec::with_capacity(due.len());
        let mut events = outbox::Rows::default();
        for ((notification, outcome), span) in due.iter().zip(outcomes).zip(spans) {
            if let Err(error) = &outcome {
                zentra_runtime::telemetry::span_failed(&span, error);
            }
            // The event telling of the attempt continues the delivery's span.
            attempted.push(span.in_scope(|| self.judge(notification, outcome, &mut events))?);
        }
        let emitted = !events.is_empty();
        let unblocked = store::record_attempts(&tx, &attempted, events).await?;
        tx.commit().await?;
        if emitted {
            self.waker.wake();
        }
        Ok(unblocked || due.len() == BATCH)
    }

    /// What an attempt's outcome makes of its notification; the event it emits goes into
    /// `events` when it is published.
    fn judge(
        &self,
        notification: &Notification,
        outcome: Result<(), String>,
        events: &mut outbox::Rows,
    ) -> Result<store::Attempted, sea_orm::DbErr> {
        let attempt = notification.attempts + 1;
        let meta = EventMeta {
            producer: crate::SERVICE,
            aggregate_type: "notification",
            aggregate_id: notification.id.to_string(),
            correlation_id: notification.order_id.to_string(),
            causation_id: notification.trigger_event_id.to_string(),
        };
        let record = |status: &'static str, error: Option<String>, retry_in: Option<Duration>| {
            store::Attempted {
                id: notification.id,
                attempt,
                status,
                error,
                retry_in,
            }
        };
        match outcome {
            Ok(()) => {
                tracing::info!(notification_id = %notification.id, attempt, "notification sent");
                let sent = pb::NotificationSent {
                    notification_id: notification.id.to_string(),
                    customer_id: notification.customer_id.clone(),
                    order_id: notification.order_id.to_string(),
                    channel: pb::NotificationChannel::Email as i32,
                    attempt_count: attempt,
                };
                self.events_topic.push(events, &sent, meta)?;
                Ok(record("SENT", None, None))
            }
            Err(error) if attempt as u32 >= self.settings.max_attempts => {
                tracing::warn!(notification_id = %notification.id, attempt, %error, "notification dead-lettered");
                let failed = pb::NotificationFailed {
                    notification_id: notification.id.to_string(),
                    customer_id: notification.customer_id.clone(),
                    order_id: notification.order_id.to_string(),
                    channel: pb::NotificationChannel::Email as i32,
                    attempt_count: attempt,
                    last_error: error.clone(),
                };
                self.events_topic.push(events, &failed, meta)?;
                Ok(record("DEAD_LETTERED", Some(error), None))
            }
            Err(error) => {
                let retry_in = self.backoff(attempt as u32);
                tracing::info!(notification_id = %notification.id, attempt, %error, retry_in = ?retry_in, "notification delivery failed; will retry");
                Ok(record("RETRYING", Some(error), Some(retry_in)))
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.settings
            .initial_backoff
            .saturating_mul(factor)
            .min(self.settings.max_backoff)
    }
}

/// The client span of one delivery attempt (an SMTP exchange), in the trace of the event that
/// caused the mail.
fn deliver_span(notification: &Notification) -> tracing::Span {
    let span = tracing::info_span!(
        "deliver",
        otel.name = %format_args!("deliver {}", short_type(&notification.trigger_event_type)),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
        zentra.order_id = %notification.order_id,
        zentra.notification_id = %notification.id,
        zentra.event_type = %notification.trigger_event_type,
        zentra.attempt = notification.attempts + 1,
    );
    zentra_runtime::events::continue_trace(&span, &notification.traceparent, "");
    span
}

/// `zentra.order.v1.OrderPlaced` → `OrderPlaced`.
fn short_type(event_type: &str) -> &str {
    event_type.rsplit('.').next().unwrap_or(event_type)
}

/// Delivers due notifications until `shutdown`: at once when `wake` is notified (new
/// notifications committed here). The service's first worker (`polls`) also looks every poll
/// interval (retries, other replicas' leftovers) and wakes another worker when it finds more than
/// one round's work; the others wait for wakes only, so an idle service probes once an interval,
/// not once per worker.
pub async fn run(delivery: Delivery, wake: Arc<Notify>, polls: bool, shutdown: CancellationToken) {
    let interval = delivery.settings.poll_interval;
    loop {
        let mut rounds = 0u32;
        loop {
            match delivery.deliver_due().await {
                Ok(true) => {
                    rounds += 1;
                    if rounds == 1 {
                        // More is due than one round takes: share it.
                        wake.notify_one();
                    }
                }
                Ok(false) => break,
                Err(error) => {
                    tracing::warn!(%error, "notification delivery round failed");
                    break;
                }
            }
        }
        let poll = async {
            if polls {
                tokio::time::sleep(interval).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = poll => {}
        }
    }
}
