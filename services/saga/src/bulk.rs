//! Bulk operations: one operator action (retry, cancel, resume, skip) on every saga a filter
//! matches, as a long-running operation (AIP-151). The sagas are fixed when it starts, one row
//! each in `bulk_operation_items`; a runner acts on them one at a time at the operation's rate,
//! each in a transaction that records the saga's signal, its result and its audit record
//! together. An operation is driven by one instance at a time (a lease, renewed with every
//! saga); cancelling it marks what is left CANCELLED in the same transaction that ends it, so a
//! saga is either acted on or cancelled, never both.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use prost::Message as _;
use sea_orm::{
    ConnectionTrait as _, DatabaseConnection, DbBackend, DbErr, FromQueryResult, Statement,
    TransactionTrait as _, Value,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use zentra_proto::saga::v1 as pb;
use zentra_runtime::{
    audit::{Action, Actor, AuditTrail, Role},
    status::{Violations, parse_uuid},
    time::{chrono_to_timestamp, timestamp_to_chrono},
};

use crate::{
    domain::{Saga, SagaState, StepStatus, StepType},
    engine::Engine,
    error::SagaError,
    machine::{self, Signal},
    metric_names, store,
};

/// Most sagas one operation takes: a filter matching more must be narrowed.
pub const MAX_SAGAS: usize = 10_000;
/// Most order ids a filter lists.
pub const MAX_ORDER_IDS: usize = 1_000;
/// Bad order ids named one by one in a refusal; more are counted.
const MAX_NAMED_VIOLATIONS: usize = 5;
/// Most sagas read while looking for those an operation applies to.
const MAX_SCANNED: usize = 50_000;
/// The rate when the request gives none.
pub const DEFAULT_RATE: i32 = 10;
/// The highest rate a request may ask for.
pub const MAX_RATE: i32 = 100;
/// How long a runner holds an operation without acting on one of its sagas.
const LEASE: Duration = Duration::from_secs(30);
/// How often a runner looks for operations when nothing woke it.
const POLL: Duration = Duration::from_secs(2);
/// Sagas read at once while counting what a filter matches.
const SCAN_PAGE: u64 = 500;

/// What an operation does to each saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    /// RetrySaga.
    Retry,
    /// CancelSaga.
    Cancel,
    /// ResumeSaga.
    Resume,
    /// ResumeSaga with skip_failed_step.
    Skip,
}

impl BulkAction {
    /// From the API enum; `None` for UNSPECIFIED.
    pub fn from_proto(action: pb::BulkAction) -> Option<Self> {
        match action {
            pb::BulkAction::Retry => Some(Self::Retry),
            pb::BulkAction::Cancel => Some(Self::Cancel),
            pb::BulkAction::Resume => Some(Self::Resume),
            pb::BulkAction::Skip => Some(Self::Skip),
            pb::BulkAction::Unspecified => None,
        }
    }

    fn to_proto(self) -> pb::BulkAction {
        match self {
            Self::Retry => pb::BulkAction::Retry,
            Self::Cancel => pb::BulkAction::Cancel,
            Self::Resume => pb::BulkAction::Resume,
            Self::Skip => pb::BulkAction::Skip,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "RETRY",
            Self::Cancel => "CANCEL",
            Self::Resume => "RESUME",
            Self::Skip => "SKIP",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Retry, Self::Cancel, Self::Resume, Self::Skip]
            .into_iter()
            .find(|action| action.as_str() == text)
    }

    /// The states a saga can be in for the action to apply.
    pub fn states(self) -> &'static [SagaState] {
        match self {
            Self::Retry => &[SagaState::Running, SagaState::Compensating],
            Self::Cancel => &[SagaState::Running, SagaState::AwaitingShipment],
            Self::Resume | Self::Skip => &[SagaState::CompensationFailed],
        }
    }

    /// The RPC that does the same to one saga: what each saga's audit record names.
    fn rpc(self) -> &'static str {
        match self {
            Self::Retry => "zentra.saga.v1.SagaService/RetrySaga",
            Self::Cancel => "zentra.saga.v1.SagaService/CancelSaga",
            Self::Resume | Self::Skip => "zentra.saga.v1.SagaService/ResumeSaga",
        }
    }
}

