//! The Watch streams. A watcher wakes on changes this instance makes and also polls the table,
//! so it sees what every orchestrator instance does.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;
use zentra_proto::saga::v1 as pb;

use crate::{
    convert,
    domain::{Saga, SagaState},
    engine::Engine,
    store,
};

/// How often a watcher looks at the table when nothing woke it.
const POLL: Duration = Duration::from_millis(250);
/// Changes committed this long before the last one seen are looked at again: a transaction's
/// `updated_at` is its start time, so rows can become visible slightly out of order.
const LOOKBACK: Duration = Duration::from_secs(2);

type Watch<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Waits for a change notification or the poll interval.
async fn changed(changes: &mut broadcast::Receiver<Uuid>, id: Option<Uuid>) {
    let deadline = tokio::time::sleep(POLL);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return,
            received = changes.recv() => match received {
                Ok(changed) if id.is_none_or(|id| id == changed) => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => {
                    (&mut deadline).await;
                    return;
                }
            },
        }
    }
}

/// One saga: its current state, then each new version, until it ends.
pub fn one(engine: Arc<Engine>, id: Uuid) -> Watch<pb::WatchSagaResponse> {
    let (sender, receiver) = mpsc::channel(16);
    let mut changes = engine.subscribe();
    tokio::spawn(async move {
        let mut last_version = 0;
        loop {
            let saga = match store::by_id(engine.db(), id).await {
                Ok(Some(saga)) => saga,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(saga_id = %id, %error, "watch read failed");
                    let _ = sender
                        .send(Err(Status::unavailable("saga store unavailable")))
                        .await;
                    return;
                }
            };
            if saga.version > last_version {
                last_version = saga.version;
                let message = pb::WatchSagaResponse {
                    saga: Some(convert::saga(&saga)),
                };
                if sender.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            if saga.state.is_terminal() {
                return;
            }
            tokio::select! {
                () = sender.closed() => return,
                () = changed(&mut changes, Some(id)) => {}
            }
        }
    });
    Box::pin(ReceiverStream::new(receiver))
}

/// Every saga's changes that leave it in one of `states` (all when empty), optionally after a
/// snapshot of the active ones. A slow reader may miss intermediate versions.
pub fn all(
    engine: Arc<Engine>,
    states: Vec<SagaState>,
    include_active_snapshot: bool,
) -> Watch<pb::WatchSagasResponse> {
    let (sender, receiver) = mpsc::channel(256);
    let mut changes = engine.subscribe();
    tokio::spawn(async move {
        let wanted = |saga: &Saga| states.is_empty() || states.contains(&saga.state);
        let mut seen: HashMap<Uuid, (i64, DateTime<Utc>)> = HashMap::new();
        let mut cursor = Utc::now();
        if include_active_snapshot {
            match store::active(engine.db(), 1000).await {
                Ok(active) => {
                    for saga in active.into_iter().rev() {
                        seen.insert(saga.id, (saga.version, saga.updated_at));
                        if wanted(&saga) && !send(&sender, &saga).await {
                            return;
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "watch snapshot failed"),
            }
        }
        let lookback = chrono::Duration::from_std(LOOKBACK).unwrap_or_default();
        loop {
            tokio::select! {
                () = sender.closed() => return,
                () = changed(&mut changes, None) => {}
            }
            let found = match store::changed_since(engine.db(), cursor - lookback, 1000).await {
                Ok(found) => found,
                Err(error) => {
                    tracing::warn!(%error, "watch read failed");
                    continue;
                }
            };
            for saga in found {
                cursor = cursor.max(saga.updated_at);
                let newer = seen
                    .get(&saga.id)
                    .is_none_or(|(version, _)| *version < saga.version);
                if !newer {
                    continue;
                }
                seen.insert(saga.id, (saga.version, saga.updated_at));
                if wanted(&saga) && !send(&sender, &saga).await {
                    return;
                }
            }
            // Forget what is older than the look-back window; it cannot be returned again.
            let horizon = cursor - lookback - lookback;
            seen.retain(|_, (_, updated)| *updated >= horizon);
        }
    });
    Box::pin(ReceiverStream::new(receiver))
}

async fn send(sender: &mpsc::Sender<Result<pb::WatchSagasResponse, Status>>, saga: &Saga) -> bool {
    sender
        .send(Ok(pb::WatchSagasResponse {
            saga: Some(convert::saga(saga)),
        }))
        .await
        .is_ok()
}
