//! The saga orchestrator's storage: sagas with their leases, and the signals waiting for them.

use chrono::{DateTime, Utc};
use prost::Message as _;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement, Value};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use zentra_proto::order::v1::OrderPlaced;
use zentra_runtime::{inbox, kafka::Fence, outbox};

use crate::{
    domain::{CompensationCause, Saga, SagaState, ShipmentCheck, ShipmentReport, Step, StepType},
    machine::Signal,
};

pub mod migrations;

fn statement(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

const COLUMNS: &str = "id, order_id, state, compensation_cause, order_data, data::text AS data, \
    version, next_run_at, lease_owner, created_at, updated_at, ended_at";

#[derive(Debug, FromQueryResult)]
struct SagaRow {
    id: Uuid,
    order_id: Uuid,
    state: String,
    compensation_cause: String,
    order_data: Vec<u8>,
    data: String,
    version: i64,
    next_run_at: Option<DateTime<Utc>>,
    lease_owner: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
}

/// The part of a saga kept as one JSON document.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SagaData {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    failure_reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reservation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payment_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shipment_id: Option<Uuid>,
    #[serde(default)]
    captured: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shipment_dispatched: Option<bool>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    shipment_failure: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cancel_request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shipment_check: Option<ShipmentCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compensating_since: Option<DateTime<Utc>>,
    #[serde(default)]
    steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    traceparent: String,
}

fn corrupt(what: &str, id: Uuid, detail: impl std::fmt::Display) -> DbErr {
    DbErr::Custom(format!("saga {id}: stored {what} is unreadable: {detail}"))
}

impl TryFrom<SagaRow> for Saga {
    type Error = DbErr;

    fn try_from(row: SagaRow) -> Result<Self, DbErr> {
        let state =
            SagaState::parse(&row.state).ok_or_else(|| corrupt("state", row.id, &row.state))?;
        let cause = match row.compensation_cause.as_str() {
            "" => None,
            text => Some(
                CompensationCause::parse(text)
                    .ok_or_else(|| corrupt("compensation cause", row.id, text))?,
            ),
        };
        let order = OrderPlaced::decode(row.order_data.as_slice())
            .map_err(|error| corrupt("order", row.id, error))?;
        let data: SagaData =
            serde_json::from_str(&row.data).map_err(|error| corrupt("data", row.id, error))?;
        let shipment = match (data.shipment_dispatched, data.shipment_failure) {
            (Some(true), _) => ShipmentReport::Dispatched,
            (Some(false), reason) => ShipmentReport::Failed(reason),
            (None, _) => ShipmentReport::None,
        };
        Ok(Saga {
            id: row.id,
            order_id: row.order_id,
            order,
            state,
            cause,
            failure_reason: data.failure_reason,
            reservation_id: data.reservation_id,
            payment_id: data.payment_id,
            shipment_id: data.shipment_id,
            captured: data.captured,
            shipment,
            cancel_request: data.cancel_request,
            shipment_check: data.shipment_check,
            compensating_since: data.compensating_since,
            steps: data.steps,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
            ended_at: row.ended_at,
            next_run_at: row.next_run_at,
            lease: row.lease_owner,
            traceparent: data.traceparent,
        })
    }
}

fn data_json(saga: &Saga) -> Result<String, DbErr> {
    let (shipment_dispatched, shipment_failure) = match &saga.shipment {
        ShipmentReport::None => (None, String::new()),
        ShipmentReport::Dispatched => (Some(true), String::new()),
        ShipmentReport::Failed(reason) => (Some(false), reason.clone()),
    };
    let data = SagaData {
        failure_reason: saga.failure_reason.clone(),
        reservation_id: saga.reservation_id,
        payment_id: saga.payment_id,
        shipment_id: saga.shipment_id,
        captured: saga.captured,
        shipment_dispatched,
        shipment_failure,
        cancel_request: saga.cancel_request.clone(),
        shipment_check: saga.shipment_check,
        compensating_since: saga.compensating_since,
        steps: saga.steps.clone(),
        traceparent: saga.traceparent.clone(),
    };
    serde_json::to_string(&data).map_err(|error| DbErr::Custom(error.to_string()))
}

fn step_text(step: Option<StepType>) -> String {
    step.map(StepType::as_str).unwrap_or_default().to_owned()
}

fn rows(rows: Vec<SagaRow>) -> Result<Vec<Saga>, DbErr> {
    rows.into_iter().map(Saga::try_from).collect()
}

