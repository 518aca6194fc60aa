//! The saga as data: its state, its steps and every attempt of each, as stored and as walked by
//! the [`machine`](crate::machine).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use zentra_proto::{order::v1::OrderPlaced, saga::v1 as pb};

/// Declares an enum stored as text, with its proto counterpart.
macro_rules! stored_enum {
    ($(#[$meta:meta])* $name:ident => $proto:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The stored text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }

            /// Parses the stored text.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// The API enum.
            pub fn to_proto(self) -> pb::$proto {
                match self {
                    $(Self::$variant => pb::$proto::$variant),+
                }
            }

            /// From the API enum; `None` for UNSPECIFIED.
            pub fn from_proto(value: pb::$proto) -> Option<Self> {
                match value {
                    $(pb::$proto::$variant => Some(Self::$variant),)+
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str(self.as_str())
            }
        }
    };
}

stored_enum! {
    /// State of a saga.
    SagaState => SagaState {
        /// Forward steps are running or waiting for a retry.
        Running = "RUNNING",
        /// Waiting for fulfillment to report the shipment dispatched or failed.
        AwaitingShipment = "AWAITING_SHIPMENT",
        /// Completed steps are being undone.
        Compensating = "COMPENSATING",
        /// Every forward step succeeded.
        Completed = "COMPLETED",
        /// Every completed step was undone.
        Compensated = "COMPENSATED",
        /// A compensation failed for good; an operator must act.
        CompensationFailed = "COMPENSATION_FAILED",
    }
}

impl SagaState {
    /// COMPLETED and COMPENSATED never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated)
    }

    /// States the engine still drives (COMPENSATION_FAILED waits for an operator).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Running | Self::AwaitingShipment | Self::Compensating
        )
    }
}

stored_enum! {
    /// Why a saga compensates.
    CompensationCause => SagaCompensationCause {
        /// A forward step failed for good.
        StepFailed = "STEP_FAILED",
        /// The customer cancelled the order.
        CustomerCancelled = "CUSTOMER_CANCELLED",
        /// An operator cancelled the saga.
        OperatorCancelled = "OPERATOR_CANCELLED",
    }
}

stored_enum! {
    /// A step: a call to a downstream service or a command to one.
    StepType => SagaStepType {
        /// InventoryService.ReserveStock.
        ReserveStock = "RESERVE_STOCK",
        /// PaymentService.Authorize.
        AuthorizePayment = "AUTHORIZE_PAYMENT",
        /// FulfillmentService.CreateShipment.
        CreateShipment = "CREATE_SHIPMENT",
        /// PaymentService.Capture.
        CapturePayment = "CAPTURE_PAYMENT",
        /// InventoryService.ConfirmReservation.
        ConfirmReservation = "CONFIRM_RESERVATION",
        /// OrderService.ConfirmOrder.
        ConfirmOrder = "CONFIRM_ORDER",
        /// ReleaseStockCommand over Kafka.
        ReleaseStock = "RELEASE_STOCK",
        /// VoidPaymentCommand over Kafka.
        VoidPayment = "VOID_PAYMENT",
        /// RefundPaymentCommand over Kafka.
        RefundPayment = "REFUND_PAYMENT",
        /// CancelShipmentCommand over Kafka.
        CancelShipment = "CANCEL_SHIPMENT",
        /// OrderService.RejectOrder.
        RejectOrder = "REJECT_ORDER",
        /// OrderService.CompleteCancellation.
        CompleteCancellation = "COMPLETE_CANCELLATION",
        /// InventoryService.PinReservation.
        PinReservation = "PIN_RESERVATION",
    }
}

/// The forward steps, in order. The reservation is pinned (it can no longer expire) before any
/// shipment exists; the shipment wait sits between CREATE_SHIPMENT and CAPTURE_PAYMENT.
pub const FORWARD: &[StepType] = &[
    StepType::ReserveStock,
    StepType::AuthorizePayment,
    StepType::PinReservation,
    StepType::CreateShipment,
    StepType::CapturePayment,
    StepType::ConfirmReservation,
    StepType::ConfirmOrder,
];

/// The downstream service a step talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Downstream {
    /// The inventory service.
    Inventory,
    /// The payment service.
    Payment,
    /// The fulfillment service.
    Fulfillment,
    /// The order service.
    Order,
}

impl Downstream {
    /// Every downstream, in breaker listing order.
    pub const ALL: [Self; 4] = [
        Self::Fulfillment,
        Self::Inventory,
        Self::Order,
        Self::Payment,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Inventory => "inventory",
            Self::Payment => "payment",
            Self::Fulfillment => "fulfillment",
            Self::Order => "order",
        }
    }
}

