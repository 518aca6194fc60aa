//! What the saga hears on Kafka: OrderPlaced starts a saga; a cancellation request, the
//! shipment's outcome and command acknowledgements become signals for the engine. Each event is
//! claimed in the inbox in the transaction that records it, so a redelivery changes nothing.

use std::sync::Arc;

use prost::Name as _;
use sea_orm::DatabaseTransaction;
use uuid::Uuid;
use zentra_proto::{
    fulfillment::v1::{ShipmentDispatched, ShipmentFailed},
    order::v1::{OrderCancellationRequested, OrderPlaced},
    saga::v1::CommandAcknowledged,
};
use zentra_runtime::{
    events, inbox,
    kafka::{EventHandler, HandlerError, ReceivedEvent},
};

use crate::{
    domain::Saga,
    engine::Engine,
    machine::Signal,
    store::{self, SignalTarget as Target},
};

/// Base names of the topics the saga consumes.
pub const CONSUMED_TOPICS: &[&str] = &["order.events", "fulfillment.events", "saga.command-acks"];

/// The consumer group every orchestrator instance shares: the instances split its partitions.
pub const GROUP: &str = "saga";

const CONSUMER: &str = "saga";

/// The saga's event handler.
pub struct Intake {
    engine: Arc<Engine>,
}

/// What an event led to, acted on once it committed.
pub enum Applied {
    /// Nothing the engine must hear of.
    Nothing,
    /// A saga was started.
    Started(Box<Saga>),
    /// A signal waits for a saga; with the saga when its lease was taken with it.
    Signalled(Option<Box<Saga>>),
}

impl Intake {
    /// Intake feeding `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    async fn start(
        &self,
        tx: &DatabaseTransaction,
        order: OrderPlaced,
    ) -> Result<Applied, HandlerError> {
        // Starting is idempotent by order id, so no inbox entry is needed for OrderPlaced.
        Ok(match self.engine.start_saga_in(tx, order, None).await? {
            Some(saga) => Applied::Started(Box::new(saga)),
            None => Applied::Nothing,
        })
    }

    /// Records `signal` for the saga of `order_id` (or `saga_id`), claiming the event first.
    async fn record(
        &self,
        tx: &DatabaseTransaction,
        event: &ReceivedEvent,
        target: Target,
        signal: Signal,
    ) -> Result<Applied, HandlerError> {
        let entry = inbox::Entry::new(CONSUMER, &event.envelope.event_id, &event.topic)
            .map_err(|error| HandlerError::Permanent(error.to_string()))?;
        // A saga nobody drives is leased with its signal and driven once the event commits:
        // no claim needed.
        let token = store::lease_token(self.engine.owner());
        let lease = Some((token.as_str(), self.engine.lease()));
        let Some(signalled) = store::add_signal_once(tx, &entry, target, &signal, lease).await?
        else {
            return Ok(Applied::Nothing);
        };
        if !signalled.found {
            // The saga may not exist yet (its OrderPlaced was lost and reconciliation has not
            // started it): retry, then park the event in the dead-letter queue for a replay.
            return Err(match target {
                Target::Order(order_id) => {
                    HandlerError::Transient(format!("order {order_id} has no saga (yet)"))
                }
                Target::Saga(saga_id) => {
                    HandlerError::Permanent(format!("no saga {saga_id} exists"))
                }
            });
        }
        Ok(Applied::Signalled(signalled.taken.map(Box::new)))
    }
}

fn decode<M: prost::Name + Default>(event: &ReceivedEvent) -> Result<M, HandlerError> {
    events::payload::<M>(&event.envelope).ok_or_else(|| {
        HandlerError::Permanent(format!("payload is not a valid {}", M::full_name()))
    })
}

fn uuid(field: &str, text: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(text)
        .map_err(|_| HandlerError::Permanent(format!("{field} {text:?} is not a UUID")))
}

impl EventHandler for Intake {
    type Applied = Applied;

    async fn handle(
        &self,
        event: &ReceivedEvent,
        tx: &DatabaseTransaction,
    ) -> Result<Applied, HandlerError> {
        let event_type = event.envelope.event_type.as_str();
        if event_type == OrderPlaced::full_name() {
            let order: OrderPlaced = decode(event)?;
            uuid("order_id", &order.order_id)?;
            return self.start(tx, order).await;
        }
        if event_type == OrderCancellationRequested::full_name() {
            let request: OrderCancellationRequested = decode(event)?;
            let order_id = uuid("order_id", &request.order_id)?;
            let signal = Signal::CustomerCancelled {
                reason: request.reason,
            };
            return self
                .record(tx, event, Target::Order(order_id), signal)
                .await;
        }
        if event_type == ShipmentDispatched::full_name() {
            let dispatched: ShipmentDispatched = decode(event)?;
            let order_id = uuid("order_id", &dispatched.order_id)?;
            let signal = Signal::ShipmentDispatched {
                shipment_id: dispatched.shipment_id,
            };
            return self
                .record(tx, event, Target::Order(order_id), signal)
                .await;
        }
        if event_type == ShipmentFailed::full_name() {
            let failed: ShipmentFailed = decode(event)?;
            let order_id = uuid("order_id", &failed.order_id)?;
            let signal = Signal::ShipmentFailed {
                shipment_id: failed.shipment_id,
                reason: failed.failure_reason,
            };
            return self
                .record(tx, event, Target::Order(order_id), signal)
                .await;
        }
        if event_type == CommandAcknowledged::full_name() {
            let ack: CommandAcknowledged = decode(event)?;
            let saga_id = uuid("saga_id", &ack.saga_id)?;
            let signal = Signal::CommandAcknowledged {
                idempotency_key: ack.idempotency_key,
                outcome: ack.outcome,
                error: ack.error,
                command_id: ack.command_id,
            };
            return self.record(tx, event, Target::Saga(saga_id), signal).await;
        }
        // Other events of these topics do not concern the saga.
        Ok(Applied::Nothing)
    }

    fn ignores(&self, event: &ReceivedEvent) -> bool {
        let event_type = event.envelope.event_type.as_str();
        ![
            OrderPlaced::full_name(),
            OrderCancellationRequested::full_name(),
            ShipmentDispatched::full_name(),
            ShipmentFailed::full_name(),
            CommandAcknowledged::full_name(),
        ]
        .iter()
        .any(|read| read == event_type)
    }

    fn committed(&self, applied: Vec<Applied>) {
        let mut untaken = false;
        for applied in applied {
            match applied {
                Applied::Nothing => {}
                Applied::Started(saga) => self.engine.started(&saga),
                Applied::Signalled(Some(saga)) => self.engine.take_over(*saga),
                // Another instance (or a drive of this one) holds the saga: it sees the signal
                // when it writes next, or a claim finds it once the lease is free.
                Applied::Signalled(None) => untaken = true,
            }
        }
        if untaken {
            self.engine.wake();
        }
    }
}
