//! The consumer against the real broker and PostgreSQL: partitions leased in the database, offsets
//! advanced with each message's effect, a crashed member's work resumed by its restart or taken
//! over by another member, a log the broker lost or rebuilt detected, a stall reported.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prost::Message as _;
use sea_orm::{
    ConnectionTrait as _, DatabaseConnection, DatabaseTransaction, DbBackend, Statement,
};
use zentra_proto::inventory::v1::StockLow;
use zentra_runtime::config::SecretUrl;
use zentra_runtime::{
    CancellationToken,
    config::KafkaConfig,
    events::{EventMeta, envelope, payload},
    inbox::Claimed,
    kafka::{
        ConsumerLag, ConsumerSettings, EventConsumer, EventHandler, EventProducer, Fence,
        HandlerError, ReceivedEvent, ensure_topics,
    },
};
use zentra_test_support::{
    TestDatabase, count, delete_topics, eventually, kafka_bootstrap, redis_url, unique_suffix,
};

/// A topic, a migrated database and a producer of one test.
struct Fixture {
    config: KafkaConfig,
    topic: String,
    database: TestDatabase,
    db: DatabaseConnection,
    producer: EventProducer,
    /// Members handle each message on its own in one statement (`EventHandler::handle_alone`).
    alone: bool,
}

impl Fixture {
    async fn new(label: &str, partitions: i32) -> Self {
        let prefix = format!("zt-{label}-{}.", unique_suffix());
        let config = KafkaConfig {
            bootstrap_servers: kafka_bootstrap(),
            topic_prefix: prefix.clone(),
            group_prefix: prefix.clone(),
            partitions,
            partition_lease: Duration::from_millis(1500),
            ..KafkaConfig::default()
        };
        let topic = format!("{prefix}stock");
        ensure_topics(&config, std::slice::from_ref(&topic))
            .await
            .expect("topic");
        let database = TestDatabase::create(label).await.expect("database");
        let db = database.connect().await.expect("connect");
        zentra_runtime::db::migrate(&db, &[])
            .await
            .expect("runtime migrations");
        db.execute_unprepared("CREATE TABLE applied (sku TEXT NOT NULL, member TEXT NOT NULL)")
            .await
            .expect("effect table");
        let producer = EventProducer::new(&config, "test").expect("producer");
        Self {
            config,
            topic,
            database,
            db,
            producer,
            alone: false,
        }
    }

    /// The same fixture whose members handle each message alone, in one statement.
    fn alone(self) -> Self {
        Self {
            alone: true,
            ..self
        }
    }

    fn member(&self, member: &str) -> KafkaConfig {
        KafkaConfig {
            member_id: member.to_owned(),
            ..self.config.clone()
        }
    }

    /// Starts a member of group "g" applying into `applied`; the handle aborts it as a crash
    /// would (nothing is given back, no offset is flushed).
    fn start(&self, member: &str, settings: ConsumerSettings, lag: &ConsumerLag) -> Running {
        let consumer = EventConsumer::new(
            &self.member(member),
            ConsumerSettings {
                lag: Some(lag.clone()),
                ..settings
            },
            self.db.clone(),
        )
        .expect("consumer");
        let stop = CancellationToken::new();
        let task = tokio::spawn(consumer.run(
            Apply {
                member: member.to_owned(),
                fail_first: Arc::default(),
                alone: self.alone,
            },
            stop.clone(),
        ));
        Running { stop, task }
    }

    async fn applied(&self) -> Vec<String> {
        self.db
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT sku FROM applied ORDER BY sku",
            ))
            .await
            .expect("applied")
            .iter()
            .map(|row| row.try_get::<String>("", "sku").expect("sku"))
            .collect()
    }

    async fn wait_applied(&self, count: usize) -> Vec<String> {
        let reached = eventually(Duration::from_secs(30), || async {
            let applied = self.applied().await;
            (applied.len() >= count).then_some(())
        })
        .await;
        if reached.is_none() {
            panic!(
                "{count} effects expected, got {}",
                self.applied().await.len()
            );
        }
        // Anything that would be applied twice has time to be.
        tokio::time::sleep(Duration::from_millis(700)).await;
        self.applied().await
    }

    /// Owner of each partition of the topic, by partition.
    async fn owners(&self) -> Vec<Option<String>> {
        self.db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT owner FROM consumer_partitions WHERE topic = $1 AND lease_until > now() ORDER BY partition",
                [self.topic.clone().into()],
            ))
            .await
            .expect("owners")
            .iter()
            .map(|row| row.try_get::<Option<String>>("", "owner").expect("owner"))
            .collect()
    }

    async fn cleanup(self) {
        drop(self.db);
        delete_topics(&[self.topic.clone(), format!("{}.dlq", self.topic)]).await;
        self.database.drop_database().await.expect("cleanup");
    }
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// As `kill -9` would: the task is cut wherever it is.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("consumer stops");
    }
}

/// Writes each event's SKU into `applied` in the consumer's transaction, or, when `alone`, in one
/// statement that also moves the offset; SKUs starting `FLAKY` fail their first attempt.
#[derive(Clone)]
struct Apply {
    member: String,
    fail_first: Arc<Mutex<Vec<String>>>,
    alone: bool,
}

