//! What the saga hears on Kafka: OrderPlaced starts a saga; a cancellation request, the
//! shipment's outcome and command acknowledgements become signals for the engine. Each event is
//! claimed in the inbox in the transaction that records it, so a redelivery changes nothing.

use std::sync::Arc;

use prost::Name as _;
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction};
use uuid::Uuid;
use zentra_proto::{
    fulfillment::v1::{ShipmentDispatched, ShipmentFailed},
    order::v1::{OrderCancellationRequested, OrderPlaced},
    saga::v1::CommandAcknowledged,
};
use zentra_runtime::{
    events,
    inbox::{self, Claimed},
    kafka::{EventHandler, Fence, HandlerError, ReceivedEvent},
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

    async fn start<C: ConnectionTrait>(
        &self,
        db: &C,
        order: OrderPlaced,
        fence: Option<Fence>,
    ) -> Result<Claimed<Applied>, HandlerError> {
        // Starting is idempotent by order id, so no inbox entry is needed for OrderPlaced.
        Ok(
            match self
                .engine
                .start_saga_in(db, order, None, fence.as_ref())
                .await?
            {
                Claimed::First(saga) => Claimed::First(Applied::Started(Box::new(saga))),
                Claimed::Duplicate => Claimed::Duplicate,
                Claimed::Fenced => Claimed::Fenced,
            },
        )
    }

    /// Applies what `event` asks for on `db`; a `fence` moves the consumer's offset with it.
    async fn apply<C: ConnectionTrait>(
        &self,
        db: &C,
        event: &ReceivedEvent,
        what: What,
        fence: Option<Fence>,
    ) -> Result<Claimed<Applied>, HandlerError> {
        match what {
            What::Start(order) => self.start(db, order, fence).await,
            What::Signal(signal) => self.record(db, event, signal, fence).await,
        }
    }

    /// Records `signal` for the saga of `order_id` (or `saga_id`), claiming the event first; a
    /// `fence` moves the consumer's offset in the same statement.
    async fn record<C: ConnectionTrait>(
        &self,
        db: &C,
        event: &ReceivedEvent,
        (target, signal): (Target, Signal),
        fence: Option<Fence>,
    ) -> Result<Claimed<Applied>, HandlerError> {
        let entry = inbox::Entry::new(CONSUMER, &event.envelope.event_id, &event.topic)
            .map_err(|error| HandlerError::Permanent(error.to_string()))?
            .fenced(fence);
        // A saga nobody drives is leased with its signal and driven once the event commits:
        // no claim needed.
        let token = store::lease_token(self.engine.owner());
        let lease = Some((token.as_str(), self.engine.lease()));
        let Some(claimed) = store::add_signal_once(db, &entry, target, &signal, lease).await?
        else {
            // The saga may not exist yet (its OrderPlaced was lost and reconciliation has not
            // started it): retry, then park the event in the dead-letter queue for a replay.
            // Nothing was written, and a fenced offset did not move.
            return Err(match target {
                Target::Order(order_id) => {
                    HandlerError::Transient(format!("order {order_id} has no saga (yet)"))
                }
                Target::Saga(saga_id) => {
                    HandlerError::Permanent(format!("no saga {saga_id} exists"))
                }
            });
        };
        Ok(match claimed {
            Claimed::First(taken) => Claimed::First(Applied::Signalled(taken.map(Box::new))),
            Claimed::Duplicate => Claimed::Duplicate,
            Claimed::Fenced => Claimed::Fenced,
        })
    }
}

/// What an event asks of the saga.
enum What {
    /// Start the order's saga.
    Start(OrderPlaced),
    /// Add a signal for a saga.
    Signal((Target, Signal)),
}

/// What `event` asks of the saga, if anything.
fn what_of(event: &ReceivedEvent) -> Result<Option<What>, HandlerError> {
    let event_type = event.envelope.event_type.as_str();
    if event_type == OrderPlaced::full_name() {
        let order: OrderPlaced = decode(event)?;
        uuid("order_id", &order.order_id)?;
        return Ok(Some(What::Start(order)));
    }
    Ok(signal_of(event)?.map(What::Signal))
}

/// The signal `event` carries for a saga, if it is one of those that become signals.
fn signal_of(event: &ReceivedEvent) -> Result<Option<(Target, Signal)>, HandlerError> {
    let event_type = event.envelope.event_type.as_str();
    if event_type == OrderCancellationRequested::full_name() {
        let request: OrderCancellationRequested = decode(event)?;
        let order_id = uuid("order_id", &request.order_id)?;
        let signal = Signal::CustomerCancelled {
            reason: request.reason,
        };
        return Ok(Some((Target::Order(order_id), signal)));
    }
    if event_type == ShipmentDispatched::full_name() {
        let dispatched: ShipmentDispatched = decode(event)?;
        let order_id = uuid("order_id", &dispatched.order_id)?;
        let signal = Signal::ShipmentDispatched {
            shipment_id: dispatched.shipment_id,
        };
        return Ok(Some((Target::Order(order_id), signal)));
    }
    if event_type == ShipmentFailed::full_name() {
        let failed: ShipmentFailed = decode(event)?;
        let order_id = uuid("order_id", &failed.order_id)?;
        let signal = Signal::ShipmentFailed {
            shipment_id: failed.shipment_id,
            reason: failed.failure_reason,
        };
        return Ok(Some((Target::Order(order_id), signal)));
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
        return Ok(Some((Target::Saga(saga_id), signal)));
    }
    Ok(None)
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
        let Some(what) = what_of(event)? else {
            // Other events of these topics do not concern the saga.
            return Ok(Applied::Nothing);
        };
        Ok(match self.apply(tx, event, what, None).await? {
            Claimed::First(applied) => applied,
            Claimed::Duplicate | Claimed::Fenced => Applied::Nothing,
        })
    }

    /// Starting a saga and recording a signal are one statement each
    /// (`store::insert_moving`, `store::add_signal_once`).
    fn handle_alone(
        &self,
        event: &ReceivedEvent,
        db: &DatabaseConnection,
        fence: Fence,
    ) -> Option<impl Future<Output = Result<Claimed<Applied>, HandlerError>> + Send> {
        // Nothing to write: the offset moves with a transaction.
        let what = what_of(event).transpose()?;
        Some(async move { self.apply(db, event, what?, Some(fence)).await })
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