/// Inserts a new saga, due at once, written by the instance `writer`; `false` when the order
/// already has one.
pub async fn insert<C: ConnectionTrait>(
    db: &C,
    saga: &Saga,
    writer: &str,
    lease: std::time::Duration,
) -> Result<bool, DbErr> {
    Ok(matches!(
        insert_moving(db, saga, writer, lease, None).await?,
        inbox::Claimed::First(())
    ))
}

/// [`insert`], moving a consumer's offset in the same statement when `fence` is given: then
/// nothing is written unless the consumer still holds the partition ([`Fence`]), and the
/// statement needs no transaction. `Duplicate`: the order already has a saga.
pub async fn insert_moving<C: ConnectionTrait>(
    db: &C,
    saga: &Saga,
    writer: &str,
    lease: std::time::Duration,
    fence: Option<&Fence>,
) -> Result<inbox::Claimed<()>, DbErr> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let mut values: Vec<sea_orm::Value> = vec![
        saga.id.into(),
        saga.order_id.into(),
        saga.state.as_str().into(),
        saga.order.encode_to_vec().into(),
        data_json(saga)?.into(),
        saga.created_at.into(),
        writer.into(),
        saga.lease.clone().into(),
        lease_ms.into(),
    ];
    let (advance, guard, advanced) = match fence {
        Some(fence) => {
            values.extend(fence.values());
            (
                format!("{}, ", Fence::part(10, "true")),
                "WHERE EXISTS (SELECT 1 FROM advance)",
                "EXISTS (SELECT 1 FROM advance)",
            )
        }
        None => (String::new(), "", "true"),
    };
    let row = db
        .query_one_raw(statement(
            &format!(
                "WITH {advance}inserted AS (INSERT INTO sagas (id, order_id, state, order_data, data, \
                   next_run_at, created_at, updated_at, written_by, lease_owner, lease_until) \
                 SELECT $1, $2, $3, $4, $5::jsonb, $6, $6, $6, $7, $8, \
                   CASE WHEN $8::text IS NULL THEN NULL ELSE now() + $9 * interval '1 millisecond' END \
                 {guard} ON CONFLICT (order_id) DO NOTHING RETURNING 1) \
                 SELECT {advanced} AS advanced, EXISTS (SELECT 1 FROM inserted) AS inserted"
            ),
            values,
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("insert statement returned no row".to_owned()))?;
    Ok(if !row.try_get::<bool>("", "advanced")? {
        inbox::Claimed::Fenced
    } else if row.try_get::<bool>("", "inserted")? {
        inbox::Claimed::First(())
    } else {
        inbox::Claimed::Duplicate
    })
}

/// A lease token of `owner`: the owner's name and a token of this claim, so that a lease taken
/// again (after it expired) is told apart from the one before.
pub fn lease_token(owner: &str) -> String {
    format!("{owner}:{}", Uuid::new_v4())
}

/// One saga by id.
pub async fn by_id<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<Option<Saga>, DbErr> {
    SagaRow::find_by_statement(statement(
        &format!("SELECT {COLUMNS} FROM sagas WHERE id = $1"),
        [id.into()],
    ))
    .one(db)
    .await?
    .map(Saga::try_from)
    .transpose()
}

/// The saga of an order.
pub async fn by_order<C: ConnectionTrait>(db: &C, order_id: Uuid) -> Result<Option<Saga>, DbErr> {
    SagaRow::find_by_statement(statement(
        &format!("SELECT {COLUMNS} FROM sagas WHERE order_id = $1"),
        [order_id.into()],
    ))
    .one(db)
    .await?
    .map(Saga::try_from)
    .transpose()
}

