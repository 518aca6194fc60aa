//! Reconciliation: PENDING orders older than a bound that have no saga (their OrderPlaced was
//! lost, for example when an in-memory broker restarted) get their saga started, so no order
//! stays PENDING forever. A customer's cancellation whose event was lost reaches its saga the
//! same way: the order service's CANCELLATION_REQUESTED orders are the truth.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use zentra_proto::{
    common::v1::{PageRequest, TimeRange},
    order::v1 as order,
};
use zentra_runtime::time::to_timestamp;

use crate::{engine::Engine, grpc::placed, machine::Signal, metric_names, store};

/// Orders looked at per page.
const PAGE_SIZE: i32 = 200;

/// One sweep: starts the missing sagas of PENDING orders, and of orders whose customer asked to
/// cancel before any saga existed (those compensate at once); returns how many it started.
pub async fn sweep(engine: &Engine, older_than: Duration) -> anyhow::Result<usize> {
    let mut started = 0;
    for status in [
        order::OrderStatus::Pending,
        order::OrderStatus::CancellationRequested,
    ] {
        started += sweep_status(engine, older_than, status).await?;
    }
    Ok(started)
}

async fn sweep_status(
    engine: &Engine,
    older_than: Duration,
    status: order::OrderStatus,
) -> anyhow::Result<usize> {
    let downstreams = engine.downstreams();
    let end = std::time::SystemTime::now() - older_than;
    let mut page_token = String::new();
    let mut started = 0;
    loop {
        let response = downstreams
            .order_client()
            .list_orders(downstreams.request(order::ListOrdersRequest {
                page: Some(PageRequest {
                    page_size: PAGE_SIZE,
                    page_token: page_token.clone(),
                }),
                status: status as i32,
                customer_id: String::new(),
                create_time_range: Some(TimeRange {
                    start_time: None,
                    end_time: Some(to_timestamp(end)),
                }),
            }))
            .await?
            .into_inner();
        let ids: Vec<Uuid> = response
            .orders
            .iter()
            .filter_map(|order| Uuid::parse_str(&order.order_id).ok())
            .collect();
        let known = store::orders_with_sagas(engine.db(), &ids).await?;
        if status == order::OrderStatus::CancellationRequested {
            signal_unheard_cancellations(engine, &response.orders, &ids).await?;
        }
        for order in response.orders {
            let Ok(id) = Uuid::parse_str(&order.order_id) else {
                continue;
            };
            if known.contains(&id) {
                continue;
            }
            let cancel_request = (status == order::OrderStatus::CancellationRequested)
                .then(|| order.cancellation_reason.clone());
            let (saga, created) = engine.start_saga(placed(order), cancel_request).await?;
            if created {
                started += 1;
                metrics::counter!(metric_names::SAGAS_RECONCILED).increment(1);
                tracing::warn!(order_id = %id, saga_id = %saga.id, "pending order had no saga; started it");
            }
        }
        page_token = response.page.unwrap_or_default().next_page_token;
        if page_token.is_empty() {
            return Ok(started);
        }
    }
}

/// Hands the cancellation to each saga of `orders` that is going forward without having heard
/// of it (its OrderCancellationRequested was lost): the signal the event would have left.
async fn signal_unheard_cancellations(
    engine: &Engine,
    orders: &[order::Order],
    ids: &[Uuid],
) -> anyhow::Result<()> {
    for order_id in store::cancellations_unheard(engine.db(), ids).await? {
        let reason = orders
            .iter()
            .find(|order| order.order_id == order_id.to_string())
            .map(|order| order.cancellation_reason.clone())
            .unwrap_or_default();
        let signal = Signal::CustomerCancelled { reason };
        if store::add_signal_by_order(engine.db(), order_id, &signal).await? {
            metrics::counter!(metric_names::CANCELLATIONS_RECONCILED).increment(1);
            tracing::warn!(%order_id, "the saga had not heard of the customer's cancellation; signalled it");
        }
    }
    Ok(())
}

/// Sweeps every `interval` until `shutdown`.
pub async fn run(
    engine: Arc<Engine>,
    interval: Duration,
    older_than: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(error) = sweep(&engine, older_than).await {
            tracing::warn!(%error, "reconciliation sweep failed");
        }
    }
}
