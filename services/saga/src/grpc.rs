//! The operator API, `zentra.saga.v1.SagaService`: start, read, list and watch sagas, and the
//! actions retry, cancel and resume. Actions are recorded as signals and applied by the engine
//! that holds the saga's lease, so they never race with a step in flight.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;
use zentra_proto::{
    common::v1::PageResponse,
    order::v1::{self as order, Order, OrderPlaced},
    saga::v1::{self as pb, saga_service_server::SagaService},
};
use zentra_runtime::{
    audit::{Action, Actor, AuditTrail, Role, check_reason},
    deadline, fresh_or_replay,
    paging::Page,
    status::{Violations, check_idempotency_key, check_text, parse_uuid},
    time::timestamp_to_chrono,
};

use crate::{
    bulk, convert,
    domain::{Saga, SagaState, StepType},
    engine::Engine,
    error::SagaError,
    machine::{self, Signal},
    store, watch,
};

/// How long an action waits for the engine to apply it before answering with the saga as is.
const APPLY_WAIT: Duration = Duration::from_secs(3);

/// Implements `zentra.saga.v1.SagaService`.
pub struct SagaApi {
    engine: Arc<Engine>,
    feed: watch::ChangeFeed,
    audit: AuditTrail,
    step_key_horizon: Duration,
    bulk: Option<bulk::BulkRunner>,
}

impl SagaApi {
    /// The API over `engine`; Watch streams hear `feed`; retry, cancel and resume are recorded in
    /// `audit`.
    pub fn new(engine: Arc<Engine>, feed: watch::ChangeFeed, audit: AuditTrail) -> Self {
        Self {
            engine,
            feed,
            audit,
            step_key_horizon: Duration::from_secs(30 * 24 * 3600),
            bulk: None,
        }
    }

    /// Wakes `runner` when a bulk operation is created (else operations wait for a runner's
    /// periodic look).
    #[must_use]
    pub fn with_bulk_runner(mut self, runner: bulk::BulkRunner) -> Self {
        self.bulk = Some(runner);
        self
    }

    /// Refuses to resume or retry a step first called longer ago than `horizon`.
    #[must_use]
    pub fn with_step_key_horizon(mut self, horizon: Duration) -> Self {
        self.step_key_horizon = horizon;
        self
    }

    /// The saga a request names by `saga_id` or by `order_id`: exactly one of them.
    async fn named(&self, saga_id: &str, order_id: &str) -> Result<Saga, Status> {
        let mut violations = Violations::new();
        match (saga_id.is_empty(), order_id.is_empty()) {
            (false, false) => violations.add("order_id", "give saga_id or order_id, not both"),
            (true, true) => violations.add("saga_id", "is required, or order_id instead"),
            (false, true) => {
                if let Some(id) = parse_uuid("saga_id", saga_id, &mut violations) {
                    return Ok(self.load(id).await?);
                }
            }
            (true, false) => {
                if let Some(id) = parse_uuid("order_id", order_id, &mut violations) {
                    return Ok(store::by_order(self.engine.db(), id)
                        .await
                        .map_err(SagaError::from)?
                        .ok_or_else(|| SagaError::NotFound {
                            what: "saga of order",
                            id: id.to_string(),
                        })?);
                }
            }
        }
        Err(violations.into_status())
    }

    async fn load(&self, id: Uuid) -> Result<Saga, SagaError> {
        store::by_id(self.engine.db(), id)
            .await?
            .ok_or_else(|| SagaError::NotFound {
                what: "saga",
                id: id.to_string(),
            })
    }