/// Leases up to `limit` sagas that are due (by time or by a waiting signal) and not leased by a
/// live instance, to `owner` for `lease`. `SKIP LOCKED` lets instances claim side by side without
/// ever claiming the same saga. Each claim gets its own token (`<owner>:<uuid>`, in
/// [`Saga::lease`]): a task that outlived its lease cannot write over the next claimant's work,
/// even in the same instance.
///
/// Each saga comes with whether signals wait for it, so the engine reads them only then.
pub async fn claim_due<C: ConnectionTrait>(
    db: &C,
    owner: &str,
    lease: std::time::Duration,
    limit: usize,
) -> Result<Vec<(Saga, bool)>, DbErr> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let found = db
        .query_all_raw(statement(
            "WITH candidates AS ( \
                 (SELECT id FROM sagas WHERE next_run_at <= now() \
                    AND (lease_until IS NULL OR lease_until < now()) \
                  ORDER BY next_run_at LIMIT $3) \
                 UNION \
                 (SELECT DISTINCT g.saga_id FROM saga_signals g JOIN sagas s ON s.id = g.saga_id \
                  WHERE s.lease_until IS NULL OR s.lease_until < now() LIMIT $3) \
             ), claimable AS ( \
                 SELECT s.id FROM sagas s JOIN candidates c ON c.id = s.id \
                 WHERE s.lease_until IS NULL OR s.lease_until < now() \
                 LIMIT $3 FOR UPDATE OF s SKIP LOCKED \
             ) \
             UPDATE sagas SET lease_owner = $1 || ':' || gen_random_uuid()::text, \
               lease_until = now() + $2 * interval '1 millisecond' \
             FROM claimable WHERE sagas.id = claimable.id \
             RETURNING sagas.id, sagas.order_id, sagas.state, sagas.compensation_cause, \
               sagas.order_data, sagas.data::text AS data, sagas.version, sagas.next_run_at, \
               sagas.lease_owner, sagas.created_at, sagas.updated_at, sagas.ended_at, \
               EXISTS (SELECT 1 FROM saga_signals g WHERE g.saga_id = sagas.id) AS has_signals",
            [
                owner.into(),
                lease_ms.into(),
                i64::try_from(limit).unwrap_or(i64::MAX).into(),
            ],
        ))
        .await?;
    found
        .iter()
        .map(|row| {
            let saga = Saga::try_from(SagaRow::from_query_result(row, "")?)?;
            Ok((saga, row.try_get::<bool>("", "has_signals")?))
        })
        .collect()
}

/// Gives up every lease `owner` holds (at start-up, after a crash of the same instance, and at
/// shutdown), so the sagas are claimable at once.
pub async fn release_leases<C: ConnectionTrait>(db: &C, owner: &str) -> Result<u64, DbErr> {
    let result = db
        .execute_raw(statement(
            "UPDATE sagas SET lease_owner = NULL, lease_until = NULL \
             WHERE starts_with(lease_owner, $1 || ':')",
            [owner.into()],
        ))
        .await?;
    Ok(result.rows_affected())
}

/// Signals waiting for a saga, oldest first, with their ids.
pub async fn signals<C: ConnectionTrait>(
    db: &C,
    saga_id: Uuid,
) -> Result<Vec<(i64, Signal)>, DbErr> {
    #[derive(FromQueryResult)]
    struct Row {
        id: i64,
        signal: String,
    }
    let found = Row::find_by_statement(statement(
        "SELECT id, signal::text AS signal FROM saga_signals WHERE saga_id = $1 ORDER BY id",
        [saga_id.into()],
    ))
    .all(db)
    .await?;
    let mut signals = Vec::with_capacity(found.len());
    for row in found {
        match serde_json::from_str(&row.signal) {
            Ok(signal) => signals.push((row.id, signal)),
            Err(error) => {
                // Unreadable signals are dropped with the next transition, never applied.
                tracing::error!(saga_id = %saga_id, signal_id = row.id, %error, "unreadable saga signal");
                signals.push((row.id, Signal::RetryNow));
            }
        }
    }
    Ok(signals)
}

/// Adds a signal for a saga.
pub async fn add_signal<C: ConnectionTrait>(
    db: &C,
    saga_id: Uuid,
    signal: &Signal,
) -> Result<(), DbErr> {
    let json = serde_json::to_string(signal).map_err(|error| DbErr::Custom(error.to_string()))?;
    db.execute_raw(statement(
        "INSERT INTO saga_signals (saga_id, signal) VALUES ($1, $2::jsonb)",
        [saga_id.into(), json.into()],
    ))
    .await?;
    Ok(())
}

