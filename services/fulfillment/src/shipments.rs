//! Shipment operations and the worker that moves shipments PENDING → PICKING → PACKED →
//! DISPATCHED. Each step commits with its events, so a restart resumes from the database and no
//! step (in particular, dispatch) happens twice; the due steps of up to [`BATCH`] shipments share
//! one transaction, and when steps take no time a shipment takes all of them in that one.

use std::sync::Arc;

use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait as _};
use tokio::sync::Notify;
use tracing::Instrument as _;
use uuid::Uuid;
use zentra_proto::{common::v1::Address, fulfillment::v1 as pb};
use zentra_runtime::{
    CancellationToken,
    events::{EventMeta, EventTopic},
    group_commit::GroupCommit,
    outbox::OutboxWaker,
};

use crate::{
    config::FulfillmentSettings,
    convert,
    error::FulfillmentError,
    store::{self, Shipment},
};

/// Name of the service, as producer of its events.
pub const SERVICE: &str = "fulfillment";

/// Shipments advanced in one transaction at most.
pub const BATCH: u32 = 32;

/// The operations.
#[derive(Clone)]
pub struct Shipments {
    db: DatabaseConnection,
    events_topic: EventTopic,
    waker: OutboxWaker,
    settings: FulfillmentSettings,
    worker: Arc<Notify>,
    group: GroupCommit,
}

impl Shipments {
    /// Operations over `db`.
    pub fn new(
        db: DatabaseConnection,
        events_topic: EventTopic,
        waker: OutboxWaker,
        settings: FulfillmentSettings,
        group: GroupCommit,
    ) -> Self {
        Self {
            db,
            events_topic,
            waker,
            settings,
            worker: Arc::new(Notify::new()),
            group,
        }
    }

    /// The database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Where shipments are created and cancelled, together when calls come together.
    pub fn group(&self) -> &GroupCommit {
        &self.group
    }

    /// After a commit: wakes the relay when `emitted` events, and the worker, as a shipment
    /// may be due.
    pub fn committed(&self, emitted: bool) {
        if emitted {
            self.waker.wake();
        }
        self.worker.notify_one();
    }

    /// Accepts a shipment; the worker takes it from here.
    pub async fn create<C: ConnectionTrait>(
        &self,
        tx: &C,
        order_id: Uuid,
        address: &Address,
        lines: &[(String, i64)],
    ) -> Result<Shipment, FulfillmentError> {
        let shipment = store::insert(
            tx,
            Uuid::now_v7(),
            order_id,
            address,
            lines,
            self.settings.step_delay,
        )
        .await?;
        let event = pb::ShipmentCreated {
            shipment_id: shipment.row.id.to_string(),
            order_id: order_id.to_string(),
            lines: convert::lines(&shipment),
            shipping_address: Some(address.clone()),
        };
        self.emit(tx, &event, &shipment).await?;
        Ok(shipment)
    }

    /// Cancels a shipment that has not been dispatched; cancelling twice is a no-op.
    pub async fn cancel<C: ConnectionTrait>(
        &self,
        tx: &C,
        id: Uuid,
        reason: &str,
    ) -> Result<Shipment, FulfillmentError> {
        let cancelled = store::transition(
            tx,
            id,
            &["PENDING", "PICKING", "PACKED"],
            "status = 'CANCELLED', cancellation_reason = $3, cancelled_at = now(), next_step_at = NULL",
            vec![reason.into()],
        )
        .await?;
        let cancelled = match cancelled {
            Some(row) => Some(store::with_its_lines(tx, row).await?),
            None => None,
        };
        let Some(shipment) = cancelled else {
            let current = store::shipment(tx, id).await?;
            if current.row.status == "CANCELLED" {
                return Ok(current);
            }
            return Err(FulfillmentError::IllegalTransition {
                shipment_id: id.to_string(),
                status: current.row.status,
                action: "cancelled",
            });
        };
        let event = pb::ShipmentCancelled {
            shipment_id: id.to_string(),
            order_id: shipment.row.order_id.to_string(),
            reason: reason.to_owned(),
        };
        self.emit(tx, &event, &shipment).await?;
        Ok(shipment)
    }

    /// Advances each due shipment, up to `limit` of them, in one transaction: by one step, or
    /// by every step that is due at once when steps take no time (`step_delay` zero). Returns
    /// how many were due.
    pub async fn advance_due(&self, limit: u32) -> Result<usize, FulfillmentError> {
        let tx = self.db.begin().await?;
        let due = store::lock_due(&tx, limit).await?;
        if due.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        let count = due.len();
        let (advanced, emitted) = zentra_runtime::events::tracked(async {
            for mut shipment in due {
                // The worker's steps continue the trace the shipment was created in.
                let span = tracing::info_span!(
                    "advance shipment",
                    zentra.order_id = %shipment.row.order_id,
                    zentra.shipment_id = %shipment.row.id,
                    zentra.shipment.from = %shipment.row.status,
                    zentra.shipment.to = tracing::field::Empty,
                );
                zentra_runtime::events::continue_trace(&span, &shipment.row.traceparent, "");
                async {
                    while let Some(next) = self.advance(&tx, &shipment).await? {
                        tracing::Span::current()
                            .record("zentra.shipment.to", next.row.status.as_str());
                        let more = self.settings.step_delay.is_zero()
                            && ["PICKING", "PACKED"].contains(&next.row.status.as_str());
                        if !more {
                            break;
                        }
                        shipment = next;
                    }
                    Ok::<_, FulfillmentError>(())
                }
                .instrument(span)
                .await?;
            }
            Ok::<_, FulfillmentError>(())
        })
        .await;
        advanced?;
        tx.commit().await?;
        if emitted {
            self.waker.wake();
        }
        Ok(count)
    }

