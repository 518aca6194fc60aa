//! The state machine walked step by step, without I/O.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;
use zentra_proto::{order::v1::OrderPlaced, saga::v1::CommandOutcome};

use super::*;
use crate::domain::SagaState;

pub(super) fn saga() -> Saga {
    Saga::new(Uuid::now_v7(), OrderPlaced::default(), None, Utc::now())
}

pub(super) fn policy() -> RetryPolicy {
    RetryPolicy {
        jitter: 0.0,
        ..RetryPolicy::default()
    }
}

/// Answers every call with `Done` and returns the next action that is not a successful call.
fn run_calls(saga: &mut Saga, now: DateTime<Utc>, out: &mut Vec<Outgoing>) -> Next {
    loop {
        match advance(saga, now, &policy(), out) {
            Next::Call(step) => {
                let effect = match step {
                    StepType::ReserveStock => Effect::Reservation(Uuid::now_v7()),
                    StepType::AuthorizePayment => Effect::Payment(Uuid::now_v7()),
                    StepType::CreateShipment => Effect::Shipment(Uuid::now_v7()),
                    StepType::CapturePayment => Effect::Captured,
                    _ => Effect::None,
                };
                record_call(
                    saga,
                    step,
                    now,
                    now,
                    CallResult::Done(effect),
                    &policy(),
                    out,
                );
            }
            other => return other,
        }
    }
}

fn names(saga: &Saga) -> Vec<StepType> {
    saga.steps.iter().map(|step| step.step).collect()
}

fn acknowledge(saga: &mut Saga, step: StepType, outcome: CommandOutcome, out: &mut Vec<Outgoing>) {
    acknowledge_at(saga, step, outcome, Utc::now(), out);
}

fn acknowledge_at(
    saga: &mut Saga,
    step: StepType,
    outcome: CommandOutcome,
    at: DateTime<Utc>,
    out: &mut Vec<Outgoing>,
) {
    let signal = Signal::CommandAcknowledged {
        idempotency_key: saga.key(step),
        outcome: outcome as i32,
        error: "because".to_owned(),
        command_id: String::new(),
    };
    apply_signal(saga, &signal, at, &policy(), out);
}

#[test]
fn the_happy_path_waits_for_dispatch_then_captures_and_completes() {
    let mut saga = saga();
    let mut out = Vec::new();
    let now = Utc::now();
    let next = run_calls(&mut saga, now, &mut out);
    assert_eq!(saga.state, SagaState::AwaitingShipment);
    assert_eq!(
        next,
        Next::Wait(Some(
            now + chrono_duration(policy().shipment_check_interval)
        )),
        "fulfillment is asked well before the timeout"
    );
    let shipment_id = saga.shipment_id.expect("shipment recorded").to_string();
    apply_signal(
        &mut saga,
        &Signal::ShipmentDispatched { shipment_id },
        now,
        &policy(),
        &mut out,
    );
    assert_eq!(run_calls(&mut saga, now, &mut out), Next::Wait(None));
    assert_eq!(saga.state, SagaState::Completed);
    assert_eq!(names(&saga), FORWARD);
    assert!(saga.ended_at.is_some());
    // Only the outcome is published; the steps are in the timeline.
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].envelope.event_type, "zentra.saga.v1.SagaCompleted");
}

