//! The order saga's state machine, as pure functions over a [`Saga`]: what to do next, and how a
//! call's result, a command's acknowledgement or a signal changes the saga. Nothing here does
//! I/O; the [engine](crate::engine) performs what [`advance`] asks for and stores the result
//! together with the events these functions emit.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use zentra_proto::{
    events::v1::EventEnvelope,
    saga::v1::{self as pb, CommandOutcome},
};
use zentra_runtime::events::{self, EventMeta};

use crate::domain::{
    Attempt, CompensationCause, FORWARD, Outcome, Saga, SagaState, ShipmentReport, Step,
    StepStatus, StepType,
};

/// What the engine must do next for a saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Make the step's gRPC call, then [`record_call`].
    Call(StepType),
    /// Send the step's command over Kafka ([`command`]), then [`record_send`].
    Send(StepType),
    /// Find out whether a forward step whose outcome is unknown (it timed out) took effect after
    /// all, by looking the order up downstream; then [`record_settle`].
    Settle(StepType),
    /// Ask fulfillment how the shipment stands; then [`record_shipment_check`].
    CheckShipment,
    /// A compensation command's acknowledgement is overdue: ask its participant whether the
    /// command took effect (the acknowledgement, or the command, may have been lost); then
    /// [`record_verify`].
    Verify(StepType),
    /// Nothing now; look again at this time, or only on a signal when `None`.
    Wait(Option<DateTime<Utc>>),
}

/// A record the saga puts on Kafka (through the outbox) with a state change.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Base name of the topic.
    pub topic: &'static str,
    /// The record.
    pub envelope: EventEnvelope,
}

/// Base name of the topic saga events go to.
pub const EVENTS_TOPIC: &str = "saga.events";

/// Something that happened to a saga from outside the engine, stored until the engine applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Signal {
    /// Fulfillment dispatched the shipment.
    ShipmentDispatched {
        /// The shipment.
        shipment_id: String,
    },
    /// Fulfillment could not ship.
    ShipmentFailed {
        /// The shipment.
        shipment_id: String,
        /// Why.
        reason: String,
    },
    /// The customer asked to cancel the order.
    CustomerCancelled {
        /// Why.
        reason: String,
    },
    /// A service acknowledged a compensation command.
    CommandAcknowledged {
        /// The command's idempotency key.
        idempotency_key: String,
        /// What it did (a `CommandOutcome` number).
        outcome: i32,
        /// Why it was rejected or failed.
        error: String,
        /// The event id of the command it answers (empty from older senders).
        #[serde(default)]
        command_id: String,
    },
    /// An operator cancelled the saga.
    OperatorCancelled {
        /// Why.
        reason: String,
    },
    /// An operator asked for the scheduled retry to run now.
    RetryNow,
    /// An operator resumed a COMPENSATION_FAILED saga.
    Resume {
        /// Treat the failed step as done.
        skip_failed_step: bool,
        /// Why.
        reason: String,
    },
}

/// The result of one gRPC call of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// It took effect; what it made.
    Done(Effect),
    /// Failed; a retry may help.
    Retryable {
        /// gRPC code name.
        code: String,
        /// Message.
        message: String,
    },
    /// Failed; no retry helps.
    Permanent {
        /// gRPC code name (or DECLINED).
        code: String,
        /// Message, used as the rejection reason.
        message: String,
    },
    /// No answer within the deadline.
    TimedOut {
        /// What happened.
        message: String,
    },
    /// Not sent: the downstream's breaker is open.
    CircuitOpen {
        /// When the breaker lets a probe through.
        retry_after: Duration,
        /// What happened.
        message: String,
    },
}

/// What a successful step made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing to remember.
    None,
    /// RESERVE_STOCK's reservation.
    Reservation(Uuid),
    /// AUTHORIZE_PAYMENT's payment.
    Payment(Uuid),
    /// CREATE_SHIPMENT's shipment.
    Shipment(Uuid),
    /// CAPTURE_PAYMENT happened.
    Captured,
}

/// Decides what comes next, applying every change that needs no I/O on the way (entering the
/// shipment wait, starting compensation, completing). Events of those changes go to `out`.
pub fn advance(
    saga: &mut Saga,
    now: DateTime<Utc>,
    policy: &RetryPolicy,
    out: &mut Vec<Outgoing>,
) -> Next {
    // Each pass either returns or changes the state, and no state is entered twice, so this ends.
    loop {
        match saga.state {
            SagaState::Completed | SagaState::Compensated | SagaState::CompensationFailed => {
                return Next::Wait(None);
            }
            SagaState::Running | SagaState::AwaitingShipment => {
                if let Some(reason) = saga.cancel_request.clone()
                    && !saga.dispatched()
                {
                    begin_compensation(saga, CompensationCause::CustomerCancelled, reason, now);
                    continue;
                }
                if let Some(next) = forward(saga, now, policy, out) {
                    return next;
                }
            }
            SagaState::Compensating => {
                if let Some(next) = compensate(saga, now, policy, out) {
                    return next;
                }
            }
        }
    }
}

