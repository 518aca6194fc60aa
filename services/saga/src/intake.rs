//! What the saga hears on Kafka: OrderPlaced starts a saga; a cancellation request, the
//! shipment's outcome and command acknowledgements become signals for the engine. Each event is
//! claimed in the inbox in the transaction that records it, so a redelivery changes nothing.

use std::sync::Arc;

use prost::Name as _;
use sea_orm::{DbErr, TransactionTrait as _};
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

use crate::{engine::Engine, machine::Signal, store};

/// Base names of the topics the saga consumes.
pub const CONSUMED_TOPICS: &[&str] = &["order.events", "fulfillment.events", "saga.command-acks"];

const CONSUMER: &str = "saga";

/// The saga's event handler.
pub struct Intake {
    engine: Arc<Engine>,
}

impl Intake {
    /// Intake feeding `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    async fn start(&self, event: &ReceivedEvent, order: OrderPlaced) -> Result<(), HandlerError> {
        // start_saga is idempotent by order id, so no inbox entry is needed for OrderPlaced.
        let _ = event;
        self.engine
            .start_saga(order, None)
            .await
            .map(drop)
            .map_err(transient)
    }

    /// Records `signal` for the saga of `order_id` (or `saga_id`), claiming the event first.
    async fn record(
        &self,
        event: &ReceivedEvent,
        target: Target,
        signal: Signal,
    ) -> Result<(), HandlerError> {
        let tx = self.engine.db().begin().await.map_err(transient)?;
        if !inbox::claim(&tx, CONSUMER, &event.envelope.event_id, &event.topic)
            .await
            .map_err(transient)?
        {
            return tx.commit().await.map_err(transient);
        }
        let found = match target {
            Target::Order(order_id) => store::add_signal_by_order(&tx, order_id, &signal)
                .await
                .map_err(transient)?,
            Target::Saga(saga_id) => match store::by_id(&tx, saga_id).await.map_err(transient)? {
                Some(_) => {
                    store::add_signal(&tx, saga_id, &signal)
                        .await
                        .map_err(transient)?;
                    true
                }
                None => false,
            },
        };
        if !found {
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
        tx.commit().await.map_err(transient)?;
        self.engine.wake();
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Target {
    Order(Uuid),
    Saga(Uuid),
}

fn transient(error: DbErr) -> HandlerError {
    HandlerError::Transient(error.to_string())
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
    async fn handle(&self, event: &ReceivedEvent) -> Result<(), HandlerError> {
        let event_type = event.envelope.event_type.as_str();
        if event_type == OrderPlaced::full_name() {
            let order: OrderPlaced = decode(event)?;
            uuid("order_id", &order.order_id)?;
            return self.start(event, order).await;
        }
        if event_type == OrderCancellationRequested::full_name() {
            let request: OrderCancellationRequested = decode(event)?;
            let order_id = uuid("order_id", &request.order_id)?;
            let signal = Signal::CustomerCancelled {
                reason: request.reason,
            };
            return self.record(event, Target::Order(order_id), signal).await;
        }
        if event_type == ShipmentDispatched::full_name() {
            let dispatched: ShipmentDispatched = decode(event)?;
            let order_id = uuid("order_id", &dispatched.order_id)?;
            let signal = Signal::ShipmentDispatched {
                shipment_id: dispatched.shipment_id,
            };
            return self.record(event, Target::Order(order_id), signal).await;
        }
        if event_type == ShipmentFailed::full_name() {
            let failed: ShipmentFailed = decode(event)?;
            let order_id = uuid("order_id", &failed.order_id)?;
            let signal = Signal::ShipmentFailed {
                shipment_id: failed.shipment_id,
                reason: failed.failure_reason,
            };
            return self.record(event, Target::Order(order_id), signal).await;
        }
        if event_type == CommandAcknowledged::full_name() {
            let ack: CommandAcknowledged = decode(event)?;
            let saga_id = uuid("saga_id", &ack.saga_id)?;
            let signal = Signal::CommandAcknowledged {
                idempotency_key: ack.idempotency_key,
                outcome: ack.outcome,
                error: ack.error,
            };
            return self.record(event, Target::Saga(saga_id), signal).await;
        }
        // Other events of these topics do not concern the saga.
        Ok(())
    }
}