#[test]
fn a_reservation_that_cannot_be_pinned_is_never_shipped() {
    let mut saga = saga();
    let mut out = Vec::new();
    let now = Utc::now();
    for step in [StepType::ReserveStock, StepType::AuthorizePayment] {
        assert_eq!(
            advance(&mut saga, now, &policy(), &mut out),
            Next::Call(step)
        );
        let effect = if step == StepType::ReserveStock {
            Effect::Reservation(Uuid::now_v7())
        } else {
            Effect::Payment(Uuid::now_v7())
        };
        record_call(
            &mut saga,
            step,
            now,
            now,
            CallResult::Done(effect),
            &policy(),
            &mut out,
        );
    }
    assert_eq!(
        advance(&mut saga, now, &policy(), &mut out),
        Next::Call(StepType::PinReservation),
        "the hold is pinned before any shipment exists"
    );
    record_call(
        &mut saga,
        StepType::PinReservation,
        now,
        now,
        CallResult::Permanent {
            code: "FAILED_PRECONDITION".to_owned(),
            message: "reservation is EXPIRED and cannot be pinned".to_owned(),
        },
        &policy(),
        &mut out,
    );
    assert_eq!(saga.state, SagaState::Compensating);
    assert!(
        saga.failure_reason.starts_with("stock could not be held"),
        "{}",
        saga.failure_reason
    );
    // No shipment to cancel: the payment is voided first.
    assert_eq!(
        advance(&mut saga, now, &policy(), &mut out),
        Next::Send(StepType::VoidPayment)
    );
    assert!(saga.step(StepType::CreateShipment).is_none());
}

#[test]
fn a_decline_releases_the_stock_by_command_then_rejects_the_order() {
    let mut saga = saga();
    let mut out = Vec::new();
    let now = Utc::now();
    assert_eq!(
        advance(&mut saga, now, &policy(), &mut out),
        Next::Call(StepType::ReserveStock)
    );
    record_call(
        &mut saga,
        StepType::ReserveStock,
        now,
        now,
        CallResult::Done(Effect::Reservation(Uuid::now_v7())),
        &policy(),
        &mut out,
    );
    let declined = CallResult::Permanent {
        code: "DECLINED".to_owned(),
        message: "payment declined: card declined".to_owned(),
    };
    record_call(
        &mut saga,
        StepType::AuthorizePayment,
        now,
        now,
        declined,
        &policy(),
        &mut out,
    );
    assert_eq!(saga.state, SagaState::Compensating);
    assert_eq!(saga.cause, Some(CompensationCause::StepFailed));
    assert!(saga.failure_reason.contains("card declined"));
    assert_eq!(
        compensation_plan(&saga),
        [StepType::ReleaseStock, StepType::RejectOrder]
    );

    assert_eq!(
        advance(&mut saga, now, &policy(), &mut out),
        Next::Send(StepType::ReleaseStock)
    );
    let command = command(&saga, StepType::ReleaseStock).expect("a command");
    assert_eq!(command.topic, "inventory.commands");
    record_send(
        &mut saga,
        StepType::ReleaseStock,
        command.envelope.event_id.clone(),
        now,
        policy().ack_timeout,
    );
    assert_eq!(
        advance(&mut saga, now, &policy(), &mut out),
        Next::Wait(Some(now + chrono_duration(policy().ack_timeout)))
    );
    acknowledge(
        &mut saga,
        StepType::ReleaseStock,
        CommandOutcome::Applied,
        &mut out,
    );
    assert_eq!(
        advance(&mut saga, now, &policy(), &mut out),
        Next::Call(StepType::RejectOrder)
    );
    record_call(
        &mut saga,
        StepType::RejectOrder,
        now,
        now,
        CallResult::Done(Effect::None),
        &policy(),
        &mut out,
    );
    assert_eq!(
        advance(&mut saga, now, &policy(), &mut out),
        Next::Wait(None)
    );
    assert_eq!(saga.state, SagaState::Compensated);
}

#[test]
fn retryable_failures_back_off_until_the_attempts_run_out() {
    let mut saga = saga();
    let mut out = Vec::new();
    let mut now = Utc::now();
    for attempt in 1..=policy().max_attempts {
        assert_eq!(
            advance(&mut saga, now, &policy(), &mut out),
            Next::Call(StepType::ReserveStock)
        );
        let failure = CallResult::Retryable {
            code: "UNAVAILABLE".to_owned(),
            message: "down".to_owned(),
        };
        record_call(
            &mut saga,
            StepType::ReserveStock,
            now,
            now,
            failure,
            &policy(),
            &mut out,
        );
        if attempt < policy().max_attempts {
            let step = saga.step(StepType::ReserveStock).expect("step");
            let due = step
                .last_attempt()
                .and_then(|a| a.next_retry)
                .expect("retry scheduled");
            assert_eq!(
                due - now,
                chrono_duration(policy().backoff(attempt)),
                "exponential backoff"
            );
            assert_eq!(
                advance(&mut saga, now, &policy(), &mut out),
                Next::Wait(Some(due))
            );
            now = due;
        }
    }
    assert_eq!(saga.state, SagaState::Compensating);
    assert_eq!(compensation_plan(&saga), [StepType::RejectOrder]);
}

