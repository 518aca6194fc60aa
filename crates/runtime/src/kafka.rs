//! Kafka through rdkafka: an idempotent producer that rebuilds itself after a fatal error, topic
//! setup, and consumers whose partitions and offsets are kept in PostgreSQL.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
};

use crate::config::KafkaConfig;

use self::delivery::ProducerClient;

mod consumer;
mod delivery;
mod lag;
pub mod leases;
mod tail;
mod topics;
pub mod wake;

pub use consumer::{ConsumerSettings, EventConsumer, EventHandler, HandlerError, ReceivedEvent};
pub use lag::{ConsumerLag, ConsumerProblem, PartitionLag};
pub use leases::{Fence, LAST_RECORD_MIGRATION, MIGRATION as LEASES_MIGRATION};
pub use tail::TopicTail;
pub use topics::{BrokerTopics, MAX_TOPICS, PartitionInfo, TopicInfo};

/// Kafka failures, with the topic they concern.
#[derive(Debug, thiserror::Error)]
pub enum KafkaFailure {
    /// A client could not be created from the configuration.
    #[error("kafka client setup failed: {0}")]
    Setup(#[source] KafkaError),
    /// A record was not acknowledged.
    #[error("publishing to {topic} failed: {source}")]
    Publish {
        /// The topic.
        topic: String,
        /// What the client said.
        #[source]
        source: KafkaError,
    },
    /// A topic could not be created.
    #[error("creating topic {topic} failed: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// What the broker said.
        reason: String,
    },
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition.
    pub partition: i32,
    /// Offset within it.
    pub offset: i64,
}

/// An idempotent producer (`enable.idempotence`, `acks=all`): a retried send never duplicates a
/// record within a producer session. A fatal error (an idempotence failure such as
/// `UnknownProducerId` after the broker lost its state) replaces the client with a new one, and a
/// topic the broker no longer knows is created again, so no process restart is needed.
#[derive(Clone)]
pub struct EventProducer {
    producer: Arc<RwLock<ProducerClient>>,
    config: KafkaConfig,
    client_id: Arc<str>,
    /// Topics whose existence a failed send is checking: a failed batch asks the broker once.
    checking: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Announces topics that received records, when hints are configured.
    wake: Option<wake::WakePublisher>,
}

fn create_producer(config: &KafkaConfig, client_id: &str) -> Result<ProducerClient, KafkaFailure> {
    let settings = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set(
            "delivery.timeout.ms",
            config.delivery_timeout.as_millis().to_string(),
        )
        .clone();
    ProducerClient::new(&settings).map_err(KafkaFailure::Setup)
}

fn wake_publisher(config: &KafkaConfig) -> Option<wake::WakePublisher> {
    let url = config.wake_url.expose();
    if url.is_empty() {
        return None;
    }
    wake::WakePublisher::new(url)
        .inspect_err(|error| tracing::warn!(%error, "wake hints disabled: bad Redis URL"))
        .ok()
}

impl EventProducer {
    /// Creates the producer; it connects lazily.
    pub fn new(config: &KafkaConfig, client_id: &str) -> Result<Self, KafkaFailure> {
        Ok(Self {
            producer: Arc::new(RwLock::new(create_producer(config, client_id)?)),
            config: config.clone(),
            client_id: client_id.into(),
            checking: Arc::default(),
            wake: wake_publisher(config),
        })
    }

