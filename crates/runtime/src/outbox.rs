//! The transactional outbox. A service writes its events into the `outbox` table in the same
//! transaction as the state change ([`enqueue`]); the [`OutboxRelay`] publishes unsent rows and
//! marks them sent only after the broker acknowledged them. A crash between the two publishes
//! the row again on restart: consumers deduplicate by event id (the inbox).

use std::{sync::Arc, time::Duration};

use prost::Message as _;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, TransactionTrait as _,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use zentra_proto::events::v1::EventEnvelope;

use crate::{
    config::OutboxConfig,
    kafka::{EventProducer, KafkaFailure},
    telemetry::names,
};

/// Outbox failures.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database failed.
    #[error("outbox database error: {0}")]
    Database(#[from] DbErr),
    /// The broker did not acknowledge.
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    /// A stored event id is not a UUID (written outside [`enqueue`]).
    #[error("outbox row has a malformed event id {0}")]
    MalformedEventId(String),
}

/// Writes an event to the outbox inside the caller's transaction.
pub async fn enqueue<C: ConnectionTrait>(
    connection: &C,
    topic: &str,
    envelope: &EventEnvelope,
) -> Result<(), DbErr> {
    let mut rows = Rows::default();
    rows.push(topic, envelope)?;
    write(connection, rows).await
}

/// Writes `rows` to the outbox inside the caller's transaction.
pub async fn write<C: ConnectionTrait>(connection: &C, rows: Rows) -> Result<(), DbErr> {
    connection
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            Rows::insert(1, "true"),
            rows.values(),
        ))
        .await?;
    Ok(())
}

/// Outbox rows written by another statement of the caller's, as a part of it: one round trip
/// for a state change and its events. [`Rows::insert`] is the SQL of a data-modifying `WITH`
/// part; its seven arrays are [`Rows::values`].
#[derive(Debug, Default, Clone)]
pub struct Rows {
    event_ids: Vec<Uuid>,
    topics: Vec<String>,
    keys: Vec<String>,
    event_types: Vec<String>,
    envelopes: Vec<Vec<u8>>,
    traceparents: Vec<String>,
    tracestates: Vec<String>,
}

impl Rows {
    /// Adds an event for `topic`.
    pub fn push(&mut self, topic: &str, envelope: &EventEnvelope) -> Result<(), DbErr> {
        let event_id = Uuid::parse_str(&envelope.event_id)
            .map_err(|_| DbErr::Custom(format!("event id {} is not a UUID", envelope.event_id)))?;
        let trace = envelope.trace_context.clone().unwrap_or_default();
        self.event_ids.push(event_id);
        self.topics.push(topic.to_owned());
        self.keys.push(envelope.aggregate_id.clone());
        self.event_types.push(envelope.event_type.clone());
        self.envelopes.push(envelope.encode_to_vec());
        self.traceparents.push(trace.traceparent);
        self.tracestates.push(trace.tracestate);
        Ok(())
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.event_ids.is_empty()
    }

    /// An `INSERT` of the rows whose arrays are the parameters `$first` to `$first + 6`, written
    /// only `WHERE` `condition` holds (`true` for always).
    pub fn insert(first: usize, condition: &str) -> String {
        let arrays: Vec<String> = ["uuid", "text", "text", "text", "bytea", "text", "text"]
            .iter()
            .enumerate()
            .map(|(offset, kind)| format!("${}::{kind}[]", first + offset))
            .collect();
        format!(
            "INSERT INTO outbox (event_id, topic, record_key, event_type, envelope, traceparent, tracestate) \
             SELECT * FROM unnest({}) WHERE {condition}",
            arrays.join(", ")
        )
    }

    /// The parameters of [`Rows::insert`], in order.
    pub fn values(self) -> [sea_orm::Value; 7] {
        [
            self.event_ids.into(),
            self.topics.into(),
            self.keys.into(),
            self.event_types.into(),
            self.envelopes.into(),
            self.traceparents.into(),
            self.tracestates.into(),
        ]
    }
}

/// What a relay round does after the broker acknowledged a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterPublish {
    /// Mark the rows sent (normal operation).
    MarkSent,
    /// Stop as a crash would: the rows stay unsent and are published again later. For
    /// crash-recovery tests and drills.
    Crash,
}