#[test]
fn a_step_stops_retrying_once_its_durable_timeout_passed() {
    let mut saga = saga();
    let mut out = Vec::new();
    let long_ago = Utc::now() - chrono::Duration::hours(1);
    let failure = CallResult::TimedOut {
        message: "slow".to_owned(),
    };
    // The first attempt started an hour ago (stored), so a restart cannot reset the budget.
    record_call(
        &mut saga,
        StepType::ReserveStock,
        long_ago,
        long_ago,
        failure.clone(),
        &policy(),
        &mut out,
    );
    record_call(
        &mut saga,
        StepType::ReserveStock,
        Utc::now(),
        Utc::now(),
        failure,
        &policy(),
        &mut out,
    );
    assert_eq!(saga.state, SagaState::Compensating);
}

/// A saga that reserved, was cancelled by an operator and sent its ReleaseStockCommand at `now`.
fn release_sent(now: DateTime<Utc>, out: &mut Vec<Outgoing>) -> Saga {
    let mut saga = saga();
    record_call(
        &mut saga,
        StepType::ReserveStock,
        now,
        now,
        CallResult::Done(Effect::Reservation(Uuid::now_v7())),
        &policy(),
        out,
    );
    apply_signal(
        &mut saga,
        &Signal::OperatorCancelled {
            reason: "test".to_owned(),
        },
        now,
        &policy(),
        out,
    );
    assert_eq!(
        advance(&mut saga, now, &policy(), out),
        Next::Send(StepType::ReleaseStock)
    );
    record_send(
        &mut saga,
        StepType::ReleaseStock,
        "c1".to_owned(),
        now,
        policy().ack_timeout,
    );
    saga
}

#[test]
fn an_unacknowledged_command_is_looked_up_then_sent_again_under_the_same_key() {
    let mut out = Vec::new();
    let now = Utc::now();
    let mut saga = release_sent(now, &mut out);
    let later = now + chrono_duration(policy().ack_timeout);
    assert_eq!(
        advance(&mut saga, later, &policy(), &mut out),
        Next::Verify(StepType::ReleaseStock),
        "the participant is asked before anything is sent again"
    );
    record_verify(
        &mut saga,
        StepType::ReleaseStock,
        later,
        CommandLookup::NotApplied("reservation RESERVATION_STATUS_PENDING".to_owned()),
        policy().ack_timeout,
    );
    assert_eq!(
        advance(&mut saga, later, &policy(), &mut out),
        Next::Send(StepType::ReleaseStock)
    );
    record_send(
        &mut saga,
        StepType::ReleaseStock,
        "c2".to_owned(),
        later,
        policy().ack_timeout,
    );
    let step = saga.step(StepType::ReleaseStock).expect("step");
    assert_eq!(step.attempts.len(), 2);
    assert_eq!(step.attempts[0].outcome, Outcome::TimedOut);
    assert!(
        step.attempts[0].error_message.contains("PENDING"),
        "{}",
        step.attempts[0].error_message
    );
    assert_eq!(
        step.key,
        saga.key(StepType::ReleaseStock),
        "one key for every send"
    );
}

#[test]
fn a_lost_acknowledgement_is_settled_by_what_the_participant_says() {
    let mut out = Vec::new();
    let now = Utc::now();
    let mut saga = release_sent(now, &mut out);
    let later = now + chrono_duration(policy().ack_timeout);
    assert_eq!(
        advance(&mut saga, later, &policy(), &mut out),
        Next::Verify(StepType::ReleaseStock)
    );
    record_verify(
        &mut saga,
        StepType::ReleaseStock,
        later,
        CommandLookup::Applied("reservation RESERVATION_STATUS_RELEASED".to_owned()),
        policy().ack_timeout,
    );
    let step = saga.step(StepType::ReleaseStock).expect("step");
    assert_eq!(step.status, StepStatus::Succeeded);
    assert_eq!(step.attempts.len(), 1, "nothing sent twice");
    assert_eq!(
        advance(&mut saga, later, &policy(), &mut out),
        Next::Call(StepType::RejectOrder)
    );
}