/// Why a retry does not apply to `saga` now; `None` when it does.
pub fn retry_refusal(saga: &Saga) -> Option<String> {
    let scheduled = saga
        .steps
        .last()
        .is_some_and(|step| step.status == StepStatus::RetryScheduled);
    (!saga.state.is_active() || !scheduled).then(|| {
        format!(
            "saga {} has no retry scheduled (it is {})",
            saga.id, saga.state
        )
    })
}

/// Why resuming `saga` (skipping its failed step or not) does not apply now; `None` when it
/// does. Without the skip, a step first called longer than `horizon` before `now` is refused:
/// its participant may have forgotten the step's key, and calling it again could act twice.
pub fn resume_refusal(
    saga: &Saga,
    skip_failed_step: bool,
    horizon: Duration,
    now: DateTime<Utc>,
) -> Option<String> {
    if saga.state != SagaState::CompensationFailed {
        return Some(format!(
            "saga {} is {}; only a COMPENSATION_FAILED saga can be resumed",
            saga.id, saga.state
        ));
    }
    if skip_failed_step {
        return None;
    }
    let first = saga.steps.last().and_then(|step| step.first_start());
    first
        .filter(|first| key_may_be_forgotten(Some(*first), now, horizon))
        .map(|first| {
            format!(
                "saga {}: its step was first called at {}, longer ago than the {} its participants \
             remember keys for; check the step by hand, then resume with skip_failed_step",
                saga.id,
                first.to_rfc3339(),
                humantime_serde::re::humantime::format_duration(horizon)
            )
        })
}

/// Whether a step first called at `first` is older than `horizon` at `now`.
fn key_may_be_forgotten(
    first: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    horizon: Duration,
) -> bool {
    let horizon = chrono::Duration::from_std(horizon).unwrap_or(chrono::Duration::MAX);
    first.is_some_and(|first| now - first > horizon)
}

/// What `action` does to `saga` now: the signal to record, `None` when the saga is already
/// where the action would take it (a cancel of a saga compensating), or why it does not apply.
pub fn decide(
    action: BulkAction,
    saga: &Saga,
    reason: &str,
    horizon: Duration,
    now: DateTime<Utc>,
) -> Result<Option<Signal>, String> {
    match action {
        BulkAction::Retry => match retry_refusal(saga) {
            Some(refusal) => Err(refusal),
            None => Ok(Some(Signal::RetryNow)),
        },
        BulkAction::Cancel => match machine::cancel_refusal(saga) {
            Some(refusal) => Err(format!("saga {} cannot be cancelled: {refusal}", saga.id)),
            None if saga.state == SagaState::Compensating => Ok(None),
            None => Ok(Some(Signal::OperatorCancelled {
                reason: reason.to_owned(),
            })),
        },
        BulkAction::Resume | BulkAction::Skip => {
            let skip_failed_step = action == BulkAction::Skip;
            match resume_refusal(saga, skip_failed_step, horizon, now) {
                Some(refusal) => Err(refusal),
                None => Ok(Some(Signal::Resume {
                    skip_failed_step,
                    reason: reason.to_owned(),
                })),
            }
        }
    }
}

/// Which sagas an operation takes, validated.
#[derive(Debug, Clone, Default)]
pub struct BulkFilter {
    /// The filter's own conditions.
    pub list: store::ListFilter,
    /// Only these orders' sagas, when not empty.
    pub order_ids: Vec<Uuid>,
}

