//! A consumer that never depends on the broker's group membership. It assigns its partitions
//! itself, from leases kept in PostgreSQL ([`super::leases`]), and stores its offsets there too,
//! advancing them in the same transaction as the effect of the messages they cover. A crash
//! therefore replays exactly what did not commit, a restarted process resumes from its stored
//! offsets within one lease round (at once with the same member id), and a superseded owner
//! cannot commit anything (its epoch no longer matches).
//!
//! Messages are handled in batches: everything one poll returns (up to `max_batch`) is applied
//! in one transaction with one offset update per partition. When any message of a batch fails,
//! the batch is rolled back and its messages are handled one by one, each retried with backoff
//! and dead-lettered when it keeps failing.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use futures::FutureExt as _;
use prost::Message as _;
use rdkafka::{
    ClientConfig, Message as _, Offset, TopicPartitionList,
    config::RDKafkaLogLevel,
    consumer::{Consumer as _, StreamConsumer},
    message::{Headers as _, OwnedMessage},
};
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait as _};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use zentra_proto::events::v1::EventEnvelope;

use crate::{
    config::KafkaConfig,
    dead_letters::{DeadLetterSink, FailedRecord},
    events,
    inbox::Claimed,
    kafka::{
        KafkaFailure, ensure_topics,
        lag::{ConsumerLag, LagContext},
        leases::{self, Advance, Fence, Lease, PartitionLeases},
        wake,
    },
    telemetry::{names, span_failed as failed},
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
    /// A fingerprint of the record (FNV-1a of key and payload), stored with the offset past it:
    /// the consumer recognises the record when it reads it again.
    pub fingerprint: i64,
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

impl From<DbErr> for HandlerError {
    fn from(error: DbErr) -> Self {
        Self::Transient(error.to_string())
    }
}

/// Processes events inside the consumer's transaction; must be idempotent, since a message can
/// arrive twice (the inbox makes it so).
pub trait EventHandler: Send + Sync + 'static {
    /// What to do once the transaction committed (announce a change, wake a loop).
    type Applied: Send + 'static;

    /// Handles one event. Effects written through `tx` commit together with the offset.
    fn handle(
        &self,
        event: &ReceivedEvent,
        tx: &DatabaseTransaction,
    ) -> impl Future<Output = Result<Self::Applied, HandlerError>> + Send;

    /// Handles `event` in one statement on `db`, without a transaction, when it can: the
    /// statement carries the event's inbox entry with `fence`
    /// ([`crate::inbox::Entry::fenced`]), which moves the partition's offset past the event in
    /// the same statement, and only while this consumer holds the partition. `None`: the event
    /// needs a transaction, and [`EventHandler::handle`] gets one. The future gives
    /// [`Claimed::Fenced`] when nothing was written (the partition's lease moved, or the
    /// handler's condition did not hold and it returned no error).
    ///
    /// The consumer offers this for a message processed on its own; several messages fetched
    /// together share one transaction through [`EventHandler::handle`].
    fn handle_alone(
        &self,
        event: &ReceivedEvent,
        db: &DatabaseConnection,
        fence: Fence,
    ) -> Option<impl Future<Output = Result<Claimed<Self::Applied>, HandlerError>> + Send> {
        let _ = (event, db, fence);
        None::<std::future::Ready<Result<Claimed<Self::Applied>, HandlerError>>>
    }

    /// Called after the transaction holding `applied` committed.
    fn committed(&self, applied: Vec<Self::Applied>) {
        let _ = applied;
    }

    /// Whether this handler does nothing at all with `event` (an event type it does not read).
    /// Such events take no transaction of their own: their offsets are stored with the next
    /// transaction of their partition, or once the consumer has caught up. A crash before that
    /// hands them over again, which changes nothing since they are ignored.
    fn ignores(&self, event: &ReceivedEvent) -> bool {
        let _ = event;
        false
    }
}

/// How a consumer behaves.
#[derive(Clone)]
pub struct ConsumerSettings {
    /// Consumer group (the configured group prefix is prepended): the members of one group
    /// split its partitions.
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
    /// Where ownership, offsets and lag are reported.
    pub lag: Option<ConsumerLag>,
    /// Messages applied in one transaction at most.
    pub max_batch: usize,
}

impl ConsumerSettings {
    /// Settings for `group` on `topics`: 3 attempts, 200 ms to 30 s backoff, no dead letters,
    /// batches of up to 64.
    pub fn new(group: impl Into<String>, topics: Vec<String>) -> Self {
        Self {
            group: group.into(),
            topics,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            max_attempts: 3,
            dead_letters: None,
            lag: None,
            max_batch: 64,
        }
    }
}

/// This process's member id when the configuration names none: one per process start.
fn process_member_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        format!(
            "member-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )
    })
}

/// What the lease keeper hands the processing loop.
#[derive(Default)]
struct Shared {
    held: Mutex<Vec<Lease>>,
    changed: AtomicBool,
    wake: Notify,
}

impl Shared {
    fn publish(&self, held: Vec<Lease>) {
        let Ok(mut current) = self.held.lock() else {
            return;
        };
        if *current != held {
            let moved = |a: &[Lease], b: &[Lease]| {
                a.iter()
                    .map(|l| (&l.topic, l.partition, l.epoch))
                    .ne(b.iter().map(|l| (&l.topic, l.partition, l.epoch)))
            };
            let changed = moved(&current, &held);
            *current = held;
            if changed {
                self.changed.store(true, Ordering::SeqCst);
                self.wake.notify_one();
            }
        }
    }

