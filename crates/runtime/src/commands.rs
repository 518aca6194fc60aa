//! Saga commands over Kafka. A service that owns a compensation (release stock, void a payment,
//! cancel a shipment) consumes its `<service>.commands` topic, applies each command idempotently
//! by the command's key, and answers with a `CommandAcknowledged` on `saga.command-acks`.
//!
//! Because the command waits on the topic, it is delivered when the service comes back, however
//! long it was down; because the effect is keyed, a redelivered command is answered again
//! without a second effect.

use std::future::Future;

use prost::Message as _;
use zentra_proto::saga::v1::{CommandAcknowledged, CommandOutcome};

use crate::{
    events::{self, EventMeta},
    kafka::{EventHandler, EventProducer, HandlerError, ReceivedEvent},
};

/// Base name of the topic every service answers saga commands on.
pub const ACKS_TOPIC: &str = "saga.command-acks";

/// What applying a command came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledgement {
    /// The outcome reported to the saga.
    pub outcome: CommandOutcome,
    /// Why it was REJECTED or FAILED; empty otherwise.
    pub error: String,
}

impl Acknowledgement {
    /// The command took effect (now, or earlier under the same key).
    pub fn applied() -> Self {
        Self {
            outcome: CommandOutcome::Applied,
            error: String::new(),
        }
    }

    /// The target was already in the wanted state.
    pub fn not_needed() -> Self {
        Self {
            outcome: CommandOutcome::NotNeeded,
            error: String::new(),
        }
    }

    /// The command can never take effect.
    pub fn rejected(error: impl Into<String>) -> Self {
        Self {
            outcome: CommandOutcome::Rejected,
            error: error.into(),
        }
    }

    /// The command failed for now; the saga may send it again.
    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            outcome: CommandOutcome::Failed,
            error: error.into(),
        }
    }
}

/// The fields of a command every acknowledgement repeats.
#[derive(Debug, Clone)]
pub struct CommandIdentity {
    /// The saga that sent it.
    pub saga_id: String,
    /// Its idempotency key.
    pub idempotency_key: String,
    /// The reservation, payment or shipment it targets.
    pub target_id: String,
}

/// A service's commands: decodes what it understands and applies it.
pub trait CommandHandler: Send + Sync + 'static {
    /// Applies the command in `event`. `Ok(None)`: not a command of this service (skipped).
    /// `Err`: the command could not be read; it goes to the dead-letter queue.
    fn apply(
        &self,
        event: &ReceivedEvent,
    ) -> impl Future<Output = Result<Option<(CommandIdentity, Acknowledgement)>, HandlerError>> + Send;
}

/// Adapts a [`CommandHandler`] to the consumer: applies, then acknowledges to the saga.
pub struct CommandConsumer<H> {
    handler: H,
    producer: EventProducer,
    acks_topic: String,
    service: &'static str,
}

impl<H: CommandHandler> CommandConsumer<H> {
    /// Acknowledges on `acks_topic` (full name) as `service`.
    pub fn new(
        handler: H,
        producer: EventProducer,
        acks_topic: String,
        service: &'static str,
    ) -> Self {
        Self {
            handler,
            producer,
            acks_topic,
            service,
        }
    }
}

impl<H: CommandHandler> EventHandler for CommandConsumer<H> {
    type Applied = ();

    /// The command's effect is committed by the service's own keyed RPC, not in `_tx`: a replay
    /// under the same key answers again without a second effect.
    async fn handle(
        &self,
        event: &ReceivedEvent,
        _tx: &sea_orm::DatabaseTransaction,
    ) -> Result<(), HandlerError> {
        let Some((identity, applied)) = self.handler.apply(event).await? else {
            return Ok(());
        };
        let ack = CommandAcknowledged {
            saga_id: identity.saga_id.clone(),
            command_id: event.envelope.event_id.clone(),
            command_type: event.envelope.event_type.clone(),
            idempotency_key: identity.idempotency_key,
            target_id: identity.target_id,
            outcome: applied.outcome as i32,
            error: applied.error,
        };
        tracing::info!(
            saga_id = %identity.saga_id,
            command = %event.envelope.event_type,
            outcome = ?applied.outcome,
            "saga command handled"
        );
        let envelope = events::envelope(
            &ack,
            EventMeta {
                producer: self.service,
                aggregate_type: "saga",
                aggregate_id: identity.saga_id,
                correlation_id: event.envelope.correlation_id.clone(),
                causation_id: event.envelope.event_id.clone(),
            },
        );
        // Sent directly, not through the outbox: if this fails the command is not committed and
        // is applied again, which its key turns into a replay, and acknowledged then.
        self.producer
            .send(
                &self.acks_topic,
                &envelope.aggregate_id,
                &envelope.encode_to_vec(),
                &[
                    ("event_id", envelope.event_id.as_bytes()),
                    ("event_type", envelope.event_type.as_bytes()),
                ],
            )
            .await
            .map_err(|error| HandlerError::Transient(error.to_string()))?;
        Ok(())
    }
}

/// Decodes the payload of a command event as `M`, or a permanent error naming the type.
pub fn decode<M: prost::Name + Default>(event: &ReceivedEvent) -> Result<M, HandlerError> {
    events::payload::<M>(&event.envelope).ok_or_else(|| {
        HandlerError::Permanent(format!(
            "payload of {} is not a valid {}",
            event.envelope.event_id,
            M::full_name()
        ))
    })
}

/// Maps the status of a service's own RPC to a command outcome: success applied, a refusal
/// rejected (the caller first checks whether the target is already as wanted), anything else a
/// failure worth sending again.
pub fn outcome_of(result: Result<(), tonic::Status>) -> Acknowledgement {
    use tonic::Code;
    match result {
        Ok(()) => Acknowledgement::applied(),
        Err(status) => match status.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::OutOfRange => Acknowledgement::rejected(status.message()),
            _ => Acknowledgement::failed(format!("{:?}: {}", status.code(), status.message())),
        },
    }
}