#[test]
fn a_rejected_compensation_parks_the_saga_until_an_operator_resumes_it() {
    let mut saga = saga();
    let mut out = Vec::new();
    let now = Utc::now();
    record_call(
        &mut saga,
        StepType::ReserveStock,
        now,
        now,
        CallResult::Done(Effect::Reservation(Uuid::now_v7())),
        &policy(),
        &mut out,
    );
    apply_signal(
        &mut saga,
        &Signal::OperatorCancelled {
            reason: "test".to_owned(),
        },
        now,
        &policy(),
        &mut out,
    );
    assert_eq!(saga.cause, Some(CompensationCause::OperatorCancelled));
    advance(&mut saga, now, &policy(), &mut out);
    record_send(
        &mut saga,
        StepType::ReleaseStock,
        "c1".to_owned(),
        now,
        policy().ack_timeout,
    );
    acknowledge(
        &mut saga,
        StepType::ReleaseStock,
        CommandOutcome::Rejected,
        &mut out,
    );
    assert_eq!(saga.state, SagaState::CompensationFailed);
    assert_eq!(
        advance(&mut saga, now, &policy(), &mut out),
        Next::Wait(None)
    );

    let resume = Signal::Resume {
        skip_failed_step: true,
        reason: "released by hand".to_owned(),
    };
    apply_signal(&mut saga, &resume, now, &policy(), &mut out);
    assert_eq!(saga.state, SagaState::Compensating);
    assert_eq!(
        advance(&mut saga, now, &policy(), &mut out),
        Next::Call(StepType::RejectOrder)
    );
}

#[test]
fn failed_acknowledgements_retry_then_park_after_the_limit() {
    let mut saga = saga();
    let mut out = Vec::new();
    let now = Utc::now();
    record_call(
        &mut saga,
        StepType::ReserveStock,
        now,
        now,
        CallResult::Done(Effect::Reservation(Uuid::now_v7())),
        &policy(),
        &mut out,
    );
    apply_signal(
        &mut saga,
        &Signal::OperatorCancelled {
            reason: "test".to_owned(),
        },
        now,
        &policy(),
        &mut out,
    );
    for _ in 0..policy().max_command_failures {
        let mut at = now;
        if let Some(due) = saga
            .step(StepType::ReleaseStock)
            .and_then(Step::last_attempt)
            .and_then(|a| a.next_retry)
        {
            at = due;
        }
        assert_eq!(
            advance(&mut saga, at, &policy(), &mut out),
            Next::Send(StepType::ReleaseStock)
        );
        record_send(
            &mut saga,
            StepType::ReleaseStock,
            "c".to_owned(),
            at,
            policy().ack_timeout,
        );
        acknowledge(
            &mut saga,
            StepType::ReleaseStock,
            CommandOutcome::Failed,
            &mut out,
        );
    }
    assert_eq!(saga.state, SagaState::CompensationFailed);

    // Resuming without skipping gives the step a fresh budget.
    let resume = Signal::Resume {
        skip_failed_step: false,
        reason: String::new(),
    };
    apply_signal(&mut saga, &resume, Utc::now(), &policy(), &mut out);
    assert_eq!(
        advance(&mut saga, Utc::now(), &policy(), &mut out),
        Next::Send(StepType::ReleaseStock)
    );
}