/// The forward part of [`advance`]; `None` when the state changed and the caller loops.
fn forward(
    saga: &mut Saga,
    now: DateTime<Utc>,
    policy: &RetryPolicy,
    out: &mut Vec<Outgoing>,
) -> Option<Next> {
    if saga.state == SagaState::AwaitingShipment {
        match saga.shipment.clone() {
            ShipmentReport::Dispatched => {
                saga.state = SagaState::Running;
            }
            ShipmentReport::Failed(reason) => {
                begin_compensation(
                    saga,
                    CompensationCause::StepFailed,
                    format!("shipment failed: {reason}"),
                    now,
                );
            }
            ShipmentReport::None => {
                // Never undone on a timer alone: fulfillment is asked, and only a shipment it
                // says is still not dispatched after the timeout is cancelled.
                let due = shipment::next_check(saga, policy).unwrap_or(now);
                return Some(if now < due {
                    Next::Wait(Some(due))
                } else {
                    Next::CheckShipment
                });
            }
        }
        return None;
    }
    let Some(&step) = FORWARD.iter().find(|step| !saga.succeeded(**step)) else {
        saga.state = SagaState::Completed;
        saga.ended_at = Some(now);
        out.push(saga_event(
            saga,
            &pb::SagaCompleted {
                saga_id: saga.id.to_string(),
                order_id: saga.order_id.to_string(),
            },
        ));
        return None;
    };
    if step == StepType::CapturePayment && !saga.dispatched() {
        // The shipment exists; nothing is captured before fulfillment reports on it.
        saga.state = SagaState::AwaitingShipment;
        return None;
    }
    match saga.step(step).map(|record| (record.status, due(record))) {
        None | Some((StepStatus::Running, _)) => Some(Next::Call(step)),
        Some((StepStatus::RetryScheduled, due)) => Some(if due.is_none_or(|due| due <= now) {
            Next::Call(step)
        } else {
            Next::Wait(due)
        }),
        Some((StepStatus::Failed, _)) if saga.dispatched() => {
            park_forward(saga, step, out);
            None
        }
        Some((StepStatus::Failed, _)) => {
            let reason = failure_reason(saga, step);
            begin_compensation(saga, CompensationCause::StepFailed, reason, now);
            None
        }
        Some((StepStatus::Succeeded, _)) => None,
    }
}

/// The compensating part of [`advance`]; `None` when the state changed and the caller loops.
fn compensate(
    saga: &mut Saga,
    now: DateTime<Utc>,
    policy: &RetryPolicy,
    out: &mut Vec<Outgoing>,
) -> Option<Next> {
    if saga.dispatched() {
        // The goods left: the point of no return is passed, whatever started compensation.
        shipment::turn_forward(saga, now, out);
        return None;
    }
    // Undo only what is known: a step that timed out may have taken effect, so look first.
    for step in [
        StepType::CreateShipment,
        StepType::AuthorizePayment,
        StepType::ReserveStock,
    ] {
        if let Some(record) = saga.step(step)
            && may_have_applied(record)
        {
            return Some(match record.status {
                StepStatus::RetryScheduled => match due(record) {
                    Some(due) if due > now => Next::Wait(Some(due)),
                    _ => Next::Settle(step),
                },
                _ => Next::Settle(step),
            });
        }
    }
    let plan = compensation_plan(saga);
    let Some(&step) = plan.iter().find(|step| !saga.succeeded(**step)) else {
        saga.state = SagaState::Compensated;
        saga.ended_at = Some(now);
        out.push(saga_event(
            saga,
            &pb::SagaCompensated {
                saga_id: saga.id.to_string(),
                order_id: saga.order_id.to_string(),
                compensation_cause: saga.cause.map_or(
                    pb::SagaCompensationCause::Unspecified,
                    CompensationCause::to_proto,
                ) as i32,
                reason: saga.failure_reason.clone(),
            },
        ));
        return None;
    };
    if step == StepType::CancelShipment
        && let Some(first) = shipment::before_cancel(saga, now, policy, out)
    {
        return Some(first);
    }
    let act = if step.is_command() {
        Next::Send(step)
    } else {
        Next::Call(step)
    };
    let Some(record) = saga.step(step) else {
        return Some(act);
    };
    match record.status {
        StepStatus::Running if step.is_command() => {
            let Some(sent) = record
                .last_attempt()
                .filter(|attempt| attempt.outcome == Outcome::InProgress)
            else {
                return Some(act);
            };
            let overdue_at = sent.start + chrono_duration(policy.ack_timeout);
            // Never sent blindly again: the participant is asked what it did first.
            Some(if now >= overdue_at {
                Next::Verify(step)
            } else {
                Next::Wait(Some(overdue_at))
            })
        }
        StepStatus::Running => Some(act),
        StepStatus::RetryScheduled => {
            let due = due(record);
            Some(if due.is_none_or(|due| due <= now) {
                act
            } else {
                Next::Wait(due)
            })
        }
        StepStatus::Failed => {
            park(saga, step, out);
            None
        }
        StepStatus::Succeeded => None,
    }
}