    /// Commits the action's `signal` in the transaction that records its idempotency key (so a
    /// key is never kept for an action that was lost), then waits until the engine applied it
    /// (the saga's version moved past the one read) and returns the saga. This instance's
    /// changes are heard as they commit; the table is read every 100 ms in case another
    /// instance applies it.
    async fn act<R: prost::Message>(
        &self,
        tx: zentra_runtime::idempotency::IdempotentTransaction,
        response: &R,
        saga: Saga,
        signal: Signal,
    ) -> Result<Saga, SagaError> {
        let mut changes = self.engine.subscribe();
        store::add_signal(tx.transaction(), saga.id, &signal).await?;
        tx.commit(response).await?;
        self.engine.wake();
        let deadline = tokio::time::Instant::now() + APPLY_WAIT;
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    let current = self.load(saga.id).await?;
                    if current.version > saga.version || tokio::time::Instant::now() >= deadline {
                        return Ok(current);
                    }
                }
                changed = changes.recv() => {
                    if let Ok(changed) = changed
                        && changed.id == saga.id
                        && changed.version > saga.version
                    {
                        return Ok(Saga::clone(&changed));
                    }
                }
            }
        }
    }
}

/// What a saga needs of an order, from the order itself (StartSaga and reconciliation).
pub fn placed(order: Order) -> OrderPlaced {
    OrderPlaced {
        order_id: order.order_id,
        customer_id: order.customer_id,
        lines: order.lines,
        total: order.total,
        payment_method_token: order.payment_method_token,
        shipping_address: order.shipping_address,
        customer_email: order.customer_email,
    }
}

type WatchStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SagaService for SagaApi {
    async fn start_saga(
        &self,
        request: Request<pb::StartSagaRequest>,
    ) -> Result<Response<pb::StartSagaResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        let order_id = parse_uuid("order_id", &request.order_id, &mut violations);
        let (Some(order_id), true) = (order_id, violations.is_empty()) else {
            return Err(violations.into_status());
        };
        // The saga is keyed by order: a repeated start returns the same saga.
        if let Some(saga) = store::by_order(self.engine.db(), order_id)
            .await
            .map_err(SagaError::from)?
        {
            return Ok(Response::new(pb::StartSagaResponse {
                saga: Some(convert::saga(&saga)),
                created: false,
            }));
        }
        let downstreams = self.engine.downstreams();
        let found = downstreams
            .order_client()
            .get_order(downstreams.request(order::GetOrderRequest {
                order_id: order_id.to_string(),
            }))
            .await;
        let order = match found {
            Ok(response) => response.into_inner().order.unwrap_or_default(),
            Err(status) if status.code() == tonic::Code::NotFound => {
                return Err(SagaError::NotFound {
                    what: "order",
                    id: order_id.to_string(),
                }
                .into());
            }
            Err(status) => return Err(SagaError::Downstream(status.message().to_owned()).into()),
        };
        if order.status != order::OrderStatus::Pending as i32 {
            let status = order::OrderStatus::try_from(order.status)
                .map(|status| status.as_str_name())
                .unwrap_or("UNKNOWN");
            return Err(SagaError::Refused(format!(
                "order {order_id} is {status}; only a PENDING order gets a saga"
            ))
            .into());
        }
        let (saga, created) = self
            .engine
            .start_saga(placed(order), None)
            .await
            .map_err(SagaError::from)?;
        Ok(Response::new(pb::StartSagaResponse {
            saga: Some(convert::saga(&saga)),
            created,
        }))
    }

    async fn get_saga(
        &self,
        request: Request<pb::GetSagaRequest>,
    ) -> Result<Response<pb::GetSagaResponse>, Status> {
        let request = request.get_ref();
        let saga = self.named(&request.saga_id, &request.order_id).await?;
        Ok(Response::new(pb::GetSagaResponse {
            saga: Some(convert::saga(&saga)),
        }))
    }

    async fn list_sagas(
        &self,
        request: Request<pb::ListSagasRequest>,
    ) -> Result<Response<pb::ListSagasResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let page = Page::parse(request.page.as_ref(), &mut violations);
        let after = page.uuid_cursor(&mut violations);
        let mut filter = store::ListFilter::default();
        match pb::SagaState::try_from(request.state) {
            Ok(state) => filter.state = SagaState::from_proto(state),
            Err(_) => violations.add("state", "is not a SagaState"),
        }
        match pb::SagaStepType::try_from(request.failing_step) {
            Ok(step) => filter.failing_step = StepType::from_proto(step),
            Err(_) => violations.add("failing_step", "is not a SagaStepType"),
        }
        if !request.order_id.is_empty() {
            filter.order_id = parse_uuid("order_id", &request.order_id, &mut violations);
        }
        if let Some(range) = &request.create_time_range {
            filter.created_from = range.start_time.as_ref().and_then(|time| {
                timestamp_to_chrono(time, "create_time_range.start_time", &mut violations)
            });
            filter.created_to = range.end_time.as_ref().and_then(|time| {
                timestamp_to_chrono(time, "create_time_range.end_time", &mut violations)
            });
        }
        violations.into_result()?;
        let mut sagas = store::list(self.engine.db(), after, &filter, page.size + 1)
            .await
            .map_err(SagaError::from)?;
        let next_page_token = page.finish(&mut sagas, |saga| saga.id.to_string());
        Ok(Response::new(pb::ListSagasResponse {
            sagas: sagas.iter().map(convert::saga).collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }

    type WatchSagaStream = WatchStream<pb::WatchSagaResponse>;

    async fn watch_saga(
        &self,
        request: Request<pb::WatchSagaRequest>,
    ) -> Result<Response<Self::WatchSagaStream>, Status> {
        let deadline = deadline::of_request(request.metadata());
        // NOT_FOUND up front rather than an empty stream.
        let request = request.get_ref();
        let saga = self.named(&request.saga_id, &request.order_id).await?;
        Ok(Response::new(watch::one(&self.feed, saga.id, deadline)?))
    }

    type WatchSagasStream = WatchStream<pb::WatchSagasResponse>;

    async fn watch_sagas(
        &self,
        request: Request<pb::WatchSagasRequest>,
    ) -> Result<Response<Self::WatchSagasStream>, Status> {
        let deadline = deadline::of_request(request.metadata());
        let request = request.into_inner();
        let mut states = Vec::with_capacity(request.states.len());
        let mut violations = Violations::new();
        for (index, state) in request.states.iter().enumerate() {
            match pb::SagaState::try_from(*state)
                .ok()
                .and_then(SagaState::from_proto)
            {
                Some(state) => states.push(state),
                None => violations.add(format!("states[{index}]"), "is not a SagaState"),
            }
        }
        violations.into_result()?;
        Ok(Response::new(watch::all(
            &self.feed,
            states,
            request.include_active_snapshot,
            deadline,
        )?))
    }

    async fn retry_saga(
        &self,
        request: Request<pb::RetrySagaRequest>,
    ) -> Result<Response<pb::RetrySagaResponse>, Status> {
        let actor = Actor::of(&request);
        let request = request.into_inner();
        let action = Action::new(
            "zentra.saga.v1.SagaService/RetrySaga",
            Role::Operator,
            format!("sagas/{}", request.saga_id),
            &request.reason,
        );
        self.audit.run(&actor, action, self.retry(request)).await
    }

    async fn cancel_saga(
        &self,
        request: Request<pb::CancelSagaRequest>,
    ) -> Result<Response<pb::CancelSagaResponse>, Status> {
        let actor = Actor::of(&request);
        let request = request.into_inner();
        let action = Action::new(
            "zentra.saga.v1.SagaService/CancelSaga",
            Role::Operator,
            format!("sagas/{}", request.saga_id),
            &request.reason,
        );
        self.audit.run(&actor, action, self.cancel(request)).await
    }

    async fn resume_saga(
        &self,
        request: Request<pb::ResumeSagaRequest>,
    ) -> Result<Response<pb::ResumeSagaResponse>, Status> {
        let actor = Actor::of(&request);
        let request = request.into_inner();
        let action = Action::new(
            "zentra.saga.v1.SagaService/ResumeSaga",
            Role::Operator,
            format!("sagas/{}", request.saga_id),
            &request.reason,
        );
        self.audit.run(&actor, action, self.resume(request)).await
    }

    async fn create_bulk_operation(
        &self,
        request: Request<pb::CreateBulkOperationRequest>,
    ) -> Result<Response<pb::CreateBulkOperationResponse>, Status> {
        let actor = Actor::of(&request);
        let request = request.into_inner();
        let action = Action::new(
            "zentra.saga.v1.SagaService/CreateBulkOperation",
            Role::Operator,
            if request.validate_only {
                "bulk-operations (dry run)"
            } else {
                "bulk-operations"
            },
            &request.reason,
        );
        let work = self.create_bulk(request, actor.clone());
        self.audit.run(&actor, action, work).await
    }

    async fn get_bulk_operation(
        &self,
        request: Request<pb::GetBulkOperationRequest>,
    ) -> Result<Response<pb::GetBulkOperationResponse>, Status> {
        let mut violations = Violations::new();
        let id = parse_uuid(
            "operation_id",
            &request.get_ref().operation_id,
            &mut violations,
        );
        let Some(id) = id else {
            return Err(violations.into_status());
        };
        Ok(Response::new(pb::GetBulkOperationResponse {
            operation: Some(self.bulk_operation(id).await?),
        }))
    }

    async fn list_bulk_operations(
        &self,
        request: Request<pb::ListBulkOperationsRequest>,
    ) -> Result<Response<pb::ListBulkOperationsResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let page = Page::parse(request.page.as_ref(), &mut violations);
        let after = page.uuid_cursor(&mut violations);
        let state = pb::BulkOperationState::try_from(request.state).unwrap_or_else(|_| {
            violations.add("state", "is not a BulkOperationState");
            pb::BulkOperationState::Unspecified
        });
        violations.into_result()?;
        let mut operations = bulk::list(self.engine.db(), state, after, page.size + 1)
            .await
            .map_err(SagaError::from)?;
        let next_page_token =
            page.finish(&mut operations, |operation| operation.operation_id.clone());
        Ok(Response::new(pb::ListBulkOperationsResponse {
            operations,
            page: Some(PageResponse { next_page_token }),
        }))
    }

    async fn list_bulk_operation_results(
        &self,
        request: Request<pb::ListBulkOperationResultsRequest>,
    ) -> Result<Response<pb::ListBulkOperationResultsResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let id = parse_uuid("operation_id", &request.operation_id, &mut violations);
        let page = Page::parse(request.page.as_ref(), &mut violations);
        let after = page.uuid_cursor(&mut violations);
        let outcome = pb::BulkResultOutcome::try_from(request.outcome).unwrap_or_else(|_| {
            violations.add("outcome", "is not a BulkResultOutcome");
            pb::BulkResultOutcome::Unspecified
        });
        let (Some(id), true) = (id, violations.is_empty()) else {
            return Err(violations.into_status());
        };
        // NOT_FOUND for an unknown operation rather than an empty page.
        self.bulk_operation(id).await?;
        let mut results = bulk::results(self.engine.db(), id, outcome, after, page.size + 1)
            .await
            .map_err(SagaError::from)?;
        let next_page_token = page.finish(&mut results, |result| result.saga_id.clone());
        Ok(Response::new(pb::ListBulkOperationResultsResponse {
            results,
            page: Some(PageResponse { next_page_token }),
        }))
    }

    async fn cancel_bulk_operation(
        &self,
        request: Request<pb::CancelBulkOperationRequest>,
    ) -> Result<Response<pb::CancelBulkOperationResponse>, Status> {
        let actor = Actor::of(&request);
        let request = request.into_inner();
        let action = Action::new(
            "zentra.saga.v1.SagaService/CancelBulkOperation",
            Role::Operator,
            format!("bulk-operations/{}", request.operation_id),
            &request.reason,
        );
        let work = self.cancel_bulk(request, actor.caller.clone());
        self.audit.run(&actor, action, work).await
    }
}