impl BulkFilter {
    /// Validates `filter` for `action`; violations name fields under `filter.`.
    pub fn parse(
        filter: Option<&pb::SagaFilter>,
        action: Option<BulkAction>,
        violations: &mut Violations,
    ) -> Self {
        let mut parsed = Self::default();
        let Some(filter) = filter else {
            violations.add(
                "filter",
                "is required: a state, a failing step, a time range or order ids",
            );
            return parsed;
        };
        match pb::SagaState::try_from(filter.state) {
            Ok(state) => {
                parsed.list.state = SagaState::from_proto(state);
                if let (Some(state), Some(action)) = (parsed.list.state, action)
                    && !action.states().contains(&state)
                {
                    violations.add(
                        "filter.state",
                        format!(
                            "{} applies only to sagas {}",
                            action.as_str(),
                            action
                                .states()
                                .iter()
                                .map(|state| state.as_str())
                                .collect::<Vec<_>>()
                                .join(" or ")
                        ),
                    );
                }
            }
            Err(_) => violations.add("filter.state", "is not a SagaState"),
        }
        match pb::SagaStepType::try_from(filter.failing_step) {
            Ok(step) => parsed.list.failing_step = StepType::from_proto(step),
            Err(_) => violations.add("filter.failing_step", "is not a SagaStepType"),
        }
        if let Some(range) = &filter.create_time_range {
            parsed.list.created_from = range.start_time.as_ref().and_then(|time| {
                timestamp_to_chrono(time, "filter.create_time_range.start_time", violations)
            });
            parsed.list.created_to = range.end_time.as_ref().and_then(|time| {
                timestamp_to_chrono(time, "filter.create_time_range.end_time", violations)
            });
        }
        if filter.order_ids.len() > MAX_ORDER_IDS {
            violations.add(
                "filter.order_ids",
                format!("must list at most {MAX_ORDER_IDS} orders"),
            );
        } else {
            // A few bad ids are named one by one; a list of many is summed up, so the refusal
            // stays small enough to travel in a status.
            let mut bad = 0;
            for (index, order_id) in filter.order_ids.iter().enumerate() {
                match Uuid::parse_str(order_id) {
                    Ok(id) => parsed.order_ids.push(id),
                    Err(_) if bad < MAX_NAMED_VIOLATIONS => {
                        bad += 1;
                        parse_uuid(&format!("filter.order_ids[{index}]"), order_id, violations);
                    }
                    Err(_) => bad += 1,
                }
            }
            if bad > MAX_NAMED_VIOLATIONS {
                violations.add("filter.order_ids", format!("{bad} of them are not UUIDs"));
            }
        }
        if let (Some(from), Some(to)) = (parsed.list.created_from, parsed.list.created_to)
            && from >= to
        {
            violations.add(
                "filter.create_time_range",
                "start_time must be before end_time",
            );
        }
        let narrowed = parsed.list.state.is_some()
            || parsed.list.failing_step.is_some()
            || parsed.list.created_from.is_some()
            || parsed.list.created_to.is_some()
            || !filter.order_ids.is_empty();
        if !narrowed {
            violations.add(
                "filter",
                "must set at least one of state, failing_step, create_time_range, order_ids",
            );
        }
        parsed
    }

    /// The states to look in: the action's, narrowed to the filter's state when it names one.
    fn states(&self, action: BulkAction) -> Vec<SagaState> {
        action
            .states()
            .iter()
            .copied()
            .filter(|state| self.list.state.is_none_or(|wanted| wanted == *state))
            .collect()
    }
}

/// A saga an operation takes.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The saga.
    pub saga_id: Uuid,
    /// Its order.
    pub order_id: Uuid,
}

/// The sagas `filter` matches that `action` applies to now, oldest first; refused when there are
/// more than [`MAX_SAGAS`].
pub async fn targets<C: sea_orm::ConnectionTrait>(
    db: &C,
    action: BulkAction,
    filter: &BulkFilter,
    horizon: Duration,
) -> Result<Vec<Target>, SagaError> {
    let states = filter.states(action);
    let now = Utc::now();
    let mut targets = Vec::new();
    let mut after = None;
    let mut scanned = 0;
    loop {
        let page = store::matching(
            db,
            &states,
            &filter.list,
            &filter.order_ids,
            after,
            SCAN_PAGE,
        )
        .await?;
        after = page.last().map(|saga| saga.id);
        scanned += page.len();
        for saga in &page {
            if decide(action, saga, "", horizon, now).is_ok() {
                targets.push(Target {
                    saga_id: saga.id,
                    order_id: saga.order_id,
                });
            }
        }
        if targets.len() > MAX_SAGAS {
            return Err(SagaError::Refused(format!(
                "the filter matches more than {MAX_SAGAS} sagas the action applies to; narrow it \
                 (by creation time, for example) and run several operations"
            )));
        }
        if (page.len() as u64) < SCAN_PAGE {
            return Ok(targets);
        }
        if scanned >= MAX_SCANNED {
            return Err(SagaError::Refused(format!(
                "the filter takes in more than {MAX_SCANNED} sagas to check; narrow it (by \
                 creation time or failing step, for example)"
            )));
        }
    }
}

