//! Consumer lag as the Kafka client itself reports it: librdkafka's statistics (every few
//! seconds) carry each assigned partition's high watermark and the consumer's position, so no
//! extra broker round trip is needed. Kept per service for the ops snapshot and as a gauge.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use rdkafka::{ClientContext, Statistics, consumer::ConsumerContext};

use crate::telemetry::names;

/// How far one group is behind on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Messages not yet processed.
    pub lag: i64,
    /// When the client reported it.
    pub reported: SystemTime,
}

/// Group, topic and partition.
type PartitionKey = (String, String, i32);

/// The latest lag of every consumer of a service; cheap to clone.
#[derive(Clone, Default)]
pub struct ConsumerLag {
    partitions: Arc<Mutex<BTreeMap<PartitionKey, PartitionLag>>>,
}

impl ConsumerLag {
    /// Every partition's latest lag, by group, topic and partition.
    pub fn snapshot(&self) -> Vec<PartitionLag> {
        self.partitions
            .lock()
            .map(|partitions| partitions.values().cloned().collect())
            .unwrap_or_default()
    }

    fn record(&self, group: &str, statistics: &Statistics) {
        let Ok(mut partitions) = self.partitions.lock() else {
            return;
        };
        for (topic, stats) in &statistics.topics {
            for (partition, stats) in &stats.partitions {
                // -1 is librdkafka's "internal UA partition"; a negative lag means "not known yet".
                if *partition < 0 || stats.consumer_lag < 0 {
                    continue;
                }
                metrics::gauge!(
                    names::CONSUMER_LAG,
                    "group" => group.to_owned(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(stats.consumer_lag as f64);
                partitions.insert(
                    (group.to_owned(), topic.clone(), *partition),
                    PartitionLag {
                        group: group.to_owned(),
                        topic: topic.clone(),
                        partition: *partition,
                        lag: stats.consumer_lag,
                        reported: SystemTime::now(),
                    },
                );
            }
        }
    }
}

/// The consumer's client context: hands librdkafka's statistics to [`ConsumerLag`].
pub struct LagContext {
    /// Full group id.
    pub group: String,
    /// Where lag goes; `None` ignores statistics.
    pub lag: Option<ConsumerLag>,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(lag) = &self.lag {
            lag.record(&self.group, &statistics);
        }
    }
}

impl ConsumerContext for LagContext {}
