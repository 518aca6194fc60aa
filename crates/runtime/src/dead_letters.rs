//! The dead-letter queue every consumer shares. A message that fails processing the configured
//! number of times (or cannot be processed at all) is stored in the service's `dead_letters`
//! table with topic, partition, offset, key, headers, payload, error and attempt count, and
//! published to `<topic>.dlq`; the consumer then moves on. [`DeadLetterApi`] lists, inspects,
//! replays (back to the original topic) and dismisses them.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use chrono::{DateTime, Utc};
use prost::Message as _;
use sea_orm::{
    ConnectionTrait as _, DatabaseConnection, DbBackend, DbErr, FromQueryResult, Statement,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;
use zentra_proto::saga::v1::{self as pb, dead_letter_service_server::DeadLetterService};

use crate::{
    audit::{Action, Actor, AuditTrail, Role, check_reason},
    config::KafkaConfig,
    fresh_or_replay,
    idempotency::IdempotencyError,
    kafka::{EventProducer, KafkaFailure, ensure_topics},
    paging::Page,
    status::{Violations, check_idempotency_key, check_text, parse_uuid},
    time::{chrono_to_timestamp, timestamp_to_chrono},
};

/// Suffix of dead-letter topics.
pub const DLQ_SUFFIX: &str = ".dlq";

/// A record as it came off the broker.
#[derive(Debug, Clone)]
pub struct FailedRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key bytes.
    pub key: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Event id and type, when the payload decoded.
    pub event: Option<(String, String)>,
    /// When processing first failed.
    pub first_failure: SystemTime,
}

/// Where a consumer parks what it cannot process.
#[derive(Clone)]
pub struct DeadLetterSink {
    db: DatabaseConnection,
    producer: EventProducer,
    kafka: KafkaConfig,
    ensured: Arc<Mutex<HashSet<String>>>,
}

impl DeadLetterSink {
    /// A sink storing into `db` and publishing with `producer`.
    pub fn new(db: DatabaseConnection, producer: EventProducer, kafka: KafkaConfig) -> Self {
        Self {
            db,
            producer,
            kafka,
            ensured: Arc::default(),
        }
    }

    /// Stores the record and publishes it to `<topic>.dlq`; storing twice is a no-op.
    pub async fn park(
        &self,
        group: &str,
        record: &FailedRecord,
        error: &str,
        attempts: u32,
    ) -> Result<(), DeadLetterError> {
        let headers = pb::DeadLetter {
            headers: record
                .headers
                .iter()
                .map(|(key, value)| pb::RecordHeader {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            ..Default::default()
        }
        .encode_to_vec();
        let (event_id, event_type) = record.event.clone().unwrap_or_default();
        // Deduplicated by what the record is, not where it sat: offsets repeat after a broker
        // lost its log. An undecodable record is known by a digest of its key and payload.
        let identity = if event_id.is_empty() {
            use sha2::{Digest as _, Sha256};
            let mut digest = Sha256::new();
            digest.update(&record.key);
            digest.update([0]);
            digest.update(&record.payload);
            let hex: String = digest
                .finalize()
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            format!("sha256:{hex}")
        } else {
            event_id.clone()
        };
        let first: DateTime<Utc> = record.first_failure.into();
        let stored = self
            .db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO dead_letters (id, consumer_group, source_topic, partition, record_offset, \
                 record_key, headers, payload, event_id, event_type, error, attempt_count, status, \
                 first_failure_at, last_failure_at, identity) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'PENDING', $13, now(), $14) \
                 ON CONFLICT (consumer_group, source_topic, identity) WHERE status = 'PENDING' DO NOTHING",
                [
                    Uuid::now_v7().into(),
                    group.into(),
                    record.topic.clone().into(),
                    record.partition.into(),
                    record.offset.into(),
                    record.key.clone().into(),
                    headers.into(),
                    record.payload.clone().into(),
                    event_id.into(),
                    event_type.into(),
                    error.into(),
                    (attempts as i32).into(),
                    first.into(),
                    identity.into(),
                ],
            ))
            .await?;
        if stored.rows_affected() == 0 {
            return Ok(());
        }
        let dlq = format!("{}{DLQ_SUFFIX}", record.topic);
        let needs_topic = self
            .ensured
            .lock()
            .map(|set| !set.contains(&dlq))
            .unwrap_or(true);
        if needs_topic {
            ensure_topics(&self.kafka, std::slice::from_ref(&dlq)).await?;
            if let Ok(mut set) = self.ensured.lock() {
                set.insert(dlq.clone());
            }
        }
        let mut headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        headers.push(("dlq_error", error.as_bytes()));
        headers.push(("dlq_consumer_group", group.as_bytes()));
        self.producer
            .send(
                &dlq,
                &String::from_utf8_lossy(&record.key),
                &record.payload,
                &headers,
            )
            .await?;
        tracing::warn!(topic = %record.topic, offset = record.offset, group, attempts, error, "message dead-lettered");
        Ok(())
    }
}