/// The compensations of what took effect, in reverse order of the forward steps, then the
/// order's final change.
pub fn compensation_plan(saga: &Saga) -> Vec<StepType> {
    let mut plan = Vec::with_capacity(4);
    // A shipment that failed never left; there is nothing to cancel.
    if saga.succeeded(StepType::CreateShipment)
        && !matches!(saga.shipment, ShipmentReport::Failed(_))
    {
        plan.push(StepType::CancelShipment);
    }
    if saga.succeeded(StepType::AuthorizePayment) {
        plan.push(if saga.captured {
            StepType::RefundPayment
        } else {
            StepType::VoidPayment
        });
    }
    if saga.succeeded(StepType::ReserveStock) {
        plan.push(StepType::ReleaseStock);
    }
    plan.push(
        if saga.cause == Some(CompensationCause::CustomerCancelled) {
            StepType::CompleteCancellation
        } else {
            StepType::RejectOrder
        },
    );
    plan
}

/// Whether a forward step that did not succeed may still have taken effect downstream: one of
/// its calls ended without an answer (timed out, cancelled, unavailable), and no lookup since
/// settled it. Compensation looks such a step up before undoing anything.
pub fn may_have_applied(step: &Step) -> bool {
    step.step.is_forward()
        && step.status != StepStatus::Succeeded
        && !step.settled
        && step.attempts.iter().any(|attempt| {
            matches!(
                attempt.outcome,
                Outcome::TimedOut | Outcome::RetryableFailure | Outcome::InProgress
            )
        })
}

/// What a lookup of an ambiguous step found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleResult {
    /// The step took effect after all: this is what it made.
    Found(Effect),
    /// It never took effect.
    Nothing,
    /// The lookup itself failed; try again.
    Failed {
        /// What happened.
        message: String,
    },
}

/// Records the lookup of an ambiguous `step`.
pub fn record_settle(
    saga: &mut Saga,
    step: StepType,
    start: DateTime<Utc>,
    now: DateTime<Utc>,
    result: SettleResult,
    policy: &RetryPolicy,
) {
    saga.updated_at = now;
    let record = step_record(saga, step);
    if let Some(unknown) = record
        .attempts
        .last_mut()
        .filter(|attempt| attempt.outcome == Outcome::InProgress)
    {
        // A call written ahead whose answer was never recorded (the orchestrator stopped).
        unknown.end = Some(unknown.start);
        unknown.outcome = Outcome::TimedOut;
        unknown.error_code = "UNKNOWN".to_owned();
        unknown.error_message =
            "no answer recorded: the orchestrator stopped during the call".to_owned();
    }
    let number = next_number(record);
    let mut attempt = Attempt::new(number, start, Some(now), Outcome::Succeeded);
    match result {
        SettleResult::Found(effect) => {
            attempt.error_message = "took effect after all (found by lookup)".to_owned();
            record.attempts.push(attempt);
            record.status = StepStatus::Succeeded;
            record.settled = true;
            apply_effect(saga, effect);
        }
        SettleResult::Nothing => {
            attempt.outcome = Outcome::PermanentFailure;
            attempt.error_code = "NOT_FOUND".to_owned();
            attempt.error_message = "never took effect (lookup found nothing)".to_owned();
            record.attempts.push(attempt);
            record.status = StepStatus::Failed;
            record.settled = true;
        }
        SettleResult::Failed { message } => {
            attempt.outcome = Outcome::RetryableFailure;
            attempt.error_code = "UNAVAILABLE".to_owned();
            attempt.error_message = format!("lookup failed: {message}");
            // Looking up is safe to repeat; it waits for the downstream as long as it takes.
            let failures = u32::try_from(record.attempts.len()).unwrap_or(u32::MAX);
            attempt.next_retry = Some(now + chrono_duration(policy.backoff(failures)));
            record.attempts.push(attempt);
            record.status = StepStatus::RetryScheduled;
        }
    }
}