#[test]
fn a_customer_cancellation_compensates_before_dispatch_and_is_ignored_after() {
    let mut saga = saga();
    let mut out = Vec::new();
    let now = Utc::now();
    run_calls(&mut saga, now, &mut out);
    assert_eq!(saga.state, SagaState::AwaitingShipment);
    apply_signal(
        &mut saga,
        &Signal::CustomerCancelled {
            reason: "changed my mind".to_owned(),
        },
        now,
        &policy(),
        &mut out,
    );
    assert_eq!(
        advance(&mut saga, now, &policy(), &mut out),
        Next::CheckShipment,
        "the shipment is looked up before it is cancelled"
    );
    record_shipment_check(&mut saga, now, ShipmentLookup::Pending, &policy());
    assert_eq!(
        advance(&mut saga, now, &policy(), &mut out),
        Next::Send(StepType::CancelShipment)
    );
    assert_eq!(saga.cause, Some(CompensationCause::CustomerCancelled));
    assert_eq!(
        compensation_plan(&saga),
        [
            StepType::CancelShipment,
            StepType::VoidPayment,
            StepType::ReleaseStock,
            StepType::CompleteCancellation
        ]
    );

    let mut late = self::saga();
    run_calls(&mut late, now, &mut out);
    let shipment_id = late.shipment_id.expect("shipment").to_string();
    apply_signal(
        &mut late,
        &Signal::ShipmentDispatched { shipment_id },
        now,
        &policy(),
        &mut out,
    );
    apply_signal(
        &mut late,
        &Signal::CustomerCancelled {
            reason: "too late".to_owned(),
        },
        now,
        &policy(),
        &mut out,
    );
    assert_eq!(run_calls(&mut late, now, &mut out), Next::Wait(None));
    assert_eq!(late.state, SagaState::Completed);
    assert!(cancel_refusal(&late).is_some());
}

#[test]
fn an_open_circuit_holds_the_step_without_spending_its_attempts() {
    let mut saga = saga();
    let mut out = Vec::new();
    let now = Utc::now();
    for _ in 0..(policy().max_attempts * 2) {
        let open = CallResult::CircuitOpen {
            retry_after: Duration::from_secs(1),
            message: "open".to_owned(),
        };
        record_call(
            &mut saga,
            StepType::ReserveStock,
            now,
            now,
            open,
            &policy(),
            &mut out,
        );
    }
    assert_eq!(saga.state, SagaState::Running);
    let step = saga.step(StepType::ReserveStock).expect("step");
    assert_eq!(step.status, StepStatus::RetryScheduled);
    assert_eq!(step.counted_attempts(), 0);

    let fail_fast = RetryPolicy {
        fail_fast_when_open: true,
        ..policy()
    };
    let mut fast = self::saga();
    let open = CallResult::CircuitOpen {
        retry_after: Duration::from_secs(1),
        message: "open".to_owned(),
    };
    record_call(
        &mut fast,
        StepType::ReserveStock,
        now,
        now,
        open,
        &fail_fast,
        &mut out,
    );
    assert_eq!(fast.state, SagaState::Compensating);
}

#[test]
fn backoff_grows_exponentially_within_its_jitter_and_cap() {
    let policy = RetryPolicy {
        jitter: 0.2,
        ..RetryPolicy::default()
    };
    for failures in 1..=12 {
        let base = policy
            .initial_backoff
            .saturating_mul(1 << (failures - 1))
            .min(policy.max_backoff);
        let delay = policy.backoff(failures);
        assert!(
            delay >= base.mul_f64(0.8) && delay <= base.mul_f64(1.2),
            "{failures}: {delay:?}"
        );
    }
}

#[test]
fn past_the_point_of_no_return_a_failing_step_is_retried_without_limit() {
    let mut saga = saga();
    let mut out = Vec::new();
    let now = Utc::now();
    run_calls(&mut saga, now, &mut out);
    let shipment_id = saga.shipment_id.expect("shipment").to_string();
    apply_signal(
        &mut saga,
        &Signal::ShipmentDispatched { shipment_id },
        now,
        &policy(),
        &mut out,
    );
    assert_eq!(
        advance(&mut saga, now, &policy(), &mut out),
        Next::Call(StepType::CapturePayment)
    );
    let long_ago = now - chrono::Duration::hours(1);
    for _ in 0..(policy().max_attempts * 3) {
        let failure = CallResult::TimedOut {
            message: "busy".to_owned(),
        };
        record_call(
            &mut saga,
            StepType::CapturePayment,
            long_ago,
            now,
            failure,
            &policy(),
            &mut out,
        );
    }
    assert_eq!(
        saga.state,
        SagaState::Running,
        "never compensates after dispatch"
    );
    let step = saga.step(StepType::CapturePayment).expect("step");
    assert_eq!(step.status, StepStatus::RetryScheduled);
}