#[derive(Debug, Clone, FromQueryResult)]
struct Row {
    id: Uuid,
    consumer_group: String,
    source_topic: String,
    partition: i32,
    record_offset: i64,
    record_key: Vec<u8>,
    headers: Vec<u8>,
    payload: Vec<u8>,
    event_id: String,
    event_type: String,
    error: String,
    attempt_count: i32,
    status: String,
    first_failure_at: DateTime<Utc>,
    last_failure_at: DateTime<Utc>,
    replayed_at: Option<DateTime<Utc>>,
    dismissed_at: Option<DateTime<Utc>>,
    dismiss_reason: String,
}

const COLUMNS: &str = "id, consumer_group, source_topic, partition, record_offset, record_key, headers, \
    payload, event_id, event_type, error, attempt_count, status, first_failure_at, last_failure_at, \
    replayed_at, dismissed_at, dismiss_reason";

fn to_proto(row: &Row) -> pb::DeadLetter {
    let headers = pb::DeadLetter::decode(row.headers.as_slice())
        .map(|d| d.headers)
        .unwrap_or_default();
    pb::DeadLetter {
        dead_letter_id: row.id.to_string(),
        source_topic: row.source_topic.clone(),
        partition: row.partition,
        offset: row.record_offset,
        key: row.record_key.clone(),
        headers,
        payload: row.payload.clone(),
        event_id: row.event_id.clone(),
        event_type: row.event_type.clone(),
        consumer_group: row.consumer_group.clone(),
        error: row.error.clone(),
        attempt_count: row.attempt_count,
        status: match row.status.as_str() {
            "PENDING" => pb::DeadLetterStatus::Pending,
            "REPLAYED" => pb::DeadLetterStatus::Replayed,
            "DISMISSED" => pb::DeadLetterStatus::Dismissed,
            _ => pb::DeadLetterStatus::Unspecified,
        } as i32,
        first_failure_time: Some(chrono_to_timestamp(row.first_failure_at)),
        last_failure_time: Some(chrono_to_timestamp(row.last_failure_at)),
        replay_time: row.replayed_at.map(chrono_to_timestamp),
        dismiss_time: row.dismissed_at.map(chrono_to_timestamp),
        dismiss_reason: row.dismiss_reason.clone(),
        redacted: false,
    }
}

/// A dead letter as `metadata`'s caller may see it: a viewer gets no headers and no payload.
fn shown_to(metadata: &tonic::metadata::MetadataMap, mut letter: pb::DeadLetter) -> pb::DeadLetter {
    if crate::redact::for_viewer(metadata) {
        letter.headers.clear();
        letter.payload.clear();
        letter.redacted = true;
    }
    letter
}

/// Failures of the dead-letter API.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// No such record.
    #[error("dead letter {0} not found")]
    NotFound(String),
    /// Already replayed or dismissed.
    #[error("dead letter {id} is {status}; only PENDING records can be replayed or dismissed")]
    NotPending {
        /// The record.
        id: String,
        /// Its status.
        status: String,
    },
    /// The idempotency key was used for another request.
    #[error(transparent)]
    KeyReused(IdempotencyError),
    /// Publishing the replay failed.
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
}

impl From<IdempotencyError> for DeadLetterError {
    fn from(error: IdempotencyError) -> Self {
        match error {
            IdempotencyError::Database(error) => Self::Database(error),
            reused @ IdempotencyError::KeyReused { .. } => Self::KeyReused(reused),
        }
    }
}

impl From<DeadLetterError> for Status {
    fn from(error: DeadLetterError) -> Self {
        match error {
            error @ DeadLetterError::NotFound(_) => Status::not_found(error.to_string()),
            error @ DeadLetterError::NotPending { .. } => {
                Status::failed_precondition(error.to_string())
            }
            error @ DeadLetterError::KeyReused(_) => Status::already_exists(error.to_string()),
            error @ DeadLetterError::Kafka(_) => {
                tracing::warn!(%error, "dead letter replay failed");
                Status::unavailable("broker unavailable; retry")
            }
            DeadLetterError::Database(error) => {
                tracing::error!(%error, "database error");
                Status::internal("internal error")
            }
        }
    }
}

