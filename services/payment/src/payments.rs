//! The payment operations. Each runs in the caller's transaction with its ledger entry and event.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use uuid::Uuid;
use zentra_proto::payment::v1 as pb;
use zentra_runtime::{
    events::{EventMeta, EventTopic},
    group_commit::GroupCommit,
    outbox::OutboxWaker,
};

use crate::{
    convert,
    error::PaymentError,
    processor::{Authorization, PaymentProcessor},
    store::{self, NewPayment, Payment},
};

/// Name of the service, as producer of its events.
pub const SERVICE: &str = "payment";

/// A validated authorization request.
#[derive(Debug, Clone)]
pub struct Authorize {
    /// Order.
    pub order_id: Uuid,
    /// Currency.
    pub currency: String,
    /// Amount.
    pub amount_minor: i64,
    /// Token.
    pub token: String,
    /// Key.
    pub idempotency_key: String,
}

/// The operations.
#[derive(Clone)]
pub struct Payments {
    db: DatabaseConnection,
    processor: Arc<dyn PaymentProcessor>,
    events_topic: EventTopic,
    waker: OutboxWaker,
    authorization_validity: Duration,
    group: GroupCommit,
}

impl Payments {
    /// Operations over `db` with `processor`.
    pub fn new(
        db: DatabaseConnection,
        processor: Arc<dyn PaymentProcessor>,
        events_topic: EventTopic,
        waker: OutboxWaker,
        authorization_validity: Duration,
        group: GroupCommit,
    ) -> Self {
        Self {
            db,
            processor,
            events_topic,
            waker,
            authorization_validity,
            group,
        }
    }

    /// The database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Where the payment changes commit, together when they come together.
    pub fn group(&self) -> &GroupCommit {
        &self.group
    }

    /// Tells the relay that events were committed.
    pub fn committed(&self) {
        self.waker.wake();
    }

    /// Asks the processor, outside any transaction: a slow processor holds no connection and
    /// no one else's commit. The processor is idempotent by our key, so asking again (a retry,
    /// a replay) cannot charge twice.
    pub async fn ask_processor(&self, request: &Authorize) -> Result<Authorization, PaymentError> {
        Ok(self
            .processor
            .authorize(
                &request.token,
                &request.currency,
                request.amount_minor,
                &request.idempotency_key,
            )
            .await?)
    }

    /// Records the processor's `outcome`: AUTHORIZED or DECLINED.
    pub async fn authorize<C: ConnectionTrait>(
        &self,
        tx: &C,
        request: &Authorize,
        outcome: &Authorization,
    ) -> Result<Payment, PaymentError> {
        let id = Uuid::now_v7();
        let mut new = NewPayment {
            id,
            order_id: request.order_id,
            status: "AUTHORIZED",
            currency: &request.currency,
            amount_minor: request.amount_minor,
            decline_reason: "",
            decline_message: "",
            processor_reference: "",
            expires_at: None,
        };
        let payment = match outcome {
            Authorization::Approved { reference } => {
                new.processor_reference = reference;
                new.expires_at = chrono::Duration::from_std(self.authorization_validity)
                    .ok()
                    .map(|validity| Utc::now() + validity);
                let payment = store::insert(tx, &new).await?;
                store::append_ledger(
                    tx,
                    &payment,
                    "AUTHORIZATION",
                    payment.amount_minor,
                    "",
                    &request.idempotency_key,
                )
                .await?;
                let event = pb::PaymentAuthorized {
                    payment_id: id.to_string(),
                    order_id: request.order_id.to_string(),
                    amount: convert::money(&payment.currency, payment.amount_minor),
                    authorization_expire_time: payment
                        .authorization_expires_at
                        .map(zentra_runtime::time::chrono_to_timestamp),
                };
                self.emit(tx, &event, &payment).await?;
                payment
            }
            Authorization::Declined { reason, message } => {
                new.status = "DECLINED";
                new.decline_reason = reason.as_str();
                new.decline_message = message;
                let payment = store::insert(tx, &new).await?;
                let event = pb::PaymentDeclined {
                    payment_id: id.to_string(),
                    order_id: request.order_id.to_string(),
                    amount: convert::money(&payment.currency, payment.amount_minor),
                    decline_reason: convert::decline_reason(&payment.decline_reason) as i32,
                    decline_message: message.clone(),
                };
                self.emit(tx, &event, &payment).await?;
                payment
            }
        };
        Ok(payment)
    }

