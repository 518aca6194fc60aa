//! What the broker holds: its topics, their partitions and the offsets each partition spans, read
//! through a client's metadata and watermark requests (the ops service's `ListBrokerTopics`).

use std::time::{Duration, Instant};

use rdkafka::{
    client::{Client, ClientContext},
    error::RDKafkaErrorCode,
    metadata::Metadata,
};

/// The most topics one answer carries.
pub const MAX_TOPICS: usize = 500;

/// One partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition id.
    pub id: i32,
    /// Broker id of the leader.
    pub leader: i32,
    /// Oldest offset held, and the offset the next record gets; or why they could not be read.
    pub watermarks: Result<(i64, i64), String>,
}

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Partitions by id.
    pub partitions: Vec<PartitionInfo>,
    /// The broker's error for the topic's metadata.
    pub error: Option<String>,
}

impl TopicInfo {
    /// Records held: high minus low watermark, summed over the partitions that answered.
    pub fn records(&self) -> i64 {
        self.partitions
            .iter()
            .filter_map(|partition| partition.watermarks.as_ref().ok())
            .map(|(low, high)| (high - low).max(0))
            .sum()
    }
}

/// The broker's topics under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerTopics {
    /// Matching topics by name, at most [`MAX_TOPICS`].
    pub topics: Vec<TopicInfo>,
    /// Non-internal topics on the broker in all.
    pub broker_topic_count: usize,
    /// Brokers in the cluster.
    pub broker_count: usize,
    /// More topics matched than were returned.
    pub truncated: bool,
}

/// Reads metadata and then every matching partition's watermarks, all within `budget`; a partition
/// reached after the budget is spent reports that instead of waiting. Blocking: call it from
/// `spawn_blocking`.
pub fn describe<C: ClientContext>(
    client: &Client<C>,
    prefix: &str,
    budget: Duration,
) -> Result<BrokerTopics, String> {
    let deadline = Instant::now() + budget;
    let metadata = client
        .fetch_metadata(None, budget)
        .map_err(|error| format!("metadata request failed: {error}"))?;
    let (mut topics, broker_topic_count, truncated) = select(&metadata, prefix);
    for topic in &mut topics {
        for partition in &mut topic.partitions {
            let left = deadline.saturating_duration_since(Instant::now());
            partition.watermarks = if left.is_zero() {
                Err(format!("not asked: the {budget:?} budget was spent"))
            } else {
                client
                    .fetch_watermarks(&topic.name, partition.id, left)
                    .map_err(|error| error.to_string())
            };
        }
    }
    Ok(BrokerTopics {
        topics,
        broker_topic_count,
        broker_count: metadata.brokers().len(),
        truncated,
    })
}

/// The topics of `metadata` under `prefix`, by name, without watermarks yet; how many non-internal
/// topics there are in all; whether the list was cut at [`MAX_TOPICS`].
fn select(metadata: &Metadata, prefix: &str) -> (Vec<TopicInfo>, usize, bool) {
    let visible: Vec<_> = metadata
        .topics()
        .iter()
        .filter(|topic| !topic.name().starts_with("__"))
        .collect();
    let mut topics: Vec<TopicInfo> = visible
        .iter()
        .filter(|topic| topic.name().starts_with(prefix))
        .map(|topic| {
            let mut partitions: Vec<PartitionInfo> = topic
                .partitions()
                .iter()
                .map(|partition| PartitionInfo {
                    id: partition.id(),
                    leader: partition.leader(),
                    watermarks: Err("not read".to_owned()),
                })
                .collect();
            partitions.sort_by_key(|partition| partition.id);
            TopicInfo {
                name: topic.name().to_owned(),
                partitions,
                error: topic
                    .error()
                    .map(|code| RDKafkaErrorCode::from(code).to_string()),
            }
        })
        .collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let truncated = topics.len() > MAX_TOPICS;
    topics.truncate(MAX_TOPICS);
    (topics, visible.len(), truncated)
}
