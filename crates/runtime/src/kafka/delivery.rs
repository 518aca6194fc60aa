//! The producer client under [`super::EventProducer`]: each record's delivery report completes a
//! future, and one thread per client serves the reports with long blocking waits.
//!
//! rdkafka's `FutureProducer` serves them in 100 ms windows and spins through the last
//! millisecond of each: the rest of the window is handed to librdkafka in whole milliseconds, so
//! below one it asks for a 0 ms wait, again and again until the window ends. perf found that spin
//! to be the largest cost of every idle service, about 0.7 % of a core each
//! (docs/BENCHMARKS.md). Here one wait blocks for a second unless a report arrives, so the same
//! spin happens once a second instead of ten times.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rdkafka::{
    ClientConfig, ClientContext,
    client::Client,
    error::{KafkaError, KafkaResult, RDKafkaErrorCode},
    message::{Message as _, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext},
};
use tokio::sync::oneshot;

/// How long one wait for delivery reports blocks when none arrives.
const SERVE_WAIT: Duration = Duration::from_secs(1);
/// Pause before queueing again when librdkafka's queue is full.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(10);

/// Partition and offset of a delivered record.
type Report = KafkaResult<(i32, i64)>;

/// Hands each delivery report to the future waiting for it.
pub(crate) struct Reports;

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<oneshot::Sender<Report>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiting: Self::DeliveryOpaque) {
        let report = match result {
            Ok(message) => Ok((message.partition(), message.offset())),
            Err((error, _)) => Err(error.clone()),
        };
        // The sender gave up waiting (its future was dropped): nobody to tell.
        let _ = waiting.send(report);
    }
}

/// A producer client and the thread serving its delivery reports. Clones share both; the thread
/// stops within [`SERVE_WAIT`] of the last clone being dropped, and then the client, which fails
/// whatever it still held.
#[derive(Clone)]
pub(crate) struct ProducerClient {
    handle: Arc<Handle>,
}

struct Handle {
    producer: Arc<BaseProducer<Reports>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl ProducerClient {
    /// Creates the client from `config` and starts its thread.
    pub(crate) fn new(config: &ClientConfig) -> KafkaResult<Self> {
        let producer: Arc<BaseProducer<Reports>> = Arc::new(config.create_with_context(Reports)?);
        let stop = Arc::new(AtomicBool::new(false));
        let serving = Arc::clone(&producer);
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("kafka-reports".to_owned())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    serving.poll(SERVE_WAIT);
                }
            })
            .map_err(|error| KafkaError::ClientCreation(error.to_string()))?;
        Ok(Self {
            handle: Arc::new(Handle { producer, stop }),
        })
    }

    /// The underlying client, for metadata requests.
    pub(crate) fn client(&self) -> &Client<Reports> {
        self.handle.producer.client()
    }

    /// Queues one record and waits for the broker's acknowledgement; while librdkafka's queue
    /// is full, queueing is retried until `queue_timeout`.
    pub(crate) async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
        queue_timeout: Duration,
    ) -> Report {
        let give_up = tokio::time::Instant::now() + queue_timeout;
        let (waiting, delivered) = oneshot::channel();
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(waiting))
            .key(key)
            .payload(payload)
            .headers(headers);
        loop {
            match self.handle.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                    if tokio::time::Instant::now() < give_up =>
                {
                    record = returned;
                    tokio::time::sleep(QUEUE_FULL_RETRY).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
        // A client dropped with the record still queued drops its sender.
        delivered.await.unwrap_or(Err(KafkaError::Canceled))
    }
}
