//! Hints that a topic has new records, carried over Redis pub/sub, so that consumers can stop
//! fetching while nothing happens.
//!
//! The local broker (tansu 0.6) cannot long-poll: it holds every fetch for its whole
//! `fetch.wait.max.ms`, whether records arrived or not (docs/BENCHMARKS.md, "Fetch waits"). A
//! consumer that only fetches must choose between a short wait, which costs the broker a fetch
//! every few milliseconds per consumer even when idle, and a long one, which adds that wait to
//! every hop. With hints, a consumer that has caught up stops fetching; a producer that had a
//! record acknowledged announces its topic, and the consumers of that topic fetch again at once.
//!
//! A hint is only a hint. Offsets stay in PostgreSQL and every record is still read from the
//! broker; a consumer that hears nothing looks anyway every `idle_fetch`. A lost hint, or Redis
//! down, costs latency, never a record.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::telemetry::names;

/// How long one announcement may take before it is given up (the next one carries it).
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);
/// Wait after a lost Redis connection before trying again.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// The channel that carries hints for `topic` (a full topic name, prefix included, so stacks
/// sharing one Redis keep apart).
pub fn channel(topic: &str) -> String {
    format!("zentra.wake.{topic}")
}

/// Announces topics that received records. Cheap to clone; announcements made while one is on
/// its way are merged into the next, so a burst of records costs one message per topic.
#[derive(Clone)]
pub struct WakePublisher {
    inner: Arc<PublisherInner>,
}

struct PublisherInner {
    client: redis::Client,
    dirty: Mutex<BTreeSet<String>>,
    wake: Notify,
    started: std::sync::Once,
}

impl WakePublisher {
    /// A publisher to the Redis at `url`; it connects on first use.
    pub fn new(url: &str) -> redis::RedisResult<Self> {
        Ok(Self {
            inner: Arc::new(PublisherInner {
                client: redis::Client::open(url)?,
                dirty: Mutex::default(),
                wake: Notify::new(),
                started: std::sync::Once::new(),
            }),
        })
    }

    /// Notes that `topic` has a new record; the hint goes out shortly, merged with others.
    /// Must be called from within a Tokio runtime.
    pub fn announce(&self, topic: &str) {
        if let Ok(mut dirty) = self.inner.dirty.lock()
            && !dirty.contains(topic)
        {
            dirty.insert(topic.to_owned());
        }
        self.inner.started.call_once(|| {
            tokio::spawn(announcing(Arc::downgrade(&self.inner)));
        });
        self.inner.wake.notify_one();
    }
}

/// Sends what was announced, one PUBLISH per topic, until every publisher is dropped.
async fn announcing(inner: std::sync::Weak<PublisherInner>) {
    let mut connection: Option<redis::aio::MultiplexedConnection> = None;
    loop {
        let Some(publisher) = inner.upgrade() else {
            return;
        };
        let topics: Vec<String> = publisher
            .dirty
            .lock()
            .map(|mut dirty| std::mem::take(&mut *dirty).into_iter().collect())
            .unwrap_or_default();
        if topics.is_empty() {
            // Wakes on the next announcement (a permit stored meanwhile counts). Held for at most
            // a few seconds, so the task ends soon after the last publisher is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(5), publisher.wake.notified()).await;
            continue;
        }
        if connection.is_none() {
            connection = tokio::time::timeout(
                PUBLISH_TIMEOUT,
                publisher.client.get_multiplexed_async_connection(),
            )
            .await
            .ok()
            .and_then(Result::ok);
        }
        let Some(open) = connection.as_mut() else {
            metrics::counter!(names::WAKE_HINTS, "outcome" => "unsent").increment(1);
            drop(publisher);
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        };
        let mut pipe = redis::pipe();
        for topic in &topics {
            pipe.publish(channel(topic), "").ignore();
        }
        let sent = tokio::time::timeout(PUBLISH_TIMEOUT, pipe.query_async::<()>(open)).await;
        if matches!(sent, Ok(Ok(()))) {
            metrics::counter!(names::WAKE_HINTS, "outcome" => "sent")
                .increment(topics.len() as u64);
        } else {
            metrics::counter!(names::WAKE_HINTS, "outcome" => "unsent").increment(1);
            tracing::debug!("wake hint not sent; consumers fall back to fetching periodically");
            connection = None;
        }
    }
}

/// Hints for a set of topics, delivered to a [`Notify`] until `shutdown`. It reconnects after a
/// lost connection and then notifies once, since hints may have been missed meanwhile.
pub fn subscribe(url: &str, topics: Vec<String>, shutdown: CancellationToken) -> Arc<Notify> {
    let hint = Arc::new(Notify::new());
    let client = match redis::Client::open(url) {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(%error, "wake hints disabled: bad Redis URL");
            return hint;
        }
    };
    let notify = Arc::clone(&hint);
    tokio::spawn(async move {
        loop {
            let listened = tokio::select! {
                () = shutdown.cancelled() => return,
                listened = listen(&client, &topics, &notify) => listened,
            };
            if let Err(error) = listened {
                tracing::debug!(%error, "wake hints lost; fetching periodically until Redis is back");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RECONNECT_DELAY) => {}
            }
        }
    });
    hint
}

async fn listen(
    client: &redis::Client,
    topics: &[String],
    notify: &Notify,
) -> redis::RedisResult<()> {
    let mut pubsub = client.get_async_pubsub().await?;
    for topic in topics {
        pubsub.subscribe(channel(topic)).await?;
    }
    // Whatever was announced before the subscription took effect was missed: look once.
    notify.notify_one();
    let mut messages = pubsub.on_message();
    while messages.next().await.is_some() {
        notify.notify_one();
    }
    Err(redis::RedisError::from((
        redis::ErrorKind::Io,
        "subscription closed",
    )))
}