/// The operator actions, run inside the audit trail.
impl SagaApi {
    async fn bulk_operation(&self, id: Uuid) -> Result<pb::BulkOperation, SagaError> {
        bulk::get(self.engine.db(), id)
            .await?
            .ok_or_else(|| SagaError::NotFound {
                what: "bulk operation",
                id: id.to_string(),
            })
    }

    async fn create_bulk(
        &self,
        request: pb::CreateBulkOperationRequest,
        actor: Actor,
    ) -> Result<Response<pb::CreateBulkOperationResponse>, Status> {
        let mut violations = Violations::new();
        let action = match pb::BulkAction::try_from(request.action) {
            Ok(action) => bulk::BulkAction::from_proto(action),
            Err(_) => None,
        };
        if action.is_none() {
            violations.add("action", "must be RETRY, CANCEL, RESUME or SKIP");
        }
        let filter = bulk::BulkFilter::parse(request.filter.as_ref(), action, &mut violations);
        let rate = match request.sagas_per_second {
            0 => bulk::DEFAULT_RATE,
            rate if (1..=bulk::MAX_RATE).contains(&rate) => rate,
            _ => {
                violations.add(
                    "sagas_per_second",
                    format!(
                        "must be 1..={} (0 for {})",
                        bulk::MAX_RATE,
                        bulk::DEFAULT_RATE
                    ),
                );
                bulk::DEFAULT_RATE
            }
        };
        check_text("reason", &request.reason, 500, &mut violations);
        if !request.validate_only {
            check_idempotency_key(&request.idempotency_key, &mut violations);
        }
        let (Some(action), true) = (action, violations.is_empty()) else {
            return Err(violations.into_status());
        };
        if request.validate_only {
            let targets =
                bulk::targets(self.engine.db(), action, &filter, self.step_key_horizon).await?;
            return Ok(Response::new(pb::CreateBulkOperationResponse {
                matched_count: targets.len() as i64,
                operation: None,
            }));
        }
        let tx = fresh_or_replay!(self.engine.db(), "CreateBulkOperation", request, SagaError);
        // Read on the key's own connection: one connection per call, however many arrive.
        let targets =
            bulk::targets(tx.transaction(), action, &filter, self.step_key_horizon).await?;
        let reason = request.reason.trim();
        let filter_asked = request.filter.clone().unwrap_or_default();
        let id = bulk::create(
            tx.transaction(),
            &bulk::NewOperation {
                action,
                filter: &filter_asked,
                rate,
                actor: &actor,
                reason,
            },
            &targets,
        )
        .await
        .map_err(SagaError::from)?;
        let operation = bulk::get(tx.transaction(), id)
            .await
            .map_err(SagaError::from)?;
        let response = pb::CreateBulkOperationResponse {
            matched_count: targets.len() as i64,
            operation,
        };
        tx.commit(&response).await.map_err(SagaError::from)?;
        tracing::info!(operation_id = %id, sagas = targets.len(), rate, "bulk operation created");
        if let Some(runner) = &self.bulk {
            runner.wake();
        }
        Ok(Response::new(response))
    }