#[test]
fn a_step_that_timed_out_is_looked_up_before_compensation_and_undone_if_it_applied() {
    let mut saga = saga();
    let mut out = Vec::new();
    let now = Utc::now();
    // The reservation call timed out every time: did inventory reserve or not?
    let policy = RetryPolicy {
        max_attempts: 1,
        ..policy()
    };
    let timeout = CallResult::TimedOut {
        message: "no answer".to_owned(),
    };
    record_call(
        &mut saga,
        StepType::ReserveStock,
        now,
        now,
        timeout,
        &policy,
        &mut out,
    );
    assert_eq!(saga.state, SagaState::Compensating);
    assert_eq!(
        advance(&mut saga, now, &policy, &mut out),
        Next::Settle(StepType::ReserveStock)
    );

    let reservation = Uuid::now_v7();
    record_settle(
        &mut saga,
        StepType::ReserveStock,
        now,
        now,
        SettleResult::Found(Effect::Reservation(reservation)),
        &policy,
    );
    assert_eq!(saga.reservation_id, Some(reservation));
    assert_eq!(
        advance(&mut saga, now, &policy, &mut out),
        Next::Send(StepType::ReleaseStock)
    );

    let mut never = self::saga();
    let timeout = CallResult::TimedOut {
        message: "no answer".to_owned(),
    };
    record_call(
        &mut never,
        StepType::ReserveStock,
        now,
        now,
        timeout,
        &policy,
        &mut out,
    );
    record_settle(
        &mut never,
        StepType::ReserveStock,
        now,
        now,
        SettleResult::Failed {
            message: "down".to_owned(),
        },
        &policy,
    );
    let due = never
        .step(StepType::ReserveStock)
        .and_then(Step::last_attempt)
        .and_then(|a| a.next_retry)
        .expect("lookup retried");
    assert_eq!(
        advance(&mut never, due, &policy, &mut out),
        Next::Settle(StepType::ReserveStock)
    );
    record_settle(
        &mut never,
        StepType::ReserveStock,
        due,
        due,
        SettleResult::Nothing,
        &policy,
    );
    assert_eq!(
        advance(&mut never, due, &policy, &mut out),
        Next::Call(StepType::RejectOrder),
        "nothing to release"
    );
}

/// Walks a saga to the shipment wait, then past its timeout.
fn overdue_shipment(out: &mut Vec<Outgoing>) -> (Saga, DateTime<Utc>) {
    let mut saga = saga();
    let start = Utc::now();
    run_calls(&mut saga, start, out);
    assert_eq!(saga.state, SagaState::AwaitingShipment);
    (saga, start + chrono_duration(policy().shipment_timeout))
}

/// Compensation steps the saga started (sent or called).
fn undone(saga: &Saga) -> Vec<StepType> {
    names(saga)
        .into_iter()
        .filter(|step| !step.is_forward() && *step != StepType::CancelShipment)
        .collect()
}

#[test]
fn a_shipment_timeout_asks_fulfillment_and_a_dispatched_shipment_completes_the_order() {
    let mut out = Vec::new();
    let (mut saga, late) = overdue_shipment(&mut out);
    assert_eq!(
        advance(&mut saga, late, &policy(), &mut out),
        Next::CheckShipment
    );
    record_shipment_check(&mut saga, late, ShipmentLookup::Dispatched, &policy());
    assert_eq!(run_calls(&mut saga, late, &mut out), Next::Wait(None));
    assert_eq!(saga.state, SagaState::Completed);
    assert!(saga.captured);
    assert!(
        undone(&saga).is_empty(),
        "nothing undone: {:?}",
        names(&saga)
    );
}