fn due(step: &Step) -> Option<DateTime<Utc>> {
    step.last_attempt().and_then(|attempt| attempt.next_retry)
}

fn failure_reason(saga: &Saga, step: StepType) -> String {
    let message = saga
        .step(step)
        .and_then(Step::last_attempt)
        .map(|attempt| attempt.error_message.clone())
        .unwrap_or_default();
    describe_failure(step, &message)
}

/// The reason a failed forward step gives the customer.
pub fn describe_failure(step: StepType, message: &str) -> String {
    let what = match step {
        StepType::ReserveStock => "stock could not be reserved",
        StepType::AuthorizePayment => "payment was not authorized",
        StepType::PinReservation => "stock could not be held for the shipment",
        StepType::CreateShipment => "shipment could not be created",
        StepType::CapturePayment => "payment could not be captured",
        StepType::ConfirmReservation => "stock could not be confirmed",
        StepType::ConfirmOrder => "order could not be confirmed",
        _ => "compensation failed",
    };
    if message.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {message}")
    }
}

fn begin_compensation(
    saga: &mut Saga,
    cause: CompensationCause,
    reason: String,
    now: DateTime<Utc>,
) {
    tracing::info!(saga_id = %saga.id, cause = %cause, reason = %reason, "saga compensating");
    saga.state = SagaState::Compensating;
    saga.cause = Some(cause);
    saga.failure_reason = truncate(&reason, 500);
    saga.compensating_since = Some(now);
    saga.updated_at = now;
}

/// Past the point of no return a forward step failed for good: nothing may be undone, so the
/// saga parks for an operator, saying so, instead of compensating.
fn park_forward(saga: &mut Saga, step: StepType, out: &mut Vec<Outgoing>) {
    let reason = failure_reason(saga, step);
    saga.failure_reason = truncate(
        &format!(
            "past the point of no return (the goods were dispatched): {reason}; resolve it and resume the saga"
        ),
        500,
    );
    park(saga, step, out);
}

fn park(saga: &mut Saga, step: StepType, out: &mut Vec<Outgoing>) {
    let error = saga
        .step(step)
        .and_then(Step::last_attempt)
        .map(|attempt| attempt.error_message.clone())
        .unwrap_or_default();
    tracing::warn!(saga_id = %saga.id, step = %step, error = %error, "saga compensation failed; an operator must resume it");
    saga.state = SagaState::CompensationFailed;
    out.push(saga_event(
        saga,
        &pb::SagaCompensationFailed {
            saga_id: saga.id.to_string(),
            order_id: saga.order_id.to_string(),
            step: step.to_proto() as i32,
            error,
        },
    ));
}

fn step_record(saga: &mut Saga, step: StepType) -> &mut Step {
    if saga.step(step).is_none() {
        let key = saga.key(step);
        saga.steps.push(Step {
            step,
            status: StepStatus::Running,
            key,
            attempts: Vec::new(),
            budget_from: 0,
            settled: false,
        });
    }
    let index = saga
        .steps
        .iter()
        .position(|record| record.step == step)
        .unwrap_or(saga.steps.len() - 1);
    &mut saga.steps[index]
}

/// Whether the next call of `step` was written ahead: its attempt is recorded as in progress.
pub fn has_intent(saga: &Saga, step: StepType) -> bool {
    saga.step(step)
        .and_then(Step::last_attempt)
        .is_some_and(|attempt| attempt.outcome == Outcome::InProgress)
}

/// Whether a call of `step` is written ahead: the forward steps that compensation undoes, whose
/// effect it must know about after a crash. The others (pinning, and everything past the point
/// of no return) are never undone, and a crash merely repeats them under their key.
pub fn writes_ahead(step: StepType) -> bool {
    matches!(
        step,
        StepType::ReserveStock | StepType::AuthorizePayment | StepType::CreateShipment
    )
}

