//! `zentra.saga.v1.CircuitBreakerService`: the breakers in front of each downstream service.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use zentra_proto::{
    common::v1::PageResponse,
    saga::v1::{self as pb, circuit_breaker_service_server::CircuitBreakerService},
};
use zentra_runtime::{
    audit::{Action, Actor, AuditTrail, Role, check_reason},
    circuit_breaker::BreakerSettings,
    paging::Page,
    status::{Violations, check_idempotency_key},
};

use crate::{convert, domain::Downstream, engine::Engine};

/// Implements `zentra.saga.v1.CircuitBreakerService`.
pub struct BreakerApi {
    engine: Arc<Engine>,
    settings: BreakerSettings,
    audit: AuditTrail,
}

impl BreakerApi {
    /// The API over the engine's breakers; resets are recorded in `audit`.
    pub fn new(engine: Arc<Engine>, settings: BreakerSettings, audit: AuditTrail) -> Self {
        Self {
            engine,
            settings,
            audit,
        }
    }
}

#[tonic::async_trait]
impl CircuitBreakerService for BreakerApi {
    async fn list_circuit_breakers(
        &self,
        request: Request<pb::ListCircuitBreakersRequest>,
    ) -> Result<Response<pb::ListCircuitBreakersResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        // Four breakers always fit one page; the page is still validated.
        Page::parse(request.page.as_ref(), &mut violations);
        let state = pb::CircuitBreakerState::try_from(request.state);
        if state.is_err() {
            violations.add("state", "is not a CircuitBreakerState");
        }
        violations.into_result()?;
        let wanted = state.unwrap_or(pb::CircuitBreakerState::Unspecified);
        let circuit_breakers = Downstream::ALL
            .into_iter()
            .map(|downstream| {
                convert::breaker(
                    &self.engine.downstreams().breaker(downstream).snapshot(),
                    &self.settings,
                )
            })
            .filter(|breaker| {
                wanted == pb::CircuitBreakerState::Unspecified || breaker.state == wanted as i32
            })
            .collect();
        Ok(Response::new(pb::ListCircuitBreakersResponse {
            circuit_breakers,
            page: Some(PageResponse::default()),
        }))
    }

    async fn reset_circuit_breaker(
        &self,
        request: Request<pb::ResetCircuitBreakerRequest>,
    ) -> Result<Response<pb::ResetCircuitBreakerResponse>, Status> {
        let actor = Actor::of(&request);
        let request = request.into_inner();
        let action = Action::new(
            "zentra.saga.v1.CircuitBreakerService/ResetCircuitBreaker",
            Role::Operator,
            format!("circuit-breakers/{}", request.downstream),
            &request.reason,
        );
        self.audit.run(&actor, action, self.reset(request)).await
    }
}

impl BreakerApi {
    async fn reset(
        &self,
        request: pb::ResetCircuitBreakerRequest,
    ) -> Result<Response<pb::ResetCircuitBreakerResponse>, Status> {
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        check_reason(&request.reason, &mut violations);
        violations.into_result()?;
        let Some(downstream) = Downstream::ALL
            .into_iter()
            .find(|downstream| downstream.name() == request.downstream)
        else {
            return Err(Status::not_found(format!(
                "no circuit breaker guards {:?}; known: fulfillment, inventory, order, payment",
                request.downstream
            )));
        };
        // Resetting is naturally idempotent: the breaker ends CLOSED with zeroed counts.
        let breaker = self.engine.downstreams().breaker(downstream);
        breaker.reset();
        tracing::info!(
            downstream = downstream.name(),
            "circuit breaker reset by an operator"
        );
        Ok(Response::new(pb::ResetCircuitBreakerResponse {
            circuit_breaker: Some(convert::breaker(&breaker.snapshot(), &self.settings)),
        }))
    }
}