#[test]
fn an_unanswered_shipment_lookup_never_starts_compensation() {
    let mut out = Vec::new();
    let (mut saga, mut now) = overdue_shipment(&mut out);
    for _ in 0..10 {
        assert_eq!(
            advance(&mut saga, now, &policy(), &mut out),
            Next::CheckShipment
        );
        record_shipment_check(
            &mut saga,
            now,
            ShipmentLookup::Unknown("fulfillment is frozen".to_owned()),
            &policy(),
        );
        let Next::Wait(Some(next)) = advance(&mut saga, now, &policy(), &mut out) else {
            panic!("waits for the next lookup");
        };
        assert_eq!(saga.state, SagaState::AwaitingShipment);
        now = next;
    }
    // Fulfillment comes back: the goods had left meanwhile.
    record_shipment_check(&mut saga, now, ShipmentLookup::Dispatched, &policy());
    assert_eq!(run_calls(&mut saga, now, &mut out), Next::Wait(None));
    assert_eq!(saga.state, SagaState::Completed);
}

#[test]
fn a_refused_shipment_cancel_is_looked_up_and_a_dispatched_shipment_turns_the_saga_forward() {
    let mut out = Vec::new();
    let (mut saga, late) = overdue_shipment(&mut out);
    assert_eq!(
        advance(&mut saga, late, &policy(), &mut out),
        Next::CheckShipment
    );
    record_shipment_check(&mut saga, late, ShipmentLookup::Pending, &policy());
    assert_eq!(saga.state, SagaState::Compensating);
    assert_eq!(
        advance(&mut saga, late, &policy(), &mut out),
        Next::Send(StepType::CancelShipment)
    );
    record_send(
        &mut saga,
        StepType::CancelShipment,
        "c1".to_owned(),
        late,
        policy().ack_timeout,
    );
    // The warehouse dispatched in between: fulfillment refuses the cancel.
    let refused = late + chrono::Duration::seconds(1);
    acknowledge_at(
        &mut saga,
        StepType::CancelShipment,
        CommandOutcome::Rejected,
        refused,
        &mut out,
    );
    assert_eq!(
        saga.state,
        SagaState::Compensating,
        "not parked on a refusal"
    );
    assert_eq!(
        advance(&mut saga, refused, &policy(), &mut out),
        Next::CheckShipment
    );
    record_shipment_check(&mut saga, refused, ShipmentLookup::Dispatched, &policy());
    assert_eq!(run_calls(&mut saga, refused, &mut out), Next::Wait(None));
    assert_eq!(saga.state, SagaState::Completed);
    assert!(saga.captured, "the dispatched order is charged");
    assert!(
        undone(&saga).is_empty(),
        "no void, refund or release: {:?}",
        names(&saga)
    );
}

#[test]
fn a_dispatch_reported_while_compensating_turns_the_saga_forward() {
    let mut out = Vec::new();
    let (mut saga, late) = overdue_shipment(&mut out);
    advance(&mut saga, late, &policy(), &mut out);
    record_shipment_check(&mut saga, late, ShipmentLookup::Pending, &policy());
    advance(&mut saga, late, &policy(), &mut out);
    record_send(
        &mut saga,
        StepType::CancelShipment,
        "c1".to_owned(),
        late,
        policy().ack_timeout,
    );
    let shipment_id = saga.shipment_id.expect("shipment").to_string();
    apply_signal(
        &mut saga,
        &Signal::ShipmentDispatched { shipment_id },
        late,
        &policy(),
        &mut out,
    );
    assert_eq!(run_calls(&mut saga, late, &mut out), Next::Wait(None));
    assert_eq!(saga.state, SagaState::Completed);
    // The cancel's late refusal changes nothing any more.
    acknowledge(
        &mut saga,
        StepType::CancelShipment,
        CommandOutcome::Rejected,
        &mut out,
    );
    assert_eq!(saga.state, SagaState::Completed);
}

