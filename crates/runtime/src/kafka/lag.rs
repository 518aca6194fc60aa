//! What a service's consumers report about themselves: per partition the owner, the next offset
//! to process, the high watermark and the lag between them; per group whether it is healthy.
//! The high watermark comes from librdkafka's statistics (every few seconds, no extra broker
//! call); offsets and ownership come from the consumer itself. Kept for the ops snapshot, the
//! health summary and as gauges.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use rdkafka::{ClientContext, Statistics, config::RDKafkaLogLevel, consumer::ConsumerContext};

use crate::telemetry::names;

/// How far one group is behind on one partition this process owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Messages not yet processed (high watermark minus next offset); -1 until both are known.
    pub lag: i64,
    /// When this was last updated.
    pub reported: SystemTime,
    /// The member that holds the partition's lease (this process).
    pub owner: String,
    /// The next offset to process; -1 when nothing was processed yet.
    pub next_offset: i64,
    /// The partition's high watermark as the client last saw it; -1 when unknown.
    pub high_watermark: i64,
}

/// Group, topic and partition.
type PartitionKey = (String, String, i32);

#[derive(Debug, Clone)]
struct PartitionState {
    lag: PartitionLag,
    /// When the next offset last moved, or the partition was taken.
    progressed: Instant,
}

/// What the lease keeper last found for a group.
#[derive(Debug, Clone)]
struct GroupState {
    member: String,
    owned: usize,
    total: usize,
    live_members: usize,
    /// When a lease round last succeeded, and the error of the last one that did not.
    last_round: Option<Instant>,
    last_error: Option<String>,
    /// Since when the group has owned nothing although its share is at least one.
    starved_since: Option<Instant>,
    started: Instant,
    lease: Duration,
    stall_after: Duration,
    /// The consumer caught up and stopped fetching until a hint (`kafka.wake_url`).
    idle: bool,
}

#[derive(Default)]
struct Inner {
    partitions: BTreeMap<PartitionKey, PartitionState>,
    groups: BTreeMap<String, GroupState>,
}

/// The state of every consumer of a service; cheap to clone.
#[derive(Clone, Default)]
pub struct ConsumerLag {
    inner: Arc<Mutex<Inner>>,
}

/// A group that is not consuming as it should, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerProblem {
    /// The group.
    pub group: String,
    /// What is wrong, in a sentence.
    pub reason: String,
}