    async fn cancel_bulk(
        &self,
        request: pb::CancelBulkOperationRequest,
        caller: String,
    ) -> Result<Response<pb::CancelBulkOperationResponse>, Status> {
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        check_reason(&request.reason, &mut violations);
        let id = parse_uuid("operation_id", &request.operation_id, &mut violations);
        let (Some(id), true) = (id, violations.is_empty()) else {
            return Err(violations.into_status());
        };
        self.bulk_operation(id).await?;
        let tx = fresh_or_replay!(self.engine.db(), "CancelBulkOperation", request, SagaError);
        let cancelled = bulk::cancel(tx.transaction(), id, &caller)
            .await
            .map_err(SagaError::from)?;
        let operation = bulk::get(tx.transaction(), id)
            .await
            .map_err(SagaError::from)?;
        let Some(cancelled) = cancelled else {
            let state = operation.map_or("gone", |operation| {
                pb::BulkOperationState::try_from(operation.state)
                    .unwrap_or_default()
                    .as_str_name()
                    .trim_start_matches("BULK_OPERATION_STATE_")
            });
            return Err(
                SagaError::Refused(format!("bulk operation {id} is {state} already")).into(),
            );
        };
        let response = pb::CancelBulkOperationResponse { operation };
        tx.commit(&response).await.map_err(SagaError::from)?;
        metrics::counter!(crate::metric_names::BULK_RESULTS, "outcome" => "CANCELLED")
            .increment(cancelled);
        tracing::info!(operation_id = %id, "bulk operation cancelled");
        Ok(Response::new(response))
    }