    /// Moves one locked shipment one step on, with its events; the shipment as it is now, or
    /// `None` when it had no step to take.
    async fn advance<C: ConnectionTrait>(
        &self,
        tx: &C,
        current: &Shipment,
    ) -> Result<Option<Shipment>, FulfillmentError> {
        let id = current.row.id;
        let delay = self.settings.step_delay.as_millis() as i64;
        let next_step = "next_step_at = now() + $3 * interval '1 millisecond'";
        let (to, moved) = match current.row.status.as_str() {
            "PENDING" => ("PICKING", store::transition(tx, id, &["PENDING"], &format!("status = 'PICKING', picking_at = now(), {next_step}"), vec![delay.into()]).await?),
            "PICKING" => match self.unshippable(current) {
                Some(reason) => ("FAILED", store::transition(tx, id, &["PICKING"], "status = 'FAILED', failure_reason = $3, failed_at = now(), next_step_at = NULL", vec![reason.into()]).await?),
                None => ("PACKED", store::transition(tx, id, &["PICKING"], &format!("status = 'PACKED', packed_at = now(), {next_step}"), vec![delay.into()]).await?),
            },
            "PACKED" => {
                let tracking = format!("ZT{}", id.simple().to_string()[..12].to_uppercase());
                ("DISPATCHED", store::transition(tx, id, &["PACKED"], "status = 'DISPATCHED', carrier = 'zentra-post', tracking_number = $3, dispatched_at = now(), next_step_at = NULL", vec![tracking.into()]).await?)
            }
            _ => ("", None),
        };
        let Some(row) = moved else {
            return Ok(None);
        };
        // The lines do not change with the status.
        let shipment = Shipment::new(row, current.lines.clone())?;
        let changed = pb::ShipmentStatusChanged {
            shipment_id: id.to_string(),
            order_id: shipment.row.order_id.to_string(),
            from_status: convert::status(&current.row.status) as i32,
            to_status: convert::status(to) as i32,
        };
        self.emit(tx, &changed, &shipment).await?;
        match to {
            "DISPATCHED" => {
                let event = pb::ShipmentDispatched {
                    shipment_id: id.to_string(),
                    order_id: shipment.row.order_id.to_string(),
                    carrier: shipment.row.carrier.clone(),
                    tracking_number: shipment.row.tracking_number.clone(),
                };
                self.emit(tx, &event, &shipment).await?;
            }
            "FAILED" => {
                let event = pb::ShipmentFailed {
                    shipment_id: id.to_string(),
                    order_id: shipment.row.order_id.to_string(),
                    failure_reason: shipment.row.failure_reason.clone(),
                };
                self.emit(tx, &event, &shipment).await?;
            }
            _ => {}
        }
        tracing::info!(shipment_id = %id, from = %current.row.status, to, "shipment advanced");
        Ok(Some(shipment))
    }

    fn unshippable(&self, shipment: &Shipment) -> Option<String> {
        if self
            .settings
            .unshippable_countries
            .contains(&shipment.row.country_code)
        {
            return Some(format!("no carrier serves {}", shipment.row.country_code));
        }
        let prefix = &self.settings.unshippable_sku_prefix;
        shipment
            .lines
            .iter()
            .find(|(sku, _)| !prefix.is_empty() && sku.starts_with(prefix.as_str()))
            .map(|(sku, _)| format!("{sku} cannot be shipped"))
    }

    async fn emit<C: ConnectionTrait, M: prost::Name>(
        &self,
        tx: &C,
        event: &M,
        shipment: &Shipment,
    ) -> Result<(), FulfillmentError> {
        let meta = EventMeta {
            producer: SERVICE,
            aggregate_type: "shipment",
            aggregate_id: shipment.row.id.to_string(),
            correlation_id: shipment.row.order_id.to_string(),
            causation_id: String::new(),
        };
        self.events_topic.emit(tx, event, meta).await?;
        Ok(())
    }
}

/// Advances due shipments until `shutdown`. Between rounds it sleeps until the next step is due,
/// a shipment is created, or `poll_interval` passed, whichever comes first.
pub async fn run_worker(shipments: Shipments, shutdown: CancellationToken) {
    let interval = shipments.settings.poll_interval;
    loop {
        loop {
            match shipments.advance_due(BATCH).await {
                // A full batch may have left due shipments behind.
                Ok(due) if due == BATCH as usize => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "shipment step failed");
                    break;
                }
            }
        }
        let wait = match store::next_due_in(&shipments.db).await {
            Ok(Some(due)) => due.min(interval),
            Ok(None) => interval,
            Err(error) => {
                tracing::warn!(%error, "cannot read when the next shipment step is due");
                interval
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = shipments.worker.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}