    /// Captures an authorized payment once, fully or partly; never twice.
    pub async fn capture<C: ConnectionTrait>(
        &self,
        tx: &C,
        id: Uuid,
        amount: Option<(String, i64)>,
        key: &str,
    ) -> Result<Payment, PaymentError> {
        let current = store::payment(tx, id).await?;
        let amount_minor = match amount {
            None => current.amount_minor,
            Some((currency, _)) if currency != current.currency => {
                return Err(refused(
                    id,
                    format!("capture currency must be {}", current.currency),
                ));
            }
            Some((_, amount)) => amount,
        };
        let captured = store::update_if(
            tx,
            "status = 'CAPTURED', captured_minor = $2, captured_at = now() \
             WHERE id = $1 AND status = 'AUTHORIZED' AND $2 <= amount_minor \
               AND (authorization_expires_at IS NULL OR authorization_expires_at > now())",
            [id.into(), amount_minor.into()],
        )
        .await?;
        let Some(payment) = captured else {
            return Err(refused(
                id,
                if current.status != "AUTHORIZED" {
                    format!("is {} and cannot be captured", current.status)
                } else if amount_minor > current.amount_minor {
                    format!(
                        "cannot capture {amount_minor} of an authorization of {}",
                        current.amount_minor
                    )
                } else {
                    "authorization has expired".to_owned()
                },
            ));
        };
        store::append_ledger(tx, &payment, "CAPTURE", amount_minor, "", key).await?;
        let event = pb::PaymentCaptured {
            payment_id: id.to_string(),
            order_id: payment.order_id.to_string(),
            captured_amount: convert::money(&payment.currency, payment.captured_minor),
        };
        self.emit(tx, &event, &payment).await?;
        Ok(payment)
    }

    /// Voids an authorization that was not captured.
    pub async fn void<C: ConnectionTrait>(
        &self,
        tx: &C,
        id: Uuid,
        reason: &str,
        key: &str,
    ) -> Result<Payment, PaymentError> {
        let current = store::payment(tx, id).await?;
        let voided = store::update_if(
            tx,
            "status = 'VOIDED', voided_at = now() WHERE id = $1 AND status = 'AUTHORIZED'",
            [id.into()],
        )
        .await?;
        let Some(payment) = voided else {
            return Err(refused(
                id,
                format!("is {} and cannot be voided", current.status),
            ));
        };
        store::append_ledger(tx, &payment, "RELEASE", payment.amount_minor, reason, key).await?;
        let event = pb::PaymentVoided {
            payment_id: id.to_string(),
            order_id: payment.order_id.to_string(),
            reason: reason.to_owned(),
        };
        self.emit(tx, &event, &payment).await?;
        Ok(payment)
    }

    /// Refunds part or all of what was captured; never beyond it.
    pub async fn refund<C: ConnectionTrait>(
        &self,
        tx: &C,
        id: Uuid,
        (currency, amount_minor): (String, i64),
        reason: &str,
        key: &str,
    ) -> Result<Payment, PaymentError> {
        let current = store::payment(tx, id).await?;
        if currency != current.currency {
            return Err(refused(
                id,
                format!("refund currency must be {}", current.currency),
            ));
        }
        let refunded = store::update_if(
            tx,
            "refunded_minor = refunded_minor + $2, last_refund_at = now(), \
             status = CASE WHEN refunded_minor + $2 = captured_minor THEN 'REFUNDED' ELSE 'PARTIALLY_REFUNDED' END \
             WHERE id = $1 AND status IN ('CAPTURED', 'PARTIALLY_REFUNDED') \
               AND refunded_minor + $2 <= captured_minor",
            [id.into(), amount_minor.into()],
        )
        .await?;
        let Some(payment) = refunded else {
            return Err(refused(
                id,
                match current.status.as_str() {
                    "CAPTURED" | "PARTIALLY_REFUNDED" => format!(
                        "cannot refund {amount_minor}: {} of {} captured is left",
                        current.captured_minor - current.refunded_minor,
                        current.captured_minor
                    ),
                    status => format!("is {status} and cannot be refunded"),
                },
            ));
        };
        store::append_ledger(tx, &payment, "REFUND", amount_minor, reason, key).await?;
        let event = pb::PaymentRefunded {
            payment_id: id.to_string(),
            order_id: payment.order_id.to_string(),
            amount: convert::money(&payment.currency, amount_minor),
            refunded_amount: convert::money(&payment.currency, payment.refunded_minor),
            status: convert::status(&payment.status) as i32,
            reason: reason.to_owned(),
        };
        self.emit(tx, &event, &payment).await?;
        Ok(payment)
    }

    async fn emit<C: ConnectionTrait, M: prost::Name>(
        &self,
        tx: &C,
        event: &M,
        payment: &Payment,
    ) -> Result<(), PaymentError> {
        let meta = EventMeta {
            producer: SERVICE,
            aggregate_type: "payment",
            aggregate_id: payment.id.to_string(),
            correlation_id: payment.order_id.to_string(),
            causation_id: String::new(),
        };
        self.events_topic.emit(tx, event, meta).await?;
        Ok(())
    }
}

fn refused(id: Uuid, reason: String) -> PaymentError {
    PaymentError::Refused {
        payment_id: id.to_string(),
        reason,
    }
}