    async fn retry(
        &self,
        request: pb::RetrySagaRequest,
    ) -> Result<Response<pb::RetrySagaResponse>, Status> {
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        check_reason(&request.reason, &mut violations);
        let id = parse_uuid("saga_id", &request.saga_id, &mut violations);
        let (Some(id), true) = (id, violations.is_empty()) else {
            return Err(violations.into_status());
        };
        let saga = self.load(id).await?;
        let tx = fresh_or_replay!(self.engine.db(), "RetrySaga", request, SagaError);
        if let Some(refusal) = bulk::retry_refusal(&saga) {
            return Err(SagaError::Refused(refusal).into());
        }
        let response = pb::RetrySagaResponse {
            saga: Some(convert::saga(&saga)),
        };
        tracing::info!(saga_id = %id, "operator asked for the retry now");
        let saga = self.act(tx, &response, saga, Signal::RetryNow).await?;
        Ok(Response::new(pb::RetrySagaResponse {
            saga: Some(convert::saga(&saga)),
        }))
    }

    async fn cancel(
        &self,
        request: pb::CancelSagaRequest,
    ) -> Result<Response<pb::CancelSagaResponse>, Status> {
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        let id = parse_uuid("saga_id", &request.saga_id, &mut violations);
        check_text("reason", &request.reason, 500, &mut violations);
        let (Some(id), true) = (id, violations.is_empty()) else {
            return Err(violations.into_status());
        };
        let saga = self.load(id).await?;
        let tx = fresh_or_replay!(self.engine.db(), "CancelSaga", request, SagaError);
        if let Some(refusal) = machine::cancel_refusal(&saga) {
            return Err(
                SagaError::Refused(format!("saga {id} cannot be cancelled: {refusal}")).into(),
            );
        }
        let response = pb::CancelSagaResponse {
            saga: Some(convert::saga(&saga)),
        };
        if saga.state == SagaState::Compensating {
            tx.commit(&response).await.map_err(SagaError::from)?;
            return Ok(Response::new(response));
        }
        tracing::info!(saga_id = %id, reason = %request.reason.trim(), "operator cancelled the saga");
        let signal = Signal::OperatorCancelled {
            reason: request.reason.trim().to_owned(),
        };
        let saga = self.act(tx, &response, saga, signal).await?;
        Ok(Response::new(pb::CancelSagaResponse {
            saga: Some(convert::saga(&saga)),
        }))
    }

    async fn resume(
        &self,
        request: pb::ResumeSagaRequest,
    ) -> Result<Response<pb::ResumeSagaResponse>, Status> {
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        let id = parse_uuid("saga_id", &request.saga_id, &mut violations);
        if request.skip_failed_step || !request.reason.is_empty() {
            check_text("reason", &request.reason, 500, &mut violations);
        }
        let (Some(id), true) = (id, violations.is_empty()) else {
            return Err(violations.into_status());
        };
        let saga = self.load(id).await?;
        let tx = fresh_or_replay!(self.engine.db(), "ResumeSaga", request, SagaError);
        if let Some(refusal) = bulk::resume_refusal(
            &saga,
            request.skip_failed_step,
            self.step_key_horizon,
            chrono::Utc::now(),
        ) {
            return Err(SagaError::Refused(refusal).into());
        }
        let response = pb::ResumeSagaResponse {
            saga: Some(convert::saga(&saga)),
        };
        tracing::info!(saga_id = %id, skip = request.skip_failed_step, "operator resumed the saga");
        let signal = Signal::Resume {
            skip_failed_step: request.skip_failed_step,
            reason: request.reason.trim().to_owned(),
        };
        let saga = self.act(tx, &response, saga, signal).await?;
        Ok(Response::new(pb::ResumeSagaResponse {
            saga: Some(convert::saga(&saga)),
        }))
    }
}