/// `zentra.saga.v1.DeadLetterService` over one service's dead letters.
pub struct DeadLetterApi {
    db: DatabaseConnection,
    producer: EventProducer,
    audit: AuditTrail,
}

impl DeadLetterApi {
    /// The API over `db`, replaying with `producer`, recording replays and dismissals in `audit`.
    pub fn new(db: DatabaseConnection, producer: EventProducer, audit: AuditTrail) -> Self {
        Self {
            db,
            producer,
            audit,
        }
    }

    async fn row<C: sea_orm::ConnectionTrait>(
        db: &C,
        id: Uuid,
        lock: bool,
    ) -> Result<Row, DeadLetterError> {
        let lock = if lock { " FOR UPDATE" } else { "" };
        Row::find_by_statement(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1{lock}"),
            [id.into()],
        ))
        .one(db)
        .await?
        .ok_or_else(|| DeadLetterError::NotFound(id.to_string()))
    }

    fn parse_mutation(id: &str, key: &str, reason: Option<&str>) -> Result<Uuid, Status> {
        let mut violations = Violations::new();
        check_idempotency_key(key, &mut violations);
        let id = parse_uuid("dead_letter_id", id, &mut violations);
        if let Some(reason) = reason {
            check_text("reason", reason, 500, &mut violations);
        }
        match id.filter(|_| violations.is_empty()) {
            Some(id) => Ok(id),
            None => Err(violations.into_status()),
        }
    }
}

fn pending(row: &Row) -> Result<(), DeadLetterError> {
    if row.status == "PENDING" {
        Ok(())
    } else {
        Err(DeadLetterError::NotPending {
            id: row.id.to_string(),
            status: row.status.clone(),
        })
    }
}

#[tonic::async_trait]
impl DeadLetterService for DeadLetterApi {
    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let metadata = request.metadata().clone();
        let request = request.into_inner();
        let mut violations = Violations::new();
        let page = Page::parse(request.page.as_ref(), &mut violations);
        for (field, value) in [
            ("source_topic", &request.source_topic),
            ("consumer_group", &request.consumer_group),
        ] {
            if value.len() > 249 || value.chars().any(char::is_control) {
                violations.add(
                    field,
                    "must be at most 249 characters without control characters",
                );
            }
        }
        let status = match pb::DeadLetterStatus::try_from(request.status) {
            Ok(pb::DeadLetterStatus::Unspecified) => None,
            Ok(pb::DeadLetterStatus::Pending) => Some("PENDING"),
            Ok(pb::DeadLetterStatus::Replayed) => Some("REPLAYED"),
            Ok(pb::DeadLetterStatus::Dismissed) => Some("DISMISSED"),
            Err(_) => {
                violations.add("status", "is not a DeadLetterStatus");
                None
            }
        };
        let range = request.last_failure_time_range.unwrap_or_default();
        let from = range.start_time.as_ref().and_then(|t| {
            timestamp_to_chrono(t, "last_failure_time_range.start_time", &mut violations)
        });
        let to = range.end_time.as_ref().and_then(|t| {
            timestamp_to_chrono(t, "last_failure_time_range.end_time", &mut violations)
        });
        let after = page.uuid_cursor(&mut violations);
        violations.into_result()?;
        let non_empty = |value: &str| (!value.is_empty()).then(|| value.to_owned());
        let mut rows = Row::find_by_statement(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "SELECT {COLUMNS} FROM dead_letters WHERE ($1::uuid IS NULL OR id < $1) \
                 AND ($2::text IS NULL OR source_topic = $2) AND ($3::text IS NULL OR consumer_group = $3) \
                 AND ($4::text IS NULL OR status = $4) AND ($5::timestamptz IS NULL OR last_failure_at >= $5) \
                 AND ($6::timestamptz IS NULL OR last_failure_at < $6) ORDER BY id DESC LIMIT $7"
            ),
            [
                after.into(),
                non_empty(&request.source_topic).into(),
                non_empty(&request.consumer_group).into(),
                status.map(str::to_owned).into(),
                from.into(),
                to.into(),
                (page.size as i64 + 1).into(),
            ],
        ))
        .all(&self.db)
        .await
        .map_err(DeadLetterError::from)?;
        let next_page_token = page.finish(&mut rows, |row| row.id.to_string());
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: rows
                .iter()
                .map(|row| shown_to(&metadata, to_proto(row)))
                .collect(),
            page: Some(zentra_proto::common::v1::PageResponse { next_page_token }),
        }))
    }

    async fn get_dead_letter(
        &self,
        request: Request<pb::GetDeadLetterRequest>,
    ) -> Result<Response<pb::GetDeadLetterResponse>, Status> {
        let mut violations = Violations::new();
        let Some(id) = parse_uuid(
            "dead_letter_id",
            &request.get_ref().dead_letter_id,
            &mut violations,
        ) else {
            return Err(violations.into_status());
        };
        let row = Self::row(&self.db, id, false).await?;
        Ok(Response::new(pb::GetDeadLetterResponse {
            dead_letter: Some(shown_to(request.metadata(), to_proto(&row))),
        }))
    }

    async fn replay_dead_letter(
        &self,
        request: Request<pb::ReplayDeadLetterRequest>,
    ) -> Result<Response<pb::ReplayDeadLetterResponse>, Status> {
        let actor = Actor::of(&request);
        let request = request.into_inner();
        let action = Action::new(
            "zentra.saga.v1.DeadLetterService/ReplayDeadLetter",
            Role::Operator,
            format!("dead-letters/{}", request.dead_letter_id),
            &request.reason,
        );
        self.audit.run(&actor, action, self.replay(request)).await
    }

    async fn dismiss_dead_letter(
        &self,
        request: Request<pb::DismissDeadLetterRequest>,
    ) -> Result<Response<pb::DismissDeadLetterResponse>, Status> {
        let actor = Actor::of(&request);
        let request = request.into_inner();
        let action = Action::new(
            "zentra.saga.v1.DeadLetterService/DismissDeadLetter",
            Role::Operator,
            format!("dead-letters/{}", request.dead_letter_id),
            &request.reason,
        );
        self.audit.run(&actor, action, self.dismiss(request)).await
    }
}