impl Apply {
    fn sku(&self, event: &ReceivedEvent) -> Result<String, HandlerError> {
        let sku = payload::<StockLow>(&event.envelope)
            .map(|event| event.sku)
            .ok_or_else(|| HandlerError::Permanent("not StockLow".to_owned()))?;
        if sku.starts_with("FLAKY") {
            let mut failed = self.fail_first.lock().expect("lock");
            if !failed.contains(&sku) {
                failed.push(sku);
                return Err(HandlerError::Transient("simulated hiccup".to_owned()));
            }
        }
        Ok(sku)
    }
}

impl EventHandler for Apply {
    type Applied = ();

    async fn handle(
        &self,
        event: &ReceivedEvent,
        tx: &DatabaseTransaction,
    ) -> Result<(), HandlerError> {
        let sku = self.sku(event)?;
        tx.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO applied (sku, member) VALUES ($1, $2)",
            [sku.into(), self.member.clone().into()],
        ))
        .await?;
        Ok(())
    }

    fn handle_alone(
        &self,
        event: &ReceivedEvent,
        db: &DatabaseConnection,
        fence: Fence,
    ) -> Option<impl Future<Output = Result<Claimed<()>, HandlerError>> + Send> {
        if !self.alone {
            return None;
        }
        let sku = self.sku(event);
        Some(async move {
            let mut values: Vec<sea_orm::Value> = vec![sku?.into(), self.member.clone().into()];
            values.extend(fence.values());
            let row = db
                .query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    format!(
                        "WITH {}, effect AS (INSERT INTO applied (sku, member) \
                           SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM advance)) \
                         SELECT EXISTS (SELECT 1 FROM advance) AS advanced",
                        Fence::part(3, "true")
                    ),
                    values,
                ))
                .await?
                .expect("one row");
            Ok(if row.try_get::<bool>("", "advanced")? {
                Claimed::First(())
            } else {
                Claimed::Fenced
            })
        })
    }

    /// SKUs starting `IGNORED` are not this handler's business (were one handled, it would show
    /// in `applied`).
    fn ignores(&self, event: &ReceivedEvent) -> bool {
        payload::<StockLow>(&event.envelope).is_some_and(|event| event.sku.starts_with("IGNORED"))
    }
}

async fn publish(producer: &EventProducer, topic: &str, sku: &str) {
    send(producer, topic, sku, &record(sku)).await;
}

/// The bytes of a StockLow event for `sku`: sent twice, the same record (as the outbox publishes
/// it again after a broker lost its log).
fn record(sku: &str) -> Vec<u8> {
    envelope(
        &StockLow {
            sku: sku.to_owned(),
            available: 1,
            low_stock_threshold: 2,
        },
        EventMeta {
            producer: "test",
            aggregate_type: "product",
            aggregate_id: sku.to_owned(),
            correlation_id: String::new(),
            causation_id: String::new(),
        },
    )
    .encode_to_vec()
}

/// A record as sent: its SKU (the record key) and bytes.
type Sent<'a> = (&'a str, Vec<u8>);

async fn send(producer: &EventProducer, topic: &str, sku: &str, record: &[u8]) {
    let event_id = zentra_proto::events::v1::EventEnvelope::decode(record)
        .expect("an envelope")
        .event_id;
    producer
        .send(topic, sku, record, &[("event_id", event_id.as_bytes())])
        .await
        .expect("acknowledged");
}

fn quick(topic: &str) -> ConsumerSettings {
    ConsumerSettings {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..ConsumerSettings::new("g", vec![topic.to_owned()])
    }
}

fn skus(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:03}")).collect()
}

fn sorted(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items
}

/// The fixture's settings with hints on Redis at `wake_url`: a consumer stops fetching after
/// 100 ms without records and, hearing nothing, looks again after `idle_fetch`.
fn with_hints(fixture: &mut Fixture, wake_url: &str, idle_fetch: Duration) {
    fixture.config.wake_url = SecretUrl::new(wake_url);
    fixture.config.idle_after = Duration::from_millis(100);
    fixture.config.idle_fetch = idle_fetch;
    // The producer announces on the same Redis.
    fixture.producer = EventProducer::new(&fixture.config, "test").expect("producer");
}