/// Records that a call of `step` is about to be made. The engine commits this before the call,
/// so after a crash the saga knows a call that may have taken effect, and compensation looks it
/// up before undoing anything.
pub fn record_intent(saga: &mut Saga, step: StepType, now: DateTime<Utc>) {
    if !writes_ahead(step) || has_intent(saga, step) {
        return;
    }
    saga.updated_at = now;
    let record = step_record(saga, step);
    let number = next_number(record);
    record.status = StepStatus::Running;
    record
        .attempts
        .push(Attempt::new(number, now, None, Outcome::InProgress));
}

/// Records the outcome of one call of `step` that started at `start`.
pub fn record_call(
    saga: &mut Saga,
    step: StepType,
    start: DateTime<Utc>,
    now: DateTime<Utc>,
    result: CallResult,
    policy: &RetryPolicy,
    out: &mut Vec<Outgoing>,
) {
    saga.updated_at = now;
    // Past the point of no return nothing can be undone, so the remaining forward steps are
    // retried until they succeed instead of running out of attempts or time.
    let roll_forward = saga.dispatched() && step.is_forward();
    let record = step_record(saga, step);
    // The intent written ahead of this call becomes its attempt.
    let intent = intent(record, step).map(|attempt| (attempt.number, attempt.start.min(start)));
    if intent.is_some() {
        record.attempts.pop();
    }
    let (number, start) = intent.unwrap_or((next_number(record), start));
    let mut attempt = Attempt::new(number, start, Some(now), Outcome::Succeeded);
    let retry_at = |record: &Step, extra: Option<Duration>| -> Option<DateTime<Utc>> {
        let within_budget = record
            .first_start()
            .is_none_or(|first| now < first + chrono_duration(policy.step_timeout));
        let attempts_left = record.counted_attempts() < policy.max_attempts;
        (roll_forward || (within_budget && attempts_left)).then(|| {
            let failures = record.counted_attempts().max(1);
            now + chrono_duration(extra.unwrap_or_else(|| policy.backoff(failures)))
        })
    };
    let mut circuit_wait = None;
    let effect = match result {
        CallResult::Done(effect) => Some(effect),
        CallResult::Retryable { code, message } => {
            attempt.outcome = Outcome::RetryableFailure;
            attempt.error_code = code;
            attempt.error_message = message;
            None
        }
        CallResult::TimedOut { message } => {
            attempt.outcome = Outcome::TimedOut;
            attempt.error_code = "DEADLINE_EXCEEDED".to_owned();
            attempt.error_message = message;
            None
        }
        CallResult::Permanent { code, message } => {
            attempt.outcome = Outcome::PermanentFailure;
            attempt.error_code = code;
            attempt.error_message = message;
            None
        }
        CallResult::CircuitOpen {
            retry_after,
            message,
        } => {
            attempt.outcome = Outcome::CircuitOpen;
            attempt.error_code = "UNAVAILABLE".to_owned();
            attempt.error_message = message;
            // A refused call retries when the breaker lets a probe through.
            circuit_wait = Some(retry_after.max(Duration::from_millis(50)));
            None
        }
    };
    let fail_fast = attempt.outcome == Outcome::CircuitOpen
        && policy.fail_fast_when_open
        && step.is_forward()
        && !roll_forward;
    record.attempts.push(attempt);
    let last = record.attempts.len() - 1;
    if let Some(effect) = effect {
        record.status = StepStatus::Succeeded;
        apply_effect(saga, effect);
        return;
    }
    let outcome = record.attempts[last].outcome;
    let next = match outcome {
        Outcome::PermanentFailure => None,
        _ if fail_fast => None,
        _ => retry_at(record, circuit_wait),
    };
    match next {
        Some(at) => {
            record.status = StepStatus::RetryScheduled;
            record.attempts[last].next_retry = Some(at);
        }
        None => {
            record.status = StepStatus::Failed;
            if roll_forward {
                park_forward(saga, step, out);
            } else if step.is_forward() {
                if saga.state != SagaState::Compensating {
                    let reason = failure_reason(saga, step);
                    begin_compensation(saga, CompensationCause::StepFailed, reason, now);
                }
            } else {
                park(saga, step, out);
            }
        }
    }
}

/// The number the next call of `step` is recorded under: its written-ahead attempt, or a new one.
pub fn attempt_number(saga: &Saga, step: StepType) -> u32 {
    saga.step(step).map_or(1, |record| {
        intent(record, step).map_or_else(|| next_number(record), |attempt| attempt.number)
    })
}

/// The attempt written ahead of the next call of `step`, which that call's result completes.
fn intent(record: &Step, step: StepType) -> Option<&Attempt> {
    record
        .attempts
        .last()
        .filter(|attempt| attempt.outcome == Outcome::InProgress && !step.is_command())
}

