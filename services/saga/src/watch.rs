//! The Watch streams. A watcher hears every version this instance writes as it commits, without
//! reading the table; it reads the table only for what other instances wrote (every 250 ms, just
//! ids and versions, then the changed sagas themselves) and to catch up when it fell behind.

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

/// How often a watcher reads what other instances changed.
const POLL: Duration = Duration::from_millis(250);
/// Changes committed this long before the last one seen are looked at again: a transaction's
/// `updated_at` is its start time, so rows can become visible slightly out of order.
const LOOKBACK: Duration = Duration::from_secs(2);

/// Sagas read whole in one query when a watcher reads the table.
const READ_PAGE: usize = 200;

type Watch<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What woke a watcher.
enum Wake {
    /// This instance wrote a version.
    Local(Arc<Saga>),
    /// Time to read the table: the poll (`false`), or the watcher fell behind this instance's
    /// changes and must read them too (`true`).
    Read(bool),
    /// The client went away.
    Closed,
}

async fn next_wake<T>(
    changes: &mut broadcast::Receiver<Arc<Saga>>,
    poll: &mut tokio::time::Interval,
    sender: &mpsc::Sender<T>,
) -> Wake {
    tokio::select! {
        () = sender.closed() => Wake::Closed,
        _ = poll.tick() => Wake::Read(false),
        received = changes.recv() => match received {
            Ok(saga) => Wake::Local(saga),
            Err(broadcast::error::RecvError::Lagged(_)) => Wake::Read(true),
            // The engine is gone: only the table is left.
            Err(broadcast::error::RecvError::Closed) => {
                poll.tick().await;
                Wake::Read(true)
            }
        },
    }
}

fn poll_interval() -> tokio::time::Interval {
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll
}

/// One saga: its current state, then each new version, until it ends.
pub fn one(engine: Arc<Engine>, id: Uuid) -> Watch<pb::WatchSagaResponse> {
    let (sender, receiver) = mpsc::channel(16);
    let mut changes = engine.subscribe();
    tokio::spawn(async move {
        let mut last_version = 0;
        let mut poll = poll_interval();
        let mut wake = Wake::Read(true);
        loop {
            let saga = match wake {
                Wake::Closed => return,
                Wake::Local(saga) if saga.id == id => saga,
                Wake::Local(_) => {
                    wake = next_wake(&mut changes, &mut poll, &sender).await;
                    continue;
                }
                Wake::Read(_) => match store::by_id(engine.db(), id).await {
                    Ok(Some(saga)) => Arc::new(saga),
                    Ok(None) => return,
                    Err(error) => {
                        tracing::warn!(saga_id = %id, %error, "watch read failed");
                        let _ = sender
                            .send(Err(Status::unavailable("saga store unavailable")))
                            .await;
                        return;
                    }
                },
            };
            if saga.version > last_version {
                last_version = saga.version;
                let message = pb::WatchSagaResponse {
                    saga: Some(convert::saga(&saga)),
                };
                if sender.send(Ok(message)).await.is_err() {
                    return;
                }
                if saga.state.is_terminal() {
                    return;
                }
            }
            wake = next_wake(&mut changes, &mut poll, &sender).await;
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
        let mut watcher = AllWatcher {
            engine,
            states,
            sender,
            seen: HashMap::new(),
            cursor: Utc::now(),
        };
        if include_active_snapshot {
            match store::active(watcher.engine.db(), 1000).await {
                Ok(active) => {
                    for saga in active.into_iter().rev() {
                        if !watcher.offer(&saga).await {
                            return;
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "watch snapshot failed"),
            }
        }
        let mut poll = poll_interval();
        loop {
            let carry_on = match next_wake(&mut changes, &mut poll, &watcher.sender).await {
                Wake::Closed => false,
                Wake::Local(saga) => watcher.offer(&saga).await,
                Wake::Read(lagged) => watcher.read(lagged).await,
            };
            if !carry_on {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(receiver))
}

/// State of one `WatchSagas` stream.
struct AllWatcher {
    engine: Arc<Engine>,
    states: Vec<SagaState>,
    sender: mpsc::Sender<Result<pb::WatchSagasResponse, Status>>,
    /// The newest version sent (or skipped) per saga changed within the look-back window.
    seen: HashMap<Uuid, (i64, DateTime<Utc>)>,
    /// The latest change seen.
    cursor: DateTime<Utc>,
}

impl AllWatcher {
    /// Sends `saga` unless this version or a newer one was seen; `false` once the client left.
    async fn offer(&mut self, saga: &Saga) -> bool {
        let newer = self
            .seen
            .get(&saga.id)
            .is_none_or(|(version, _)| *version < saga.version);
        if !newer {
            return true;
        }
        self.seen.insert(saga.id, (saga.version, saga.updated_at));
        self.cursor = self.cursor.max(saga.updated_at);
        if self.states.is_empty() || self.states.contains(&saga.state) {
            return send(&self.sender, saga).await;
        }
        true
    }

    /// Reads the changes of the look-back window that were not seen: only other instances'
    /// unless `everything`. `false` once the client left.
    async fn read(&mut self, everything: bool) -> bool {
        let lookback = chrono::Duration::from_std(LOOKBACK).unwrap_or_default();
        let db = self.engine.db();
        let except = (!everything).then(|| self.engine.owner());
        let changed = match store::changes_since(db, self.cursor - lookback, except).await {
            Ok(changed) => changed,
            Err(error) => {
                tracing::warn!(%error, "watch read failed");
                return true;
            }
        };
        let unseen: Vec<Uuid> = changed
            .iter()
            .filter(|change| {
                self.seen
                    .get(&change.id)
                    .is_none_or(|(version, _)| *version < change.version)
            })
            .map(|change| change.id)
            .collect();
        // Whole rows in bounded pages, oldest change first: a watcher catching up after a long
        // stall never asks for thousands of timelines in one query.
        for page in unseen.chunks(READ_PAGE) {
            let mut sagas = match store::by_ids(self.engine.db(), page.to_vec()).await {
                Ok(sagas) => sagas,
                Err(error) => {
                    tracing::warn!(%error, "watch read failed");
                    return true;
                }
            };
            sagas.sort_by_key(|saga| saga.updated_at);
            for saga in &sagas {
                if !self.offer(saga).await {
                    return false;
                }
            }
        }
        // Forget what is older than the look-back window; it cannot be returned again.
        let horizon = self.cursor - lookback - lookback;
        self.seen.retain(|_, (_, updated)| *updated >= horizon);
        true
    }
}

async fn send(sender: &mpsc::Sender<Result<pb::WatchSagasResponse, Status>>, saga: &Saga) -> bool {
    sender
        .send(Ok(pb::WatchSagasResponse {
            saga: Some(convert::saga(saga)),
        }))
        .await
        .is_ok()
}
