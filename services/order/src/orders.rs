//! The order service's operations; each runs inside the caller's transaction together with the
//! event it emits (outbox).

use sea_orm::{ConnectionTrait, DatabaseConnection};
use uuid::Uuid;
use zentra_proto::order::v1 as pb;
use zentra_runtime::{
    events::{EventMeta, EventTopic},
    group_commit::GroupCommit,
    outbox::OutboxWaker,
};

use crate::{
    convert,
    domain::{OrderState, PlaceOrder},
    error::OrderError,
    store::{self, Change, Order},
};

/// Name of the service, as producer of its events.
pub const SERVICE: &str = "order";

/// The operations over one database.
#[derive(Clone)]
pub struct Orders {
    db: DatabaseConnection,
    events_topic: EventTopic,
    waker: OutboxWaker,
    group: GroupCommit,
}

impl Orders {
    /// Operations over `db`, emitting to `events_topic`; status changes commit through `group`.
    pub fn new(
        db: DatabaseConnection,
        events_topic: EventTopic,
        waker: OutboxWaker,
        group: GroupCommit,
    ) -> Self {
        Self {
            db,
            events_topic,
            waker,
            group,
        }
    }

    /// The database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Where status changes commit, together when they come together.
    pub fn group(&self) -> &GroupCommit {
        &self.group
    }

    /// Tells the relay that events were committed.
    pub fn committed(&self) {
        self.waker.wake();
    }

    /// Stores a placed order as PENDING and emits OrderPlaced.
    pub async fn place<C: ConnectionTrait>(
        &self,
        tx: &C,
        order: &PlaceOrder,
        idempotency_key: &str,
    ) -> Result<Order, OrderError> {
        let id = Uuid::now_v7();
        let stored = store::insert(tx, id, order, idempotency_key).await?;
        let event = pb::OrderPlaced {
            order_id: id.to_string(),
            customer_id: stored.customer_id.clone(),
            lines: convert::lines(&stored),
            total: convert::total(&stored),
            payment_method_token: stored.payment_method_token.clone(),
            shipping_address: Some(stored.shipping_address.clone()),
            customer_email: stored.customer_email.clone(),
        };
        self.emit(tx, &event, &stored).await?;
        Ok(stored)
    }

    /// Moves an order to `change.to` and emits the matching event.
    pub async fn change<C: ConnectionTrait>(
        &self,
        tx: &C,
        id: Uuid,
        change: Change<'_>,
    ) -> Result<Order, OrderError> {
        let order = store::change_status(tx, id, change).await?;
        let order_id = id.to_string();
        let customer_id = order.customer_id.clone();
        let reason = change.reason.to_owned();
        match change.to {
            OrderState::Confirmed => {
                let event = pb::OrderConfirmed {
                    order_id,
                    customer_id,
                    total: convert::total(&order),
                    customer_email: order.customer_email.clone(),
                };
                self.emit(tx, &event, &order).await?;
            }
            OrderState::Rejected => {
                let event = pb::OrderRejected {
                    order_id,
                    customer_id,
                    reason,
                    customer_email: order.customer_email.clone(),
                };
                self.emit(tx, &event, &order).await?;
            }
            OrderState::CancellationRequested => {
                let event = pb::OrderCancellationRequested {
                    order_id,
                    customer_id,
                    reason,
                };
                self.emit(tx, &event, &order).await?;
            }
            OrderState::Cancelled => {
                let event = pb::OrderCancelled {
                    order_id,
                    customer_id,
                    reason: order.cancellation_reason.clone(),
                    customer_email: order.customer_email.clone(),
                };
                self.emit(tx, &event, &order).await?;
            }
            OrderState::Pending => {}
        }
        Ok(order)
    }

    async fn emit<C: ConnectionTrait, M: prost::Name>(
        &self,
        tx: &C,
        event: &M,
        order: &Order,
    ) -> Result<(), OrderError> {
        let meta = EventMeta {
            producer: SERVICE,
            aggregate_type: "order",
            aggregate_id: order.id.to_string(),
            correlation_id: order.id.to_string(),
            causation_id: String::new(),
        };
        self.events_topic.emit(tx, event, meta).await?;
        Ok(())
    }
}
