//! The saga's gRPC calls to the services, each behind its service's circuit breaker, with a
//! deadline, the caller's trace context and the step's idempotency key.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Request, Status, transport::Channel};
use uuid::Uuid;
use zentra_proto::{
    fulfillment::v1::{self as fulfillment, fulfillment_service_client::FulfillmentServiceClient},
    inventory::v1::{self as inventory, inventory_service_client::InventoryServiceClient},
    order::v1::{self as order, order_service_client::OrderServiceClient},
    payment::v1::{self as payment, payment_service_client::PaymentServiceClient},
};
use zentra_runtime::{
    circuit_breaker::{BreakerSettings, CircuitBreaker},
    client::{self, lazy_channel},
    config::ClientTlsConfig,
};

use crate::{
    config::Endpoints,
    domain::{Downstream, Saga, StepType},
    machine::{CallResult, CommandLookup, Effect, SettleResult, ShipmentLookup},
};

/// Clients of the four services the saga calls, and their breakers.
#[derive(Clone)]
pub struct Downstreams {
    inventory: InventoryServiceClient<Channel>,
    payment: PaymentServiceClient<Channel>,
    fulfillment: FulfillmentServiceClient<Channel>,
    order: OrderServiceClient<Channel>,
    breakers: HashMap<Downstream, CircuitBreaker>,
    deadline: Duration,
    hold: Duration,
}

impl Downstreams {
    /// Clients for `endpoints` (over `tls` for `https://` ones), with calls bounded by
    /// `deadline` and stock held for `hold`.
    pub fn new(
        endpoints: &Endpoints,
        tls: Option<&ClientTlsConfig>,
        breaker: &BreakerSettings,
        deadline: Duration,
        hold: Duration,
    ) -> anyhow::Result<Self> {
        let channel = |url: &str| lazy_channel(url, tls);
        let breakers = Downstream::ALL
            .into_iter()
            .map(|downstream| {
                (
                    downstream,
                    CircuitBreaker::new(downstream.name(), breaker.clone()),
                )
            })
            .collect();
        Ok(Self {
            inventory: InventoryServiceClient::new(channel(&endpoints.inventory)?),
            payment: PaymentServiceClient::new(channel(&endpoints.payment)?),
            fulfillment: FulfillmentServiceClient::new(channel(&endpoints.fulfillment)?),
            order: OrderServiceClient::new(channel(&endpoints.order)?),
            breakers,
            deadline,
            hold,
        })
    }

    /// The breaker guarding `downstream`.
    pub fn breaker(&self, downstream: Downstream) -> &CircuitBreaker {
        &self.breakers[&downstream]
    }

    /// The order service client (for starting sagas and reconciliation).
    pub fn order_client(&self) -> OrderServiceClient<Channel> {
        self.order.clone()
    }

    /// A request carrying the deadline (as `grpc-timeout`) and the current trace context.
    pub fn request<T>(&self, message: T) -> Request<T> {
        client::request(message, self.deadline)
    }

    /// Makes the call of `step` for `saga` through the step's breaker.
    pub async fn call(&self, saga: &Saga, step: StepType) -> CallResult {
        let breaker = self.breaker(step.downstream());
        let permit = match breaker.try_acquire() {
            Ok(permit) => permit,
            Err(open) => {
                return CallResult::CircuitOpen {
                    retry_after: open.retry_after,
                    message: open.to_string(),
                };
            }
        };
        // The server drops the call at its deadline too; this bounds a peer that never answers.
        let outcome = tokio::time::timeout(
            self.deadline + Duration::from_millis(250),
            self.dispatch(saga, step),
        )
        .await;
        let result = match outcome {
            Ok(Ok(effect)) => CallResult::Done(effect),
            Ok(Err(failure)) => failure,
            Err(_) => CallResult::TimedOut {
                message: format!("no answer within {:?}", self.deadline),
            },
        };
        match &result {
            CallResult::Retryable { message, .. } | CallResult::TimedOut { message } => {
                permit.failure(message);
            }
            // A refusal is an answer: the downstream is healthy.
            _ => permit.success(),
        }
        metrics::counter!(
            crate::metric_names::STEP_CALLS,
            "step" => step.as_str(),
            "result" => result_label(&result),
        )
        .increment(1);
        result
    }

    /// Looks up whether `step` of `saga` took effect, by the order id (the only id known when the
    /// call's answer was lost). Reads only: repeating it is always safe.
    pub async fn settle(&self, saga: &Saga, step: StepType) -> SettleResult {
        match self.ask(self.lookup(saga, step)).await {
            Ok(Some(effect)) => SettleResult::Found(effect),
            Ok(None) => SettleResult::Nothing,
            Err(message) => SettleResult::Failed { message },
        }
    }