/// Publishes unsent outbox rows, oldest first.
#[derive(Clone)]
pub struct OutboxRelay {
    db: DatabaseConnection,
    producer: EventProducer,
    config: OutboxConfig,
    wake: Arc<Notify>,
    /// The highest offset each partition acknowledged: a lower one later means the broker lost
    /// its log, and what was published recently may never have been consumed.
    high_offsets: Arc<std::sync::Mutex<std::collections::HashMap<(String, i32), i64>>>,
}

impl OutboxRelay {
    /// A relay over `db`'s outbox.
    pub fn new(db: DatabaseConnection, producer: EventProducer, config: OutboxConfig) -> Self {
        Self {
            db,
            producer,
            config,
            wake: Arc::new(Notify::new()),
            high_offsets: Arc::default(),
        }
    }

    /// A handle that wakes the relay at once (call it after committing events).
    pub fn waker(&self) -> OutboxWaker {
        OutboxWaker(self.wake.clone())
    }

    /// Runs rounds until `shutdown` is cancelled: at once when woken, else every poll interval.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = self.config.poll_interval;
        loop {
            match self.publish_round(AfterPublish::MarkSent).await {
                // A full batch means more may be waiting: go again without sleeping.
                Ok(published) if published >= self.config.batch_size as usize => continue,
                Ok(_) => backoff = self.config.poll_interval,
                Err(error) => {
                    metrics::counter!(names::OUTBOX_FAILURES).increment(1);
                    tracing::warn!(%error, "outbox relay round failed");
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(backoff) => {}
            }
        }
    }