impl ConsumerLag {
    /// Every owned partition's latest state, by group, topic and partition.
    pub fn snapshot(&self) -> Vec<PartitionLag> {
        self.inner
            .lock()
            .map(|inner| {
                inner
                    .partitions
                    .values()
                    .map(|state| state.lag.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The groups of this service, each with its problem when it has one.
    pub fn health(&self) -> Vec<(String, Option<String>)> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        inner
            .groups
            .iter()
            .map(|(group, state)| (group.clone(), problem(&inner, group, state, now)))
            .collect()
    }

    /// Problems of every group; empty when all consume as they should.
    pub fn problems(&self) -> Vec<ConsumerProblem> {
        self.health()
            .into_iter()
            .filter_map(|(group, reason)| reason.map(|reason| ConsumerProblem { group, reason }))
            .collect()
    }

    pub(crate) fn register(
        &self,
        group: &str,
        member: &str,
        lease: Duration,
        stall_after: Duration,
    ) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.groups.insert(
                group.to_owned(),
                GroupState {
                    member: member.to_owned(),
                    owned: 0,
                    total: 0,
                    live_members: 1,
                    last_round: None,
                    last_error: None,
                    starved_since: None,
                    started: Instant::now(),
                    lease,
                    stall_after,
                    idle: false,
                },
            );
        }
    }

    /// Records a lease round: what the group owns now, out of how many, among how many members.
    pub(crate) fn round_done(
        &self,
        group: &str,
        owned: &[(String, i32, Option<i64>)],
        total: usize,
        live_members: usize,
    ) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let now = Instant::now();
        let member = inner
            .groups
            .get(group)
            .map(|state| state.member.clone())
            .unwrap_or_default();
        inner.partitions.retain(|(g, topic, partition), _| {
            let kept = g != group || owned.iter().any(|(t, p, _)| t == topic && p == partition);
            if !kept {
                // Another instance holds it now: this one's lag for it must not linger in sums.
                metrics::gauge!(
                    names::CONSUMER_LAG,
                    "group" => g.clone(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(0.0);
            }
            kept
        });
        for (topic, partition, next) in owned {
            let key = (group.to_owned(), topic.clone(), *partition);
            if !inner.partitions.contains_key(&key)
                && let Some(next) = next
            {
                // A lease just taken: its offset is known before anything is processed, so a
                // consumer stuck from its start still has an offset series that does not move.
                metrics::gauge!(
                    names::CONSUMER_OFFSET,
                    "group" => group.to_owned(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(*next as f64);
            }
            inner
                .partitions
                .entry(key)
                .or_insert_with(|| PartitionState {
                    lag: PartitionLag {
                        group: group.to_owned(),
                        topic: topic.clone(),
                        partition: *partition,
                        lag: -1,
                        reported: SystemTime::now(),
                        owner: member.clone(),
                        next_offset: next.unwrap_or(-1),
                        high_watermark: -1,
                    },
                    progressed: now,
                });
        }
        metrics::gauge!(names::CONSUMER_PARTITIONS_OWNED, "group" => group.to_owned())
            .set(owned.len() as f64);
        if let Some(state) = inner.groups.get_mut(group) {
            state.owned = owned.len();
            state.total = total;
            state.live_members = live_members;
            state.last_round = Some(now);
            state.last_error = None;
            // Starved: there are enough partitions for every live member, and none is ours.
            if owned.is_empty() && total >= live_members.max(1) {
                state.starved_since.get_or_insert(now);
            } else {
                state.starved_since = None;
            }
        }
    }

    pub(crate) fn round_failed(&self, group: &str, error: String) {
        if let Ok(mut inner) = self.inner.lock()
            && let Some(state) = inner.groups.get_mut(group)
        {
            state.last_error = Some(error);
        }
    }

    /// Whether `group` has caught up and stopped fetching until a hint; `None` for a group this
    /// process does not run.
    pub fn idle(&self, group: &str) -> Option<bool> {
        let inner = self.inner.lock().ok()?;
        inner.groups.get(group).map(|state| state.idle)
    }

    pub(crate) fn set_idle(&self, group: &str, idle: bool) {
        if let Ok(mut inner) = self.inner.lock()
            && let Some(state) = inner.groups.get_mut(group)
        {
            state.idle = idle;
        }
    }

    /// Records that `next` is now the next offset to process of a partition.
    pub(crate) fn progressed(&self, group: &str, topic: &str, partition: i32, next: i64) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let key = (group.to_owned(), topic.to_owned(), partition);
        if let Some(state) = inner.partitions.get_mut(&key) {
            state.lag.next_offset = next;
            state.lag.reported = SystemTime::now();
            if state.lag.high_watermark >= 0 {
                state.lag.lag = (state.lag.high_watermark - next).max(0);
            }
            state.progressed = Instant::now();
            metrics::gauge!(
                names::CONSUMER_OFFSET,
                "group" => group.to_owned(),
                "topic" => topic.to_owned(),
                "partition" => partition.to_string()
            )
            .set(next as f64);
        }
    }

    /// Records that the message at `offset` waits (its handling failed and is retried).
    pub(crate) fn waiting(&self, group: &str, topic: &str, partition: i32, offset: i64) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let key = (group.to_owned(), topic.to_owned(), partition);
        if let Some(state) = inner.partitions.get_mut(&key) {
            state.lag.high_watermark = state.lag.high_watermark.max(offset + 1);
            let from = if state.lag.next_offset >= 0 {
                state.lag.next_offset
            } else {
                offset
            };
            state.lag.lag = (state.lag.high_watermark - from).max(1);
            state.lag.reported = SystemTime::now();
        }
    }

    fn record(&self, group: &str, statistics: &Statistics) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        for (topic, stats) in &statistics.topics {
            for (partition, stats) in &stats.partitions {
                // -1 is librdkafka's "internal UA partition"; a negative watermark is not known yet.
                if *partition < 0 || stats.hi_offset < 0 {
                    continue;
                }
                let key = (group.to_owned(), topic.clone(), *partition);
                let Some(state) = inner.partitions.get_mut(&key) else {
                    continue;
                };
                state.lag.high_watermark = stats.hi_offset;
                // Nothing processed yet: everything from the log's start is pending.
                let from = if state.lag.next_offset >= 0 {
                    state.lag.next_offset
                } else {
                    stats.lo_offset.max(0)
                };
                state.lag.lag = (stats.hi_offset - from).max(0);
                state.lag.reported = SystemTime::now();
                if state.lag.lag == 0 {
                    // Caught up counts as progress: nothing waits.
                    state.progressed = Instant::now();
                }
                metrics::gauge!(
                    names::CONSUMER_LAG,
                    "group" => group.to_owned(),
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(state.lag.lag as f64);
            }
        }
    }
}

fn problem(inner: &Inner, group: &str, state: &GroupState, now: Instant) -> Option<String> {
    // A few rounds of grace at start and after a loss: leases move within one lease time.
    let grace = state.lease * 2;
    match state.last_round {
        None if now.duration_since(state.started) > grace => {
            return Some(format!(
                "no partition lease round has succeeded since start: {}",
                state.last_error.as_deref().unwrap_or("not yet attempted")
            ));
        }
        Some(last) if now.duration_since(last) > state.lease => {
            return Some(format!(
                "partition leases not renewed for {}s: {}",
                now.duration_since(last).as_secs(),
                state.last_error.as_deref().unwrap_or("no round completed")
            ));
        }
        _ => {}
    }
    if let Some(since) = state.starved_since
        && now.duration_since(since) > grace
    {
        return Some(format!(
            "owns none of the group's {} partitions although {} live member(s) share them",
            state.total, state.live_members
        ));
    }
    inner
        .partitions
        .values()
        .filter(|partition| partition.lag.group == group)
        .find(|partition| {
            partition.lag.lag > 0 && now.duration_since(partition.progressed) > state.stall_after
        })
        .map(|partition| {
            format!(
                "{}[{}] has {} unprocessed record(s) and made no progress for {}s",
                partition.lag.topic,
                partition.lag.partition,
                partition.lag.lag,
                now.duration_since(partition.progressed).as_secs()
            )
        })
}

/// The consumer's client context: hands librdkafka's statistics to [`ConsumerLag`] and counts
/// failed broker connections.
pub struct LagContext {
    /// Group id.
    pub group: String,
    /// Where watermarks go.
    pub lag: ConsumerLag,
    /// Broker connections that failed (dropped or refused), as librdkafka reported them.
    pub broker_failures: AtomicU64,
}

impl LagContext {
    /// Broker connections that failed so far. librdkafka reports a failure through the consumer's
    /// queue, ahead of anything fetched after it: a change seen after receiving messages means
    /// they may come from a broker that restarted (see `EventConsumer::run`).
    pub fn broker_failures(&self) -> u64 {
        self.broker_failures.load(Ordering::SeqCst)
    }
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        self.lag.record(&self.group, &statistics);
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // `FAIL`: a broker connection dropped or could not be made.
        if facility == "FAIL" {
            self.broker_failures.fetch_add(1, Ordering::SeqCst);
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::info!(group = %self.group, facility, "librdkafka: {message}");
            }
            _ => tracing::debug!(group = %self.group, facility, "librdkafka: {message}"),
        }
    }
}

impl ConsumerContext for LagContext {}