/// Adds a signal for the saga of an order; `false` when the order has no saga.
pub async fn add_signal_by_order<C: ConnectionTrait>(
    db: &C,
    order_id: Uuid,
    signal: &Signal,
) -> Result<bool, DbErr> {
    let json = serde_json::to_string(signal).map_err(|error| DbErr::Custom(error.to_string()))?;
    let result = db
        .execute_raw(statement(
            "INSERT INTO saga_signals (saga_id, signal) \
             SELECT id, $2::jsonb FROM sagas WHERE order_id = $1",
            [order_id.into(), json.into()],
        ))
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Which saga a signal is for.
#[derive(Debug, Clone, Copy)]
pub enum SignalTarget {
    /// The saga of this order.
    Order(Uuid),
    /// This saga.
    Saga(Uuid),
}

/// Claims the event that carries `signal` in the inbox and, on its first delivery, adds the
/// signal for its saga and, when `lease` is given and no instance holds the saga, takes the
/// saga's lease under that token for that long: one statement. On the first delivery it gives
/// the saga when its lease was taken with the signal: the caller drives it once the statement
/// committed, without a claim. `None`: no saga matches `target`, and nothing was written (nor,
/// with a fenced `entry`, the offset moved).
pub async fn add_signal_once<C: ConnectionTrait>(
    db: &C,
    entry: &inbox::Entry,
    target: SignalTarget,
    signal: &Signal,
    lease: Option<(&str, std::time::Duration)>,
) -> Result<Option<inbox::Claimed<Option<Saga>>>, DbErr> {
    let json = serde_json::to_string(signal).map_err(|error| DbErr::Custom(error.to_string()))?;
    let (column, id) = match target {
        SignalTarget::Order(order_id) => ("order_id", order_id),
        SignalTarget::Saga(saga_id) => ("id", saga_id),
    };
    let (token, lease_ms) = match lease {
        Some((token, duration)) => (
            Some(token.to_owned()),
            i64::try_from(duration.as_millis()).unwrap_or(i64::MAX),
        ),
        None => (None, 0),
    };
    let mut values: Vec<sea_orm::Value> = entry.values().into();
    values.extend([id.into(), json.into(), token.into(), lease_ms.into()]);
    let fence_at = values.len() + 1;
    values.extend(entry.fence_values());
    let returned: String = COLUMNS
        .split(", ")
        .map(|column| format!("sagas.{}", column.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let row = db
        .query_one_raw(statement(
            &format!(
                "WITH target AS (SELECT id FROM sagas WHERE {column} = $4), \
                 {}, \
                 added AS (INSERT INTO saga_signals (saga_id, signal) \
                     SELECT id, $5::jsonb FROM target WHERE EXISTS (SELECT 1 FROM claim) \
                     RETURNING saga_id), \
                 taken AS (UPDATE sagas SET lease_owner = $6, \
                       lease_until = now() + $7 * interval '1 millisecond' \
                     WHERE $6::text IS NOT NULL AND id IN (SELECT saga_id FROM added) \
                       AND (lease_until IS NULL OR lease_until < now()) \
                     RETURNING {returned}) \
                 SELECT EXISTS (SELECT 1 FROM target) AS found, {}, taken.* \
                 FROM (SELECT 1) AS one LEFT JOIN taken ON true",
                entry.parts(1, fence_at, "EXISTS (SELECT 1 FROM target)"),
                entry.columns()
            ),
            values,
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("signal statement returned no row".to_owned()))?;
    if !row.try_get::<bool>("", "found")? {
        return Ok(None);
    }
    entry
        .outcome(&row, || match row.try_get::<Option<Uuid>>("", "id")? {
            Some(_) => Ok(Some(Saga::try_from(SagaRow::from_query_result(&row, "")?)?)),
            None => Ok(None),
        })
        .map(Some)
}

/// How a transition leaves the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Keep it (the engine goes on with the saga) for this long.
    Extend(std::time::Duration),
    /// Give it up (the saga waits).
    Release,
}

/// Stores a transition made under the lease token `token` by the instance `writer`, with its
/// outbox `records`, deleting exactly the signals it applied (by id: a signal that committed
/// meanwhile with a lower id is kept for the next transition). One statement: on its own it
/// needs no transaction.
/// `None` when the token no longer holds the lease: another claim took the saga over and this
/// transition must be dropped. Then nothing was written (no row, no signal deleted, no record),
/// so a transaction can go on storing other sagas' transitions.
pub async fn save<C: ConnectionTrait>(
    db: &C,
    saga: &Saga,
    (token, writer): (&str, &str),
    lease: Lease,
    applied_signals: &[i64],
    records: outbox::Rows,
) -> Result<Option<Saved>, DbErr> {
    let (release, lease_ms) = match lease {
        Lease::Extend(duration) => (
            false,
            i64::try_from(duration.as_millis()).unwrap_or(i64::MAX),
        ),
        Lease::Release => (true, 0),
    };
    let mut values: Vec<sea_orm::Value> = vec![
        saga.id.into(),
        token.into(),
        saga.state.as_str().into(),
        step_text(saga.current_step()).into(),
        step_text(saga.failing_step()).into(),
        saga.cause
            .map(CompensationCause::as_str)
            .unwrap_or_default()
            .into(),
        data_json(saga)?.into(),
        saga.next_run_at.into(),
        saga.ended_at.into(),
        release.into(),
        lease_ms.into(),
        writer.into(),
        applied_signals.to_vec().into(),
    ];
    // The signals and records are written only with the saga's row: a lost lease writes none.
    let signals = if applied_signals.is_empty() {
        String::new()
    } else {
        ", applied AS (DELETE FROM saga_signals \
           WHERE saga_id = $1 AND id = ANY($13) AND EXISTS (SELECT 1 FROM saved))"
            .to_owned()
    };
    let records = if records.is_empty() {
        String::new()
    } else {
        values.extend(records.values());
        format!(
            ", records AS ({})",
            outbox::Rows::insert(14, "EXISTS (SELECT 1 FROM saved)")
        )
    };
    let updated = db
        .query_one_raw(statement(
            &format!(
                "WITH saved AS (UPDATE sagas SET state = $3, current_step = $4, failing_step = $5, \
                   compensation_cause = $6, data = $7::jsonb, version = version + 1, next_run_at = $8, \
                   ended_at = $9, updated_at = now(), written_by = $12, \
                   lease_owner = CASE WHEN $10 THEN NULL ELSE lease_owner END, \
                   lease_until = CASE WHEN $10 THEN NULL ELSE now() + $11 * interval '1 millisecond' END \
                 WHERE id = $1 AND lease_owner = $2 RETURNING updated_at){signals}{records} \
                 SELECT updated_at, EXISTS (SELECT 1 FROM saga_signals g \
                   WHERE g.saga_id = $1 AND g.id <> ALL($13)) AS has_signals FROM saved"
            ),
            values,
        ))
        .await?;
    let Some(row) = updated else {
        // Nothing written: the signals stay for the lease's holder.
        return Ok(None);
    };
    Ok(Some(Saved {
        updated_at: row.try_get("", "updated_at")?,
        has_signals: row.try_get("", "has_signals")?,
    }))
}

/// What storing a transition tells the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// When the new version was written.
    pub updated_at: DateTime<Utc>,
    /// Signals wait for the saga (arrived while the step ran).
    pub has_signals: bool,
}

/// Filters of a saga listing.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this state.
    pub state: Option<SagaState>,
    /// Only this order's saga.
    pub order_id: Option<Uuid>,
    /// Only sagas failing at this step.
    pub failing_step: Option<StepType>,
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    pub created_to: Option<DateTime<Utc>>,
}

/// Sagas newest first (ids are time-ordered), after the cursor id.
pub async fn list<C: ConnectionTrait>(
    db: &C,
    after: Option<Uuid>,
    filter: &ListFilter,
    limit: u64,
) -> Result<Vec<Saga>, DbErr> {
    let found = SagaRow::find_by_statement(statement(
        &format!(
            "SELECT {COLUMNS} FROM sagas WHERE ($1::uuid IS NULL OR id < $1) \
             AND ($2::text IS NULL OR state = $2) AND ($3::uuid IS NULL OR order_id = $3) \
             AND ($4::text IS NULL OR failing_step = $4) \
             AND ($5::timestamptz IS NULL OR created_at >= $5) \
             AND ($6::timestamptz IS NULL OR created_at < $6) \
             ORDER BY id DESC LIMIT $7"
        ),
        [
            after.into(),
            filter.state.map(|state| state.as_str().to_owned()).into(),
            filter.order_id.into(),
            filter
                .failing_step
                .map(|step| step.as_str().to_owned())
                .into(),
            filter.created_from.into(),
            filter.created_to.into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ],
    ))
    .all(db)
    .await?;
    rows(found)
}

/// Sagas in one of `states` that match `filter` and, when `order_ids` is not empty, belong to
/// one of those orders; oldest first, after the cursor id: what a bulk operation takes.
pub async fn matching<C: ConnectionTrait>(
    db: &C,
    states: &[SagaState],
    filter: &ListFilter,
    order_ids: &[Uuid],
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<Saga>, DbErr> {
    let states: Vec<String> = states
        .iter()
        .map(|state| state.as_str().to_owned())
        .collect();
    let found = SagaRow::find_by_statement(statement(
        &format!(
            "SELECT {COLUMNS} FROM sagas WHERE state = ANY($1) AND ($2::uuid IS NULL OR id > $2) \
             AND ($3::text IS NULL OR failing_step = $3) \
             AND ($4::timestamptz IS NULL OR created_at >= $4) \
             AND ($5::timestamptz IS NULL OR created_at < $5) \
             AND (cardinality($6::uuid[]) = 0 OR order_id = ANY($6)) \
             ORDER BY id LIMIT $7"
        ),
        [
            states.into(),
            after.into(),
            filter
                .failing_step
                .map(|step| step.as_str().to_owned())
                .into(),
            filter.created_from.into(),
            filter.created_to.into(),
            order_ids.to_vec().into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ],
    ))
    .all(db)
    .await?;
    rows(found)
}

/// A saga's identity and version as of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromQueryResult)]
pub struct Change {
    /// The saga.
    pub id: Uuid,
    /// Its version now.
    pub version: i64,
    /// When that version was written.
    pub updated_at: DateTime<Utc>,
}

/// Sagas changed at or after `since`, oldest change first, leaving out those whose last version
/// `except_writer` wrote (a watcher hears its own instance's changes directly).
pub async fn changes_since<C: ConnectionTrait>(
    db: &C,
    since: DateTime<Utc>,
    except_writer: Option<&str>,
) -> Result<Vec<Change>, DbErr> {
    Change::find_by_statement(statement(
        "SELECT id, version, updated_at FROM sagas \
         WHERE updated_at >= $1 AND ($2::text IS NULL OR written_by <> $2) ORDER BY updated_at",
        [since.into(), except_writer.map(str::to_owned).into()],
    ))
    .all(db)
    .await
}

/// The sagas with these ids, in no particular order.
pub async fn by_ids<C: ConnectionTrait>(db: &C, ids: Vec<Uuid>) -> Result<Vec<Saga>, DbErr> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let found = SagaRow::find_by_statement(statement(
        &format!("SELECT {COLUMNS} FROM sagas WHERE id = ANY($1)"),
        [ids.into()],
    ))
    .all(db)
    .await?;
    rows(found)
}

/// Sagas not yet terminal, newest first (at most `limit`).
pub async fn active<C: ConnectionTrait>(db: &C, limit: u64) -> Result<Vec<Saga>, DbErr> {
    let found = SagaRow::find_by_statement(statement(
        &format!(
            "SELECT {COLUMNS} FROM sagas WHERE state NOT IN ('COMPLETED', 'COMPENSATED') \
             ORDER BY id DESC LIMIT $1"
        ),
        [i64::try_from(limit).unwrap_or(i64::MAX).into()],
    ))
    .all(db)
    .await?;
    rows(found)
}

/// Which of `order_ids` have a saga.
pub async fn orders_with_sagas<C: ConnectionTrait>(
    db: &C,
    order_ids: &[Uuid],
) -> Result<std::collections::HashSet<Uuid>, DbErr> {
    #[derive(FromQueryResult)]
    struct Row {
        order_id: Uuid,
    }
    let found = Row::find_by_statement(statement(
        "SELECT order_id FROM sagas WHERE order_id = ANY($1)",
        [order_ids.to_vec().into()],
    ))
    .all(db)
    .await?;
    Ok(found.into_iter().map(|row| row.order_id).collect())
}

/// Which of `order_ids` (orders whose customer asked to cancel) have a saga that is still going
/// forward and has not heard of the cancellation: neither applied nor waiting as a signal.
pub async fn cancellations_unheard<C: ConnectionTrait>(
    db: &C,
    order_ids: &[Uuid],
) -> Result<Vec<Uuid>, DbErr> {
    #[derive(FromQueryResult)]
    struct Row {
        order_id: Uuid,
    }
    let found = Row::find_by_statement(statement(
        "SELECT s.order_id FROM sagas s \
         WHERE s.order_id = ANY($1) AND s.state IN ('RUNNING', 'AWAITING_SHIPMENT') \
           AND NOT s.data ? 'cancel_request' \
           AND NOT EXISTS (SELECT 1 FROM saga_signals g \
                           WHERE g.saga_id = s.id AND g.signal->>'kind' = 'customer_cancelled')",
        [order_ids.to_vec().into()],
    ))
    .all(db)
    .await?;
    Ok(found.into_iter().map(|row| row.order_id).collect())
}