    /// One round: takes the relay lock, locks up to a batch of unsent rows, publishes them,
    /// waits for every acknowledgement, then marks them sent in the same transaction.
    pub async fn publish_round(&self, after: AfterPublish) -> Result<usize, OutboxError> {
        let transaction = self.db.begin().await?;
        // One relay at a time per database: two replicas publishing interleaved batches could
        // put a later event of an aggregate on Kafka before an earlier one. The relay lock and
        // the rows come in one statement: the rows are read only when the lock was taken.
        let rows = transaction
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "WITH relay AS MATERIALIZED \
                   (SELECT pg_try_advisory_xact_lock(hashtext('zentra.outbox.relay')) AS locked) \
                 SELECT o.* FROM relay, LATERAL \
                   (SELECT seq, event_id, topic, record_key, event_type, envelope, traceparent, tracestate, created_at \
                    FROM outbox WHERE relay.locked AND published_at IS NULL \
                    ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED) o",
                [i64::from(self.config.batch_size).into()],
            ))
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut pending = Vec::with_capacity(rows.len());
        for row in &rows {
            pending.push(PendingRow {
                seq: row.try_get("", "seq")?,
                event_id: row.try_get::<Uuid>("", "event_id")?.to_string(),
                topic: row.try_get("", "topic")?,
                key: row.try_get("", "record_key")?,
                event_type: row.try_get("", "event_type")?,
                envelope: row.try_get("", "envelope")?,
                traceparent: row.try_get("", "traceparent")?,
                tracestate: row.try_get("", "tracestate")?,
                created_at: row.try_get("", "created_at")?,
            });
        }
        // Sent together, so the producer pipelines them; per-partition order is kept by the
        // idempotent producer.
        let sends = pending.iter().map(|row| {
            let mut headers: Vec<(&str, &[u8])> = vec![
                ("event_id", row.event_id.as_bytes()),
                ("event_type", row.event_type.as_bytes()),
            ];
            if !row.traceparent.is_empty() {
                headers.push(("traceparent", row.traceparent.as_bytes()));
            }
            if !row.tracestate.is_empty() {
                headers.push(("tracestate", row.tracestate.as_bytes()));
            }
            async move {
                self.producer
                    .send(&row.topic, &row.key, &row.envelope, &headers)
                    .await
            }
        });
        let results = futures::future::join_all(sends).await;
        let acknowledged_at = chrono::Utc::now();
        for (row, _) in pending
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
        {
            let delay = (acknowledged_at - row.created_at)
                .to_std()
                .unwrap_or_default();
            metrics::histogram!(names::OUTBOX_PUBLISH_DELAY).record(delay.as_secs_f64());
        }
        // Mark only the acknowledged prefix: a gap would let a later event overtake an earlier
        // one of the same aggregate on retry.
        let acknowledged: Vec<i64> = pending
            .iter()
            .zip(&results)
            .take_while(|(_, result)| result.is_ok())
            .map(|(row, _)| row.seq)
            .collect();
        if after == AfterPublish::Crash {
            // Nothing is marked, as after a crash. The rollback is awaited, because a dropped
            // transaction is rolled back lazily and would keep the relay lock for a moment.
            transaction.rollback().await?;
            return Ok(acknowledged.len());
        }
        if !acknowledged.is_empty() {
            transaction
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "UPDATE outbox SET published_at = now() WHERE seq = ANY($1)",
                    [acknowledged.clone().into()],
                ))
                .await?;
        }
        if self.log_went_back(&pending, &results) {
            // The broker lost its log: what it acknowledged recently may be gone before anyone
            // consumed it. Publish it again (the inbox and idempotency keys absorb repeats),
            // the records that revealed the loss included: in the new log they stand in front
            // of the window, below offsets a consumer may already be past; published again in
            // order, they follow every older record (docs/ARCHITECTURE.md, "A broker restart").
            let window =
                i64::try_from(self.config.republish_window.as_millis()).unwrap_or(i64::MAX);
            let again = transaction
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "UPDATE outbox SET published_at = NULL \
                     WHERE published_at > now() - $1 * interval '1 millisecond'",
                    [window.into()],
                ))
                .await?
                .rows_affected();
            tracing::warn!(
                again,
                "the broker lost its log: publishing recent events again"
            );
            metrics::counter!(names::KAFKA_RECOVERIES, "kind" => "outbox_republished")
                .increment(again);
            self.wake.notify_one();
        }
        transaction.commit().await?;
        metrics::counter!(names::OUTBOX_PUBLISHED).increment(acknowledged.len() as u64);
        if let Some(Err(error)) = results.into_iter().find(Result::is_err) {
            return Err(error.into());
        }
        Ok(acknowledged.len())
    }

    /// Records the acknowledged offsets; true when a partition's offset went back.
    fn log_went_back(
        &self,
        pending: &[PendingRow],
        results: &[Result<crate::kafka::Delivered, crate::kafka::KafkaFailure>],
    ) -> bool {
        let Ok(mut high) = self.high_offsets.lock() else {
            return false;
        };
        let mut went_back = false;
        for (row, result) in pending.iter().zip(results) {
            let Ok(delivered) = result else { continue };
            let key = (row.topic.clone(), delivered.partition);
            match high.get(&key) {
                Some(previous) if delivered.offset <= *previous => went_back = true,
                _ => {}
            }
        }
        if went_back {
            high.clear();
        }
        for (row, result) in pending.iter().zip(results) {
            if let Ok(delivered) = result {
                let entry = high
                    .entry((row.topic.clone(), delivered.partition))
                    .or_insert(delivered.offset);
                *entry = (*entry).max(delivered.offset);
            }
        }
        went_back
    }

    /// Number of rows not yet published.
    pub async fn pending(&self) -> Result<i64, DbErr> {
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) AS pending FROM outbox WHERE published_at IS NULL",
            ))
            .await?;
        let pending = row
            .map(|row| row.try_get::<i64>("", "pending"))
            .transpose()?
            .unwrap_or(0);
        metrics::gauge!(names::OUTBOX_PENDING).set(pending as f64);
        Ok(pending)
    }
}

/// Wakes an [`OutboxRelay`].
#[derive(Clone)]
pub struct OutboxWaker(Arc<Notify>);

impl OutboxWaker {
    /// Asks the relay to publish now.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

struct PendingRow {
    seq: i64,
    event_id: String,
    topic: String,
    key: String,
    event_type: String,
    envelope: Vec<u8>,
    traceparent: String,
    tracestate: String,
    /// When its transaction began: the event's first moment.
    created_at: chrono::DateTime<chrono::Utc>,
}
