//! Reads topics from their beginning with no group and no stored offsets: every partition is
//! assigned directly. For tests, audits and tools that look at what a topic holds.

use std::time::Duration;

use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{Consumer as _, StreamConsumer},
};

use crate::{
    config::KafkaConfig,
    kafka::{KafkaFailure, ReceivedEvent, consumer::decode, ensure_topics},
};

/// A reader of whole topics.
pub struct TopicTail {
    consumer: StreamConsumer,
}

impl TopicTail {
    /// Assigns every partition of `topics` from the earliest record (creating topics that do
    /// not exist yet, so a reader can start before the first writer).
    pub async fn from_beginning(
        config: &KafkaConfig,
        topics: &[String],
    ) -> Result<Self, KafkaFailure> {
        ensure_topics(config, topics).await?;
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &config.bootstrap_servers)
            // Never joined: it only names the client.
            .set(
                "group.id",
                format!("tail-{}", uuid::Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "fetch.wait.max.ms",
                config.fetch_wait.as_millis().max(1).to_string(),
            )
            .create()
            .map_err(KafkaFailure::Setup)?;
        let topics = topics.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut list = TopicPartitionList::new();
            for topic in &topics {
                let metadata = consumer
                    .client()
                    .fetch_metadata(Some(topic), Duration::from_secs(10))
                    .map_err(KafkaFailure::Setup)?;
                for found in metadata.topics().iter().filter(|t| t.name() == topic) {
                    for partition in found.partitions() {
                        list.add_partition_offset(topic, partition.id(), Offset::Beginning)
                            .map_err(KafkaFailure::Setup)?;
                    }
                }
            }
            consumer.assign(&list).map_err(KafkaFailure::Setup)?;
            Ok(Self { consumer })
        })
        .await
        .map_err(|_| KafkaFailure::Setup(rdkafka::error::KafkaError::Canceled))?
    }

    /// The next event of any assigned partition; undecodable records are skipped.
    pub async fn recv(&self) -> ReceivedEvent {
        loop {
            match self.consumer.recv().await {
                Ok(message) => {
                    if let Some(event) = decode(&message.detach()) {
                        return event;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "kafka receive failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