fn next_number(record: &Step) -> u32 {
    u32::try_from(record.attempts.len())
        .unwrap_or(u32::MAX)
        .saturating_add(1)
}

fn apply_effect(saga: &mut Saga, effect: Effect) {
    match effect {
        Effect::None => {}
        Effect::Reservation(id) => saga.reservation_id = Some(id),
        Effect::Payment(id) => saga.payment_id = Some(id),
        Effect::Shipment(id) => saga.shipment_id = Some(id),
        Effect::Captured => saga.captured = true,
    }
}

/// The command of a compensation step, ready for the outbox.
pub fn command(saga: &Saga, step: StepType) -> Option<Outgoing> {
    let saga_id = saga.id.to_string();
    let order_id = saga.order_id.to_string();
    let idempotency_key = saga.key(step);
    let reason = saga.failure_reason.clone();
    let (topic, envelope) = match step {
        StepType::ReleaseStock => {
            let reservation_id = saga.reservation_id?.to_string();
            let command = pb::ReleaseStockCommand {
                saga_id,
                idempotency_key,
                order_id,
                reservation_id: reservation_id.clone(),
                reason,
            };
            let meta = meta(saga, "reservation", &reservation_id);
            ("inventory.commands", events::envelope(&command, meta))
        }
        StepType::VoidPayment => {
            let payment_id = saga.payment_id?.to_string();
            let command = pb::VoidPaymentCommand {
                saga_id,
                idempotency_key,
                order_id,
                payment_id: payment_id.clone(),
                reason,
            };
            let meta = meta(saga, "payment", &payment_id);
            ("payment.commands", events::envelope(&command, meta))
        }
        StepType::RefundPayment => {
            let payment_id = saga.payment_id?.to_string();
            let command = pb::RefundPaymentCommand {
                saga_id,
                idempotency_key,
                order_id,
                payment_id: payment_id.clone(),
                amount: None,
                reason,
            };
            let meta = meta(saga, "payment", &payment_id);
            ("payment.commands", events::envelope(&command, meta))
        }
        StepType::CancelShipment => {
            let shipment_id = saga.shipment_id?.to_string();
            let command = pb::CancelShipmentCommand {
                saga_id,
                idempotency_key,
                order_id,
                shipment_id: shipment_id.clone(),
                reason,
            };
            let meta = meta(saga, "shipment", &shipment_id);
            ("fulfillment.commands", events::envelope(&command, meta))
        }
        _ => return None,
    };
    Some(Outgoing { topic, envelope })
}

fn meta<'a>(saga: &Saga, aggregate_type: &'a str, aggregate_id: &str) -> EventMeta<'a> {
    EventMeta {
        producer: crate::SERVICE,
        aggregate_type,
        aggregate_id: aggregate_id.to_owned(),
        correlation_id: saga.order_id.to_string(),
        causation_id: saga.id.to_string(),
    }
}

/// Records that the command of `step` was sent with event id `command_id`. An earlier attempt
/// still waiting for its acknowledgement is closed as timed out.
pub fn record_send(
    saga: &mut Saga,
    step: StepType,
    command_id: String,
    now: DateTime<Utc>,
    ack_timeout: Duration,
) {
    saga.updated_at = now;
    let record = step_record(saga, step);
    if let Some(previous) = record.attempts.last_mut()
        && previous.outcome == Outcome::InProgress
    {
        previous.end = Some(now);
        previous.outcome = Outcome::TimedOut;
        previous.error_code = "DEADLINE_EXCEEDED".to_owned();
        previous.error_message = format!("no acknowledgement within {}", humanize(ack_timeout));
    }
    let number = next_number(record);
    record.status = StepStatus::Running;
    record.attempts.push(Attempt {
        command_id,
        ..Attempt::new(number, now, None, Outcome::InProgress)
    });
}

/// What a participant says about a compensation command whose acknowledgement is overdue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLookup {
    /// Its effect is in place (the stock is back, the payment voided or refunded, the shipment
    /// cancelled or failed): what the participant reported.
    Applied(String),
    /// Not in place: the command is sent again under the same key.
    NotApplied(String),
    /// The shipment whose cancel is overdue was dispatched: past the point of no return, the
    /// saga turns forward.
    Dispatched,
    /// The participant did not answer: the command is sent again under the same key (applying
    /// it twice is harmless), and asked about after the next timeout.
    Unknown(String),
}