async fn wait_idle(lag: &ConsumerLag, group: &str) {
    eventually(Duration::from_secs(30), || async {
        (lag.idle(group) == Some(true)).then_some(())
    })
    .await
    .expect("the consumer stops fetching once it has caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_caught_up_stops_fetching_and_a_hint_brings_the_next_record_at_once() {
    let mut fixture = Fixture::new("hinted", 3).await;
    // Without a hint it would not look again within the test.
    with_hints(&mut fixture, &redis_url(), Duration::from_secs(3600));
    for sku in skus("A", 0..5) {
        publish(&fixture.producer, &fixture.topic, &sku).await;
    }
    let lag = ConsumerLag::default();
    let running = fixture.start("m-1", quick(&fixture.topic), &lag);
    assert_eq!(fixture.wait_applied(5).await.len(), 5);
    let group = format!("{}g", fixture.config.group_prefix);
    wait_idle(&lag, &group).await;

    // Each record is announced after the broker acknowledged it, and the idle consumer fetches.
    for round in 0..3 {
        publish(&fixture.producer, &fixture.topic, &format!("B-{round}")).await;
        assert_eq!(fixture.wait_applied(6 + round).await.len(), 6 + round);
        wait_idle(&lag, &group).await;
    }
    running.stop().await;
    fixture.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hints_an_idle_consumer_still_reads_everything_by_looking_periodically() {
    let mut fixture = Fixture::new("unhinted", 2).await;
    // Nothing listens on port 1: every hint is lost.
    with_hints(
        &mut fixture,
        "redis://127.0.0.1:1",
        Duration::from_millis(500),
    );
    let lag = ConsumerLag::default();
    let running = fixture.start("m-1", quick(&fixture.topic), &lag);
    let group = format!("{}g", fixture.config.group_prefix);
    wait_idle(&lag, &group).await;
    let expected = skus("C", 0..10);
    for sku in &expected {
        publish(&fixture.producer, &fixture.topic, sku).await;
    }
    assert_eq!(fixture.wait_applied(10).await, expected);
    running.stop().await;
    fixture.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_is_retried_and_a_successor_resumes_after_what_was_processed() {
    let fixture = Fixture::new("consumer", 1).await;
    for sku in ["SKU-1", "FLAKY-2", "SKU-3"] {
        publish(&fixture.producer, &fixture.topic, sku).await;
    }
    let lag = ConsumerLag::default();
    let first = fixture.start("m-1", quick(&fixture.topic), &lag);
    assert_eq!(
        fixture.wait_applied(3).await,
        ["FLAKY-2", "SKU-1", "SKU-3"],
        "each once, the flaky one after its retry"
    );
    first.stop().await;

    publish(&fixture.producer, &fixture.topic, "SKU-4").await;
    // A clean stop gave the partition back: a member with a new id takes it at once.
    let successor = fixture.start("m-2", quick(&fixture.topic), &lag);
    assert_eq!(
        fixture.wait_applied(4).await,
        ["FLAKY-2", "SKU-1", "SKU-3", "SKU-4"],
        "resumes after the stored offset"
    );
    successor.stop().await;
    fixture.cleanup().await;
}

/// nextest runs each test in its own process: this one's telemetry meets no other test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_event_shows_each_attempt_and_the_backoff_between_them_in_its_trace() {
    use zentra_runtime::{config::TelemetryConfig, telemetry};
    let collector = zentra_test_support::otlp::Collector::start().await;
    let guard = telemetry::init(
        "kafka-retry-trace",
        &TelemetryConfig {
            log_filter: "off".to_owned(),
            otlp_endpoint: Some(collector.endpoint()),
            ..TelemetryConfig::default()
        },
    )
    .expect("telemetry");
    let fixture = Fixture::new("retrytrace", 1).await;
    // Built inside a span, the event carries its trace.
    let published = tracing::info_span!("publish the flaky event");
    let trace_id = {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        published
            .context()
            .span()
            .span_context()
            .trace_id()
            .to_string()
    };
    let bytes = published.in_scope(|| record("FLAKY-1"));
    send(&fixture.producer, &fixture.topic, "FLAKY-1", &bytes).await;
    let lag = ConsumerLag::default();
    let member = fixture.start("m-1", quick(&fixture.topic), &lag);
    assert_eq!(fixture.wait_applied(1).await, ["FLAKY-1"]);
    member.stop().await;
    let flushing = guard.telemetry().clone();
    tokio::task::spawn_blocking(move || flushing.flush())
        .await
        .expect("flushed");

    let process = format!("process {}", fixture.topic);
    let backoff = format!("backoff {}", fixture.topic);
    let spans = eventually(Duration::from_secs(10), || {
        let spans = collector.trace(&trace_id);
        let complete = spans.iter().filter(|span| span.name == process).count() >= 2
            && spans.iter().any(|span| span.name == backoff);
        async move { complete.then_some(spans) }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "two attempts and a backoff in the trace: {:#?}",
            collector.spans()
        )
    });
    let attempt = |n: &str| {
        spans
            .iter()
            .find(|span| span.name == process && span.attribute("zentra.attempt") == n)
            .unwrap_or_else(|| panic!("attempt {n}: {spans:#?}"))
    };
    let (first, second) = (attempt("1"), attempt("2"));
    let wait = spans
        .iter()
        .find(|span| span.name == backoff)
        .expect("backoff span");
    assert!(first.error && !second.error, "{first:?} {second:?}");
    assert_eq!(wait.attribute("zentra.attempt"), "1");
    assert_eq!(wait.attribute("zentra.backoff_ms"), "20");
    assert_eq!(
        wait.attribute("messaging.message.id"),
        first.attribute("messaging.message.id")
    );
    // In time, between the failed attempt and the one that succeeded.
    assert!(first.end_ns <= wait.start_ns && wait.end_ns <= second.start_ns);
    assert!(wait.end_ns - wait.start_ns >= 20_000_000, "{wait:?}");
    fixture.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_mid_stream_and_restarted_with_the_same_id_resumes_at_once_and_applies_nothing_twice()
 {
    killed_and_restarted_with_the_same_id(Fixture::new("killsame", 3).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_hints_killed_and_restarted_with_the_same_id_applies_everything_once() {
    let mut fixture = Fixture::new("killhinted", 3).await;
    // Records of the second wave reach the restarted member by hints alone.
    with_hints(&mut fixture, &redis_url(), Duration::from_secs(3600));
    killed_and_restarted_with_the_same_id(fixture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_applying_each_event_in_one_statement_killed_and_restarted_applies_everything_once()
 {
    killed_and_restarted_with_the_same_id(Fixture::new("killalone", 3).await.alone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_one_statement_event_is_retried_and_nothing_is_written_by_a_member_that_lost_its_partition()
 {
    let fixture = Fixture::new("alone", 1).await.alone();
    for sku in ["SKU-1", "FLAKY-2", "SKU-3"] {
        publish(&fixture.producer, &fixture.topic, sku).await;
    }
    let lag = ConsumerLag::default();
    let member = fixture.start("m-1", quick(&fixture.topic), &lag);
    assert_eq!(
        fixture.wait_applied(3).await,
        ["FLAKY-2", "SKU-1", "SKU-3"],
        "each once, the flaky one after its retry"
    );

    // Another member takes the partition over under a new epoch, as after a lease expiry the
    // first member did not notice yet: whatever it still reads, it must not write.
    fixture
        .db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE consumer_partitions SET owner = 'thief', epoch = epoch + 1, \
               lease_until = now() + interval '1 hour' WHERE topic = $1",
            [fixture.topic.clone().into()],
        ))
        .await
        .expect("take over");
    for sku in ["SKU-4", "SKU-5"] {
        publish(&fixture.producer, &fixture.topic, sku).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fixture.applied().await,
        ["FLAKY-2", "SKU-1", "SKU-3"],
        "a member that lost its partition wrote"
    );
    assert_eq!(
        count(
            &fixture.db,
            "SELECT next_offset FROM consumer_partitions WHERE owner = 'thief'"
        )
        .await,
        3,
        "a member that lost its partition moved the offset"
    );
    member.stop().await;
    fixture.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_applying_in_one_statement_split_the_partitions_and_the_survivor_takes_over() {
    two_members_split(Fixture::new("splitalone", 4).await.alone()).await;
}

/// Kills a member mid-stream as `kill -9` would, publishes more, restarts it under the same
/// member id as `just up` does, and checks every event was applied exactly once.
async fn killed_and_restarted_with_the_same_id(fixture: Fixture) {
    let first_wave = skus("A", 0..60);
    for sku in &first_wave {
        publish(&fixture.producer, &fixture.topic, sku).await;
    }
    let lag = ConsumerLag::default();
    let running = fixture.start("stack-1", quick(&fixture.topic), &lag);
    eventually(Duration::from_secs(30), || async {
        (fixture.applied().await.len() >= 20).then_some(())
    })
    .await
    .expect("some applied before the kill");
    running.kill().await;
    let second_wave = skus("B", 0..30);
    for sku in &second_wave {
        publish(&fixture.producer, &fixture.topic, sku).await;
    }

    // Same member id, as `just up` restarts a process: its leases are its own, taken back at
    // once rather than after they expire.
    let restarted_at = Instant::now();
    let restarted = fixture.start("stack-1", quick(&fixture.topic), &lag);
    let applied = fixture.wait_applied(90).await;
    let resumed_in = restarted_at.elapsed();
    let mut expected = first_wave.clone();
    expected.extend(second_wave);
    assert_eq!(
        applied,
        sorted(expected),
        "every event applied exactly once"
    );
    eprintln!("restarted member caught up on 90 events in {resumed_in:?}");
    restarted.stop().await;
    fixture.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_messages_take_no_transaction_their_offsets_are_stored_later_and_a_kill_repeats_nothing()
 {
    let fixture = Fixture::new("ignored", 1).await;
    let stored =
        || async {
            fixture
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT next_offset FROM consumer_partitions WHERE topic = $1 AND partition = 0",
                [fixture.topic.clone().into()],
            ))
            .await
            .expect("offset")
            .and_then(|row| row.try_get::<Option<i64>>("", "next_offset").expect("column"))
        };
    for sku in ["SKU-1", "IGNORED-2", "IGNORED-3"] {
        publish(&fixture.producer, &fixture.topic, sku).await;
    }
    let lag = ConsumerLag::default();
    let running = fixture.start("stack-1", quick(&fixture.topic), &lag);
    assert_eq!(fixture.wait_applied(1).await, ["SKU-1"]);
    // The ignored tail had no transaction to carry its offset: it is stored on its own.
    eventually(Duration::from_secs(10), || async {
        (stored().await == Some(3)).then_some(())
    })
    .await
    .expect("the offset past the ignored messages is stored");

    // Ignored messages after the last stored offset, then a kill -9 and a restart under the
    // same id: they are read again and still ignored, and nothing is applied twice.
    for sku in ["SKU-4", "IGNORED-5", "IGNORED-6"] {
        publish(&fixture.producer, &fixture.topic, sku).await;
    }
    assert_eq!(fixture.wait_applied(2).await, ["SKU-1", "SKU-4"]);
    running.kill().await;
    for sku in ["SKU-7", "IGNORED-8"] {
        publish(&fixture.producer, &fixture.topic, sku).await;
    }
    let restarted = fixture.start("stack-1", quick(&fixture.topic), &lag);
    assert_eq!(
        fixture.wait_applied(3).await,
        ["SKU-1", "SKU-4", "SKU-7"],
        "each once, none of the ignored"
    );
    restarted.stop().await;
    assert_eq!(
        stored().await,
        Some(8),
        "the offset past everything read is stored, by a clean stop at the latest"
    );
    fixture.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_the_partitions_and_the_survivor_takes_over_a_killed_ones_share() {
    two_members_split(Fixture::new("split", 4).await).await;
}

/// Two members share four partitions; one is killed and the other takes over its share.
async fn two_members_split(fixture: Fixture) {
    let lag_a = ConsumerLag::default();
    let lag_b = ConsumerLag::default();
    let a = fixture.start("a", quick(&fixture.topic), &lag_a);
    let b = fixture.start("b", quick(&fixture.topic), &lag_b);
    let owners = eventually(Duration::from_secs(20), || async {
        let owners = fixture.owners().await;
        let of = |member: &str| {
            owners
                .iter()
                .filter(|o| o.as_deref() == Some(member))
                .count()
        };
        (owners.len() == 4 && of("a") == 2 && of("b") == 2).then_some(owners)
    })
    .await
    .unwrap_or_else(|| panic!("two partitions each expected: {:?}", lag_a.snapshot()));
    assert_eq!(owners.len(), 4);

    let first_wave = skus("A", 0..40);
    for sku in &first_wave {
        publish(&fixture.producer, &fixture.topic, sku).await;
    }
    fixture.wait_applied(40).await;
    let by_member = |member: &'static str| {
        let db = fixture.db.clone();
        async move {
            db.query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT count(*) AS n FROM applied WHERE member = $1",
                [member.into()],
            ))
            .await
            .expect("count")
            .expect("row")
            .try_get::<i64>("", "n")
            .expect("n")
        }
    };
    assert!(
        by_member("a").await > 0 && by_member("b").await > 0,
        "both members consumed a share"
    );

    a.kill().await;
    let killed_at = Instant::now();
    let second_wave = skus("B", 0..40);
    for sku in &second_wave {
        publish(&fixture.producer, &fixture.topic, sku).await;
    }
    let applied = fixture.wait_applied(80).await;
    let mut expected = first_wave;
    expected.extend(second_wave);
    assert_eq!(
        applied,
        sorted(expected),
        "nothing lost, nothing applied twice"
    );
    eprintln!(
        "survivor applied the killed member's share within {:?}",
        killed_at.elapsed()
    );
    assert_eq!(
        fixture.owners().await,
        vec![Some("b".to_owned()); 4],
        "the survivor holds every partition"
    );
    b.stop().await;
    fixture.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_offset_past_the_logs_end_is_detected_and_reading_starts_over() {
    let fixture = Fixture::new("pastend", 1).await;
    // As after a broker that lost its log: the stored offset points far beyond the new log.
    fixture
        .db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO consumer_partitions (consumer_group, topic, partition, next_offset) VALUES ($1, $2, 0, 5000)",
            [format!("{}g", fixture.config.group_prefix).into(), fixture.topic.clone().into()],
        ))
        .await
        .expect("stored offset");
    for sku in ["SKU-1", "SKU-2", "SKU-3"] {
        publish(&fixture.producer, &fixture.topic, sku).await;
    }
    let lag = ConsumerLag::default();
    let running = fixture.start("m-1", quick(&fixture.topic), &lag);
    assert_eq!(
        fixture.wait_applied(3).await,
        ["SKU-1", "SKU-2", "SKU-3"],
        "the new log is read from its start"
    );
    running.stop().await;
    fixture.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_rebuilt_up_to_the_stored_offset_is_recognised_and_its_new_records_are_read() {
    let fixture = Fixture::new("rebuilt", 1).await;
    // The old log holds one record more than the new one will (a relay's retry, say).
    let records: Vec<Sent> = ["SKU-1", "SKU-2", "IGNORED-X", "SKU-3"]
        .into_iter()
        .map(|sku| (sku, record(sku)))
        .collect();
    for (sku, bytes) in &records {
        send(&fixture.producer, &fixture.topic, sku, bytes).await;
    }
    let lag = ConsumerLag::default();
    let running = fixture.start("m-1", quick(&fixture.topic), &lag);
    assert_eq!(fixture.wait_applied(3).await, ["SKU-1", "SKU-2", "SKU-3"]);
    running.kill().await;
    let group = format!("{}g", fixture.config.group_prefix);
    let stored = fixture
        .db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT next_offset, last_record FROM consumer_partitions WHERE consumer_group = $1",
            [group.clone().into()],
        ))
        .await
        .expect("stored position")
        .expect("a row");
    let next: i64 = stored.try_get("", "next_offset").expect("next offset");
    let last: i64 = stored.try_get("", "last_record").expect("last record");
    assert_eq!(next, 4);

    // The broker lost that log. Each layout of a new log stands on a topic of its own, with the
    // stored position copied to it (deleting and creating a topic under live librdkafka clients
    // crashes them against this broker).
    let copies = |sku: &str| {
        records
            .iter()
            .find(|(name, _)| *name == sku)
            .map(|(_, bytes)| bytes.clone())
            .expect("a record of the old log")
    };
    let fresh = record("SKU-5");
    let layouts: [(&str, Vec<Sent>); 2] = [
        // The same records again without the old log's extra one, then a new one: offset 3,
        // where reading resumes, holds SKU-NEW, not SKU-3. Another log: read from its start.
        (
            "shifted",
            vec![
                ("SKU-1", copies("SKU-1")),
                ("SKU-2", copies("SKU-2")),
                ("SKU-3", copies("SKU-3")),
                ("SKU-NEW", record("SKU-NEW")),
            ],
        ),
        // As the outbox rebuilds a log: the send that revealed the loss (SKU-5) first, then the
        // window again in order, SKU-5 included. Offset 3 holds SKU-3: the log reads on from
        // offset 4 without starting over, and SKU-5 is read there.
        (
            "outbox",
            vec![
                ("SKU-5", fresh.clone()),
                ("SKU-1", copies("SKU-1")),
                ("SKU-2", copies("SKU-2")),
                ("SKU-3", copies("SKU-3")),
                ("SKU-5", fresh),
            ],
        ),
    ];
    let mut expected = 3;
    for (label, layout) in layouts {
        let rebuilt = format!("{}{label}", fixture.config.topic_prefix);
        ensure_topics(&fixture.config, std::slice::from_ref(&rebuilt))
            .await
            .expect("topic");
        for (sku, bytes) in &layout {
            send(&fixture.producer, &rebuilt, sku, bytes).await;
        }
        fixture
            .db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO consumer_partitions (consumer_group, topic, partition, next_offset, last_record) \
                 VALUES ($1, $2, 0, $3, $4)",
                [group.clone().into(), rebuilt.clone().into(), next.into(), last.into()],
            ))
            .await
            .expect("the stored position, in front of the new log");
        // Restarted with its id, the member resumes at offset 4, which the new log reaches.
        let running = fixture.start("m-1", quick(&rebuilt), &lag);
        // Read from its start, the shifted log applies all four again (a service's inbox would
        // recognise the three it had; this handler has none); the outbox's log applies SKU-5.
        expected += if label == "shifted" { 4 } else { 1 };
        let applied = fixture.wait_applied(expected).await;
        running.stop().await;
        delete_topics(&[rebuilt.clone(), format!("{rebuilt}.dlq")]).await;
        let new = if label == "shifted" {
            "SKU-NEW"
        } else {
            "SKU-5"
        };
        assert_eq!(
            applied.iter().filter(|sku| *sku == new).count(),
            1,
            "{label}: the record the old log did not have is read once: {applied:?}"
        );
        assert_eq!(applied.len(), expected, "{label}: {applied:?}");
    }
    fixture.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_that_finds_the_log_lost_publishes_its_window_again_after_the_record_that_showed_it()
 {
    use zentra_runtime::outbox::{self, AfterPublish, OutboxRelay};
    let fixture = Fixture::new("republish", 1).await;
    let relay = OutboxRelay::new(
        fixture.db.clone(),
        fixture.producer.clone(),
        zentra_runtime::config::OutboxConfig::default(),
    );
    let enqueue = |sku: &'static str| {
        let db = fixture.db.clone();
        let topic = fixture.topic.clone();
        async move {
            let envelope = zentra_proto::events::v1::EventEnvelope::decode(record(sku).as_slice())
                .expect("an envelope");
            outbox::enqueue(&db, &topic, &envelope)
                .await
                .expect("enqueued");
            envelope.event_id
        }
    };
    let publish_all = || async {
        while relay.pending().await.expect("pending") > 0 {
            relay
                .publish_round(AfterPublish::MarkSent)
                .await
                .expect("a round");
        }
    };
    let mut window = Vec::new();
    for sku in ["SKU-A", "SKU-B", "SKU-C"] {
        window.push(enqueue(sku).await);
    }
    publish_all().await;

    // The broker loses the log; the next event's offset goes back, which shows the loss.
    delete_topics(std::slice::from_ref(&fixture.topic)).await;
    eventually(Duration::from_secs(10), || async {
        ensure_topics(&fixture.config, std::slice::from_ref(&fixture.topic))
            .await
            .ok()
    })
    .await
    .expect("the topic again");
    let revealing = enqueue("SKU-E").await;
    publish_all().await;

    // In the new log the revealing record stands first; published again with the window, in
    // order, it also follows every older record, where a consumer that had read up to them
    // (at an offset the old log gave them) still finds it.
    let collector = zentra_test_support::EventCollector::start(
        &fixture.config,
        std::slice::from_ref(&fixture.topic),
    )
    .await;
    let log: Vec<String> = collector
        .collect(5)
        .await
        .into_iter()
        .map(|event| event.envelope.event_id)
        .collect();
    let mut expected = vec![revealing.clone()];
    expected.extend(window);
    expected.push(revealing);
    assert_eq!(log, expected);
    fixture.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_stuck_on_a_message_reports_the_stall_as_a_problem() {
    let fixture = Fixture::new("stall", 1).await;
    let config = KafkaConfig {
        stall_after: Duration::from_millis(800),
        ..fixture.member("m-1")
    };
    let lag = ConsumerLag::default();
    // Without a dead-letter sink a failing message is retried for ever: the partition stalls.
    let consumer = EventConsumer::new(
        &config,
        ConsumerSettings {
            lag: Some(lag.clone()),
            ..quick(&fixture.topic)
        },
        fixture.db.clone(),
    )
    .expect("consumer");
    publish(&fixture.producer, &fixture.topic, "SKU-1").await;
    #[derive(Clone)]
    struct Broken;
    impl EventHandler for Broken {
        type Applied = ();
        async fn handle(
            &self,
            _: &ReceivedEvent,
            _: &DatabaseTransaction,
        ) -> Result<(), HandlerError> {
            Err(HandlerError::Transient("database unreachable".to_owned()))
        }
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(Broken, stop.clone()));
    let problems = eventually(Duration::from_secs(20), || async {
        let problems = lag.problems();
        (!problems.is_empty()).then_some(problems)
    })
    .await
    .expect("the stall is reported");
    assert!(
        problems[0].reason.contains("made no progress"),
        "{problems:?}"
    );
    stop.cancel();
    let _ = task.await;
    fixture.cleanup().await;
}

/// Fails every event whose SKU starts with `SKU-BAD` until told to accept them.
#[derive(Clone, Default)]
struct Picky {
    accept_bad: Arc<std::sync::atomic::AtomicBool>,
    done: Arc<Mutex<Vec<String>>>,
}

impl EventHandler for Picky {
    type Applied = ();

    async fn handle(
        &self,
        event: &ReceivedEvent,
        _tx: &DatabaseTransaction,
    ) -> Result<(), HandlerError> {
        let sku = payload::<StockLow>(&event.envelope)
            .map(|e| e.sku)
            .unwrap_or_default();
        if sku.starts_with("SKU-BAD") && !self.accept_bad.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(HandlerError::Transient(
                "simulated downstream outage".to_owned(),
            ));
        }
        self.done.lock().expect("lock").push(sku);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_failing_is_dead_lettered_then_replayed_or_dismissed() {
    use zentra_proto::saga::v1::{self as pb, dead_letter_service_server::DeadLetterService as _};
    use zentra_runtime::dead_letters::{DeadLetterApi, DeadLetterSink};

    let prefix = format!("zt-dlq-{}.", unique_suffix());
    let config = KafkaConfig {
        bootstrap_servers: kafka_bootstrap(),
        topic_prefix: prefix.clone(),
        group_prefix: prefix.clone(),
        partitions: 1,
        ..KafkaConfig::default()
    };
    let topic = format!("{prefix}stock");
    ensure_topics(&config, std::slice::from_ref(&topic))
        .await
        .expect("topic");
    let database = TestDatabase::create("dlq").await.expect("database");
    let db = database.connect().await.expect("connect");
    zentra_runtime::db::migrate(&db, &[])
        .await
        .expect("runtime migrations");
    let producer = EventProducer::new(&config, "test").expect("producer");
    for sku in ["SKU-BAD-1", "SKU-OK", "SKU-BAD-2"] {
        publish(&producer, &topic, sku).await;
    }

    let handler = Picky::default();
    let stop = CancellationToken::new();
    let settings = ConsumerSettings {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        max_attempts: 3,
        dead_letters: Some(DeadLetterSink::new(
            db.clone(),
            producer.clone(),
            config.clone(),
        )),
        ..ConsumerSettings::new("picky", vec![topic.clone()])
    };
    let consumer = EventConsumer::new(&config, settings, db.clone()).expect("consumer");
    let running = tokio::spawn(consumer.run(handler.clone(), stop.clone()));

    let api = DeadLetterApi::new(
        db.clone(),
        producer.clone(),
        zentra_runtime::audit::AuditTrail::new(db.clone(), "test"),
    );
    let list = |status: pb::DeadLetterStatus| {
        let request = pb::ListDeadLettersRequest {
            source_topic: topic.clone(),
            status: status as i32,
            ..Default::default()
        };
        let api = &api;
        async move {
            api.list_dead_letters(tonic::Request::new(request))
                .await
                .expect("listed")
                .into_inner()
                .dead_letters
        }
    };
    let parked = eventually(Duration::from_secs(20), || async {
        let parked = list(pb::DeadLetterStatus::Pending).await;
        (parked.len() == 2).then_some(parked)
    })
    .await
    .expect("both bad messages parked");
    assert_eq!(
        *handler.done.lock().expect("lock"),
        ["SKU-OK"],
        "the good one was not held up"
    );
    for letter in &parked {
        assert_eq!(letter.attempt_count, 3);
        assert!(
            letter.error.contains("simulated downstream outage"),
            "{}",
            letter.error
        );
        assert_eq!(letter.event_type, "zentra.inventory.v1.StockLow");
        assert!(letter.headers.iter().any(|h| h.key == "event_id"));
        assert!(letter.first_failure_time.is_some() && letter.last_failure_time.is_some());
    }
    let on_dlq = zentra_test_support::EventCollector::start(&config, &[format!("{topic}.dlq")])
        .await
        .collect(2)
        .await;
    assert_eq!(on_dlq.len(), 2, "published to the .dlq topic too");

    // The downstream recovers; the operator replays one and dismisses the other.
    handler
        .accept_bad
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let newest_first_bad_2 = &parked[0];
    let bad_1 = &parked[1];
    let replay = |key: &str| pb::ReplayDeadLetterRequest {
        dead_letter_id: bad_1.dead_letter_id.clone(),
        idempotency_key: key.to_owned(),
        reason: String::new(),
    };
    let replayed = api
        .replay_dead_letter(tonic::Request::new(replay("replay-1")))
        .await
        .expect("replayed")
        .into_inner();
    assert_eq!(
        replayed.dead_letter.as_ref().map(|d| d.status),
        Some(pb::DeadLetterStatus::Replayed as i32)
    );
    let again = api
        .replay_dead_letter(tonic::Request::new(replay("replay-1")))
        .await
        .expect("same key")
        .into_inner();
    assert_eq!(again, replayed);
    let twice = api
        .replay_dead_letter(tonic::Request::new(replay("replay-2")))
        .await
        .expect_err("already replayed");
    assert_eq!(twice.code(), tonic::Code::FailedPrecondition);
    eventually(Duration::from_secs(20), || async {
        handler
            .done
            .lock()
            .expect("lock")
            .contains(&"SKU-BAD-1".to_owned())
            .then_some(())
    })
    .await
    .expect("the replayed message is processed");

    let dismissed = api
        .dismiss_dead_letter(tonic::Request::new(pb::DismissDeadLetterRequest {
            dead_letter_id: newest_first_bad_2.dead_letter_id.clone(),
            reason: "order was cancelled meanwhile".to_owned(),
            idempotency_key: "dismiss-1".to_owned(),
        }))
        .await
        .expect("dismissed")
        .into_inner()
        .dead_letter
        .expect("record");
    assert_eq!(dismissed.status, pb::DeadLetterStatus::Dismissed as i32);
    assert_eq!(dismissed.dismiss_reason, "order was cancelled meanwhile");
    let bad = api
        .get_dead_letter(tonic::Request::new(pb::GetDeadLetterRequest {
            dead_letter_id: "../etc".to_owned(),
        }))
        .await
        .expect_err("malformed id");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    stop.cancel();
    running.await.expect("consumer stops");
    drop(db);
    delete_topics(&[topic.clone(), format!("{topic}.dlq")]).await;
    database.drop_database().await.expect("cleanup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_known_by_its_event_not_by_where_it_sat() {
    use zentra_runtime::dead_letters::DeadLetterSink;
    let fixture = Fixture::new("dlqident", 1).await;
    // The same event twice, at two offsets: as after a broker that lost its log and the outbox
    // published it again.
    let event = envelope(
        &StockLow {
            sku: "SKU-POISON".to_owned(),
            available: 1,
            low_stock_threshold: 2,
        },
        EventMeta {
            producer: "test",
            aggregate_type: "product",
            aggregate_id: "SKU-POISON".to_owned(),
            correlation_id: String::new(),
            causation_id: String::new(),
        },
    );
    for _ in 0..2 {
        fixture
            .producer
            .send(&fixture.topic, "SKU-POISON", &event.encode_to_vec(), &[])
            .await
            .expect("acknowledged");
    }
    #[derive(Clone)]
    struct Refuses;
    impl EventHandler for Refuses {
        type Applied = ();
        async fn handle(
            &self,
            _: &ReceivedEvent,
            _: &DatabaseTransaction,
        ) -> Result<(), HandlerError> {
            Err(HandlerError::Permanent("cannot apply".to_owned()))
        }
    }
    let consumer = EventConsumer::new(
        &fixture.member("m-1"),
        ConsumerSettings {
            dead_letters: Some(DeadLetterSink::new(
                fixture.db.clone(),
                fixture.producer.clone(),
                fixture.config.clone(),
            )),
            ..quick(&fixture.topic)
        },
        fixture.db.clone(),
    )
    .expect("consumer");
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(Refuses, stop.clone()));
    let count = |sql: &'static str| {
        let db = fixture.db.clone();
        async move {
            db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
                .await
                .expect("count")
                .expect("row")
                .try_get::<i64>("", "n")
                .expect("n")
        }
    };
    eventually(Duration::from_secs(20), || async {
        (count("SELECT coalesce(min(next_offset), 0) AS n FROM consumer_partitions").await >= 2)
            .then_some(())
    })
    .await
    .expect("both copies handled");
    assert_eq!(
        count("SELECT count(*) AS n FROM dead_letters").await,
        1,
        "one dead letter for one event"
    );
    stop.cancel();
    let _ = task.await;
    fixture.cleanup().await;
}