    fn client(&self) -> ProducerClient {
        match self.producer.read() {
            Ok(producer) => producer.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Sends one record and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<Delivered, KafkaFailure> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        let producer = self.client();
        let result = producer
            .send(topic, key, payload, owned, self.config.delivery_timeout)
            .await;
        match result {
            Ok((partition, offset)) => {
                metrics::counter!(crate::telemetry::names::KAFKA_PRODUCED, "topic" => topic.to_owned())
                    .increment(1);
                if let Some(wake) = &self.wake {
                    wake.announce(topic);
                }
                Ok(Delivered { partition, offset })
            }
            Err(source) => {
                self.recover(&producer, topic, &source).await;
                Err(KafkaFailure::Publish {
                    topic: topic.to_owned(),
                    source,
                })
            }
        }
    }

    /// After a failed send: rebuilds a producer in a fatal state, and creates the topic again
    /// when the broker no longer knows it. The caller retries the send.
    async fn recover(&self, failed: &ProducerClient, topic: &str, error: &KafkaError) {
        let code = error.rdkafka_error_code();
        // A record that timed out was retried by the client for the whole delivery timeout: after
        // a broker that lost its state, an idempotent producer's sequence can stay stuck without
        // a fatal error being raised, so a timeout replaces the client too (cheap, and rare).
        let fatal = failed.client().fatal_error().is_some()
            || matches!(
                code,
                Some(
                    RDKafkaErrorCode::UnknownProducerId
                        | RDKafkaErrorCode::OutOfOrderSequenceNumber
                        | RDKafkaErrorCode::InvalidProducerEpoch
                        | RDKafkaErrorCode::Fatal
                        | RDKafkaErrorCode::MessageTimedOut
                )
            );
        if fatal && let Ok(mut current) = self.producer.write() {
            // Sends that failed together replace the client once.
            if std::ptr::eq(current.client().native_ptr(), failed.client().native_ptr()) {
                match create_producer(&self.config, &self.client_id) {
                    Ok(fresh) => {
                        *current = fresh;
                        tracing::warn!(%error, "producer failed; replaced it with a new one");
                        metrics::counter!(crate::telemetry::names::KAFKA_RECOVERIES, "kind" => "producer_rebuilt")
                            .increment(1);
                    }
                    Err(setup) => tracing::warn!(%setup, "cannot rebuild the producer"),
                }
            }
        }
        let missing = matches!(
            code,
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
        ) || matches!(code, Some(RDKafkaErrorCode::MessageTimedOut));
        let first = missing
            && self
                .checking
                .lock()
                .is_ok_and(|mut checking| checking.insert(topic.to_owned()));
        if !first {
            return;
        }
        if topic_missing(&self.client(), topic).await {
            tracing::warn!(topic, "topic missing on the broker; creating it again");
            metrics::counter!(crate::telemetry::names::KAFKA_RECOVERIES, "kind" => "topic_created")
                .increment(1);
            if let Err(error) = ensure_topics(&self.config, &[topic.to_owned()]).await {
                tracing::warn!(%error, topic, "cannot create topic");
            }
        }
        if let Ok(mut checking) = self.checking.lock() {
            checking.remove(topic);
        }
    }

    /// Answers when the broker answers a metadata request.
    pub async fn probe(&self) -> Result<(), String> {
        let producer = self.client();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|_| ())
                .map_err(|error| error.to_string())
        })
        .await
        .map_err(|error| error.to_string())?
    }
}

impl EventProducer {
    /// The broker's topics under `prefix`, with partitions and watermarks, read within `budget`.
    pub async fn describe_topics(
        &self,
        prefix: String,
        budget: Duration,
    ) -> Result<BrokerTopics, String> {
        let producer = self.client();
        tokio::task::spawn_blocking(move || topics::describe(producer.client(), &prefix, budget))
            .await
            .map_err(|error| error.to_string())?
    }
}

/// Health probe for the broker.
pub struct KafkaProbe(pub EventProducer);

impl crate::ops::DependencyProbe for KafkaProbe {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn probe(&self) -> futures::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(self.0.probe())
    }
}

/// Whether the broker answers that it does not know `topic` (false when it does not answer).
async fn topic_missing(producer: &ProducerClient, topic: &str) -> bool {
    let producer = producer.clone();
    let name = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&name), Duration::from_secs(3))
            .ok()
            .is_some_and(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == name)
                    .is_none_or(|t| t.error().is_some() || t.partitions().is_empty())
            })
    })
    .await
    .unwrap_or(false)
}

/// A topic's full name: the configured prefix, then the base name (for example `inventory.events`).
pub fn topic_name(config: &KafkaConfig, base: &str) -> String {
    format!("{}{base}", config.topic_prefix)
}

/// Creates the topics that do not exist yet.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[String]) -> Result<(), KafkaFailure> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap_servers)
        .create()
        .map_err(KafkaFailure::Setup)?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| NewTopic::new(topic, config.partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(KafkaFailure::Setup)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaFailure::CreateTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}