/// Records what the participant said about the command of `step` whose acknowledgement is
/// overdue: the step succeeds, or its open attempt ends and the command is due again now.
pub fn record_verify(
    saga: &mut Saga,
    step: StepType,
    now: DateTime<Utc>,
    lookup: CommandLookup,
    ack_timeout: Duration,
) {
    if !saga
        .step(step)
        .and_then(Step::last_attempt)
        .is_some_and(|attempt| attempt.outcome == Outcome::InProgress)
    {
        return;
    }
    saga.updated_at = now;
    let record = step_record(saga, step);
    let last = record.attempts.len() - 1;
    let attempt = &mut record.attempts[last];
    attempt.end = Some(now);
    match lookup {
        CommandLookup::Applied(state) => {
            attempt.outcome = Outcome::Succeeded;
            attempt.error_message =
                format!("no acknowledgement, but the participant says it is done ({state})");
            record.status = StepStatus::Succeeded;
        }
        CommandLookup::Dispatched => {
            attempt.outcome = Outcome::PermanentFailure;
            attempt.error_code = "REJECTED".to_owned();
            attempt.error_message =
                "no acknowledgement, and fulfillment says the shipment was dispatched".to_owned();
            record.status = StepStatus::Failed;
            if saga.shipment == ShipmentReport::None {
                saga.shipment = ShipmentReport::Dispatched;
            }
        }
        CommandLookup::NotApplied(state) | CommandLookup::Unknown(state) => {
            attempt.outcome = Outcome::TimedOut;
            attempt.error_code = "DEADLINE_EXCEEDED".to_owned();
            attempt.error_message = format!(
                "no acknowledgement within {}; the participant was asked: {state}; sending again",
                humanize(ack_timeout)
            );
            attempt.next_retry = Some(now);
            record.status = StepStatus::RetryScheduled;
        }
    }
}

/// Applies a signal. Signals that no longer fit (a late acknowledgement, a cancellation after
/// the end) change nothing.
pub fn apply_signal(
    saga: &mut Saga,
    signal: &Signal,
    now: DateTime<Utc>,
    policy: &RetryPolicy,
    out: &mut Vec<Outgoing>,
) {
    match signal {
        Signal::ShipmentDispatched { shipment_id } => {
            if shipment_matches(saga, shipment_id) && saga.shipment == ShipmentReport::None {
                saga.shipment = ShipmentReport::Dispatched;
                saga.updated_at = now;
            }
        }
        Signal::ShipmentFailed {
            shipment_id,
            reason,
        } => {
            if shipment_matches(saga, shipment_id) && saga.shipment == ShipmentReport::None {
                saga.shipment = ShipmentReport::Failed(reason.clone());
                saga.updated_at = now;
            }
        }
        Signal::CustomerCancelled { reason } => {
            if saga.cancel_request.is_none() && !saga.state.is_terminal() {
                saga.cancel_request = Some(reason.clone());
                saga.updated_at = now;
            }
        }
        Signal::CommandAcknowledged {
            idempotency_key,
            outcome,
            error,
            command_id,
        } => record_ack(
            saga,
            Ack {
                key: idempotency_key,
                command_id,
                outcome: *outcome,
                error,
            },
            now,
            policy,
            out,
        ),
        Signal::OperatorCancelled { reason } => {
            if cancel_refusal(saga).is_none() && saga.state != SagaState::Compensating {
                begin_compensation(
                    saga,
                    CompensationCause::OperatorCancelled,
                    format!("cancelled by an operator: {reason}"),
                    now,
                );
            }
        }
        Signal::RetryNow => {
            if let Some(step) = saga.steps.last_mut()
                && step.status == StepStatus::RetryScheduled
                && let Some(attempt) = step.attempts.last_mut()
            {
                attempt.next_retry = Some(now);
                saga.updated_at = now;
            }
        }
        Signal::Resume {
            skip_failed_step,
            reason,
        } => {
            if saga.state != SagaState::CompensationFailed {
                return;
            }
            let Some(step) = saga.steps.last_mut() else {
                return;
            };
            if *skip_failed_step {
                step.status = StepStatus::Succeeded;
                step.attempts.push(Attempt {
                    error_message: format!("skipped by an operator: {reason}"),
                    ..Attempt::new(next_number(step), now, Some(now), Outcome::Succeeded)
                });
            } else {
                // A fresh budget of attempts, starting now.
                step.status = StepStatus::RetryScheduled;
                step.budget_from = step.attempts.len();
                if let Some(attempt) = step.attempts.last_mut() {
                    attempt.next_retry = Some(now);
                }
            }
            // A forward step parked past the point of no return goes on forward.
            saga.state = if step.step.is_forward() {
                SagaState::Running
            } else {
                SagaState::Compensating
            };
            saga.updated_at = now;
        }
    }
}

