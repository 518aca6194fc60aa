//! The saga's payment compensations, delivered over Kafka: void an authorization, refund a
//! capture. Each goes through the same validated, idempotent RPC a caller would use, under the
//! command's key, so a redelivered command never voids or refunds twice.

use std::sync::Arc;

use tonic::Request;
use uuid::Uuid;
use zentra_proto::{
    common::v1::Money,
    payment::v1::{self as pb, payment_service_server::PaymentService as _},
    saga::v1::{RefundPaymentCommand, VoidPaymentCommand},
};
use zentra_runtime::{
    commands::{self, Acknowledgement, CommandHandler, CommandIdentity},
    kafka::{HandlerError, ReceivedEvent},
};

use crate::{grpc::PaymentApi, store};

/// Base name of the topic the payment service takes saga commands from.
pub const COMMANDS_TOPIC: &str = "payment.commands";

/// Applies payment commands through the payment API.
pub struct PaymentCommands {
    api: Arc<PaymentApi>,
}

impl PaymentCommands {
    /// Commands applied through `api`.
    pub fn new(api: Arc<PaymentApi>) -> Self {
        Self { api }
    }

    async fn current_status(&self, payment_id: &str) -> Option<String> {
        let id = Uuid::parse_str(payment_id).ok()?;
        store::payment(self.api.db(), id)
            .await
            .ok()
            .map(|payment| payment.status)
    }

    async fn void(&self, command: VoidPaymentCommand) -> Acknowledgement {
        let result = self
            .api
            .void(Request::new(pb::VoidRequest {
                payment_id: command.payment_id.clone(),
                reason: command.reason,
                idempotency_key: command.idempotency_key,
            }))
            .await
            .map(drop);
        let applied = commands::outcome_of(result);
        if applied.outcome != zentra_proto::saga::v1::CommandOutcome::Rejected {
            return applied;
        }
        match self.current_status(&command.payment_id).await.as_deref() {
            // Nothing is held any more: voided already, or the authorization was declined.
            Some("VOIDED" | "DECLINED") => Acknowledgement::not_needed(),
            _ => applied,
        }
    }

    async fn refund(&self, command: RefundPaymentCommand) -> Acknowledgement {
        let amount = match command.amount {
            Some(amount) => Some(amount),
            None => self.remaining(&command.payment_id).await,
        };
        let Some(amount) = amount else {
            return match self.current_status(&command.payment_id).await.as_deref() {
                Some("REFUNDED") => Acknowledgement::not_needed(),
                Some(status) => {
                    Acknowledgement::rejected(format!("payment is {status}: nothing to refund"))
                }
                None => {
                    Acknowledgement::rejected(format!("payment {} not found", command.payment_id))
                }
            };
        };
        let result = self
            .api
            .refund(Request::new(pb::RefundRequest {
                payment_id: command.payment_id,
                amount: Some(amount),
                reason: command.reason,
                idempotency_key: command.idempotency_key,
            }))
            .await
            .map(drop);
        commands::outcome_of(result)
    }

    /// What is captured and not yet refunded, when anything is.
    async fn remaining(&self, payment_id: &str) -> Option<Money> {
        let id = Uuid::parse_str(payment_id).ok()?;
        let payment = store::payment(self.api.db(), id).await.ok()?;
        let left = payment.captured_minor - payment.refunded_minor;
        (left > 0).then_some(Money {
            currency_code: payment.currency,
            amount_minor: left,
        })
    }
}

impl CommandHandler for PaymentCommands {
    async fn apply(
        &self,
        event: &ReceivedEvent,
    ) -> Result<Option<(CommandIdentity, Acknowledgement)>, HandlerError> {
        use prost::Name as _;
        let event_type = event.envelope.event_type.as_str();
        if event_type == VoidPaymentCommand::full_name() {
            let command: VoidPaymentCommand = commands::decode(event)?;
            let identity = CommandIdentity {
                saga_id: command.saga_id.clone(),
                idempotency_key: command.idempotency_key.clone(),
                target_id: command.payment_id.clone(),
            };
            return Ok(Some((identity, self.void(command).await)));
        }
        if event_type == RefundPaymentCommand::full_name() {
            let command: RefundPaymentCommand = commands::decode(event)?;
            let identity = CommandIdentity {
                saga_id: command.saga_id.clone(),
                idempotency_key: command.idempotency_key.clone(),
                target_id: command.payment_id.clone(),
            };
            return Ok(Some((identity, self.refund(command).await)));
        }
        Err(HandlerError::Permanent(format!(
            "payment takes no command of type {event_type}"
        )))
    }
}
