//! The Watch streams, all fed by one change feed per process. The feed hears every version this
//! instance writes as it commits, and reads the table for what other instances wrote (every
//! 250 ms: ids and versions, then the changed sagas) once for every watcher, so the saga database
//! sees the same query rate with one watcher or thousands. It runs only while someone watches.
//! Streams are capped per process and end at their lifetime, or when the server stops taking
//! calls (so it can drain).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};
use uuid::Uuid;
use zentra_proto::saga::v1 as pb;

use crate::{
    config::WatchSettings,
    convert,
    domain::{Saga, SagaState},
    engine::Engine,
    metric_names::{WATCH_READS, WATCH_STREAMS},
    store,
};

fn count_read(by: &'static str) {
    metrics::counter!(WATCH_READS, "by" => by).increment(1);
}

/// A stream's place among the open ones; the gauge follows it.
struct StreamPermit(#[allow(dead_code)] OwnedSemaphorePermit);

impl Drop for StreamPermit {
    fn drop(&mut self) {
        metrics::gauge!(WATCH_STREAMS).decrement(1.0);
    }
}

/// How often the feed reads what other instances changed.
const POLL: Duration = Duration::from_millis(250);
/// Changes committed this long before the last one seen are looked at again: a transaction's
/// `updated_at` is its start time, so rows can become visible slightly out of order.
const LOOKBACK: Duration = Duration::from_secs(2);
/// How long the feed keeps the latest version of each saga it announced, for watchers that
/// fell behind.
const RECENT: Duration = Duration::from_secs(10);
/// Versions buffered for each watcher; one that falls further behind catches up from the feed's
/// recent versions.
const FEED_BUFFER: usize = 4096;
/// Sagas read whole in one query when the feed reads the table.
const READ_PAGE: usize = 200;

type Watch<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The one change feed of this process, shared by every Watch stream.
#[derive(Clone)]
pub struct ChangeFeed {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<Engine>,
    sender: broadcast::Sender<Arc<Saga>>,
    /// The latest version of each saga announced within [`RECENT`].
    recent: Mutex<HashMap<Uuid, Arc<Saga>>>,
    /// Whether the feed's task runs; it stops when nobody listens.
    running: Mutex<bool>,
    streams: Arc<Semaphore>,
    settings: WatchSettings,
    /// Cancelled when the server stops taking calls: every stream ends, so it can drain.
    draining: CancellationToken,
}

impl ChangeFeed {
    /// A feed over `engine`'s changes, serving streams within `settings` until `draining`.
    pub fn new(engine: Arc<Engine>, settings: &WatchSettings, draining: CancellationToken) -> Self {
        let (sender, _) = broadcast::channel(FEED_BUFFER);
        Self {
            inner: Arc::new(Inner {
                engine,
                sender,
                recent: Mutex::new(HashMap::new()),
                running: Mutex::new(false),
                streams: Arc::new(Semaphore::new(settings.max_streams)),
                settings: settings.clone(),
                draining,
            }),
        }
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.inner.settings.max_streams - self.inner.streams.available_permits()
    }

    /// A place among the open streams, or RESOURCE_EXHAUSTED with RetryInfo.
    fn admit(&self) -> Result<StreamPermit, Status> {
        let permit = self.inner.streams.clone().try_acquire_owned().map_err(|_| {
            Status::with_error_details(
                Code::ResourceExhausted,
                format!(
                    "{} watch streams are open in this process, the most it serves; retry later",
                    self.inner.settings.max_streams
                ),
                ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
            )
        })?;
        metrics::gauge!(WATCH_STREAMS).increment(1.0);
        Ok(StreamPermit(permit))
    }

    /// Hears every version from now on, starting the feed if it is not running.
    fn subscribe(&self) -> broadcast::Receiver<Arc<Saga>> {
        let receiver = self.inner.sender.subscribe();
        let mut running = lock(&self.inner.running);
        if !*running {
            *running = true;
            tokio::spawn(run(self.inner.clone()));
        }
        receiver
    }

    /// The latest version of every saga changed lately, oldest change first.
    fn recent(&self) -> Vec<Arc<Saga>> {
        let mut sagas: Vec<Arc<Saga>> = lock(&self.inner.recent).values().cloned().collect();
        sagas.sort_by_key(|saga| saga.updated_at);
        sagas
    }

    /// How long a stream may stay open: the caller's deadline, at most the configured lifetime.
    fn lifetime(&self, deadline: Option<Duration>) -> Duration {
        let max = self.inner.settings.max_lifetime;
        deadline.map_or(max, |deadline| deadline.min(max))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the feed has announced.
struct FeedState {
    /// The newest version announced per saga changed within the look-back window.
    seen: HashMap<Uuid, (i64, DateTime<Utc>)>,
    /// The latest change seen.
    cursor: DateTime<Utc>,
}

async fn run(inner: Arc<Inner>) {
    let mut local = Some(inner.engine.subscribe());
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state = FeedState {
        seen: HashMap::new(),
        cursor: Utc::now(),
    };
    loop {
        {
            // Under the lock a subscriber takes to start the feed: one that subscribed before
            // this check keeps it running, one after it starts a new task.
            let mut running = lock(&inner.running);
            if inner.sender.receiver_count() == 0 {
                *running = false;
                lock(&inner.recent).clear();
                return;
            }
        }
        let heard = async {
            match &mut local {
                Some(local) => Some(local.recv().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = poll.tick() => read(&inner, &mut state, false).await,
            heard = heard => match heard {
                Some(Ok(saga)) => publish(&inner, &mut state, saga),
                Some(Err(broadcast::error::RecvError::Lagged(_))) => {
                    read(&inner, &mut state, true).await;
                }
                // The engine is gone: only the table is left, all of it.
                Some(Err(broadcast::error::RecvError::Closed)) | None => {
                    local = None;
                    read(&inner, &mut state, true).await;
                }
            },
        }
    }
}

/// Announces `saga` unless this version or a newer one was announced.
fn publish(inner: &Inner, state: &mut FeedState, saga: Arc<Saga>) {
    let newer = state
        .seen
        .get(&saga.id)
        .is_none_or(|(version, _)| *version < saga.version);
    if !newer {
        return;
    }
    state.seen.insert(saga.id, (saga.version, saga.updated_at));
    state.cursor = state.cursor.max(saga.updated_at);
    lock(&inner.recent).insert(saga.id, saga.clone());
    // No receiver is not an error: the loop stops at its next turn.
    let _ = inner.sender.send(saga);
}

/// Reads the changes of the look-back window not yet announced: only other instances' unless
/// `everything`.
async fn read(inner: &Inner, state: &mut FeedState, everything: bool) {
    let lookback = chrono::Duration::from_std(LOOKBACK).unwrap_or_default();
    let db = inner.engine.db();
    let except = (!everything).then(|| inner.engine.owner());
    count_read("feed");
    let changed = match store::changes_since(db, state.cursor - lookback, except).await {
        Ok(changed) => changed,
        Err(error) => {
            tracing::warn!(%error, "watch feed read failed");
            return;
        }
    };
    let unseen: Vec<Uuid> = changed
        .iter()
        .filter(|change| {
            state
                .seen
                .get(&change.id)
                .is_none_or(|(version, _)| *version < change.version)
        })
        .map(|change| change.id)
        .collect();
    // Whole rows in bounded pages, oldest change first.
    for page in unseen.chunks(READ_PAGE) {
        count_read("feed");
        let mut sagas = match store::by_ids(db, page.to_vec()).await {
            Ok(sagas) => sagas,
            Err(error) => {
                tracing::warn!(%error, "watch feed read failed");
                return;
            }
        };
        sagas.sort_by_key(|saga| saga.updated_at);
        for saga in sagas {
            publish(inner, state, Arc::new(saga));
        }
    }
    // Forget what is older than the windows; it cannot be announced again.
    let horizon = state.cursor - lookback - lookback;
    state.seen.retain(|_, (_, updated)| *updated >= horizon);
    let recent = state.cursor - chrono::Duration::from_std(RECENT).unwrap_or_default();
    lock(&inner.recent).retain(|_, saga| saga.updated_at >= recent);
}

/// What a stream heard.
enum Heard {
    /// A version.
    Change(Arc<Saga>),
    /// It fell behind the feed.
    Lagged,
    /// The client went away, or the stream's lifetime is over.
    Done,
}

async fn next<T>(
    changes: &mut broadcast::Receiver<Arc<Saga>>,
    sender: &mpsc::Sender<T>,
    end: &mut Pin<Box<tokio::time::Sleep>>,
    draining: &CancellationToken,
) -> Heard {
    tokio::select! {
        () = sender.closed() => Heard::Done,
        () = end.as_mut() => Heard::Done,
        () = draining.cancelled() => Heard::Done,
        received = changes.recv() => match received {
            Ok(saga) => Heard::Change(saga),
            Err(broadcast::error::RecvError::Lagged(_)) => Heard::Lagged,
            Err(broadcast::error::RecvError::Closed) => Heard::Done,
        },
    }
}

/// One saga: its current state, then each new version, until it ends, the client leaves or the
/// stream's lifetime (at most `deadline`) is over.
pub fn one(
    feed: &ChangeFeed,
    id: Uuid,
    deadline: Option<Duration>,
) -> Result<Watch<pb::WatchSagaResponse>, Status> {
    let permit = feed.admit()?;
    let (sender, receiver) = mpsc::channel(16);
    // Subscribed before the first read, so no version falls between the two.
    let mut changes = feed.subscribe();
    let mut end = Box::pin(tokio::time::sleep(feed.lifetime(deadline)));
    let engine = feed.inner.engine.clone();
    let draining = feed.inner.draining.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut last_version = 0;
        let mut heard = Heard::Lagged;
        loop {
            let saga = match heard {
                Heard::Done => return,
                Heard::Change(saga) if saga.id == id => saga,
                Heard::Change(_) => {
                    heard = next(&mut changes, &sender, &mut end, &draining).await;
                    continue;
                }
                Heard::Lagged => {
                    count_read("stream");
                    match store::by_id(engine.db(), id).await {
                        Ok(Some(saga)) => Arc::new(saga),
                        Ok(None) => return,
                        Err(error) => {
                            tracing::warn!(saga_id = %id, %error, "watch read failed");
                            let _ = sender
                                .send(Err(Status::unavailable("saga store unavailable")))
                                .await;
                            return;
                        }
                    }
                }
            };
            if saga.version > last_version {
                last_version = saga.version;
                let message = pb::WatchSagaResponse {
                    saga: Some(convert::saga(&saga)),
                };
                if sender.send(Ok(message)).await.is_err() || saga.state.is_terminal() {
                    return;
                }
            }
            heard = next(&mut changes, &sender, &mut end, &draining).await;
        }
    });
    Ok(Box::pin(ReceiverStream::new(receiver)))
}

/// Every saga's changes that leave it in one of `states` (all when empty), optionally after a
/// snapshot of the active ones, until the client leaves or the stream's lifetime (at most
/// `deadline`) is over. A slow reader may miss intermediate versions, never the latest.
pub fn all(
    feed: &ChangeFeed,
    states: Vec<SagaState>,
    include_active_snapshot: bool,
    deadline: Option<Duration>,
) -> Result<Watch<pb::WatchSagasResponse>, Status> {
    let permit = feed.admit()?;
    let (sender, receiver) = mpsc::channel(256);
    let mut changes = feed.subscribe();
    let mut end = Box::pin(tokio::time::sleep(feed.lifetime(deadline)));
    let feed = feed.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let mut watcher = AllWatcher {
            states,
            sender,
            sent: HashMap::new(),
        };
        if include_active_snapshot {
            count_read("stream");
            match store::active(feed.inner.engine.db(), 1000).await {
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
        loop {
            let carry_on = match next(
                &mut changes,
                &watcher.sender,
                &mut end,
                &feed.inner.draining,
            )
            .await
            {
                Heard::Done => false,
                Heard::Change(saga) => watcher.offer(&saga).await,
                Heard::Lagged => watcher.catch_up(&feed.recent()).await,
            };
            if !carry_on {
                return;
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(receiver)))
}

/// State of one `WatchSagas` stream.
struct AllWatcher {
    states: Vec<SagaState>,
    sender: mpsc::Sender<Result<pb::WatchSagasResponse, Status>>,
    /// The newest version sent per saga, for the snapshot and catching up, which may repeat
    /// what the feed sends; entries older than the feed's memory are dropped.
    sent: HashMap<Uuid, (i64, DateTime<Utc>)>,
}

impl AllWatcher {
    /// Sends `saga` unless this version or a newer one was sent; `false` once the client left.
    async fn offer(&mut self, saga: &Saga) -> bool {
        let newer = self
            .sent
            .get(&saga.id)
            .is_none_or(|(version, _)| *version < saga.version);
        if !newer {
            return true;
        }
        self.sent.insert(saga.id, (saga.version, saga.updated_at));
        if self.sent.len() > 4 * READ_PAGE {
            let horizon = saga.updated_at - chrono::Duration::from_std(RECENT).unwrap_or_default();
            self.sent.retain(|_, (_, updated)| *updated >= horizon);
        }
        if self.states.is_empty() || self.states.contains(&saga.state) {
            return send(&self.sender, saga).await;
        }
        true
    }

    /// Sends the latest version of every saga changed lately that this stream has not sent.
    async fn catch_up(&mut self, recent: &[Arc<Saga>]) -> bool {
        for saga in recent {
            if !self.offer(saga).await {
                return false;
            }
        }
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