    fn holds(&self, topic: &str, partition: i32, epoch: i64) -> bool {
        self.held.lock().is_ok_and(|held| {
            held.iter()
                .any(|l| l.topic == topic && l.partition == partition && l.epoch == epoch)
        })
    }

    /// Forgets everything held (the leases could not be renewed in time), so nothing is
    /// consumed under a lease that may have moved.
    fn drop_all(&self) {
        self.publish(Vec::new());
    }
}

/// What this process reads of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    epoch: i64,
    /// The next offset to process; `None` until something was.
    next: Option<i64>,
    /// The fingerprint of the record at `next - 1`, when known.
    last: Option<i64>,
    /// `next` is past the stored offset: only ignored messages were read since (see
    /// [`EventHandler::ignores`]).
    unstored: bool,
}

type Assignment = BTreeMap<(String, i32), Slot>;

/// The partitions of `assigned`, each at the next offset to process (the log's start when none
/// was processed yet), or one earlier when the record processed last is known: every fetch
/// starts by reading that record again, and one that differs reveals a log the broker rebuilt
/// (see [`EventConsumer::process_batch`]).
fn partition_list(assigned: &Assignment) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), slot) in assigned {
        let offset = match (slot.next, slot.last) {
            (Some(next), Some(_)) if next > 0 => Offset::Offset(next - 1),
            (Some(next), _) => Offset::Offset(next),
            (None, _) => Offset::Beginning,
        };
        if let Err(error) = list.add_partition_offset(topic, *partition, offset) {
            tracing::warn!(%error, topic, partition, "cannot assign partition");
        }
    }
    list
}

/// How long each record new to this consumer took from its production (the producer's
/// timestamp) to arriving here: a Kafka hop's share of an event's latency. The record each fetch
/// starts with, read again as a check, is not new and not counted.
fn record_fetch_delays(batch: &[OwnedMessage], assigned: &Assignment) {
    let now = chrono::Utc::now().timestamp_millis();
    for message in batch {
        let new = assigned
            .get(&(message.topic().to_owned(), message.partition()))
            .is_none_or(|slot| slot.next.is_none_or(|next| message.offset() >= next));
        if let (true, Some(produced)) = (new, message.timestamp().to_millis()) {
            let delay = Duration::from_millis(u64::try_from(now - produced).unwrap_or(0));
            metrics::histogram!(names::CONSUMER_FETCH_DELAY, "topic" => message.topic().to_owned())
                .record(delay.as_secs_f64());
        }
    }
}

/// Whether the consumer fetches, and since when it has (or has not).
#[derive(Debug, Clone, Copy)]
struct Fetching {
    paused: bool,
    /// Fetching only for a periodic look, woken by no hint and given no record yet: one fetch
    /// round tells whether anything is there, so it stops sooner than `idle_after`.
    looking: bool,
    /// Fetching: the last record or hint. Paused: the pause.
    since: Instant,
}

impl Fetching {
    fn new(now: Instant) -> Self {
        Self {
            paused: false,
            looking: false,
            since: now,
        }
    }

    /// A periodic look that started `now`.
    fn look(now: Instant) -> Self {
        Self {
            looking: true,
            ..Self::new(now)
        }
    }

    /// When to stop fetching (nothing came for `idle_after`, or a look found nothing in three
    /// fetch waits), or, paused, to look anyway.
    fn deadline(&self, kafka: &KafkaConfig) -> Instant {
        if self.paused {
            self.since + kafka.idle_fetch
        } else if self.looking {
            self.since
                + (kafka.fetch_wait * 3)
                    .max(LOOK_AT_LEAST)
                    .min(kafka.idle_after)
        } else {
            self.since + kafka.idle_after
        }
    }
}

/// How long offsets moved only by ignored messages may wait to be stored.
const STORE_PASSED_WITHIN: Duration = Duration::from_secs(1);

/// The shortest periodic look: time for the assignment and one fetch round trip.
const LOOK_AT_LEAST: Duration = Duration::from_millis(30);

/// Returns when a hint arrives; never without hints.
async fn wait_for_hint(hints: Option<&Notify>) {
    match hints {
        Some(hints) => hints.notified().await,
        None => std::future::pending().await,
    }
}

/// A consumer whose partitions are leased in PostgreSQL.
pub struct EventConsumer {
    consumer: Arc<StreamConsumer<LagContext>>,
    settings: ConsumerSettings,
    kafka: KafkaConfig,
    db: DatabaseConnection,
    leases: PartitionLeases,
    lag: ConsumerLag,
    shared: Arc<Shared>,
}

/// How handling one message ended.
enum Handled {
    /// Applied (or dead-lettered) and its offset committed.
    Done,
    /// This process no longer holds the partition; nothing was committed.
    Fenced,
    /// Shutdown interrupted a retry; nothing was committed.
    Stopped,
}