fn shipment_matches(saga: &Saga, shipment_id: &str) -> bool {
    saga.shipment_id
        .is_none_or(|known| known.to_string() == shipment_id)
}

/// Why an operator may not cancel the saga now; `None` when they may.
pub fn cancel_refusal(saga: &Saga) -> Option<String> {
    match saga.state {
        SagaState::Completed | SagaState::Compensated | SagaState::CompensationFailed => {
            Some(format!("saga is {}", saga.state))
        }
        _ if saga.dispatched() => {
            Some("the goods were dispatched; the saga is past its point of no return".to_owned())
        }
        _ => None,
    }
}

/// An acknowledgement as the saga reads it.
struct Ack<'a> {
    key: &'a str,
    command_id: &'a str,
    outcome: i32,
    error: &'a str,
}

fn record_ack(
    saga: &mut Saga,
    ack: Ack<'_>,
    now: DateTime<Utc>,
    policy: &RetryPolicy,
    out: &mut Vec<Outgoing>,
) {
    let Some(index) = saga
        .steps
        .iter()
        .position(|step| step.key == ack.key && step.step.is_command())
    else {
        return;
    };
    if saga.steps[index].status != StepStatus::Running || saga.state != SagaState::Compensating {
        // Already settled by an earlier acknowledgement of the same key, or the saga moved on
        // (it turned forward after the shipment left).
        return;
    }
    let outcome = CommandOutcome::try_from(ack.outcome).unwrap_or(CommandOutcome::Unspecified);
    let succeeded = matches!(
        outcome,
        CommandOutcome::Applied | CommandOutcome::AlreadyApplied | CommandOutcome::NotNeeded
    );
    let step = saga.steps[index].step;
    let record = &mut saga.steps[index];
    let Some(attempt) = record.attempts.last_mut() else {
        return;
    };
    // A success under the key is a success whichever send it answers (the effect is keyed); a
    // failure counts only for the command it answers, not for a later send of the same key.
    if !succeeded && !ack.command_id.is_empty() && attempt.command_id != ack.command_id {
        return;
    }
    saga.updated_at = now;
    attempt.end = Some(now);
    if succeeded {
        attempt.outcome = Outcome::Succeeded;
        record.status = StepStatus::Succeeded;
        return;
    }
    match outcome {
        CommandOutcome::Rejected => {
            attempt.outcome = Outcome::PermanentFailure;
            attempt.error_code = "REJECTED".to_owned();
            attempt.error_message = ack.error.to_owned();
            record.status = StepStatus::Failed;
            // A refused shipment cancel is looked up before anything else is decided: the
            // shipment may have left, and the saga then turns forward.
            if step != StepType::CancelShipment {
                park(saga, step, out);
            }
        }
        _ => {
            attempt.outcome = Outcome::RetryableFailure;
            attempt.error_code = "FAILED".to_owned();
            attempt.error_message = ack.error.to_owned();
            let failures = record.attempts[record.budget_from..]
                .iter()
                .filter(|attempt| attempt.outcome == Outcome::RetryableFailure)
                .count();
            let failures = u32::try_from(failures).unwrap_or(u32::MAX);
            if failures < policy.max_command_failures {
                let at = now + chrono_duration(policy.backoff(failures));
                if let Some(attempt) = record.attempts.last_mut() {
                    attempt.next_retry = Some(at);
                }
                record.status = StepStatus::RetryScheduled;
            } else {
                record.status = StepStatus::Failed;
                park(saga, step, out);
            }
        }
    }
}

/// A saga event for the outbox, keyed by saga id.
pub fn saga_event<M: prost::Name>(saga: &Saga, event: &M) -> Outgoing {
    Outgoing {
        topic: EVENTS_TOPIC,
        envelope: events::envelope(
            event,
            EventMeta {
                producer: crate::SERVICE,
                aggregate_type: "saga",
                aggregate_id: saga.id.to_string(),
                correlation_id: saga.order_id.to_string(),
                causation_id: String::new(),
            },
        ),
    }
}

/// A std duration as chrono's, saturating.
pub fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

fn humanize(duration: Duration) -> String {
    humantime_serde::re::humantime::format_duration(duration).to_string()
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

#[cfg(test)]
mod model_tests;
mod policy;
mod shipment;
#[cfg(test)]
mod tests;

pub use policy::RetryPolicy;
pub use shipment::{ShipmentLookup, record_shipment_check};