/// A new operation, about to be stored.
pub struct NewOperation<'a> {
    /// What it does.
    pub action: BulkAction,
    /// The filter as asked (kept to show).
    pub filter: &'a pb::SagaFilter,
    /// Sagas per second.
    pub rate: i32,
    /// Who asked.
    pub actor: &'a Actor,
    /// Why.
    pub reason: &'a str,
}

/// Stores an operation with its sagas, RUNNING; returns its id.
pub async fn create<C: sea_orm::ConnectionTrait>(
    db: &C,
    operation: &NewOperation<'_>,
    targets: &[Target],
) -> Result<Uuid, DbErr> {
    let id = Uuid::now_v7();
    db.execute_raw(statement(
        "INSERT INTO bulk_operations (id, action, filter, state, sagas_per_second, caller, role, \
           reason) VALUES ($1, $2, $3, 'RUNNING', $4, $5, $6, $7)",
        [
            id.into(),
            operation.action.as_str().into(),
            operation.filter.encode_to_vec().into(),
            operation.rate.into(),
            operation.actor.caller.clone().into(),
            operation.actor.role.clone().into(),
            operation.reason.to_owned().into(),
        ],
    ))
    .await?;
    db.execute_raw(statement(
        "INSERT INTO bulk_operation_items (operation_id, saga_id, order_id) \
         SELECT $1, saga_id, order_id FROM unnest($2::uuid[], $3::uuid[]) AS t (saga_id, order_id)",
        [
            id.into(),
            targets
                .iter()
                .map(|target| target.saga_id)
                .collect::<Vec<_>>()
                .into(),
            targets
                .iter()
                .map(|target| target.order_id)
                .collect::<Vec<_>>()
                .into(),
        ],
    ))
    .await?;
    Ok(id)
}

fn statement(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

#[derive(Debug, FromQueryResult)]
struct OperationRow {
    id: Uuid,
    action: String,
    filter: Vec<u8>,
    state: String,
    sagas_per_second: i32,
    caller: String,
    reason: String,
    cancelled_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    total: i64,
    pending: i64,
    applied: i64,
    refused: i64,
    cancelled: i64,
}

const OPERATION_SELECT: &str = "SELECT o.id, o.action, o.filter, o.state, o.sagas_per_second, \
      o.caller, o.reason, o.cancelled_by, o.created_at, o.updated_at, o.ended_at, \
      count(i.saga_id) AS total, \
      count(*) FILTER (WHERE i.outcome = 'PENDING') AS pending, \
      count(*) FILTER (WHERE i.outcome = 'APPLIED') AS applied, \
      count(*) FILTER (WHERE i.outcome = 'REFUSED') AS refused, \
      count(*) FILTER (WHERE i.outcome = 'CANCELLED') AS cancelled \
    FROM bulk_operations o LEFT JOIN bulk_operation_items i ON i.operation_id = o.id";

fn operation_state(text: &str) -> pb::BulkOperationState {
    match text {
        "RUNNING" => pb::BulkOperationState::Running,
        "SUCCEEDED" => pb::BulkOperationState::Succeeded,
        "CANCELLED" => pb::BulkOperationState::Cancelled,
        _ => pb::BulkOperationState::Unspecified,
    }
}

fn operation_state_text(state: pb::BulkOperationState) -> Option<&'static str> {
    match state {
        pb::BulkOperationState::Running => Some("RUNNING"),
        pb::BulkOperationState::Succeeded => Some("SUCCEEDED"),
        pb::BulkOperationState::Cancelled => Some("CANCELLED"),
        pb::BulkOperationState::Unspecified => None,
    }
}