impl StepType {
    /// Whether it moves the order forward (as opposed to undoing).
    pub fn is_forward(self) -> bool {
        FORWARD.contains(&self)
    }

    /// Whether it travels as a Kafka command and completes on its acknowledgement.
    pub fn is_command(self) -> bool {
        matches!(
            self,
            Self::ReleaseStock | Self::VoidPayment | Self::RefundPayment | Self::CancelShipment
        )
    }

    /// Who it talks to.
    pub fn downstream(self) -> Downstream {
        match self {
            Self::ReserveStock
            | Self::PinReservation
            | Self::ConfirmReservation
            | Self::ReleaseStock => Downstream::Inventory,
            Self::AuthorizePayment
            | Self::CapturePayment
            | Self::VoidPayment
            | Self::RefundPayment => Downstream::Payment,
            Self::CreateShipment | Self::CancelShipment => Downstream::Fulfillment,
            Self::ConfirmOrder | Self::RejectOrder | Self::CompleteCancellation => {
                Downstream::Order
            }
        }
    }
}

stored_enum! {
    /// State of one step.
    StepStatus => SagaStepStatus {
        /// An attempt is in progress (for a command: sent, not yet acknowledged).
        Running = "RUNNING",
        /// The latest attempt failed; the next is due at its next_retry_time.
        RetryScheduled = "RETRY_SCHEDULED",
        /// The step took effect.
        Succeeded = "SUCCEEDED",
        /// The step failed for good.
        Failed = "FAILED",
    }
}

stored_enum! {
    /// Outcome of one attempt.
    Outcome => StepAttemptOutcome {
        /// Not finished.
        InProgress = "IN_PROGRESS",
        /// Succeeded.
        Succeeded = "SUCCEEDED",
        /// Failed; a retry may help.
        RetryableFailure = "RETRYABLE_FAILURE",
        /// Failed; no retry helps.
        PermanentFailure = "PERMANENT_FAILURE",
        /// No answer within the deadline.
        TimedOut = "TIMED_OUT",
        /// Not sent: the breaker was open.
        CircuitOpen = "CIRCUIT_OPEN",
    }
}

/// One attempt of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// From 1.
    pub number: u32,
    /// Started.
    pub start: DateTime<Utc>,
    /// Finished; `None` while in progress.
    pub end: Option<DateTime<Utc>>,
    /// What came of it.
    pub outcome: Outcome,
    /// gRPC code name of a failure.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error_code: String,
    /// Error message of a failure.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error_message: String,
    /// When the next attempt is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<DateTime<Utc>>,
    /// For a command: the event id it was sent with, which its acknowledgement repeats.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command_id: String,
}

impl Attempt {
    /// Attempt `number` of a step, started at `start`, ended at `end` with `outcome`, with no
    /// error, retry or command id yet.
    pub fn new(
        number: u32,
        start: DateTime<Utc>,
        end: Option<DateTime<Utc>>,
        outcome: Outcome,
    ) -> Self {
        Self {
            number,
            start,
            end,
            outcome,
            error_code: String::new(),
            error_message: String::new(),
            next_retry: None,
            command_id: String::new(),
        }
    }
}

/// One step and its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Which step.
    pub step: StepType,
    /// Its state.
    pub status: StepStatus,
    /// Idempotency key sent downstream, the same for every attempt.
    pub key: String,
    /// Oldest first.
    pub attempts: Vec<Attempt>,
    /// Attempts before this index do not count against the limits (an operator resumed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub budget_from: usize,
    /// A lookup established whether this step, whose outcome was unknown, took effect.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub settled: bool,
}

fn is_zero(value: &usize) -> bool {
    *value == 0
}

impl Step {
    /// The latest attempt.
    pub fn last_attempt(&self) -> Option<&Attempt> {
        self.attempts.last()
    }

    /// When the first attempt started: the step's durable timeout counts from here.
    pub fn first_start(&self) -> Option<DateTime<Utc>> {
        self.attempts.first().map(|attempt| attempt.start)
    }

    /// Attempts that reached the downstream (an open breaker's refusals do not count).
    pub fn counted_attempts(&self) -> u32 {
        let counted = self.attempts[self.budget_from.min(self.attempts.len())..]
            .iter()
            .filter(|attempt| attempt.outcome != Outcome::CircuitOpen)
            .count();
        u32::try_from(counted).unwrap_or(u32::MAX)
    }
}

