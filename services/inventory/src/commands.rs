//! The saga's stock compensation, delivered over Kafka: release a reservation. It goes through
//! the same validated, idempotent RPC a caller would use, under the command's key, so a
//! redelivered command never releases twice.

use std::sync::Arc;

use tonic::Request;
use uuid::Uuid;
use zentra_proto::{
    inventory::v1::{self as pb, inventory_service_server::InventoryService as _},
    saga::v1::{CommandOutcome, ReleaseStockCommand},
};
use zentra_runtime::{
    commands::{self, Acknowledgement, CommandHandler, CommandIdentity},
    kafka::{HandlerError, ReceivedEvent},
};

use crate::{
    grpc::InventoryApi,
    store::{self, ReservationState},
};

/// Base name of the topic inventory takes saga commands from.
pub const COMMANDS_TOPIC: &str = "inventory.commands";

/// Applies inventory commands through the inventory API.
pub struct InventoryCommands {
    api: Arc<InventoryApi>,
}

impl InventoryCommands {
    /// Commands applied through `api`.
    pub fn new(api: Arc<InventoryApi>) -> Self {
        Self { api }
    }

    async fn release(&self, command: ReleaseStockCommand) -> Acknowledgement {
        let result = self
            .api
            .release_reservation(Request::new(pb::ReleaseReservationRequest {
                reservation_id: command.reservation_id.clone(),
                reason: command.reason,
                idempotency_key: command.idempotency_key,
            }))
            .await
            .map(drop);
        let applied = commands::outcome_of(result);
        if applied.outcome != CommandOutcome::Rejected {
            return applied;
        }
        let Ok(id) = Uuid::parse_str(&command.reservation_id) else {
            return applied;
        };
        match store::reservation(self.api.db(), id, false).await {
            // The stock is back already: released earlier, or the hold expired.
            Ok(reservation)
                if matches!(
                    reservation.state,
                    ReservationState::Released | ReservationState::Expired
                ) =>
            {
                Acknowledgement::not_needed()
            }
            _ => applied,
        }
    }
}

impl CommandHandler for InventoryCommands {
    async fn apply(
        &self,
        event: &ReceivedEvent,
    ) -> Result<Option<(CommandIdentity, Acknowledgement)>, HandlerError> {
        use prost::Name as _;
        let event_type = event.envelope.event_type.as_str();
        if event_type != ReleaseStockCommand::full_name() {
            return Err(HandlerError::Permanent(format!(
                "inventory takes no command of type {event_type}"
            )));
        }
        let command: ReleaseStockCommand = commands::decode(event)?;
        let identity = CommandIdentity {
            saga_id: command.saga_id.clone(),
            idempotency_key: command.idempotency_key.clone(),
            target_id: command.reservation_id.clone(),
        };
        Ok(Some((identity, self.release(command).await)))
    }
}