impl From<OperationRow> for pb::BulkOperation {
    fn from(row: OperationRow) -> Self {
        let state = operation_state(&row.state);
        pb::BulkOperation {
            operation_id: row.id.to_string(),
            action: BulkAction::parse(&row.action)
                .map_or(pb::BulkAction::Unspecified, BulkAction::to_proto)
                as i32,
            filter: pb::SagaFilter::decode(row.filter.as_slice()).ok(),
            state: state as i32,
            done: state != pb::BulkOperationState::Running,
            total_count: row.total,
            applied_count: row.applied,
            refused_count: row.refused,
            cancelled_count: row.cancelled,
            pending_count: row.pending,
            sagas_per_second: row.sagas_per_second,
            caller: row.caller,
            reason: row.reason,
            create_time: Some(chrono_to_timestamp(row.created_at)),
            update_time: Some(chrono_to_timestamp(row.updated_at)),
            end_time: row.ended_at.map(chrono_to_timestamp),
            cancelled_by: row.cancelled_by,
        }
    }
}

/// One operation with its counts.
pub async fn get<C: sea_orm::ConnectionTrait>(
    db: &C,
    id: Uuid,
) -> Result<Option<pb::BulkOperation>, DbErr> {
    Ok(OperationRow::find_by_statement(statement(
        &format!("{OPERATION_SELECT} WHERE o.id = $1 GROUP BY o.id"),
        [id.into()],
    ))
    .one(db)
    .await?
    .map(pb::BulkOperation::from))
}

/// Operations newest first, after the cursor id.
pub async fn list(
    db: &DatabaseConnection,
    state: pb::BulkOperationState,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<pb::BulkOperation>, DbErr> {
    Ok(OperationRow::find_by_statement(statement(
        &format!(
            "{OPERATION_SELECT} WHERE ($1::uuid IS NULL OR o.id < $1) \
             AND ($2::text IS NULL OR o.state = $2) GROUP BY o.id ORDER BY o.id DESC LIMIT $3"
        ),
        [
            after.into(),
            operation_state_text(state).map(str::to_owned).into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ],
    ))
    .all(db)
    .await?
    .into_iter()
    .map(pb::BulkOperation::from)
    .collect())
}

#[derive(Debug, FromQueryResult)]
struct ResultRow {
    saga_id: Uuid,
    order_id: Uuid,
    outcome: String,
    message: String,
    done_at: Option<DateTime<Utc>>,
}

fn outcome_text(outcome: pb::BulkResultOutcome) -> Option<&'static str> {
    match outcome {
        pb::BulkResultOutcome::Pending => Some("PENDING"),
        pb::BulkResultOutcome::Applied => Some("APPLIED"),
        pb::BulkResultOutcome::Refused => Some("REFUSED"),
        pb::BulkResultOutcome::Cancelled => Some("CANCELLED"),
        pb::BulkResultOutcome::Unspecified => None,
    }
}

/// An operation's results by saga id, after the cursor saga id.
pub async fn results(
    db: &DatabaseConnection,
    operation_id: Uuid,
    outcome: pb::BulkResultOutcome,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<pb::BulkOperationResult>, DbErr> {
    let rows = ResultRow::find_by_statement(statement(
        "SELECT saga_id, order_id, outcome, message, done_at FROM bulk_operation_items \
         WHERE operation_id = $1 AND ($2::uuid IS NULL OR saga_id > $2) \
         AND ($3::text IS NULL OR outcome = $3) ORDER BY saga_id LIMIT $4",
        [
            operation_id.into(),
            after.into(),
            outcome_text(outcome).map(str::to_owned).into(),
            i64::try_from(limit).unwrap_or(i64::MAX).into(),
        ],
    ))
    .all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| pb::BulkOperationResult {
            saga_id: row.saga_id.to_string(),
            order_id: row.order_id.to_string(),
            outcome: [
                pb::BulkResultOutcome::Pending,
                pb::BulkResultOutcome::Applied,
                pb::BulkResultOutcome::Refused,
                pb::BulkResultOutcome::Cancelled,
            ]
            .into_iter()
            .find(|outcome| outcome_text(*outcome) == Some(row.outcome.as_str()))
            .unwrap_or(pb::BulkResultOutcome::Unspecified) as i32,
            message: row.message,
            time: row.done_at.map(chrono_to_timestamp),
        })
        .collect())
}

