//! The shipment is the point of no return: once fulfillment dispatched it, the goods are gone and
//! nothing may be undone. So the saga never guesses about it. While it waits for the shipment's
//! report it asks fulfillment at intervals (a report lost on the way costs one interval, not the
//! whole timeout); before it cancels a shipment, whatever the cause (the timeout, a customer's
//! or an operator's cancel, a later failure), it asks again; and a cancel that fulfillment refuses
//! is looked up once more. A dispatched shipment turns the saga forward.

use chrono::{DateTime, Utc};

use super::{Outgoing, RetryPolicy, begin_compensation, chrono_duration, humanize, park};
use crate::domain::{
    Attempt, CompensationCause, Outcome, Saga, SagaState, ShipmentCheck, ShipmentReport,
    StepStatus, StepType,
};

/// What fulfillment says about the saga's shipment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipmentLookup {
    /// Dispatched: past the point of no return.
    Dispatched,
    /// It failed and never left, with the reason.
    Failed(String),
    /// Cancelled: it will never leave.
    Cancelled,
    /// Still being prepared: it can be cancelled.
    Pending,
    /// Fulfillment did not answer; ask again later.
    Unknown(String),
}

/// When the shipment was created (its step's last attempt ended).
pub(super) fn created_at(saga: &Saga) -> Option<DateTime<Utc>> {
    saga.step(StepType::CreateShipment)?.last_attempt()?.end
}

/// While awaiting the report: when to ask fulfillment next. Every `shipment_check_interval`
/// from the creation or the last look, and at the deadline at the latest.
pub(super) fn next_check(saga: &Saga, policy: &RetryPolicy) -> Option<DateTime<Utc>> {
    let created = created_at(saga)?;
    let deadline = created + chrono_duration(policy.shipment_timeout);
    let last = saga
        .shipment_check
        .map_or(created, |check| check.at.max(created));
    let next = last + chrono_duration(policy.shipment_check_interval);
    Some(if last < deadline {
        next.min(deadline)
    } else {
        next
    })
}

/// Before cancelling the shipment (the next compensation): what to do first, `None` to send
/// the cancel command. The shipment is looked up once compensation began and again after
/// fulfillment refused a cancel; an unanswered lookup is repeated after an interval.
pub(super) fn before_cancel(
    saga: &mut Saga,
    now: DateTime<Utc>,
    policy: &RetryPolicy,
    out: &mut Vec<Outgoing>,
) -> Option<super::Next> {
    let refused_at = saga
        .step(StepType::CancelShipment)
        .filter(|record| record.status == StepStatus::Failed)
        .and_then(|record| record.last_attempt())
        .map(|attempt| attempt.end.unwrap_or(attempt.start));
    let since = refused_at.or(saga.compensating_since)?;
    match saga.shipment_check {
        Some(check) if check.at >= since && (check.answered || refused_at.is_none()) => {
            if refused_at.is_some() {
                // Answered after the refusal and neither dispatched nor gone (those turned the
                // saga already): fulfillment refuses to cancel what it did not ship.
                park(saga, StepType::CancelShipment, out);
                return Some(super::Next::Wait(None));
            }
            None
        }
        Some(check) if !check.answered && check.at >= since => {
            let retry = check.at + chrono_duration(policy.shipment_check_interval);
            Some(if now < retry {
                super::Next::Wait(Some(retry))
            } else {
                super::Next::CheckShipment
            })
        }
        _ => Some(super::Next::CheckShipment),
    }
}

/// Records what fulfillment answered about the shipment and acts on it.
pub fn record_shipment_check(
    saga: &mut Saga,
    now: DateTime<Utc>,
    lookup: ShipmentLookup,
    policy: &RetryPolicy,
) {
    saga.updated_at = now;
    saga.shipment_check = Some(ShipmentCheck {
        at: now,
        answered: !matches!(lookup, ShipmentLookup::Unknown(_)),
    });
    match lookup {
        ShipmentLookup::Dispatched => {
            if saga.shipment == ShipmentReport::None {
                tracing::info!(saga_id = %saga.id, "fulfillment says the shipment was dispatched");
                saga.shipment = ShipmentReport::Dispatched;
            }
        }
        ShipmentLookup::Failed(reason) => {
            if saga.shipment == ShipmentReport::None {
                saga.shipment = ShipmentReport::Failed(reason);
            }
        }
        ShipmentLookup::Cancelled => {
            if saga.state == SagaState::Compensating {
                cancel_not_needed(saga, now);
            } else if saga.shipment == ShipmentReport::None {
                saga.shipment = ShipmentReport::Failed("the shipment was cancelled".to_owned());
            }
        }
        ShipmentLookup::Pending => {
            let overdue = created_at(saga)
                .is_some_and(|created| now >= created + chrono_duration(policy.shipment_timeout));
            if saga.state == SagaState::AwaitingShipment && overdue {
                begin_compensation(
                    saga,
                    CompensationCause::StepFailed,
                    format!(
                        "shipment not dispatched within {}",
                        humanize(policy.shipment_timeout)
                    ),
                    now,
                );
            }
        }
        ShipmentLookup::Unknown(message) => {
            tracing::info!(saga_id = %saga.id, %message, "fulfillment did not say how the shipment stands; asking again later");
        }
    }
}

/// The shipment will never leave: its cancellation is done without a command.
fn cancel_not_needed(saga: &mut Saga, now: DateTime<Utc>) {
    let record = super::step_record(saga, StepType::CancelShipment);
    let number = super::next_number(record);
    record.attempts.push(Attempt {
        error_message: "not needed: fulfillment says the shipment will never leave".to_owned(),
        ..Attempt::new(number, now, Some(now), Outcome::Succeeded)
    });
    record.status = StepStatus::Succeeded;
}

/// The goods left while the saga was compensating (nothing irreversible was undone yet, since
/// the shipment's cancel comes first): it turns forward and completes the order.
pub(super) fn turn_forward(saga: &mut Saga, now: DateTime<Utc>, out: &mut Vec<Outgoing>) {
    let undone = [
        StepType::VoidPayment,
        StepType::RefundPayment,
        StepType::ReleaseStock,
        StepType::RejectOrder,
        StepType::CompleteCancellation,
    ]
    .into_iter()
    .filter_map(|step| saga.step(step))
    .find(|record| record.status == StepStatus::Succeeded || !record.attempts.is_empty());
    if let Some(record) = undone {
        // Cannot happen while the shipment's cancel comes first; never undo more if it does.
        let step = record.step;
        saga.failure_reason = format!(
            "the shipment was dispatched after {step} began: past the point of no return, an operator must reconcile it"
        );
        park(saga, step, out);
        return;
    }
    tracing::info!(saga_id = %saga.id, reason = %saga.failure_reason, "shipment dispatched: the saga rolls forward instead of compensating");
    saga.state = SagaState::Running;
    saga.cause = None;
    saga.failure_reason = String::new();
    saga.compensating_since = None;
    saga.updated_at = now;
}
