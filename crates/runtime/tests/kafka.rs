//! The consumer against the real broker: offsets are committed only after processing, and a
//! successor in the group resumes right after what was processed.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prost::Message as _;
use zentra_proto::inventory::v1::StockLow;
use zentra_runtime::{
    CancellationToken,
    config::KafkaConfig,
    events::{EventMeta, envelope, payload},
    kafka::{
        ConsumerSettings, EventConsumer, EventHandler, EventProducer, HandlerError, ReceivedEvent,
        ensure_topics,
    },
};
use zentra_test_support::{delete_topics, eventually, kafka_bootstrap, unique_suffix};

#[derive(Clone, Default)]
struct Flaky {
    attempts: Arc<Mutex<Vec<String>>>,
    done: Arc<Mutex<Vec<String>>>,
}

impl EventHandler for Flaky {
    async fn handle(&self, event: &ReceivedEvent) -> Result<(), HandlerError> {
        let sku = payload::<StockLow>(&event.envelope)
            .map(|event| event.sku)
            .ok_or_else(|| HandlerError::Permanent("not StockLow".to_owned()))?;
        let attempts = {
            let mut attempts = self.attempts.lock().expect("lock");
            attempts.push(sku.clone());
            attempts.iter().filter(|seen| **seen == sku).count()
        };
        // The second event fails once, as a database hiccup would.
        if sku == "SKU-2" && attempts == 1 {
            return Err(HandlerError::Transient("simulated hiccup".to_owned()));
        }
        self.done.lock().expect("lock").push(sku);
        Ok(())
    }
}

async fn publish(producer: &EventProducer, topic: &str, sku: &str) {
    let event = envelope(
        &StockLow {
            sku: sku.to_owned(),
            available: 1,
            low_stock_threshold: 2,
        },
        EventMeta {
            producer: "test",
            aggregate_type: "product",
            aggregate_id: sku.to_owned(),
            correlation_id: String::new(),
            causation_id: String::new(),
        },
    );
    producer
        .send(
            topic,
            sku,
            &event.encode_to_vec(),
            &[("event_id", event.event_id.as_bytes())],
        )
        .await
        .expect("acknowledged");
}

async fn wait_done(handler: &Flaky, count: usize) -> Vec<String> {
    eventually(Duration::from_secs(20), || async {
        let done = handler.done.lock().expect("lock").clone();
        (done.len() >= count).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{count} events expected"));
    tokio::time::sleep(Duration::from_millis(700)).await;
    handler.done.lock().expect("lock").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_is_retried_and_a_successor_resumes_after_what_was_processed() {
    let prefix = format!("zt-consumer-{}.", unique_suffix());
    let config = KafkaConfig {
        bootstrap_servers: kafka_bootstrap(),
        topic_prefix: prefix.clone(),
        group_prefix: prefix.clone(),
        partitions: 1,
        ..KafkaConfig::default()
    };
    let topic = format!("{prefix}stock");
    ensure_topics(&config, std::slice::from_ref(&topic))
        .await
        .expect("topic");
    let producer = EventProducer::new(&config, "test").expect("producer");
    for sku in ["SKU-1", "SKU-2", "SKU-3"] {
        publish(&producer, &topic, sku).await;
    }
    let settings = ConsumerSettings {
        group: "flaky".to_owned(),
        topics: vec![topic.clone()],
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    };

    let first = Flaky::default();
    let stop = CancellationToken::new();
    let consumer = EventConsumer::subscribe(&config, settings.clone()).expect("subscribe");
    let running = tokio::spawn(consumer.run(first.clone(), stop.clone()));
    assert_eq!(
        wait_done(&first, 3).await,
        ["SKU-1", "SKU-2", "SKU-3"],
        "in order, none skipped"
    );
    assert_eq!(
        *first.attempts.lock().expect("lock"),
        ["SKU-1", "SKU-2", "SKU-2", "SKU-3"]
    );
    stop.cancel();
    running.await.expect("consumer stops");

    publish(&producer, &topic, "SKU-4").await;
    let successor = Flaky::default();
    let stop = CancellationToken::new();
    let consumer = EventConsumer::subscribe(&config, settings).expect("subscribe");
    let running = tokio::spawn(consumer.run(successor.clone(), stop.clone()));
    assert_eq!(
        wait_done(&successor, 1).await,
        ["SKU-4"],
        "resumes after the committed offsets"
    );
    stop.cancel();
    running.await.expect("consumer stops");
    delete_topics(&[topic]).await;
}
