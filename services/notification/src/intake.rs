//! Turns order, payment and shipment events into notifications. Each event is claimed in the
//! inbox in the same transaction as the notification it creates, so a redelivered event creates
//! nothing new.

use std::sync::Arc;

use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction};
use tokio::sync::Notify;
use uuid::Uuid;
use zentra_proto::order::v1 as order;
use zentra_runtime::{
    events::payload,
    inbox::{self, Claimed},
    kafka::{EventHandler, Fence, HandlerError, ReceivedEvent},
    status::Violations,
    validate::check_email,
};

use crate::{
    render::{RENDERED, render},
    store,
};

/// Inbox consumer name.
pub const CONSUMER: &str = "notification-intake";

/// The event handler.
#[derive(Clone)]
pub struct Intake {
    /// Wakes the delivery worker once new notifications committed.
    delivery: Arc<Notify>,
}

impl Intake {
    /// Intake waking `delivery` when it created notifications.
    pub fn new(delivery: Arc<Notify>) -> Self {
        Self { delivery }
    }
}

/// What an event asks of the store, read from it before any database work.
struct Prepared {
    entry: inbox::Entry,
    intake: store::Intake,
    /// The order of the mail asked for, if any.
    order_id: Option<Uuid>,
    event_type: String,
}

impl Intake {
    /// What `event` asks for; `None` when it asks for nothing (no inbox entry either).
    fn prepare(event: &ReceivedEvent) -> Result<Option<Prepared>, HandlerError> {
        let envelope = &event.envelope;
        let event_id = Uuid::parse_str(&envelope.event_id).map_err(|_| {
            HandlerError::Permanent(format!("event id {} is not a UUID", envelope.event_id))
        })?;
        let placed = payload::<order::OrderPlaced>(envelope);
        let rendered = render(envelope);
        if placed.is_none() && rendered.is_none() {
            return Ok(None);
        }
        let entry = inbox::Entry::new(CONSUMER, &envelope.event_id, &event.topic)
            .map_err(|error| HandlerError::Permanent(error.to_string()))?;
        // The order service validated the address at placement; a record from elsewhere that
        // carries no valid one mails nobody.
        let remember = placed.and_then(|placed| {
            let email = valid_or_nobody(&placed.customer_email);
            Uuid::parse_str(&placed.order_id)
                .ok()
                .map(|order_id| (order_id, placed.customer_id, email))
        });
        let mail = match rendered {
            Some(rendered) => Some(store::NewNotification {
                event_id,
                event_type: envelope.event_type.clone(),
                customer_id: rendered.customer_id,
                // Empty: the event does not say (older events); the remembered one then.
                customer_email: rendered
                    .customer_email
                    .filter(|email| !email.is_empty())
                    .map(|email| valid_or_nobody(&email)),
                order_id: Uuid::parse_str(&rendered.order_id).map_err(|_| {
                    HandlerError::Permanent(format!("order id {} is not a UUID", rendered.order_id))
                })?,
                subject: rendered.subject,
                body: format!(
                    "{}\n\n-- \nZentra (event {})\n",
                    rendered.body, envelope.event_id
                ),
            }),
            None => None,
        };
        Ok(Some(Prepared {
            entry,
            order_id: mail.as_ref().map(|mail| mail.order_id),
            intake: store::Intake { remember, mail },
            event_type: envelope.event_type.clone(),
        }))
    }

    /// Writes what `prepared` asks for in one statement; `fence` moves the offset with it.
    async fn take<C: ConnectionTrait>(
        prepared: Prepared,
        db: &C,
        fence: Option<Fence>,
    ) -> Result<Claimed<bool>, HandlerError> {
        let Prepared {
            entry,
            intake,
            order_id,
            event_type,
        } = prepared;
        let entry = entry.fenced(fence);
        let taken = store::take_in(db, &entry, intake)
            .await
            .map_err(|error| HandlerError::Transient(error.to_string()))?;
        if let (Claimed::First(false), Some(order_id)) = (taken, order_id) {
            tracing::info!(%order_id, event_type = %event_type, "no e-mail address known for order; not notified");
        }
        Ok(taken)
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
        let Some(prepared) = Self::prepare(event)? else {
            // Nothing to remember or send: no inbox entry.
            return Ok(false);
        };
        Ok(matches!(
            Self::take(prepared, tx, None).await?,
            Claimed::First(true)
        ))
    }

    fn handle_alone(
        &self,
        event: &ReceivedEvent,
        db: &DatabaseConnection,
        fence: Fence,
    ) -> Option<impl Future<Output = Result<Claimed<bool>, HandlerError>> + Send> {
        // An event that asks for nothing writes nothing: its offset moves with a transaction.
        let prepared = Self::prepare(event).transpose()?;
        Some(async move { Self::take(prepared?, db, Some(fence)).await })
    }

    fn ignores(&self, event: &ReceivedEvent) -> bool {
        // OrderPlaced, the one event remembered, is also rendered.
        !RENDERED.contains(&event.envelope.event_type.as_str())
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

/// `email` if it is a valid address, else empty: nobody is mailed.
fn valid_or_nobody(email: &str) -> String {
    let mut violations = Violations::new();
    check_email("customer_email", email, &mut violations);
    if violations.is_empty() {
        email.to_owned()
    } else {
        String::new()
    }
}