/// Ends a RUNNING operation as CANCELLED, its sagas not yet acted on marked CANCELLED; how many
/// were, or `None` when it is not running (done already, or unknown).
pub async fn cancel<C: sea_orm::ConnectionTrait>(
    db: &C,
    id: Uuid,
    by: &str,
) -> Result<Option<u64>, DbErr> {
    let ended = db
        .execute_raw(statement(
            "UPDATE bulk_operations SET state = 'CANCELLED', cancelled_by = $2, ended_at = now(), \
               updated_at = now(), lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND state = 'RUNNING'",
            [id.into(), by.to_owned().into()],
        ))
        .await?
        .rows_affected();
    if ended == 0 {
        return Ok(None);
    }
    let left = db
        .execute_raw(statement(
            "UPDATE bulk_operation_items SET outcome = 'CANCELLED', done_at = now() \
             WHERE operation_id = $1 AND outcome = 'PENDING'",
            [id.into()],
        ))
        .await?
        .rows_affected();
    Ok(Some(left))
}

/// An operation a runner drives.
#[derive(Debug, FromQueryResult)]
struct Claimed {
    id: Uuid,
    action: String,
    sagas_per_second: i32,
    caller: String,
    role: String,
    reason: String,
}

/// What one round of a runner did.
enum Round {
    /// Acted on (or refused) one saga.
    Acted,
    /// Every saga has its result.
    Finished,
    /// The operation was cancelled, or another instance holds it now.
    Lost,
}

/// Drives the operations: one at a time per instance, one saga at a time per operation.
#[derive(Clone)]
pub struct BulkRunner {
    engine: Arc<Engine>,
    horizon: Duration,
    wake: Arc<Notify>,
}

