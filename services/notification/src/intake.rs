//! Turns order, payment and shipment events into notifications. Each event is claimed in the
//! inbox in the same transaction as the notification it creates, so a redelivered event creates
//! nothing new.

use std::sync::Arc;

use sea_orm::DatabaseTransaction;
use tokio::sync::Notify;
use uuid::Uuid;
use zentra_proto::order::v1 as order;
use zentra_runtime::{
    events::payload,
    inbox,
    kafka::{EventHandler, HandlerError, ReceivedEvent},
};

use crate::{render::render, store};

/// Inbox consumer name.
pub const CONSUMER: &str = "notification-intake";

/// The event handler.
#[derive(Clone)]
pub struct Intake {
    customer_email_domain: String,
    /// Wakes the delivery worker once new notifications committed.
    delivery: Arc<Notify>,
}

impl Intake {
    /// Intake addressing customers without an e-mail id at `customer_email_domain`, waking
    /// `delivery` when it created notifications.
    pub fn new(customer_email_domain: String, delivery: Arc<Notify>) -> Self {
        Self {
            customer_email_domain,
            delivery,
        }
    }

    /// A customer's address: the id itself when it is one, else `<id>@<domain>`.
    fn recipient(&self, customer_id: &str) -> String {
        if customer_id.contains('@') {
            customer_id.to_owned()
        } else {
            format!("{customer_id}@{}", self.customer_email_domain)
        }
    }
}

impl EventHandler for Intake {
    /// Whether a notification was created.
    type Applied = bool;

    async fn handle(
        &self,
        event: &ReceivedEvent,
        tx: &DatabaseTransaction,
    ) -> Result<bool, HandlerError> {
        let transient = |error: sea_orm::DbErr| HandlerError::Transient(error.to_string());
        let envelope = &event.envelope;
        let event_id = Uuid::parse_str(&envelope.event_id).map_err(|_| {
            HandlerError::Permanent(format!("event id {} is not a UUID", envelope.event_id))
        })?;
        let placed = payload::<order::OrderPlaced>(envelope);
        let rendered = render(envelope);
        if placed.is_none() && rendered.is_none() {
            // Nothing to remember or send: no transaction, no inbox entry.
            return Ok(false);
        }
        if !inbox::claim(tx, CONSUMER, &envelope.event_id, &event.topic)
            .await
            .map_err(transient)?
        {
            return Ok(false);
        }
        let mut created = false;
        if let Some(placed) = placed
            && let Ok(order_id) = Uuid::parse_str(&placed.order_id)
        {
            store::remember_customer(tx, order_id, &placed.customer_id)
                .await
                .map_err(transient)?;
        }
        if let Some(rendered) = rendered {
            let order_id = Uuid::parse_str(&rendered.order_id).map_err(|_| {
                HandlerError::Permanent(format!("order id {} is not a UUID", rendered.order_id))
            })?;
            let customer_id = match rendered.customer_id {
                Some(customer_id) => Some(customer_id),
                None => store::customer_of(tx, order_id).await.map_err(transient)?,
            };
            match customer_id {
                Some(customer_id) => {
                    let new = store::NewNotification {
                        event_id,
                        event_type: envelope.event_type.clone(),
                        recipient: self.recipient(&customer_id),
                        customer_id,
                        order_id,
                        subject: rendered.subject,
                        body: format!(
                            "{}\n\n-- \nZentra (event {})\n",
                            rendered.body, envelope.event_id
                        ),
                    };
                    store::insert(tx, &new).await.map_err(transient)?;
                    created = true;
                }
                None => {
                    tracing::info!(%order_id, event_type = %envelope.event_type, "no customer known for order; not notified")
                }
            }
        }
        Ok(created)
    }

    fn committed(&self, applied: Vec<bool>) {
        // One worker per new mail: each wakes a different idle worker, or leaves the permit for
        // one that is between rounds. Waking every worker for one mail sent the others to find
        // nothing, a transaction each.
        for _ in applied.iter().filter(|created| **created) {
            self.delivery.notify_one();
        }
    }
}