impl DeadLetterApi {
    async fn replay(
        &self,
        request: pb::ReplayDeadLetterRequest,
    ) -> Result<Response<pb::ReplayDeadLetterResponse>, Status> {
        let id = Self::parse_mutation(&request.dead_letter_id, &request.idempotency_key, None)?;
        let mut violations = Violations::new();
        check_reason(&request.reason, &mut violations);
        violations.into_result()?;
        let tx = fresh_or_replay!(&self.db, "ReplayDeadLetter", request, DeadLetterError);
        let row = Self::row(tx.transaction(), id, true).await?;
        pending(&row)?;
        let headers = pb::DeadLetter::decode(row.headers.as_slice())
            .map(|d| d.headers)
            .unwrap_or_default();
        let header_refs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|h| (h.key.as_str(), h.value.as_slice()))
            .collect();
        // Back to the original topic with the original key, headers and payload.
        let delivered = self
            .producer
            .send(
                &row.source_topic,
                &String::from_utf8_lossy(&row.record_key),
                &row.payload,
                &header_refs,
            )
            .await
            .map_err(DeadLetterError::from)?;
        tx.transaction()
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE dead_letters SET status = 'REPLAYED', replayed_at = now() WHERE id = $1",
                [id.into()],
            ))
            .await
            .map_err(DeadLetterError::from)?;
        let row = Self::row(tx.transaction(), id, false).await?;
        let response = pb::ReplayDeadLetterResponse {
            dead_letter: Some(to_proto(&row)),
            replay_partition: delivered.partition,
            replay_offset: delivered.offset,
        };
        tx.commit(&response).await.map_err(DeadLetterError::from)?;
        tracing::info!(dead_letter_id = %id, topic = %row.source_topic, "dead letter replayed");
        Ok(Response::new(response))
    }

    async fn dismiss(
        &self,
        request: pb::DismissDeadLetterRequest,
    ) -> Result<Response<pb::DismissDeadLetterResponse>, Status> {
        let id = Self::parse_mutation(
            &request.dead_letter_id,
            &request.idempotency_key,
            Some(&request.reason),
        )?;
        let tx = fresh_or_replay!(&self.db, "DismissDeadLetter", request, DeadLetterError);
        let row = Self::row(tx.transaction(), id, true).await?;
        pending(&row)?;
        tx.transaction()
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE dead_letters SET status = 'DISMISSED', dismissed_at = now(), dismiss_reason = $2 WHERE id = $1",
                [id.into(), request.reason.trim().into()],
            ))
            .await
            .map_err(DeadLetterError::from)?;
        let row = Self::row(tx.transaction(), id, false).await?;
        let response = pb::DismissDeadLetterResponse {
            dead_letter: Some(to_proto(&row)),
        };
        tx.commit(&response).await.map_err(DeadLetterError::from)?;
        tracing::info!(dead_letter_id = %id, "dead letter dismissed");
        Ok(Response::new(response))
    }
}