impl EventConsumer {
    /// A consumer of `settings.topics` in `settings.group`, keeping leases and offsets in `db`.
    /// It reads nothing until [`EventConsumer::run`].
    pub fn new(
        config: &KafkaConfig,
        settings: ConsumerSettings,
        db: DatabaseConnection,
    ) -> Result<Self, KafkaFailure> {
        let group = format!("{}{}", config.group_prefix, settings.group);
        let member = if config.member_id.is_empty() {
            process_member_id().to_owned()
        } else {
            config.member_id.clone()
        };
        let lag = settings.lag.clone().unwrap_or_default();
        let consumer: StreamConsumer<LagContext> = ClientConfig::new()
            .set("bootstrap.servers", &config.bootstrap_servers)
            // The group id is never joined (partitions are assigned, not subscribed): it only
            // names the client to the broker.
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set(
                "fetch.wait.max.ms",
                config.fetch_wait.as_millis().max(1).to_string(),
            )
            // The statistics carry each partition's high watermark; no extra broker calls.
            .set("statistics.interval.ms", "2000")
            // Connection failures are logged at this level; the context counts them.
            .set_log_level(RDKafkaLogLevel::Info)
            .create_with_context(LagContext {
                group: group.clone(),
                lag: lag.clone(),
                broker_failures: AtomicU64::new(0),
            })
            .map_err(KafkaFailure::Setup)?;
        lag.register(&group, &member, config.partition_lease, config.stall_after);
        Ok(Self {
            consumer: Arc::new(consumer),
            leases: PartitionLeases::new(db.clone(), group, member, config.partition_lease),
            settings,
            kafka: config.clone(),
            db,
            lag,
            shared: Arc::default(),
        })
    }