    /// Runs a read-only lookup within the call deadline; a failure or no answer becomes the
    /// reason, for the saga's timeline.
    async fn ask<T>(
        &self,
        lookup: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.deadline + Duration::from_millis(250), lookup).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer within {:?}", self.deadline)),
        }
    }

    /// Asks fulfillment how the saga's shipment stands (by its id, else by the order). Reads
    /// only; an unanswered question is `Unknown`, never a guess.
    pub async fn check_shipment(&self, saga: &Saga) -> ShipmentLookup {
        let asked = self
            .ask(async {
                match saga.shipment_id {
                    Some(shipment_id) => self
                        .fulfillment
                        .clone()
                        .get_shipment(self.request(fulfillment::GetShipmentRequest {
                            shipment_id: shipment_id.to_string(),
                        }))
                        .await
                        .map(|response| response.into_inner().shipment),
                    None => self
                        .fulfillment
                        .clone()
                        .list_shipments(self.request(fulfillment::ListShipmentsRequest {
                            order_id: saga.order_id.to_string(),
                            ..Default::default()
                        }))
                        .await
                        .map(|response| response.into_inner().shipments.into_iter().next()),
                }
            })
            .await;
        let shipment = match asked {
            Ok(shipment) => shipment,
            Err(message) => return ShipmentLookup::Unknown(message),
        };
        let Some(shipment) = shipment else {
            // No shipment at all: nothing can leave.
            return ShipmentLookup::Cancelled;
        };
        use fulfillment::ShipmentStatus as S;
        match S::try_from(shipment.status).unwrap_or(S::Unspecified) {
            S::Dispatched => ShipmentLookup::Dispatched,
            S::Cancelled => ShipmentLookup::Cancelled,
            S::Failed => ShipmentLookup::Failed(shipment.failure_reason),
            S::Pending | S::Picking | S::Packed => ShipmentLookup::Pending,
            S::Unspecified => {
                ShipmentLookup::Unknown("fulfillment reported no shipment status".to_owned())
            }
        }
    }

    /// Asks the participant of a compensation command whether its effect is in place, by the id
    /// the command targets. Reads only; an unanswered question is `Unknown`.
    pub async fn verify_command(&self, saga: &Saga, step: StepType) -> CommandLookup {
        self.ask(self.command_state(saga, step))
            .await
            .unwrap_or_else(CommandLookup::Unknown)
    }

    async fn command_state(&self, saga: &Saga, step: StepType) -> Result<CommandLookup, Status> {
        let verdict = |state: String, done: bool| {
            if done {
                CommandLookup::Applied(state)
            } else {
                CommandLookup::NotApplied(state)
            }
        };
        let missing = || Status::failed_precondition(format!("{step} has no target id recorded"));
        match step {
            StepType::ReleaseStock => {
                let reservation_id = saga.reservation_id.ok_or_else(missing)?.to_string();
                let reservation = self
                    .inventory
                    .clone()
                    .get_reservation(
                        self.request(inventory::GetReservationRequest { reservation_id }),
                    )
                    .await?
                    .into_inner()
                    .reservation
                    .unwrap_or_default();
                use inventory::ReservationStatus as R;
                let status = R::try_from(reservation.status).unwrap_or(R::Unspecified);
                Ok(verdict(
                    format!("reservation {}", status.as_str_name()),
                    matches!(status, R::Released | R::Expired),
                ))
            }
            StepType::VoidPayment | StepType::RefundPayment => {
                let payment_id = saga.payment_id.ok_or_else(missing)?.to_string();
                let payment = self
                    .payment
                    .clone()
                    .get_payment(self.request(payment::GetPaymentRequest { payment_id }))
                    .await?
                    .into_inner()
                    .payment
                    .unwrap_or_default();
                use payment::PaymentStatus as P;
                let status = P::try_from(payment.status).unwrap_or(P::Unspecified);
                let done = if step == StepType::VoidPayment {
                    // Nothing is held and nothing was charged.
                    matches!(status, P::Voided | P::Expired | P::Declined)
                } else {
                    status == P::Refunded
                };
                Ok(verdict(format!("payment {}", status.as_str_name()), done))
            }
            StepType::CancelShipment => {
                let shipment_id = saga.shipment_id.ok_or_else(missing)?.to_string();
                let shipment = self
                    .fulfillment
                    .clone()
                    .get_shipment(self.request(fulfillment::GetShipmentRequest { shipment_id }))
                    .await?
                    .into_inner()
                    .shipment
                    .unwrap_or_default();
                use fulfillment::ShipmentStatus as S;
                let status = S::try_from(shipment.status).unwrap_or(S::Unspecified);
                if status == S::Dispatched {
                    return Ok(CommandLookup::Dispatched);
                }
                Ok(verdict(
                    format!("shipment {}", status.as_str_name()),
                    matches!(status, S::Cancelled | S::Failed),
                ))
            }
            _ => Err(Status::invalid_argument(format!(
                "{step} is a call, not a command"
            ))),
        }
    }

    async fn lookup(&self, saga: &Saga, step: StepType) -> Result<Option<Effect>, Status> {
        let order_id = saga.order_id.to_string();
        let found = match step {
            StepType::ReserveStock => self
                .inventory
                .clone()
                .list_reservations(self.request(inventory::ListReservationsRequest {
                    order_id,
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .reservations
                .into_iter()
                .find(|reservation| {
                    reservation.status == inventory::ReservationStatus::Pending as i32
                        || reservation.status == inventory::ReservationStatus::Confirmed as i32
                })
                .and_then(|reservation| Uuid::parse_str(&reservation.reservation_id).ok())
                .map(Effect::Reservation),
            StepType::AuthorizePayment => self
                .payment
                .clone()
                .list_payments(self.request(payment::ListPaymentsRequest {
                    order_id,
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .payments
                .into_iter()
                .find(|payment| payment.status == payment::PaymentStatus::Authorized as i32)
                .and_then(|payment| Uuid::parse_str(&payment.payment_id).ok())
                .map(Effect::Payment),
            StepType::CreateShipment => self
                .fulfillment
                .clone()
                .list_shipments(self.request(fulfillment::ListShipmentsRequest {
                    order_id,
                    ..Default::default()
                }))
                .await?
                .into_inner()
                .shipments
                .into_iter()
                .find(|shipment| {
                    shipment.status != fulfillment::ShipmentStatus::Cancelled as i32
                        && shipment.status != fulfillment::ShipmentStatus::Failed as i32
                })
                .and_then(|shipment| Uuid::parse_str(&shipment.shipment_id).ok())
                .map(Effect::Shipment),
            // The later steps roll forward and are never undone.
            _ => None,
        };
        Ok(found)
    }

    async fn dispatch(&self, saga: &Saga, step: StepType) -> Result<Effect, CallResult> {
        let key = saga.key(step);
        let order_id = saga.order_id.to_string();
        match step {
            StepType::ReserveStock => {
                let lines = saga
                    .order
                    .lines
                    .iter()
                    .map(|line| inventory::ReservationLine {
                        sku: line.sku.clone(),
                        quantity: line.quantity,
                    })
                    .collect();
                let response = self
                    .inventory
                    .clone()
                    .reserve_stock(self.request(inventory::ReserveStockRequest {
                        order_id,
                        lines,
                        hold_duration: Some(zentra_runtime::time::to_proto_duration(self.hold)),
                        idempotency_key: key,
                    }))
                    .await
                    .map_err(classify)?
                    .into_inner();
                let reservation = response.reservation.unwrap_or_default();
                Ok(Effect::Reservation(parse_id(&reservation.reservation_id)?))
            }
            StepType::AuthorizePayment => {
                let response = self
                    .payment
                    .clone()
                    .authorize(self.request(payment::AuthorizeRequest {
                        order_id,
                        amount: saga.order.total.clone(),
                        payment_method_token: saga.order.payment_method_token.clone(),
                        idempotency_key: key,
                    }))
                    .await
                    .map_err(classify)?
                    .into_inner();
                let payment = response.payment.unwrap_or_default();
                if payment.status == payment::PaymentStatus::Declined as i32 {
                    return Err(CallResult::Permanent {
                        code: "DECLINED".to_owned(),
                        message: format!("payment declined: {}", payment.decline_message),
                    });
                }
                Ok(Effect::Payment(parse_id(&payment.payment_id)?))
            }
            StepType::CreateShipment => {
                let lines = saga
                    .order
                    .lines
                    .iter()
                    .map(|line| fulfillment::ShipmentLine {
                        sku: line.sku.clone(),
                        quantity: line.quantity,
                    })
                    .collect();
                let response = self
                    .fulfillment
                    .clone()
                    .create_shipment(self.request(fulfillment::CreateShipmentRequest {
                        order_id,
                        shipping_address: saga.order.shipping_address.clone(),
                        lines,
                        idempotency_key: key,
                    }))
                    .await
                    .map_err(classify)?
                    .into_inner();
                let shipment = response.shipment.unwrap_or_default();
                Ok(Effect::Shipment(parse_id(&shipment.shipment_id)?))
            }
            StepType::CapturePayment => {
                let payment_id = required(saga.payment_id, "payment")?;
                self.payment
                    .clone()
                    .capture(self.request(payment::CaptureRequest {
                        payment_id,
                        amount: None,
                        idempotency_key: key,
                    }))
                    .await
                    .map_err(classify)?;
                Ok(Effect::Captured)
            }
            StepType::PinReservation => {
                let reservation_id = required(saga.reservation_id, "reservation")?;
                self.inventory
                    .clone()
                    .pin_reservation(self.request(inventory::PinReservationRequest {
                        reservation_id,
                        idempotency_key: key,
                    }))
                    .await
                    .map_err(classify)?;
                Ok(Effect::None)
            }
            StepType::ConfirmReservation => {
                let reservation_id = required(saga.reservation_id, "reservation")?;
                self.inventory
                    .clone()
                    .confirm_reservation(self.request(inventory::ConfirmReservationRequest {
                        reservation_id,
                        idempotency_key: key,
                    }))
                    .await
                    .map_err(classify)?;
                Ok(Effect::None)
            }
            StepType::ConfirmOrder => {
                self.order
                    .clone()
                    .confirm_order(self.request(order::ConfirmOrderRequest {
                        order_id,
                        expected_version: 0,
                        idempotency_key: key,
                    }))
                    .await
                    .map_err(classify)?;
                Ok(Effect::None)
            }
            StepType::RejectOrder => {
                let reason = if saga.failure_reason.trim().is_empty() {
                    "rejected".to_owned()
                } else {
                    saga.failure_reason.chars().take(500).collect()
                };
                self.order
                    .clone()
                    .reject_order(self.request(order::RejectOrderRequest {
                        order_id,
                        reason,
                        expected_version: 0,
                        idempotency_key: key,
                    }))
                    .await
                    .map_err(classify)?;
                Ok(Effect::None)
            }
            StepType::CompleteCancellation => {
                self.order
                    .clone()
                    .complete_cancellation(self.request(order::CompleteCancellationRequest {
                        order_id,
                        expected_version: 0,
                        idempotency_key: key,
                    }))
                    .await
                    .map_err(classify)?;
                Ok(Effect::None)
            }
            StepType::ReleaseStock
            | StepType::VoidPayment
            | StepType::RefundPayment
            | StepType::CancelShipment => Err(CallResult::Permanent {
                code: "INTERNAL".to_owned(),
                message: format!("{step} travels as a command, not a call"),
            }),
        }
    }
}

fn required(id: Option<Uuid>, what: &str) -> Result<String, CallResult> {
    id.map(|id| id.to_string())
        .ok_or_else(|| CallResult::Permanent {
            code: "INTERNAL".to_owned(),
            message: format!("no {what} was recorded"),
        })
}

fn parse_id(text: &str) -> Result<Uuid, CallResult> {
    Uuid::parse_str(text).map_err(|_| CallResult::Permanent {
        code: "INTERNAL".to_owned(),
        message: format!("downstream answered with a malformed id {text:?}"),
    })
}

/// Sorts a failed call: retried if another attempt may succeed, permanent otherwise.
pub fn classify(status: Status) -> CallResult {
    let code = format!("{:?}", status.code());
    let code = to_screaming_snake(&code);
    let message = status.message().to_owned();
    match status.code() {
        Code::DeadlineExceeded => CallResult::TimedOut { message },
        Code::Unavailable
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::Unknown
        | Code::Internal
        | Code::Cancelled
        | Code::DataLoss => CallResult::Retryable { code, message },
        _ => CallResult::Permanent { code, message },
    }
}

fn to_screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (index, character) in camel.chars().enumerate() {
        if character.is_ascii_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(character.to_ascii_uppercase());
    }
    out
}

fn result_label(result: &CallResult) -> &'static str {
    match result {
        CallResult::Done(_) => "succeeded",
        CallResult::Retryable { .. } => "retryable_failure",
        CallResult::Permanent { .. } => "permanent_failure",
        CallResult::TimedOut { .. } => "timed_out",
        CallResult::CircuitOpen { .. } => "circuit_open",
    }
}
