//! Kafka through rdkafka: an idempotent producer, topic setup, and consumers that commit an offset
//! only after its message was processed.

use std::time::Duration;

use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
};

use crate::config::KafkaConfig;

mod consumer;
mod lag;
mod topics;

pub use consumer::{ConsumerSettings, EventConsumer, EventHandler, HandlerError, ReceivedEvent};
pub use lag::{ConsumerLag, PartitionLag};
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
/// record within a producer session.
#[derive(Clone)]
pub struct EventProducer {
    producer: FutureProducer,
    delivery_timeout: Duration,
}

impl EventProducer {
    /// Creates the producer; it connects lazily.
    pub fn new(config: &KafkaConfig, client_id: &str) -> Result<Self, KafkaFailure> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("client.id", client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set(
                "delivery.timeout.ms",
                config.delivery_timeout.as_millis().to_string(),
            )
            .create()
            .map_err(KafkaFailure::Setup)?;
        Ok(Self {
            producer,
            delivery_timeout: config.delivery_timeout,
        })
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
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(owned);
        self.producer
            .send(record, self.delivery_timeout)
            .await
            .map(|delivery| {
                metrics::counter!(crate::telemetry::names::KAFKA_PRODUCED).increment(1);
                Delivered {
                    partition: delivery.partition,
                    offset: delivery.offset,
                }
            })
            .map_err(|(source, _)| KafkaFailure::Publish {
                topic: topic.to_owned(),
                source,
            })
    }

    /// Answers when the broker answers a metadata request.
    pub async fn probe(&self) -> Result<(), String> {
        let producer = self.producer.clone();
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
        let producer = self.producer.clone();
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
