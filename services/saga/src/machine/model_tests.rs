//! The state machine against a model of the participants, over thousands of random
//! interleavings: calls that succeed, fail, time out after taking effect or before, crashes
//! between a call and its record, shipment reports that arrive late or never, fulfillment
//! dispatching at any moment, customers and operators cancelling, acknowledgements lost or
//! repeated, lookups unanswered. Three properties hold on every path:
//!
//! - goods that were dispatched are never followed by a void, a refund or a release;
//! - every path ends (completed, compensated, or parked for an operator);
//! - compensation undoes exactly what took effect, and nothing that did not;
//! - no shipment exists for stock whose hold could still run out (the reservation was pinned
//!   first), so dispatched goods are never sold twice.

use chrono::{DateTime, Duration as Span, Utc};
use rand::{RngExt as _, SeedableRng as _, rngs::StdRng};
use uuid::Uuid;
use zentra_proto::saga::v1::CommandOutcome;

use super::{
    tests::{policy, saga as fresh},
    *,
};
use crate::domain::SagaState;

/// What the participants hold, whatever the saga believes.
#[derive(Debug, Default)]
struct World {
    reservation: Option<Uuid>,
    released: bool,
    reservation_confirmed: bool,
    /// Pinned: the hold can no longer run out.
    pinned: bool,
    /// The hold ran out and the stock went back on sale.
    expired: bool,
    /// A shipment was created while the reservation could still expire.
    shipped_unpinned: bool,
    payment: Option<Uuid>,
    voided: bool,
    captured: bool,
    refunded: bool,
    shipment: Option<Uuid>,
    ship: Ship,
    order_final: Option<StepType>,
    /// A void, refund or release applied after the goods left.
    undone_after_dispatch: Vec<StepType>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Ship {
    #[default]
    None,
    Pending,
    Dispatched,
    Cancelled,
}

/// A call's effect on the world (idempotent, as the keyed RPCs are); `None` when it cannot act.
fn apply_call(world: &mut World, step: StepType, rng: &mut StdRng) -> Option<Effect> {
    match step {
        StepType::ReserveStock => {
            let id = *world.reservation.get_or_insert_with(Uuid::now_v7);
            Some(Effect::Reservation(id))
        }
        StepType::AuthorizePayment => {
            let id = *world.payment.get_or_insert_with(Uuid::now_v7);
            Some(Effect::Payment(id))
        }
        StepType::PinReservation => {
            let holds = world.reservation.is_some() && !world.released && !world.expired;
            holds.then(|| {
                world.pinned = true;
                Effect::None
            })
        }
        StepType::CreateShipment => {
            if world.shipment.is_none() && !world.pinned {
                world.shipped_unpinned = true;
            }
            let id = *world.shipment.get_or_insert_with(|| {
                world.ship = Ship::Pending;
                Uuid::now_v7()
            });
            Some(Effect::Shipment(id))
        }
        StepType::CapturePayment => {
            // The processor captures only an authorization that still stands.
            (world.payment.is_some() && !world.voided).then(|| {
                world.captured = true;
                Effect::Captured
            })
        }
        StepType::ConfirmReservation => {
            let holds = world.reservation.is_some() && !world.released && !world.expired;
            holds.then(|| {
                world.reservation_confirmed = true;
                Effect::None
            })
        }
        StepType::ConfirmOrder | StepType::RejectOrder | StepType::CompleteCancellation => {
            if world.order_final.is_none() || world.order_final == Some(step) {
                world.order_final = Some(step);
                Some(Effect::None)
            } else {
                None
            }
        }
        _ => {
            let _ = rng;
            None
        }
    }
}

/// A command applied by its service; the acknowledgement's outcome.
fn apply_command(world: &mut World, step: StepType) -> CommandOutcome {
    let dispatched = world.ship == Ship::Dispatched;
    match step {
        StepType::CancelShipment => match world.ship {
            Ship::Dispatched => CommandOutcome::Rejected,
            Ship::Pending => {
                world.ship = Ship::Cancelled;
                CommandOutcome::Applied
            }
            Ship::None | Ship::Cancelled => CommandOutcome::NotNeeded,
        },
        StepType::VoidPayment | StepType::RefundPayment | StepType::ReleaseStock => {
            if dispatched {
                world.undone_after_dispatch.push(step);
            }
            match step {
                StepType::VoidPayment if world.captured => return CommandOutcome::Rejected,
                StepType::VoidPayment => world.voided = true,
                StepType::RefundPayment => world.refunded = true,
                _ => world.released = true,
            }
            CommandOutcome::Applied
        }
        _ => CommandOutcome::Rejected,
    }
}

fn lookup(world: &World, step: StepType) -> SettleResult {
    let found = match step {
        StepType::ReserveStock => world.reservation.map(Effect::Reservation),
        StepType::AuthorizePayment => world.payment.map(Effect::Payment),
        StepType::CreateShipment => world
            .shipment
            .filter(|_| world.ship != Ship::Cancelled)
            .map(Effect::Shipment),
        _ => None,
    };
    found.map_or(SettleResult::Nothing, SettleResult::Found)
}

fn shipment_lookup(world: &World) -> ShipmentLookup {
    match world.ship {
        Ship::Dispatched => ShipmentLookup::Dispatched,
        Ship::Pending => ShipmentLookup::Pending,
        Ship::Cancelled | Ship::None => ShipmentLookup::Cancelled,
    }
}

/// What a participant says about a command whose acknowledgement is overdue.
fn command_lookup(world: &World, step: StepType) -> CommandLookup {
    let (state, done) = match step {
        StepType::ReleaseStock => ("reservation", world.released || world.expired),
        StepType::VoidPayment => ("payment", world.voided),
        StepType::RefundPayment => ("payment", world.refunded),
        StepType::CancelShipment if world.ship == Ship::Dispatched => {
            return CommandLookup::Dispatched;
        }
        StepType::CancelShipment => ("shipment", world.ship == Ship::Cancelled),
        _ => ("nothing", false),
    };
    if done {
        CommandLookup::Applied(state.to_owned())
    } else {
        CommandLookup::NotApplied(state.to_owned())
    }
}

fn retryable() -> CallResult {
    CallResult::Retryable {
        code: "UNAVAILABLE".to_owned(),
        message: "model: down".to_owned(),
    }
}

/// One random walk; returns the saga and the world at its end, or panics naming the seed.
fn walk(seed: u64) -> (Saga, World) {
    let mut rng = StdRng::seed_from_u64(seed);
    let policy = policy();
    let mut saga = fresh();
    let mut world = World::default();
    let mut now: DateTime<Utc> = saga.created_at;
    let mut out = Vec::new();
    // Commands sent and not yet acknowledged: (step, key, command id).
    let mut in_flight: Vec<(StepType, String, String)> = Vec::new();
    let mut dispatch_reported = false;
    let cancel_at = rng.random_bool(0.3).then(|| rng.random_range(0..40_u32));
    let operator_cancel_at = rng.random_bool(0.1).then(|| rng.random_range(0..40_u32));
    let decline = rng.random_bool(0.15);
    for round in 0..4000_u32 {
        // The world moves on its own: holds run out, the warehouse dispatches, reports arrive
        // or are lost.
        if world.reservation.is_some()
            && !(world.pinned || world.released || world.reservation_confirmed)
            && rng.random_bool(0.01)
        {
            world.expired = true;
        }
        if world.ship == Ship::Pending && rng.random_bool(0.15) {
            world.ship = Ship::Dispatched;
        }
        if world.ship == Ship::Dispatched && !dispatch_reported && rng.random_bool(0.3) {
            dispatch_reported = true;
            if rng.random_bool(0.6) {
                let shipment_id = world.shipment.map(|id| id.to_string()).unwrap_or_default();
                apply_signal(
                    &mut saga,
                    &Signal::ShipmentDispatched { shipment_id },
                    now,
                    &policy,
                    &mut out,
                );
            }
        }
        if cancel_at == Some(round) {
            let signal = Signal::CustomerCancelled {
                reason: "model".to_owned(),
            };
            apply_signal(&mut saga, &signal, now, &policy, &mut out);
        }
        if operator_cancel_at == Some(round) && cancel_refusal(&saga).is_none() {
            let signal = Signal::OperatorCancelled {
                reason: "model".to_owned(),
            };
            apply_signal(&mut saga, &signal, now, &policy, &mut out);
        }
        // A command is lost with the broker before its service saw it.
        if !in_flight.is_empty() && rng.random_bool(0.03) {
            let index = rng.random_range(0..in_flight.len());
            in_flight.swap_remove(index);
        }
        // Acknowledgements arrive late, twice, or never (the saga asks, then sends again).
        if !in_flight.is_empty() && rng.random_bool(0.5) {
            let index = rng.random_range(0..in_flight.len());
            let (step, key, command_id) = in_flight.swap_remove(index);
            let outcome = apply_command(&mut world, step);
            if rng.random_bool(0.85) {
                let ack = Signal::CommandAcknowledged {
                    idempotency_key: key,
                    outcome: outcome as i32,
                    error: "model".to_owned(),
                    command_id,
                };
                apply_signal(&mut saga, &ack, now, &policy, &mut out);
                if rng.random_bool(0.1) {
                    apply_signal(&mut saga, &ack, now, &policy, &mut out);
                }
            }
        }
        match advance(&mut saga, now, &policy, &mut out) {
            Next::Wait(None) => {
                if saga.state.is_terminal() || saga.state == SagaState::CompensationFailed {
                    return (saga, world);
                }
                now += Span::seconds(1);
            }
            Next::Wait(Some(until)) => {
                now = if rng.random_bool(0.5) {
                    until.max(now)
                } else {
                    now + Span::milliseconds(rng.random_range(10..5000))
                };
            }
            Next::Call(step) if writes_ahead(step) && !has_intent(&saga, step) => {
                // The engine commits the intent before the call.
                record_intent(&mut saga, step, now);
            }
            Next::Call(step) => {
                let roll = rng.random_range(0..100);
                let result = if step == StepType::AuthorizePayment && decline {
                    CallResult::Permanent {
                        code: "DECLINED".to_owned(),
                        message: "model: declined".to_owned(),
                    }
                } else if roll < 60 {
                    match apply_call(&mut world, step, &mut rng) {
                        Some(effect) => CallResult::Done(effect),
                        None => CallResult::Permanent {
                            code: "FAILED_PRECONDITION".to_owned(),
                            message: "model: cannot".to_owned(),
                        },
                    }
                } else if roll < 70 {
                    // Took effect, but the answer was lost.
                    apply_call(&mut world, step, &mut rng);
                    CallResult::TimedOut {
                        message: "model: lost answer".to_owned(),
                    }
                } else if roll < 78 {
                    // A crash between the call and its record: it took effect, nothing is kept.
                    apply_call(&mut world, step, &mut rng);
                    continue;
                } else if roll < 88 {
                    CallResult::TimedOut {
                        message: "model: slow".to_owned(),
                    }
                } else {
                    retryable()
                };
                let start = now;
                now += Span::milliseconds(rng.random_range(1..500));
                record_call(&mut saga, step, start, now, result, &policy, &mut out);
            }
            Next::Settle(step) => {
                let result = if rng.random_bool(0.2) {
                    SettleResult::Failed {
                        message: "model: lookup down".to_owned(),
                    }
                } else {
                    lookup(&world, step)
                };
                record_settle(&mut saga, step, now, now, result, &policy);
            }
            Next::CheckShipment => {
                let result = if rng.random_bool(0.2) {
                    ShipmentLookup::Unknown("model: fulfillment frozen".to_owned())
                } else {
                    shipment_lookup(&world)
                };
                record_shipment_check(&mut saga, now, result, &policy);
            }
            Next::Verify(step) => {
                let result = if rng.random_bool(0.2) {
                    CommandLookup::Unknown("model: participant down".to_owned())
                } else {
                    command_lookup(&world, step)
                };
                record_verify(&mut saga, step, now, result, policy.ack_timeout);
            }
            Next::Send(step) => {
                let Some(command) = command(&saga, step) else {
                    panic!("seed {seed}: {step} has no target");
                };
                let command_id = command.envelope.event_id.clone();
                record_send(&mut saga, step, command_id.clone(), now, policy.ack_timeout);
                in_flight.push((step, saga.key(step), command_id));
            }
        }
    }
    panic!(
        "seed {seed}: no end after 4000 rounds: {:?} {:?}",
        saga.state,
        saga.steps
            .iter()
            .map(|s| (s.step, s.status))
            .collect::<Vec<_>>()
    );
}

#[test]
fn random_interleavings_never_undo_dispatched_goods_always_end_and_undo_exactly_what_took_effect() {
    let mut ended = std::collections::BTreeMap::new();
    for seed in 0..3000 {
        let (saga, world) = walk(seed);
        let started: Vec<StepType> = saga.steps.iter().map(|step| step.step).collect();
        assert!(
            !world.shipped_unpinned,
            "seed {seed}: a shipment for stock that could expire; steps {started:?}"
        );
        assert!(
            world.ship != Ship::Dispatched || !world.expired,
            "seed {seed}: dispatched goods went back on sale: {world:?}"
        );
        assert!(
            world.undone_after_dispatch.is_empty(),
            "seed {seed}: {:?} after dispatch; steps {started:?}",
            world.undone_after_dispatch
        );
        match saga.state {
            SagaState::Completed => {
                assert_eq!(
                    world.ship,
                    Ship::Dispatched,
                    "seed {seed}: completed without shipping"
                );
                assert!(
                    world.captured && world.reservation_confirmed,
                    "seed {seed}: {world:?}"
                );
                assert!(!world.voided && !world.released, "seed {seed}: {world:?}");
                assert_eq!(
                    world.order_final,
                    Some(StepType::ConfirmOrder),
                    "seed {seed}"
                );
            }
            SagaState::Compensated => {
                assert_ne!(
                    world.ship,
                    Ship::Dispatched,
                    "seed {seed}: compensated shipped goods"
                );
                assert!(
                    world.reservation.is_none() || world.released || world.expired,
                    "seed {seed}: stock kept: {world:?}"
                );
                assert!(
                    world.payment.is_none() || world.voided || world.refunded,
                    "seed {seed}: payment left open: {world:?}"
                );
                assert!(
                    !world.captured || world.refunded,
                    "seed {seed}: charged: {world:?}"
                );
                // Nothing undone that never took effect.
                assert!(
                    !started.contains(&StepType::ReleaseStock) || world.reservation.is_some(),
                    "seed {seed}"
                );
                assert!(
                    !started.contains(&StepType::VoidPayment) || world.payment.is_some(),
                    "seed {seed}"
                );
                assert!(
                    matches!(
                        world.order_final,
                        Some(StepType::RejectOrder | StepType::CompleteCancellation)
                    ),
                    "seed {seed}: {world:?}"
                );
            }
            SagaState::CompensationFailed => {
                // Parked for an operator: past the point of no return (forward only), or a
                // compensation that ran out of attempts; never with the goods gone and undone.
                let last = saga.steps.last().expect("a parked saga has steps");
                assert_eq!(last.status, StepStatus::Failed, "seed {seed}");
                assert!(
                    saga.failure_reason.contains("point of no return") || !last.step.is_forward(),
                    "seed {seed}: parked on {:?}: {}",
                    last.step,
                    saga.failure_reason
                );
            }
            other => panic!("seed {seed}: ended {other:?}"),
        }
        *ended.entry(saga.state.as_str()).or_insert(0) += 1;
    }
    // The walks reach every end, not only the happy one.
    assert!(
        ended.get("COMPLETED").copied().unwrap_or(0) > 100,
        "{ended:?}"
    );
    assert!(
        ended.get("COMPENSATED").copied().unwrap_or(0) > 100,
        "{ended:?}"
    );
}