impl BulkRunner {
    /// A runner over `engine`'s database; resumes refuse steps older than `horizon`.
    pub fn new(engine: Arc<Engine>, horizon: Duration) -> Self {
        Self {
            engine,
            horizon,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Wakes the runner at once (after an operation was created).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.claim().await {
                Ok(Some(operation)) => {
                    self.drive(&operation, &shutdown).await;
                    continue;
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "could not look for bulk operations"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Takes the oldest RUNNING operation nobody else holds (or this instance held before a
    /// restart).
    async fn claim(&self) -> Result<Option<Claimed>, DbErr> {
        Claimed::find_by_statement(statement(
            "UPDATE bulk_operations SET lease_owner = $1, \
               lease_until = now() + $2 * interval '1 millisecond' \
             WHERE id = (SELECT id FROM bulk_operations WHERE state = 'RUNNING' \
               AND (lease_until IS NULL OR lease_until < now() OR lease_owner = $1) \
               ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, action, sagas_per_second, caller, role, reason",
            [self.engine.owner().to_owned().into(), lease_ms().into()],
        ))
        .one(self.engine.db())
        .await
    }

    async fn drive(&self, operation: &Claimed, shutdown: &CancellationToken) {
        let Some(action) = BulkAction::parse(&operation.action) else {
            tracing::error!(operation_id = %operation.id, action = %operation.action, "unknown bulk action");
            return;
        };
        let rate = operation.sagas_per_second.clamp(1, MAX_RATE);
        let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let actor = Actor {
            caller: operation.caller.clone(),
            role: operation.role.clone(),
            peer: format!("bulk-operations/{}", operation.id),
            assertion: String::new(),
        };
        tracing::info!(operation_id = %operation.id, action = action.as_str(), rate, "driving a bulk operation");
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = pace.tick() => {}
            }
            match self.round(operation, action, &actor).await {
                Ok(Round::Acted) => {}
                Ok(Round::Finished) => {
                    tracing::info!(operation_id = %operation.id, "bulk operation done");
                    return;
                }
                Ok(Round::Lost) => return,
                Err(error) => {
                    tracing::warn!(%error, operation_id = %operation.id, "bulk operation round failed");
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    return;
                }
            }
        }
    }

    /// Acts on the next saga of `operation`, in one transaction with its result and its audit
    /// record, while this instance still holds the running operation.
    async fn round(
        &self,
        operation: &Claimed,
        action: BulkAction,
        actor: &Actor,
    ) -> Result<Round, DbErr> {
        let tx = self.engine.db().begin().await?;
        // Renewing the lease also locks the operation's row: a cancel waits for this round, and
        // this round sees a cancel that committed first.
        let held = tx
            .execute_raw(statement(
                "UPDATE bulk_operations SET lease_until = now() + $3 * interval '1 millisecond', \
                   updated_at = now() WHERE id = $1 AND lease_owner = $2 AND state = 'RUNNING'",
                [
                    operation.id.into(),
                    self.engine.owner().to_owned().into(),
                    lease_ms().into(),
                ],
            ))
            .await?
            .rows_affected();
        if held == 0 {
            tx.rollback().await?;
            return Ok(Round::Lost);
        }
        let next = tx
            .query_one_raw(statement(
                "SELECT saga_id FROM bulk_operation_items WHERE operation_id = $1 \
                 AND outcome = 'PENDING' ORDER BY saga_id LIMIT 1 FOR UPDATE",
                [operation.id.into()],
            ))
            .await?;
        let Some(next) = next else {
            tx.execute_raw(statement(
                "UPDATE bulk_operations SET state = 'SUCCEEDED', ended_at = now(), \
                   updated_at = now(), lease_owner = NULL, lease_until = NULL WHERE id = $1",
                [operation.id.into()],
            ))
            .await?;
            tx.commit().await?;
            return Ok(Round::Finished);
        };
        let saga_id: Uuid = next.try_get("", "saga_id")?;
        let decision = match store::by_id(&tx, saga_id).await {
            Ok(Some(saga)) => decide(action, &saga, &operation.reason, self.horizon, Utc::now()),
            Ok(None) => Err(format!("saga {saga_id} no longer exists")),
            // A stored saga that cannot be read would fail every round the same way: it is
            // refused, and the operation goes on.
            Err(DbErr::Custom(unreadable)) => Err(unreadable),
            Err(error) => return Err(error),
        };
        let signalled = matches!(decision, Ok(Some(_)));
        let (outcome, message) = match decision {
            Ok(Some(signal)) => {
                store::add_signal(&tx, saga_id, &signal).await?;
                ("APPLIED", String::new())
            }
            Ok(None) => ("APPLIED", "the saga was already compensating".to_owned()),
            Err(refusal) => ("REFUSED", refusal),
        };
        tx.execute_raw(statement(
            "UPDATE bulk_operation_items SET outcome = $3, message = $4, done_at = now() \
             WHERE operation_id = $1 AND saga_id = $2",
            [
                operation.id.into(),
                saga_id.into(),
                outcome.into(),
                message.clone().into(),
            ],
        ))
        .await?;
        let audited = Action::new(
            action.rpc(),
            Role::Operator,
            format!("sagas/{saga_id}"),
            &format!("bulk operation {}: {}", operation.id, operation.reason),
        );
        let refused = (outcome == "REFUSED").then_some(message.as_str());
        AuditTrail::record_taken(&tx, actor, &audited, refused).await?;
        tx.commit().await?;
        metrics::counter!(metric_names::BULK_RESULTS, "outcome" => outcome).increment(1);
        if signalled {
            self.engine.wake();
        }
        Ok(Round::Acted)
    }
}

fn lease_ms() -> i64 {
    i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked() -> Saga {
        let mut saga = Saga::new(
            Uuid::now_v7(),
            zentra_proto::order::v1::OrderPlaced::default(),
            None,
            Utc::now(),
        );
        saga.state = SagaState::CompensationFailed;
        saga
    }

    #[test]
    fn a_step_first_called_beyond_the_horizon_may_have_a_forgotten_key() {
        let now = Utc::now();
        let day = Duration::from_secs(24 * 3600);
        let days_ago = |days: i64| Some(now - chrono::Duration::days(days));
        assert!(!key_may_be_forgotten(days_ago(29), now, 30 * day));
        assert!(key_may_be_forgotten(days_ago(31), now, 30 * day));
        assert!(!key_may_be_forgotten(None, now, 30 * day));
    }

    #[test]
    fn each_action_applies_only_in_its_states() {
        let horizon = Duration::from_secs(3600);
        let now = Utc::now();
        let saga = parked();
        assert!(matches!(
            decide(BulkAction::Resume, &saga, "r", horizon, now),
            Ok(Some(Signal::Resume {
                skip_failed_step: false,
                ..
            }))
        ));
        assert!(matches!(
            decide(BulkAction::Skip, &saga, "r", horizon, now),
            Ok(Some(Signal::Resume {
                skip_failed_step: true,
                ..
            }))
        ));
        assert!(decide(BulkAction::Cancel, &saga, "r", horizon, now).is_err());
        assert!(decide(BulkAction::Retry, &saga, "r", horizon, now).is_err());

        let mut running = parked();
        running.state = SagaState::Running;
        assert!(matches!(
            decide(BulkAction::Cancel, &running, "why", horizon, now),
            Ok(Some(Signal::OperatorCancelled { .. }))
        ));
        assert!(decide(BulkAction::Resume, &running, "r", horizon, now).is_err());
        // Nothing scheduled: a retry has nothing to run now.
        assert!(decide(BulkAction::Retry, &running, "r", horizon, now).is_err());

        let mut compensating = parked();
        compensating.state = SagaState::Compensating;
        assert!(matches!(
            decide(BulkAction::Cancel, &compensating, "r", horizon, now),
            Ok(None)
        ));
    }

    #[test]
    fn a_filter_state_the_action_cannot_apply_to_is_refused_by_field() {
        let mut violations = Violations::new();
        let filter = pb::SagaFilter {
            state: pb::SagaState::Completed as i32,
            order_ids: vec!["not-a-uuid".to_owned()],
            ..Default::default()
        };
        let parsed = BulkFilter::parse(Some(&filter), Some(BulkAction::Resume), &mut violations);
        assert!(parsed.order_ids.is_empty());
        let status = violations.into_status();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let fields = zentra_test_support::violated_fields(&status);
        assert_eq!(fields, ["filter.state", "filter.order_ids[0]"]);
    }

    #[test]
    fn a_filter_must_narrow_and_a_long_list_of_bad_ids_is_summed_up() {
        let mut violations = Violations::new();
        BulkFilter::parse(
            Some(&pb::SagaFilter::default()),
            Some(BulkAction::Cancel),
            &mut violations,
        );
        assert_eq!(
            zentra_test_support::violated_fields(&violations.into_status()),
            ["filter"]
        );

        let mut violations = Violations::new();
        let filter = pb::SagaFilter {
            order_ids: vec!["x".to_owned(); MAX_ORDER_IDS],
            create_time_range: Some(zentra_proto::common::v1::TimeRange {
                start_time: Some(chrono_to_timestamp(Utc::now())),
                end_time: Some(chrono_to_timestamp(Utc::now() - chrono::Duration::hours(1))),
            }),
            ..Default::default()
        };
        BulkFilter::parse(Some(&filter), Some(BulkAction::Cancel), &mut violations);
        let fields = zentra_test_support::violated_fields(&violations.into_status());
        assert_eq!(
            fields,
            [
                "filter.order_ids[0]",
                "filter.order_ids[1]",
                "filter.order_ids[2]",
                "filter.order_ids[3]",
                "filter.order_ids[4]",
                "filter.order_ids",
                "filter.create_time_range",
            ]
        );
    }

    #[test]
    fn without_a_filter_state_an_action_looks_in_all_of_its_states() {
        let filter = BulkFilter::default();
        assert_eq!(
            filter.states(BulkAction::Cancel),
            [SagaState::Running, SagaState::AwaitingShipment]
        );
        let narrowed = BulkFilter {
            list: store::ListFilter {
                state: Some(SagaState::AwaitingShipment),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            narrowed.states(BulkAction::Cancel),
            [SagaState::AwaitingShipment]
        );
    }
}