    /// Consumes until `shutdown` is cancelled, then gives its partitions back.
    pub async fn run<H: EventHandler>(self, handler: H, shutdown: CancellationToken) {
        let keeper_stop = shutdown.child_token();
        // Aborted with this future: a consumer cut short (a crash, a killed task) must not leave
        // its leases renewed by an orphan.
        let keeper = AbortOnDrop(tokio::spawn(keep_leases(
            self.leases.clone(),
            Arc::clone(&self.consumer),
            self.settings.topics.clone(),
            self.kafka.clone(),
            self.lag.clone(),
            Arc::clone(&self.shared),
            keeper_stop.clone(),
        )));
        let mut assigned = Assignment::new();
        // With hints, fetching stops once the consumer has caught up (see `wake`).
        let hints = (!self.kafka.wake_url.expose().is_empty()).then(|| {
            wake::subscribe(
                self.kafka.wake_url.expose(),
                self.settings.topics.clone(),
                shutdown.child_token(),
            )
        });
        let mut fetching = Fetching::new(Instant::now());
        // Since when offsets moved only by ignored messages wait to be stored.
        let mut passed_since: Option<Instant> = None;
        let mut broker_failures = self.consumer.context().broker_failures();
        // A broker connection failed since the positions were last checked against the logs'
        // ends: nothing is processed until they are (see `check_positions`).
        let mut suspect = false;
        loop {
            if self.shared.changed.swap(false, Ordering::SeqCst) {
                self.reassign(&mut assigned).await;
                fetching = Fetching::new(Instant::now());
                self.lag.set_idle(self.leases.group(), false);
            }
            let failures = self.consumer.context().broker_failures();
            if failures != broker_failures {
                broker_failures = failures;
                suspect = true;
            }
            let deadline = fetching.deadline(&self.kafka);
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.shared.wake.notified() => continue,
                () = wait_for_hint(hints.as_deref()) => {
                    if fetching.paused {
                        if suspect {
                            suspect = !self.check_positions(&mut assigned, |_, _| true).await;
                        }
                        self.resume(&assigned);
                    }
                    fetching = Fetching::new(Instant::now());
                    continue;
                }
                () = tokio::time::sleep_until(
                    passed_since.map_or(deadline, |since| since + STORE_PASSED_WITHIN).into()
                ), if passed_since.is_some() => {
                    self.store_passed(&mut assigned).await;
                    passed_since = None;
                    continue;
                }
                () = tokio::time::sleep_until(deadline.into()), if hints.is_some() => {
                    if fetching.paused {
                        if suspect {
                            suspect = !self.check_positions(&mut assigned, |_, _| true).await;
                        }
                        self.resume(&assigned);
                        fetching = Fetching::look(Instant::now());
                    } else {
                        self.store_passed(&mut assigned).await;
                        passed_since = None;
                        self.pause();
                        fetching.paused = true;
                        fetching.since = Instant::now();
                    }
                    continue;
                }
                message = self.consumer.recv() => message.map(|message| message.detach()),
            };
            let first = match first {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, group = self.leases.group(), "kafka receive failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    suspect = true;
                    if !fetching.paused {
                        suspect = !self.check_positions(&mut assigned, |_, _| true).await;
                        self.resume(&assigned);
                    }
                    continue;
                }
            };
            let mut batch = vec![first];
            while batch.len() < self.settings.max_batch.max(1) {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(message)) => batch.push(message.detach()),
                    _ => break,
                }
            }
            let failures = self.consumer.context().broker_failures();
            if failures != broker_failures {
                broker_failures = failures;
                suspect = true;
            }
            if suspect {
                // A broker connection failed before these messages were handed out: they may
                // come from a broker that restarted with another log, read from offsets that
                // mean something else in it. Check the positions against the logs' ends, then
                // fetch again from where processing stands, which checks the record processed
                // last first (see `partition_list`).
                if !fetching.paused {
                    suspect = !self.check_positions(&mut assigned, |_, _| true).await;
                    self.resume(&assigned);
                }
                continue;
            }
            // A batch of nothing but the records each fetch starts with (see `partition_list`)
            // brought nothing new: a periodic look that found only those still ends early.
            let only_checks = batch.iter().all(|message| {
                assigned
                    .get(&(message.topic().to_owned(), message.partition()))
                    .is_some_and(|slot| {
                        slot.last.is_some() && slot.next == Some(message.offset() + 1)
                    })
            });
            record_fetch_delays(&batch, &assigned);
            if !self
                .process_batch(batch, &mut assigned, &handler, &shutdown)
                .await
            {
                break;
            }
            if !only_checks {
                fetching.since = Instant::now();
                fetching.looking = false;
            }
            if !assigned.values().any(|slot| slot.unstored) {
                passed_since = None;
            } else if passed_since.is_none() {
                passed_since = Some(Instant::now());
            }
        }
        self.store_passed(&mut assigned).await;
        keeper_stop.cancel();
        keeper.finish().await;
        if let Err(error) = self.leases.leave().await {
            tracing::warn!(%error, group = self.leases.group(), "could not give partitions back");
        }
    }

    /// Stops fetching: the consumer has caught up and waits for a hint.
    fn pause(&self) {
        if let Err(error) = self.consumer.unassign() {
            tracing::warn!(%error, group = self.leases.group(), "could not stop fetching");
        }
        metrics::counter!(names::CONSUMER_PAUSES, "group" => self.leases.group().to_owned())
            .increment(1);
        self.lag.set_idle(self.leases.group(), true);
    }

    /// Fetches again from exactly where processing stands (not from the client's own position,
    /// which a pause may have moved past records it had fetched and not yet handed out).
    fn resume(&self, assigned: &Assignment) {
        if let Err(error) = self.consumer.assign(&partition_list(assigned)) {
            tracing::warn!(%error, group = self.leases.group(), "could not fetch again");
            self.shared.changed.store(true, Ordering::SeqCst);
        }
        self.lag.set_idle(self.leases.group(), false);
    }

    /// Assigns what the leases say this process holds, at the stored offsets for partitions
    /// taken now and at the local position for partitions kept.
    async fn reassign(&self, assigned: &mut Assignment) {
        let held = self
            .shared
            .held
            .lock()
            .map(|held| held.clone())
            .unwrap_or_default();
        let mut next = Assignment::new();
        for lease in held {
            let key = (lease.topic.clone(), lease.partition);
            let slot = match assigned.get(&key) {
                Some(slot) if slot.epoch == lease.epoch => *slot,
                _ => Slot {
                    epoch: lease.epoch,
                    next: lease.next_offset,
                    last: lease.last_record,
                    unstored: false,
                },
            };
            next.insert(key, slot);
        }
        // A stored offset past the log's end means the broker lost its log: start over.
        self.check_positions(&mut next, |key, slot| assigned.get(key) != Some(slot))
            .await;
        if let Err(error) = self.consumer.assign(&partition_list(&next)) {
            tracing::warn!(%error, group = self.leases.group(), "assigning partitions failed");
            // Try again on the next wake-up.
            self.shared.changed.store(true, Ordering::SeqCst);
            return;
        }
        tracing::info!(
            group = self.leases.group(),
            member = self.leases.member(),
            partitions = ?next.iter().map(|((t, p), s)| format!("{t}[{p}]@{}", s.next.unwrap_or(-1))).collect::<Vec<_>>(),
            "partitions assigned"
        );
        *assigned = next;
    }

    /// Resets every position past its log's end (a broker that came back with a shorter log):
    /// fetching there would wait for records the new log reaches only later, if ever. True when
    /// every position could be checked; the first that cannot be (the broker still away) stops
    /// the round, to be tried again.
    /// Only the partitions `which` picks are checked.
    async fn check_positions(
        &self,
        assigned: &mut Assignment,
        which: impl Fn(&(String, i32), &Slot) -> bool,
    ) -> bool {
        let positions: Vec<(String, i32, i64)> = assigned
            .iter()
            .filter(|(key, slot)| which(key, slot))
            .filter_map(|((topic, partition), slot)| {
                slot.next.map(|next| (topic.clone(), *partition, next))
            })
            .collect();
        for (topic, partition, next) in positions {
            let Some(high) = self.high_watermark(&topic, partition).await else {
                return false;
            };
            if next > high {
                self.log_reset(&topic, partition, next, &format!("the log ends at {high}"));
                if let Some(slot) = assigned.get_mut(&(topic, partition)) {
                    slot.next = None;
                    slot.last = None;
                    slot.unstored = false;
                }
            }
        }
        true
    }

    /// Notes that the broker's log is not the one read before (it lost its log and rebuilt it):
    /// `found` says how that showed.
    fn log_reset(&self, topic: &str, partition: i32, stored: i64, found: &str) {
        tracing::warn!(
            group = self.leases.group(),
            topic,
            partition,
            stored,
            "the broker's log is not the one read before ({found}): reading from the start"
        );
        metrics::counter!(names::CONSUMER_OFFSET_RESETS, "group" => self.leases.group().to_owned())
            .increment(1);
    }

    async fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        let consumer = Arc::clone(&self.consumer);
        let topic_name = topic.to_owned();
        let fetched = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic_name, partition, Duration::from_secs(3))
        })
        .await;
        match fetched {
            Ok(Ok((_, high))) => Some(high),
            Ok(Err(error)) => {
                tracing::warn!(%error, topic, partition, "cannot read watermarks");
                None
            }
            Err(_) => None,
        }
    }

    /// Returns false when shutdown interrupted the batch.
    async fn process_batch<H: EventHandler>(
        &self,
        batch: Vec<OwnedMessage>,
        assigned: &mut Assignment,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut ready = Vec::with_capacity(batch.len());
        let mut behind = BTreeSet::new();
        let mut rebuilt = BTreeSet::new();
        for message in batch {
            let key = (message.topic().to_owned(), message.partition());
            let Some(slot) = assigned.get(&key) else {
                continue;
            };
            if rebuilt.contains(&key) {
                continue;
            }
            match (slot.next, slot.last) {
                // Each fetch starts with the record processed last (see `partition_list`): the
                // same record means the same log; another means the broker rebuilt its log, and
                // offsets below the stored one may hold records never read.
                (Some(next), Some(last)) if message.offset() == next - 1 => {
                    if fingerprint(&message) != last {
                        rebuilt.insert(key);
                    }
                }
                (Some(next), _) if message.offset() < next => {
                    behind.insert(key);
                }
                _ => ready.push(message),
            }
        }
        for (topic, partition) in rebuilt {
            let stored = assigned
                .get(&(topic.clone(), partition))
                .and_then(|slot| slot.next)
                .unwrap_or(0);
            self.log_reset(
                &topic,
                partition,
                stored,
                "the record before the stored offset is not the one processed last",
            );
            self.start_over(assigned, &mut ready, &topic, partition);
        }
        for (topic, partition) in behind {
            // Below the next offset: a stale copy, or the log was lost and restarted from 0.
            let next = assigned
                .get(&(topic.clone(), partition))
                .and_then(|slot| slot.next)
                .unwrap_or(0);
            if let Some(high) = self.high_watermark(&topic, partition).await
                && next > high
            {
                self.log_reset(&topic, partition, next, &format!("the log ends at {high}"));
                self.start_over(assigned, &mut ready, &topic, partition);
            }
        }
        if ready.is_empty() {
            return true;
        }
        let decoded: Vec<Option<ReceivedEvent>> = ready.iter().map(decode).collect();
        // Messages the handler ignores take no transaction of their own.
        let ignored: Vec<bool> = decoded
            .iter()
            .map(|event| event.as_ref().is_some_and(|event| handler.ignores(event)))
            .collect();
        if ignored.iter().all(|ignored| *ignored) {
            for message in &ready {
                self.pass_over(assigned, message);
            }
            return true;
        }
        // A single message goes straight to the one-by-one path, which counts its attempts.
        let batch: Option<Vec<ReceivedEvent>> = if ready.len() > 1 {
            decoded.into_iter().collect()
        } else {
            None
        };
        if let Some(events) = batch {
            let epoch_of = |topic: &str, partition: i32| {
                assigned
                    .get(&(topic.to_owned(), partition))
                    .map_or(-1, |slot| slot.epoch)
            };
            match self
                .apply_together(&events, &ignored, epoch_of, handler, 1)
                .await
            {
                Ok(Some(applied)) => {
                    handler.committed(applied);
                    for event in &events {
                        self.note_processed(
                            assigned,
                            &event.topic,
                            event.partition,
                            event.offset,
                            event.fingerprint,
                        );
                        metrics::counter!(names::CONSUMER_MESSAGES, "topic" => event.topic.clone(), "outcome" => "processed")
                            .increment(1);
                    }
                    return true;
                }
                Ok(None) => {
                    self.fenced();
                    return true;
                }
                Err(error) => {
                    tracing::debug!(%error, size = events.len(), "batch failed; handling its messages one by one");
                }
            }
        }
        for (message, ignored) in ready.iter().zip(ignored) {
            if ignored {
                self.pass_over(assigned, message);
                continue;
            }
            let key = (message.topic().to_owned(), message.partition());
            let Some(slot) = assigned.get(&key).copied() else {
                continue;
            };
            match self
                .process_one(message, slot.epoch, handler, shutdown)
                .await
            {
                Handled::Done => {
                    self.note_processed(
                        assigned,
                        message.topic(),
                        message.partition(),
                        message.offset(),
                        fingerprint(message),
                    );
                }
                Handled::Fenced => {
                    self.fenced();
                    return true;
                }
                Handled::Stopped => return false,
            }
        }
        true
    }

    /// Reads `topic[partition]` again from the log's start: messages of it in `ready` came
    /// before the reset was seen and are read again after the reassignment.
    fn start_over(
        &self,
        assigned: &mut Assignment,
        ready: &mut Vec<OwnedMessage>,
        topic: &str,
        partition: i32,
    ) {
        if let Some(slot) = assigned.get_mut(&(topic.to_owned(), partition)) {
            slot.next = None;
            slot.last = None;
        }
        ready.retain(|message| message.topic() != topic || message.partition() != partition);
        self.shared.changed.store(true, Ordering::SeqCst);
    }

    fn fenced(&self) {
        tracing::info!(
            group = self.leases.group(),
            "a partition's lease moved; reassigning"
        );
        self.shared.changed.store(true, Ordering::SeqCst);
    }

    /// Notes a message whose offset advance committed: the stored offset is `offset + 1`, the
    /// record before it `last`.
    fn note_processed(
        &self,
        assigned: &mut Assignment,
        topic: &str,
        partition: i32,
        offset: i64,
        last: i64,
    ) {
        if let Some(slot) = assigned.get_mut(&(topic.to_owned(), partition)) {
            slot.next = Some(offset + 1);
            slot.last = Some(last);
            slot.unstored = false;
        }
        self.lag
            .progressed(self.leases.group(), topic, partition, offset + 1);
    }

    /// Moves past a message the handler ignores, without a transaction: its offset is stored
    /// later ([`EventConsumer::store_passed`], or the partition's next transaction).
    fn pass_over(&self, assigned: &mut Assignment, message: &OwnedMessage) {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        if let Some(slot) = assigned.get_mut(&(topic.to_owned(), partition)) {
            slot.next = Some(offset + 1);
            slot.last = Some(fingerprint(message));
            slot.unstored = true;
        }
        self.lag
            .progressed(self.leases.group(), topic, partition, offset + 1);
        metrics::counter!(names::CONSUMER_MESSAGES, "topic" => topic.to_owned(), "outcome" => "ignored")
            .increment(1);
    }

    /// Stores the offsets that only ignored messages moved. Each partition's advance stands on
    /// its own, so no transaction is needed; one whose lease moved is left to its new owner.
    async fn store_passed(&self, assigned: &mut Assignment) {
        let advances: Vec<Advance> = assigned
            .iter()
            .filter(|(_, slot)| slot.unstored)
            .filter_map(|((topic, partition), slot)| {
                Some(Advance {
                    topic: topic.clone(),
                    partition: *partition,
                    epoch: slot.epoch,
                    next: slot.next?,
                    last: slot.last?,
                })
            })
            .collect();
        if advances.is_empty() {
            return;
        }
        match leases::advance(
            &self.db,
            self.leases.group(),
            self.leases.member(),
            &advances,
        )
        .await
        {
            Ok(true) => {
                for slot in assigned.values_mut() {
                    slot.unstored = false;
                }
            }
            Ok(false) => self.fenced(),
            Err(error) => {
                tracing::warn!(%error, group = self.leases.group(), "storing the offsets of ignored messages failed; will retry");
            }
        }
    }

    /// Applies every event in one transaction with the offsets, each partition's advance fenced
    /// by the epoch `epoch_of` gives; events `ignored` marks only move the offsets. `Ok(None)`:
    /// fenced.
    async fn apply_together<H: EventHandler>(
        &self,
        events: &[ReceivedEvent],
        ignored: &[bool],
        epoch_of: impl Fn(&str, i32) -> i64,
        handler: &H,
        attempt: u32,
    ) -> Result<Option<Vec<H::Applied>>, HandlerError> {
        let tx = self.db.begin().await?;
        let mut applied = Vec::with_capacity(events.len());
        let mut advances: BTreeMap<(String, i32), Advance> = BTreeMap::new();
        // Each message's span stays open until its transaction's outcome is known, and says
        // when it did not commit.
        let mut spans = Vec::with_capacity(events.len());
        for (event, ignored) in events.iter().zip(ignored) {
            if !ignored {
                let span = self.process_span(event, attempt);
                match handler.handle(event, &tx).instrument(span.clone()).await {
                    Ok(done) => applied.push(done),
                    Err(error) => {
                        failed(&span, &error.to_string());
                        for other in &spans {
                            failed(other, "rolled back with its batch");
                        }
                        let _ = tx.rollback().await;
                        return Err(error);
                    }
                }
                spans.push(span);
            }
            advances.insert(
                (event.topic.clone(), event.partition),
                Advance {
                    topic: event.topic.clone(),
                    partition: event.partition,
                    epoch: epoch_of(&event.topic, event.partition),
                    next: event.offset + 1,
                    last: event.fingerprint,
                },
            );
        }
        let advances: Vec<Advance> = advances.into_values().collect();
        let outcome = async {
            if !leases::advance(&tx, self.leases.group(), self.leases.member(), &advances).await? {
                let _ = tx.rollback().await;
                return Ok(false);
            }
            tx.commit().await?;
            Ok::<_, DbErr>(true)
        }
        .await;
        match outcome {
            Ok(true) => Ok(Some(applied)),
            Ok(false) => {
                for span in &spans {
                    failed(span, "not committed: the partition's lease moved");
                }
                Ok(None)
            }
            Err(error) => {
                for span in &spans {
                    failed(span, &format!("not committed: {error}"));
                }
                Err(error.into())
            }
        }
    }

    /// Runs a handler's single statement ([`EventHandler::handle_alone`]) in the span of the
    /// event. `Ok(None)`: fenced, nothing written.
    async fn apply_alone<A>(
        &self,
        alone: impl Future<Output = Result<Claimed<A>, HandlerError>>,
        event: &ReceivedEvent,
        attempt: u32,
    ) -> Result<Option<Vec<A>>, HandlerError> {
        let span = self.process_span(event, attempt);
        match alone.instrument(span.clone()).await {
            Ok(Claimed::First(applied)) => Ok(Some(vec![applied])),
            Ok(Claimed::Duplicate) => Ok(Some(Vec::new())),
            Ok(Claimed::Fenced) => {
                failed(&span, "not committed: the partition's lease moved");
                Ok(None)
            }
            Err(error) => {
                failed(&span, &error.to_string());
                Err(error)
            }
        }
    }

    /// The span of handling `event` (its `attempt`th time): a consumer span continuing the trace
    /// the event carries, with OpenTelemetry's messaging attributes. Everything the handler
    /// does, and every event it emits, belongs to it.
    fn process_span(&self, event: &ReceivedEvent, attempt: u32) -> tracing::Span {
        let span = tracing::info_span!(
            "process",
            otel.name = %format_args!("process {}", event.topic),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            otel.status_message = tracing::field::Empty,
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %event.topic,
            messaging.destination.partition.id = %event.partition,
            messaging.consumer.group.name = %self.leases.group(),
            messaging.message.id = %event.envelope.event_id,
            messaging.kafka.message.key = %event.key,
            messaging.kafka.offset = event.offset,
            zentra.event_type = %event.envelope.event_type,
            zentra.order_id = %event.envelope.correlation_id,
            zentra.attempt = attempt,
        );
        if let Some(trace) = &event.envelope.trace_context {
            events::continue_trace(&span, &trace.traceparent, &trace.tracestate);
        }
        span
    }

    /// Handles one message with retries; dead-letters it when it keeps failing.
    async fn process_one<H: EventHandler>(
        &self,
        message: &OwnedMessage,
        epoch: i64,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> Handled {
        let topic = message.topic().to_owned();
        let first_failure = SystemTime::now();
        let Some(event) = decode(message) else {
            tracing::error!(topic = %topic, offset = message.offset(), "undecodable message");
            metrics::counter!(names::CONSUMER_MESSAGES, "topic" => topic, "outcome" => "undecodable")
                .increment(1);
            return self
                .dead_letter(
                    message,
                    epoch,
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
            if !self.shared.holds(&topic, event.partition, epoch) {
                return Handled::Fenced;
            }
            let fence = Fence {
                group: self.leases.group().to_owned(),
                member: self.leases.member().to_owned(),
                advance: Advance {
                    topic: event.topic.clone(),
                    partition: event.partition,
                    epoch,
                    next: event.offset + 1,
                    last: event.fingerprint,
                },
            };
            let outcome = match handler.handle_alone(&event, &self.db, fence) {
                Some(alone) => self.apply_alone(alone, &event, attempt).await,
                None => {
                    self.apply_together(
                        std::slice::from_ref(&event),
                        &[false],
                        |_, _| epoch,
                        handler,
                        attempt,
                    )
                    .await
                }
            };
            let error = match outcome {
                Ok(Some(applied)) => {
                    handler.committed(applied);
                    metrics::counter!(names::CONSUMER_MESSAGES, "topic" => topic, "outcome" => "processed")
                        .increment(1);
                    return Handled::Done;
                }
                Ok(None) => return Handled::Fenced,
                Err(error) => error,
            };
            metrics::counter!(names::CONSUMER_MESSAGES, "topic" => topic.clone(), "outcome" => "failed")
                .increment(1);
            // A message held in retries is a record waiting, whatever the statistics said last.
            self.lag
                .waiting(self.leases.group(), &topic, event.partition, event.offset);
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
                        epoch,
                        identity,
                        &error.to_string(),
                        attempt,
                        first_failure,
                        shutdown,
                    )
                    .await;
            }
            // The wait before the next attempt is a span of the event's trace, between the
            // failed attempt's span and the next one's.
            let wait = tracing::info_span!(
                "retry backoff",
                otel.name = %format_args!("backoff {}", event.topic),
                otel.kind = "internal",
                messaging.destination.name = %event.topic,
                messaging.message.id = %event.envelope.event_id,
                zentra.attempt = attempt,
                zentra.backoff_ms = backoff.as_millis() as u64,
                zentra.error = %error,
            );
            if let Some(trace) = &event.envelope.trace_context {
                events::continue_trace(&wait, &trace.traceparent, &trace.tracestate);
            }
            let waited = async {
                tokio::select! {
                    () = shutdown.cancelled() => false,
                    () = tokio::time::sleep(backoff) => true,
                }
            };
            if !waited.instrument(wait).await {
                return Handled::Stopped;
            }
            backoff = (backoff * 2).min(self.settings.max_backoff);
            attempt += 1;
        }
    }

    /// Parks the message, then moves past it; retries until both succeed (nothing may be
    /// lost). Without a sink the message is skipped with an error log.
    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        epoch: i64,
        event: Option<(String, String)>,
        error: &str,
        attempts: u32,
        first_failure: SystemTime,
        shutdown: &CancellationToken,
    ) -> Handled {
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
        let mut parked = false;
        loop {
            if !self.shared.holds(&record.topic, record.partition, epoch) {
                return Handled::Fenced;
            }
            if !parked {
                match &self.settings.dead_letters {
                    None => {
                        tracing::error!(topic = %record.topic, offset = record.offset, error, "message skipped: no dead-letter sink");
                        parked = true;
                    }
                    Some(sink) => match sink
                        .park(self.leases.group(), &record, error, attempts)
                        .await
                    {
                        Ok(()) => {
                            metrics::counter!(names::CONSUMER_MESSAGES, "topic" => record.topic.clone(), "outcome" => "dead_lettered")
                                .increment(1);
                            parked = true;
                        }
                        Err(park_error) => {
                            tracing::warn!(%park_error, topic = %record.topic, offset = record.offset, "dead-lettering failed; retrying");
                        }
                    },
                }
            }
            if parked {
                match self.skip(&record, epoch, fingerprint(message)).await {
                    Ok(true) => return Handled::Done,
                    Ok(false) => return Handled::Fenced,
                    Err(error) => {
                        tracing::warn!(%error, topic = %record.topic, offset = record.offset, "cannot move past a dead letter; retrying");
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Handled::Stopped,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.settings.max_backoff);
        }
    }

    async fn skip(&self, record: &FailedRecord, epoch: i64, last: i64) -> Result<bool, DbErr> {
        let tx = self.db.begin().await?;
        let advanced = leases::advance(
            &tx,
            self.leases.group(),
            self.leases.member(),
            &[Advance {
                topic: record.topic.clone(),
                partition: record.partition,
                epoch,
                next: record.offset + 1,
                last,
            }],
        )
        .await?;
        if advanced {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(advanced)
    }
}

/// A task aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    async fn finish(mut self) {
        let handle = std::mem::replace(&mut self.0, tokio::spawn(async {}));
        let _ = handle.await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps the group's leases: declares the topics' partitions (creating topics that vanished),
/// runs a lease round every third of a lease, and tells the processing loop what it holds.
async fn keep_leases(
    leases: PartitionLeases,
    consumer: Arc<StreamConsumer<LagContext>>,
    topics: Vec<String>,
    kafka: KafkaConfig,
    lag: ConsumerLag,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let interval = (kafka.partition_lease / 3).max(Duration::from_millis(100));
    let mut declared = false;
    let mut rounds: u64 = 0;
    let mut last_success = tokio::time::Instant::now();
    loop {
        // Partitions are looked up at start, then every ~30 rounds: a topic created again after
        // a broker restart comes back with its partitions.
        if !declared || rounds.is_multiple_of(30) {
            declared = declare_partitions(&leases, &consumer, &topics, &kafka).await;
        }
        rounds += 1;
        let held = shared
            .held
            .lock()
            .map(|held| held.clone())
            .unwrap_or_default();
        match leases.round(&held).await {
            Ok(round) => {
                last_success = tokio::time::Instant::now();
                let owned: Vec<(String, i32, Option<i64>)> = round
                    .held
                    .iter()
                    .map(|lease| (lease.topic.clone(), lease.partition, lease.next_offset))
                    .collect();
                lag.round_done(leases.group(), &owned, round.total, round.live_members);
                shared.publish(round.held);
            }
            Err(error) => {
                tracing::warn!(%error, group = leases.group(), "partition lease round failed");
                lag.round_failed(leases.group(), error.to_string());
                // Past the lease, another member may own these partitions: stop reading them.
                if last_success.elapsed() >= kafka.partition_lease {
                    shared.drop_all();
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Records every topic's partitions in the lease table; returns false when the broker could not
/// be asked (tried again next round).
async fn declare_partitions(
    leases: &PartitionLeases,
    consumer: &Arc<StreamConsumer<LagContext>>,
    topics: &[String],
    kafka: &KafkaConfig,
) -> bool {
    let mut complete = true;
    for topic in topics {
        let mut count = partition_count(consumer, topic).await;
        if count == Some(0) {
            // The topic is gone (a broker that lost its log): create it again.
            tracing::warn!(topic, "topic missing on the broker; creating it again");
            metrics::counter!(names::KAFKA_RECOVERIES, "kind" => "topic_created").increment(1);
            if let Err(error) = ensure_topics(kafka, std::slice::from_ref(topic)).await {
                tracing::warn!(%error, topic, "cannot create topic");
            }
            count = partition_count(consumer, topic).await;
        }
        match count {
            Some(count) if count > 0 => {
                if let Err(error) = leases.declare(topic, count).await {
                    tracing::warn!(%error, topic, "cannot record partitions");
                    complete = false;
                }
            }
            _ => complete = false,
        }
    }
    complete
}

/// The topic's partition count: `Some(0)` when the broker does not know it, `None` when the
/// broker did not answer.
async fn partition_count(consumer: &Arc<StreamConsumer<LagContext>>, topic: &str) -> Option<i32> {
    let consumer = Arc::clone(consumer);
    let name = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .client()
            .fetch_metadata(Some(&name), Duration::from_secs(5))
            .ok()?;
        let found = metadata.topics().iter().find(|t| t.name() == name)?;
        if found.error().is_some() {
            return Some(0);
        }
        i32::try_from(found.partitions().len()).ok()
    })
    .await
    .ok()
    .flatten()
}

/// A record's fingerprint: FNV-1a over its key and payload. A record published again (the
/// outbox republishes the same bytes) has the same fingerprint; another record almost surely not.
pub(crate) fn fingerprint(message: &OwnedMessage) -> i64 {
    const BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let key = message.key().unwrap_or_default();
    let length = u64::try_from(key.len()).unwrap_or(u64::MAX).to_le_bytes();
    let hash = length
        .iter()
        .chain(key)
        .chain(message.payload().unwrap_or_default())
        .fold(BASIS, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
        });
    i64::from_le_bytes(hash.to_le_bytes())
}

pub(crate) fn decode(message: &OwnedMessage) -> Option<ReceivedEvent> {
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
        fingerprint: fingerprint(message),
    })
}
