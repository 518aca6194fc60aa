//! Delivers due notifications by SMTP, records every attempt, retries with exponential backoff
//! and dead-letters a notification after the configured number of attempts.

use std::{sync::Arc, time::Duration};

use lettre::{
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor, message::header::ContentType,
};
use sea_orm::{DatabaseConnection, TransactionTrait as _};
use tokio::sync::Notify;
use zentra_proto::notification::v1 as pb;
use zentra_runtime::{
    CancellationToken,
    events::{EventMeta, EventTopic},
    outbox::OutboxWaker,
};

use crate::{
    config::NotificationSettings,
    store::{self, Notification},
};

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

    /// Delivers one due notification; returns false when none was due.
    pub async fn deliver_one(&self) -> Result<bool, sea_orm::DbErr> {
        let tx = self.db.begin().await?;
        let Some(notification) = store::lock_due(&tx).await? else {
            return Ok(false);
        };
        let outcome = self.send(&notification).await;
        let attempt = notification.attempts + 1;
        let meta = EventMeta {
            producer: crate::SERVICE,
            aggregate_type: "notification",
            aggregate_id: notification.id.to_string(),
            correlation_id: notification.order_id.to_string(),
            causation_id: notification.trigger_event_id.to_string(),
        };
        let mut emitted = false;
        match outcome {
            Ok(()) => {
                store::record_attempt(&tx, &notification, None, "SENT", None).await?;
                let event = pb::NotificationSent {
                    notification_id: notification.id.to_string(),
                    customer_id: notification.customer_id.clone(),
                    order_id: notification.order_id.to_string(),
                    channel: pb::NotificationChannel::Email as i32,
                    attempt_count: attempt,
                };
                emitted = self.events_topic.emit(&tx, &event, meta).await?;
                tracing::info!(notification_id = %notification.id, attempt, "notification sent");
            }
            Err(error) if attempt as u32 >= self.settings.max_attempts => {
                store::record_attempt(&tx, &notification, Some(&error), "DEAD_LETTERED", None)
                    .await?;
                let event = pb::NotificationFailed {
                    notification_id: notification.id.to_string(),
                    customer_id: notification.customer_id.clone(),
                    order_id: notification.order_id.to_string(),
                    channel: pb::NotificationChannel::Email as i32,
                    attempt_count: attempt,
                    last_error: error.clone(),
                };
                emitted = self.events_topic.emit(&tx, &event, meta).await?;
                tracing::warn!(notification_id = %notification.id, attempt, %error, "notification dead-lettered");
            }
            Err(error) => {
                let retry_in = self.backoff(attempt as u32);
                store::record_attempt(&tx, &notification, Some(&error), "RETRYING", Some(retry_in))
                    .await?;
                tracing::info!(notification_id = %notification.id, attempt, %error, retry_in = ?retry_in, "notification delivery failed; will retry");
            }
        }
        tx.commit().await?;
        if emitted {
            self.waker.wake();
        }
        Ok(true)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.settings
            .initial_backoff
            .saturating_mul(factor)
            .min(self.settings.max_backoff)
    }
}

/// Delivers due notifications until `shutdown`: at once when `wake` is notified (new
/// notifications committed), else every poll interval (retries, other replicas' work).
pub async fn run(delivery: Delivery, wake: Arc<Notify>, shutdown: CancellationToken) {
    let interval = delivery.settings.poll_interval;
    loop {
        loop {
            match delivery.deliver_one().await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(error) => {
                    tracing::warn!(%error, "notification delivery round failed");
                    break;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(interval) => {}
        }
    }
}