#[test]
fn a_cancelled_or_failed_shipment_needs_no_cancel_command() {
    let mut out = Vec::new();
    let (mut saga, late) = overdue_shipment(&mut out);
    apply_signal(
        &mut saga,
        &Signal::OperatorCancelled {
            reason: "test".to_owned(),
        },
        late,
        &policy(),
        &mut out,
    );
    assert_eq!(
        advance(&mut saga, late, &policy(), &mut out),
        Next::CheckShipment
    );
    record_shipment_check(&mut saga, late, ShipmentLookup::Cancelled, &policy());
    assert_eq!(
        advance(&mut saga, late, &policy(), &mut out),
        Next::Send(StepType::VoidPayment),
        "the shipment's cancel is done; the payment is next"
    );
}

#[test]
fn past_the_point_of_no_return_a_permanent_failure_parks_instead_of_compensating() {
    let mut out = Vec::new();
    let mut saga = saga();
    let now = Utc::now();
    run_calls(&mut saga, now, &mut out);
    let shipment_id = saga.shipment_id.expect("shipment").to_string();
    apply_signal(
        &mut saga,
        &Signal::ShipmentDispatched { shipment_id },
        now,
        &policy(),
        &mut out,
    );
    assert_eq!(
        advance(&mut saga, now, &policy(), &mut out),
        Next::Call(StepType::CapturePayment)
    );
    record_call(
        &mut saga,
        StepType::CapturePayment,
        now,
        now,
        CallResult::Permanent {
            code: "FAILED_PRECONDITION".to_owned(),
            message: "authorization expired".to_owned(),
        },
        &policy(),
        &mut out,
    );
    assert_eq!(saga.state, SagaState::CompensationFailed);
    assert!(
        saga.failure_reason.contains("point of no return"),
        "{}",
        saga.failure_reason
    );
    assert!(undone(&saga).is_empty());
    apply_signal(
        &mut saga,
        &Signal::Resume {
            skip_failed_step: false,
            reason: "re-authorized".to_owned(),
        },
        now,
        &policy(),
        &mut out,
    );
    assert_eq!(saga.state, SagaState::Running, "resumed forward");
    assert_eq!(
        advance(&mut saga, now, &policy(), &mut out),
        Next::Call(StepType::CapturePayment)
    );
}

#[test]
fn a_failed_acknowledgement_of_an_earlier_send_does_not_fail_the_current_one() {
    let mut out = Vec::new();
    let mut saga = saga();
    let now = Utc::now();
    record_call(
        &mut saga,
        StepType::ReserveStock,
        now,
        now,
        CallResult::Done(Effect::Reservation(Uuid::now_v7())),
        &policy(),
        &mut out,
    );
    apply_signal(
        &mut saga,
        &Signal::OperatorCancelled {
            reason: "test".to_owned(),
        },
        now,
        &policy(),
        &mut out,
    );
    advance(&mut saga, now, &policy(), &mut out);
    record_send(
        &mut saga,
        StepType::ReleaseStock,
        "first".to_owned(),
        now,
        policy().ack_timeout,
    );
    record_send(
        &mut saga,
        StepType::ReleaseStock,
        "second".to_owned(),
        now,
        policy().ack_timeout,
    );
    let stale = Signal::CommandAcknowledged {
        idempotency_key: saga.key(StepType::ReleaseStock),
        outcome: CommandOutcome::Rejected as i32,
        error: "stale".to_owned(),
        command_id: "first".to_owned(),
    };
    apply_signal(&mut saga, &stale, now, &policy(), &mut out);
    assert_eq!(
        saga.state,
        SagaState::Compensating,
        "the stale refusal is ignored"
    );
    let current = Signal::CommandAcknowledged {
        idempotency_key: saga.key(StepType::ReleaseStock),
        outcome: CommandOutcome::Applied as i32,
        error: String::new(),
        command_id: "second".to_owned(),
    };
    apply_signal(&mut saga, &current, now, &policy(), &mut out);
    assert!(saga.succeeded(StepType::ReleaseStock));
}
