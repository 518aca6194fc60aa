//! A consumer that processes each message before committing its offset: a crash replays what was
//! not committed, so handlers must be idempotent (the inbox makes them so).

use std::{
    future::Future,
    time::{Duration, SystemTime},
};

use prost::Message as _;
use rdkafka::{
    ClientConfig, Message as _, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer as _, StreamConsumer},
    message::{BorrowedMessage, Headers as _},
};
use tokio_util::sync::CancellationToken;
use zentra_proto::events::v1::EventEnvelope;

use crate::{
    config::KafkaConfig,
    dead_letters::{DeadLetterSink, FailedRecord},
    kafka::{
        KafkaFailure,
        lag::{ConsumerLag, LagContext},
    },
    telemetry::names,
};

/// One decoded message.
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    /// Topic it came from.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record key.
    pub key: String,
    /// The event.
    pub envelope: EventEnvelope,
}

/// Why a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (a database or downstream hiccup).
    #[error("transient: {0}")]
    Transient(String),
    /// Will fail again however often it is retried.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// Processes events; must be idempotent, since a message can arrive twice.
pub trait EventHandler: Send + Sync + 'static {
    /// Handles one event.
    fn handle(
        &self,
        event: &ReceivedEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// How a consumer behaves.
#[derive(Clone)]
pub struct ConsumerSettings {
    /// Consumer group (the configured group prefix is prepended).
    pub group: String,
    /// Full topic names.
    pub topics: Vec<String>,
    /// First retry delay of a failing message; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// Attempts before a message is dead-lettered (with a sink; without one it is retried forever).
    pub max_attempts: u32,
    /// Where messages that keep failing go; `None` retries them forever.
    pub dead_letters: Option<DeadLetterSink>,
    /// Where the consumer's lag is reported; `None` does not collect it.
    pub lag: Option<ConsumerLag>,
}

impl ConsumerSettings {
    /// Settings for `group` on `topics`: 3 attempts, 200 ms to 30 s backoff, no dead letters.
    pub fn new(group: impl Into<String>, topics: Vec<String>) -> Self {
        Self {
            group: group.into(),
            topics,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            max_attempts: 3,
            dead_letters: None,
            lag: None,
        }
    }
}

/// A subscribed consumer.
pub struct EventConsumer {
    consumer: StreamConsumer<LagContext>,
    settings: ConsumerSettings,
    group: String,
}

impl EventConsumer {
    /// Subscribes; reading starts at the group's committed offsets, else at the earliest record.
    pub fn subscribe(
        config: &KafkaConfig,
        settings: ConsumerSettings,
    ) -> Result<Self, KafkaFailure> {
        let group = format!("{}{}", config.group_prefix, settings.group);
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("group.id", &group)
            // Offsets are stored only after their message was processed, and committed by the
            // client in the background every 100 ms: one commit request covers many messages.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "100")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set(
                "fetch.wait.max.ms",
                config.fetch_wait.as_millis().max(1).to_string(),
            );
        if settings.lag.is_some() {
            // The statistics carry each partition's lag; no extra broker calls.
            client.set("statistics.interval.ms", "2000");
        }
        let consumer: StreamConsumer<LagContext> = client
            .create_with_context(LagContext {
                group: group.clone(),
                lag: settings.lag.clone(),
            })
            .map_err(KafkaFailure::Setup)?;
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(KafkaFailure::Setup)?;
        Ok(Self {
            consumer,
            settings,
            group,
        })
    }

    /// Consumes until `shutdown` is cancelled. A failing message is retried with backoff and its
    /// offset is not committed until it succeeds; an undecodable one is logged and skipped.
    ///
    /// Offsets are committed asynchronously as messages complete; at shutdown the positions of
    /// what was processed are committed synchronously, so a successor in the group starts exactly
    /// after them.
    pub async fn run<H: EventHandler>(self, handler: H, shutdown: CancellationToken) {
        let mut processed = TopicPartitionList::new();
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                message = self.consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "kafka receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if !self.process(&message, &handler, &shutdown).await {
                break;
            }
            if processed
                .find_partition(message.topic(), message.partition())
                .is_none()
            {
                processed.add_partition(message.topic(), message.partition());
            }
            let next = Offset::Offset(message.offset() + 1);
            if let Err(error) =
                processed.set_partition_offset(message.topic(), message.partition(), next)
            {
                tracing::warn!(%error, "cannot track processed offset");
            }
            if let Err(error) = self.consumer.store_offset_from_message(&message) {
                tracing::warn!(%error, topic = message.topic(), offset = message.offset(), "cannot store a processed offset");
            }
        }
        if processed.count() == 0 {
            return;
        }
        // The synchronous commit blocks on the broker: keep it off the async workers.
        let consumer = self.consumer;
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit(&processed, CommitMode::Sync))
                .await;
        if let Ok(Err(error)) = committed {
            tracing::warn!(%error, "final offset commit failed");
        }
    }

    /// Returns false when shutdown interrupted a retry (the offset must then stay uncommitted).
    async fn process<H: EventHandler>(
        &self,
        message: &BorrowedMessage<'_>,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> bool {
        let topic = message.topic().to_owned();
        let first_failure = SystemTime::now();
        let Some(event) = decode(message) else {
            tracing::error!(topic = %topic, offset = message.offset(), "undecodable message");
            metrics::counter!(names::CONSUMER_MESSAGES, "topic" => topic, "outcome" => "undecodable")
                .increment(1);
            return self
                .dead_letter(
                    message,
                    None,
                    "undecodable message",
                    1,
                    first_failure,
                    shutdown,
                )
                .await;
        };
        let mut backoff = self.settings.initial_backoff;
        let mut attempt = 1u32;
        loop {
            let error = match handler.handle(&event).await {
                Ok(()) => {
                    metrics::counter!(names::CONSUMER_MESSAGES, "topic" => topic, "outcome" => "processed")
                        .increment(1);
                    return true;
                }
                Err(error) => error,
            };
            metrics::counter!(names::CONSUMER_MESSAGES, "topic" => topic.clone(), "outcome" => "failed")
                .increment(1);
            tracing::warn!(
                topic = %topic,
                offset = event.offset,
                event_id = %event.envelope.event_id,
                attempt,
                %error,
                "event handling failed"
            );
            let give_up = matches!(error, HandlerError::Permanent(_))
                || attempt >= self.settings.max_attempts;
            if give_up && self.settings.dead_letters.is_some() {
                let identity = Some((
                    event.envelope.event_id.clone(),
                    event.envelope.event_type.clone(),
                ));
                return self
                    .dead_letter(
                        message,
                        identity,
                        &error.to_string(),
                        attempt,
                        first_failure,
                        shutdown,
                    )
                    .await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.settings.max_backoff);
            attempt += 1;
        }
    }

    /// Parks the message; retries parking until it succeeds (nothing may be lost). Without a
    /// sink the message is skipped with an error log.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        event: Option<(String, String)>,
        error: &str,
        attempts: u32,
        first_failure: SystemTime,
        shutdown: &CancellationToken,
    ) -> bool {
        let Some(sink) = &self.settings.dead_letters else {
            tracing::error!(
                topic = message.topic(),
                offset = message.offset(),
                error,
                "message skipped: no dead-letter sink"
            );
            return true;
        };
        let record = FailedRecord {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
            headers: message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            event,
            first_failure,
        };
        let mut backoff = self.settings.initial_backoff;
        loop {
            match sink.park(&self.group, &record, error, attempts).await {
                Ok(()) => {
                    metrics::counter!(names::CONSUMER_MESSAGES, "topic" => record.topic.clone(), "outcome" => "dead_lettered")
                        .increment(1);
                    return true;
                }
                Err(park_error) => {
                    tracing::warn!(%park_error, topic = %record.topic, offset = record.offset, "dead-lettering failed; retrying");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.settings.max_backoff);
        }
    }
}

fn decode(message: &BorrowedMessage<'_>) -> Option<ReceivedEvent> {
    let envelope = EventEnvelope::decode(message.payload()?).ok()?;
    let key = message
        .key()
        .map(|key| String::from_utf8_lossy(key).into_owned())
        .unwrap_or_default();
    if let Some(headers) = message.headers() {
        // Headers repeat the envelope's fields; trust the envelope, note a mismatch.
        for header in headers.iter() {
            if header.key == "event_id"
                && header.value.map(String::from_utf8_lossy).as_deref() != Some(&envelope.event_id)
            {
                tracing::warn!(event_id = %envelope.event_id, "event_id header differs from envelope");
            }
        }
    }
    Some(ReceivedEvent {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key,
        envelope,
    })
}
