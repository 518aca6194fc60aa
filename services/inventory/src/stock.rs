//! Inventory's operations. Each runs in one transaction together with the events it emits
//! (outbox), so state and events never disagree.

use chrono::Utc;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use uuid::Uuid;
use zentra_proto::{common::v1::Money, inventory::v1 as pb};
use zentra_runtime::{
    events::{EventMeta, EventTopic},
    group_commit::GroupCommit,
    outbox::OutboxWaker,
};

use crate::{
    convert,
    domain::{ReserveStock, SetProductPrice},
    error::InventoryError,
    store::{self, ProductRow, Reservation, ReservationState},
};

/// Name of the service, as producer of its events.
pub const SERVICE: &str = "inventory";

/// Topic names, with the configured prefix.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Where every inventory event goes.
    pub events: EventTopic,
}

/// The operations, over one database.
#[derive(Clone)]
pub struct Stock {
    db: DatabaseConnection,
    topics: Topics,
    waker: Option<OutboxWaker>,
    group: GroupCommit,
}

impl Stock {
    /// Operations over `db`, emitting to `topics`, waking the relay after each commit. Writes
    /// that lock several products commit through `group`, which runs them one after another: a
    /// batch takes products in no fixed order, and with one writer no two can deadlock.
    pub fn new(
        db: DatabaseConnection,
        topics: Topics,
        waker: Option<OutboxWaker>,
        group: GroupCommit,
    ) -> Self {
        Self {
            db,
            topics,
            waker,
            group,
        }
    }

    /// The database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Where writes that lock products commit.
    pub fn group(&self) -> &GroupCommit {
        &self.group
    }

    /// Tells the relay that events were committed.
    pub fn committed(&self) {
        if let Some(waker) = &self.waker {
            waker.wake();
        }
    }

    /// Reserves every line or nothing, inside `tx`; emits StockReserved (and StockLow where a line
    /// crosses its threshold).
    pub async fn reserve<C: ConnectionTrait>(
        &self,
        tx: &C,
        request: &ReserveStock,
        hold: std::time::Duration,
    ) -> Result<Reservation, InventoryError> {
        let reservation_id = Uuid::now_v7();
        let expires_at = Utc::now()
            + chrono::Duration::from_std(hold).unwrap_or_else(|_| chrono::Duration::hours(24));
        let mut low = Vec::new();
        // Lines are sorted by SKU, so concurrent reservations lock products in the same order.
        for (sku, quantity) in &request.lines {
            let taken = store::take_stock(tx, sku, *quantity).await?;
            let before = taken.available + quantity;
            if taken.available <= taken.low_stock_threshold && before > taken.low_stock_threshold {
                low.push(taken);
            }
        }
        let reservation = store::insert_reservation(
            tx,
            reservation_id,
            request.order_id,
            &request.lines,
            expires_at,
        )
        .await?;
        let reserved = pb::StockReserved {
            reservation_id: reservation_id.to_string(),
            order_id: request.order_id.to_string(),
            lines: convert::lines(&reservation.lines),
            expire_time: Some(zentra_runtime::time::chrono_to_timestamp(expires_at)),
        };
        self.emit(tx, &reserved, &reservation).await?;
        for taken in low {
            let event = pb::StockLow {
                sku: taken.sku.clone(),
                available: taken.available,
                low_stock_threshold: taken.low_stock_threshold,
            };
            let meta = EventMeta {
                producer: SERVICE,
                aggregate_type: "product",
                aggregate_id: taken.sku.clone(),
                correlation_id: request.order_id.to_string(),
                causation_id: String::new(),
            };
            self.topics.events.emit(tx, &event, meta).await?;
        }
        Ok(reservation)
    }

    /// Pins a pending reservation so that it never expires: its goods are about to be promised to
    /// a shipment, and from then on the reservation can only be confirmed (or, if the shipment
    /// never leaves, released). Pinning twice, or pinning a confirmed reservation, is a no-op.
    pub async fn pin<C: ConnectionTrait>(
        &self,
        tx: &C,
        reservation_id: Uuid,
    ) -> Result<Reservation, InventoryError> {
        let reservation = store::reservation(tx, reservation_id, true).await?;
        if !still_held(&reservation, "pinned")? || reservation.pinned_at.is_some() {
            return Ok(reservation);
        }
        match store::pin(tx, &reservation).await? {
            Some(pinned) => Ok(pinned),
            None => Ok(reservation),
        }
    }

    /// Sets a product's price inside `tx`; emits ProductPriceChanged.
    pub async fn set_price<C: ConnectionTrait>(
        &self,
        tx: &C,
        change: &SetProductPrice,
    ) -> Result<ProductRow, InventoryError> {
        let repriced = store::set_price(tx, &change.sku, &change.price).await?;
        let event = pb::ProductPriceChanged {
            sku: change.sku.to_string(),
            previous_price: Some(Money {
                currency_code: repriced.previous_currency.clone(),
                amount_minor: repriced.previous_minor,
            }),
            unit_price: Some(change.price.to_proto()),
        };
        let meta = EventMeta {
            producer: SERVICE,
            aggregate_type: "product",
            aggregate_id: change.sku.to_string(),
            correlation_id: change.sku.to_string(),
            causation_id: String::new(),
        };
        self.topics.events.emit(tx, &event, meta).await?;
        Ok(repriced.product)
    }

