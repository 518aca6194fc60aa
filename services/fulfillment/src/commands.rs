//! The saga's shipment compensation, delivered over Kafka: cancel a shipment. It goes through
//! the same validated, idempotent RPC a caller would use, under the command's key.

use std::sync::Arc;

use tonic::Request;
use uuid::Uuid;
use zentra_proto::{
    fulfillment::v1::{self as pb, fulfillment_service_server::FulfillmentService as _},
    saga::v1::{CancelShipmentCommand, CommandOutcome},
};
use zentra_runtime::{
    commands::{self, Acknowledgement, CommandHandler, CommandIdentity},
    kafka::{HandlerError, ReceivedEvent},
};

use crate::{grpc::FulfillmentApi, store};

/// Base name of the topic fulfillment takes saga commands from.
pub const COMMANDS_TOPIC: &str = "fulfillment.commands";

/// Applies fulfillment commands through the fulfillment API.
pub struct FulfillmentCommands {
    api: Arc<FulfillmentApi>,
}

impl FulfillmentCommands {
    /// Commands applied through `api`.
    pub fn new(api: Arc<FulfillmentApi>) -> Self {
        Self { api }
    }

    async fn cancel(&self, command: CancelShipmentCommand) -> Acknowledgement {
        let result = self
            .api
            .cancel_shipment(Request::new(pb::CancelShipmentRequest {
                shipment_id: command.shipment_id.clone(),
                reason: command.reason,
                idempotency_key: command.idempotency_key,
            }))
            .await
            .map(drop);
        let applied = commands::outcome_of(result);
        if applied.outcome != CommandOutcome::Rejected {
            return applied;
        }
        let Ok(id) = Uuid::parse_str(&command.shipment_id) else {
            return applied;
        };
        match store::shipment(self.api.db(), id).await {
            // A failed shipment never leaves the warehouse: nothing to cancel.
            Ok(shipment) if shipment.row.status == "FAILED" => Acknowledgement::not_needed(),
            _ => applied,
        }
    }
}

impl CommandHandler for FulfillmentCommands {
    async fn apply(
        &self,
        event: &ReceivedEvent,
    ) -> Result<Option<(CommandIdentity, Acknowledgement)>, HandlerError> {
        use prost::Name as _;
        let event_type = event.envelope.event_type.as_str();
        if event_type != CancelShipmentCommand::full_name() {
            return Err(HandlerError::Permanent(format!(
                "fulfillment takes no command of type {event_type}"
            )));
        }
        let command: CancelShipmentCommand = commands::decode(event)?;
        let identity = CommandIdentity {
            saga_id: command.saga_id.clone(),
            idempotency_key: command.idempotency_key.clone(),
            target_id: command.shipment_id.clone(),
        };
        Ok(Some((identity, self.cancel(command).await)))
    }
}
