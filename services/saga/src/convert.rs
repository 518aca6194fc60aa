//! Stored sagas and breakers as API messages.

use zentra_proto::saga::v1 as pb;
use zentra_runtime::{
    circuit_breaker::{BreakerSettings, BreakerSnapshot, BreakerState},
    time::{chrono_to_timestamp, to_proto_duration, to_timestamp},
};

use crate::domain::{Attempt, Saga, Step, StepType};

/// A saga with its steps and attempts.
pub fn saga(saga: &Saga) -> pb::Saga {
    pb::Saga {
        saga_id: saga.id.to_string(),
        order_id: saga.order_id.to_string(),
        state: saga.state.to_proto() as i32,
        current_step: step_type(saga.current_step()),
        failing_step: step_type(saga.failing_step()),
        steps: saga.steps.iter().map(step).collect(),
        compensation_cause: saga
            .cause
            .map_or(pb::SagaCompensationCause::Unspecified, |cause| {
                cause.to_proto()
            }) as i32,
        failure_reason: saga.failure_reason.clone(),
        reservation_id: id(saga.reservation_id),
        payment_id: id(saga.payment_id),
        shipment_id: id(saga.shipment_id),
        version: saga.version,
        create_time: Some(chrono_to_timestamp(saga.created_at)),
        update_time: Some(chrono_to_timestamp(saga.updated_at)),
        end_time: saga.ended_at.map(chrono_to_timestamp),
        trace_id: zentra_runtime::events::trace_id(&saga.traceparent).to_owned(),
    }
}

fn id(id: Option<uuid::Uuid>) -> String {
    id.map(|id| id.to_string()).unwrap_or_default()
}

fn step_type(step: Option<StepType>) -> i32 {
    step.map_or(pb::SagaStepType::Unspecified, StepType::to_proto) as i32
}

fn step(step: &Step) -> pb::SagaStep {
    pb::SagaStep {
        step: step.step.to_proto() as i32,
        status: step.status.to_proto() as i32,
        idempotency_key: step.key.clone(),
        attempts: step.attempts.iter().map(attempt).collect(),
    }
}

fn attempt(attempt: &Attempt) -> pb::StepAttempt {
    pb::StepAttempt {
        attempt_number: i32::try_from(attempt.number).unwrap_or(i32::MAX),
        start_time: Some(chrono_to_timestamp(attempt.start)),
        end_time: attempt.end.map(chrono_to_timestamp),
        outcome: attempt.outcome.to_proto() as i32,
        error_code: attempt.error_code.clone(),
        error_message: attempt.error_message.clone(),
        next_retry_time: attempt.next_retry.map(chrono_to_timestamp),
    }
}

/// A breaker's state.
pub fn breaker_state(state: BreakerState) -> pb::CircuitBreakerState {
    match state {
        BreakerState::Closed => pb::CircuitBreakerState::Closed,
        BreakerState::Open => pb::CircuitBreakerState::Open,
        BreakerState::HalfOpen => pb::CircuitBreakerState::HalfOpen,
    }
}

/// A breaker as the API shows it. Its counts cover the time since the orchestrator started.
pub fn breaker(snapshot: &BreakerSnapshot, settings: &BreakerSettings) -> pb::CircuitBreaker {
    let calls = snapshot.total_failures + snapshot.total_successes;
    pb::CircuitBreaker {
        downstream: snapshot.name.clone(),
        state: breaker_state(snapshot.state) as i32,
        consecutive_failure_count: i32::try_from(snapshot.consecutive_failures).unwrap_or(i32::MAX),
        failure_threshold: i32::try_from(settings.failure_threshold).unwrap_or(i32::MAX),
        window_failure_count: i64::try_from(snapshot.total_failures).unwrap_or(i64::MAX),
        window_call_count: i64::try_from(calls).unwrap_or(i64::MAX),
        window: None,
        open_duration: Some(to_proto_duration(settings.open_for)),
        open_time: snapshot.opened_at.map(to_timestamp),
        next_probe_time: snapshot.next_probe_at.map(to_timestamp),
        last_failure_time: None,
        last_error: snapshot.last_error.clone(),
        state_change_time: None,
    }
}