/// What fulfillment reported about the shipment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipmentReport {
    /// Nothing yet.
    None,
    /// ShipmentDispatched arrived: the point of no return is passed.
    Dispatched,
    /// ShipmentFailed arrived, with the reason.
    Failed(String),
}

/// The last time the saga asked fulfillment about its shipment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipmentCheck {
    /// When.
    pub at: DateTime<Utc>,
    /// Whether fulfillment answered (false: it was down or too slow, ask again).
    pub answered: bool,
}

/// A saga as the engine walks it.
#[derive(Debug, Clone)]
pub struct Saga {
    /// Id.
    pub id: Uuid,
    /// The order.
    pub order_id: Uuid,
    /// What the saga needs of the order, from OrderPlaced.
    pub order: OrderPlaced,
    /// State.
    pub state: SagaState,
    /// Why it compensates.
    pub cause: Option<CompensationCause>,
    /// The failing step's error, or the cancellation reason.
    pub failure_reason: String,
    /// Made by RESERVE_STOCK.
    pub reservation_id: Option<Uuid>,
    /// Made by AUTHORIZE_PAYMENT.
    pub payment_id: Option<Uuid>,
    /// Made by CREATE_SHIPMENT.
    pub shipment_id: Option<Uuid>,
    /// Whether CAPTURE_PAYMENT succeeded (its undo is a refund, not a void).
    pub captured: bool,
    /// What fulfillment reported.
    pub shipment: ShipmentReport,
    /// A customer's cancellation reason, once requested.
    pub cancel_request: Option<String>,
    /// When fulfillment was last asked about the shipment (while waiting for its report, and
    /// before undoing it), and whether it answered.
    pub shipment_check: Option<ShipmentCheck>,
    /// When compensation began; a shipment is looked up after this before it is cancelled.
    pub compensating_since: Option<DateTime<Utc>>,
    /// Steps in execution order.
    pub steps: Vec<Step>,
    /// Incremented on every change.
    pub version: i64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Reached a terminal state.
    pub ended_at: Option<DateTime<Utc>>,
    /// When the engine should look at it next; `None` while only a signal can move it.
    pub next_run_at: Option<DateTime<Utc>>,
    /// The lease token of the claim driving it, while one does.
    pub lease: Option<String>,
    /// The W3C trace context it was started in (the order's trace); every step continues it.
    pub traceparent: String,
}

impl Saga {
    /// A new saga for the order `order_id`, RUNNING and due at `now`, with a customer's
    /// cancellation reason if one arrived before it.
    pub fn new(
        order_id: Uuid,
        order: OrderPlaced,
        cancel_request: Option<String>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            order_id,
            order,
            state: SagaState::Running,
            cause: None,
            failure_reason: String::new(),
            reservation_id: None,
            payment_id: None,
            shipment_id: None,
            captured: false,
            shipment: ShipmentReport::None,
            cancel_request,
            shipment_check: None,
            compensating_since: None,
            steps: Vec::new(),
            version: 1,
            created_at: now,
            updated_at: now,
            ended_at: None,
            next_run_at: Some(now),
            lease: None,
            traceparent: String::new(),
        }
    }

    /// The step record of `step`, if it started.
    pub fn step(&self, step: StepType) -> Option<&Step> {
        self.steps.iter().find(|candidate| candidate.step == step)
    }

    /// The mutable step record of `step`, if it started.
    pub fn step_mut(&mut self, step: StepType) -> Option<&mut Step> {
        self.steps
            .iter_mut()
            .find(|candidate| candidate.step == step)
    }

    /// Whether `step` took effect.
    pub fn succeeded(&self, step: StepType) -> bool {
        self.step(step)
            .is_some_and(|record| record.status == StepStatus::Succeeded)
    }

    /// The idempotency key of `step`: the same on every attempt, on every instance, forever.
    pub fn key(&self, step: StepType) -> String {
        format!("saga:{}:{}", self.id, step.as_str().to_ascii_lowercase())
    }

    /// The step running or last run.
    pub fn current_step(&self) -> Option<StepType> {
        self.steps.last().map(|step| step.step)
    }

    /// The current step while its latest attempt failed.
    pub fn failing_step(&self) -> Option<StepType> {
        let step = self.steps.last()?;
        matches!(step.status, StepStatus::RetryScheduled | StepStatus::Failed).then_some(step.step)
    }

    /// Past the point of no return: the goods left the warehouse, so nothing is undone any more.
    pub fn dispatched(&self) -> bool {
        self.shipment == ShipmentReport::Dispatched
    }
}