    /// Confirms a pending reservation (its stock is sold); confirming twice is a no-op.
    pub async fn confirm<C: ConnectionTrait>(
        &self,
        tx: &C,
        reservation_id: Uuid,
    ) -> Result<Reservation, InventoryError> {
        let reservation = store::reservation(tx, reservation_id, true).await?;
        if !still_held(&reservation, "confirmed")? {
            return Ok(reservation);
        }
        let confirmed = store::settle(tx, &reservation, ReservationState::Confirmed, "").await?;
        let event = pb::ReservationConfirmed {
            reservation_id: reservation_id.to_string(),
            order_id: reservation.order_id.to_string(),
        };
        self.emit(tx, &event, &reservation).await?;
        Ok(confirmed)
    }

    /// Releases a pending reservation (its stock returns); releasing a released or expired one
    /// is a no-op, releasing a confirmed one is refused.
    pub async fn release<C: ConnectionTrait>(
        &self,
        tx: &C,
        reservation_id: Uuid,
        reason: &str,
    ) -> Result<Reservation, InventoryError> {
        let reservation = store::reservation(tx, reservation_id, true).await?;
        match reservation.state {
            ReservationState::Released | ReservationState::Expired => return Ok(reservation),
            ReservationState::Pending => {}
            ReservationState::Confirmed => {
                return Err(InventoryError::IllegalTransition {
                    reservation_id: reservation_id.to_string(),
                    status: "CONFIRMED",
                    action: "released",
                });
            }
        }
        let released = store::settle(tx, &reservation, ReservationState::Released, reason).await?;
        let event = pb::ReservationReleased {
            reservation_id: reservation_id.to_string(),
            order_id: reservation.order_id.to_string(),
            reason: reason.to_owned(),
        };
        self.emit(tx, &event, &reservation).await?;
        Ok(released)
    }

    /// Returns the stock of up to `limit` expired pending reservations, one transaction each
    /// (shared with the calls of the moment, through the group); returns how many.
    pub async fn expire_due(&self, limit: u64) -> Result<usize, InventoryError> {
        let mut expired = 0;
        while (expired as u64) < limit {
            let stock = self.clone();
            let done = self
                .group
                .run(move |tx| Box::pin(async move { stock.expire_one(tx).await }))
                .await?;
            let Some(reservation) = done.value else {
                break;
            };
            if done.emitted {
                self.committed();
            }
            expired += 1;
            tracing::info!(reservation_id = %reservation.id, order_id = %reservation.order_id, "reservation expired");
        }
        Ok(expired)
    }

    /// Expires one due pending reservation, if there is one.
    async fn expire_one<C: ConnectionTrait>(
        &self,
        tx: &C,
    ) -> Result<Option<Reservation>, InventoryError> {
        let Some(id) = store::lock_expired(tx, 1).await?.pop() else {
            return Ok(None);
        };
        let reservation = store::reservation(tx, id, false).await?;
        store::settle(tx, &reservation, ReservationState::Expired, "hold expired").await?;
        let event = pb::ReservationExpired {
            reservation_id: id.to_string(),
            order_id: reservation.order_id.to_string(),
        };
        self.emit(tx, &event, &reservation).await?;
        Ok(Some(reservation))
    }

    async fn emit<C: ConnectionTrait, M: prost::Name>(
        &self,
        tx: &C,
        event: &M,
        reservation: &Reservation,
    ) -> Result<bool, InventoryError> {
        let meta = EventMeta {
            producer: SERVICE,
            aggregate_type: "reservation",
            aggregate_id: reservation.id.to_string(),
            correlation_id: reservation.order_id.to_string(),
            causation_id: String::new(),
        };
        Ok(self.topics.events.emit(tx, event, meta).await?)
    }
}

/// Whether `reservation` still holds its stock, so that it can be `action` (confirmed, pinned):
/// `false` when it is confirmed already (nothing left to do); FAILED_PRECONDITION when its stock
/// went back, released or expired. A pending hold past its expiry that the sweep has not reached
/// yet is as good as expired, unless it is pinned.
fn still_held(reservation: &Reservation, action: &'static str) -> Result<bool, InventoryError> {
    let status = match reservation.state {
        ReservationState::Confirmed => return Ok(false),
        ReservationState::Pending
            if reservation.pinned_at.is_none() && reservation.expires_at <= Utc::now() =>
        {
            "EXPIRED"
        }
        ReservationState::Pending => return Ok(true),
        other => other.as_str(),
    };
    Err(InventoryError::IllegalTransition {
        reservation_id: reservation.id.to_string(),
        status,
        action,
    })
}

/// Expires reservations every `interval` until `shutdown`.
pub async fn run_expiry(
    stock: Stock,
    interval: std::time::Duration,
    shutdown: zentra_runtime::CancellationToken,
) {
    loop {
        // Drain in batches so a backlog clears quickly.
        loop {
            match stock.expire_due(100).await {
                Ok(100) => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "reservation expiry sweep failed");
                    break;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
