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
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..ConsumerSettings::new("flaky", vec![topic.clone()])
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

/// Fails every event whose SKU starts with `SKU-BAD` until told to accept them.
#[derive(Clone, Default)]
struct Picky {
    accept_bad: Arc<std::sync::atomic::AtomicBool>,
    done: Arc<Mutex<Vec<String>>>,
}

impl EventHandler for Picky {
    async fn handle(&self, event: &ReceivedEvent) -> Result<(), HandlerError> {
        let sku = payload::<StockLow>(&event.envelope)
            .map(|e| e.sku)
            .unwrap_or_default();
        if sku.starts_with("SKU-BAD") && !self.accept_bad.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(HandlerError::Transient(
                "simulated downstream outage".to_owned(),
            ));
        }
        self.done.lock().expect("lock").push(sku);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_failing_is_dead_lettered_then_replayed_or_dismissed() {
    use zentra_proto::saga::v1::{self as pb, dead_letter_service_server::DeadLetterService as _};
    use zentra_runtime::dead_letters::{DeadLetterApi, DeadLetterSink};

    let prefix = format!("zt-dlq-{}.", unique_suffix());
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
    let database = zentra_test_support::TestDatabase::create("dlq")
        .await
        .expect("database");
    let db = database.connect().await.expect("connect");
    zentra_runtime::db::migrate(&db, &[])
        .await
        .expect("runtime migrations");
    let producer = EventProducer::new(&config, "test").expect("producer");
    for sku in ["SKU-BAD-1", "SKU-OK", "SKU-BAD-2"] {
        publish(&producer, &topic, sku).await;
    }

    let handler = Picky::default();
    let stop = CancellationToken::new();
    let settings = ConsumerSettings {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        max_attempts: 3,
        dead_letters: Some(DeadLetterSink::new(
            db.clone(),
            producer.clone(),
            config.clone(),
        )),
        ..ConsumerSettings::new("picky", vec![topic.clone()])
    };
    let consumer = EventConsumer::subscribe(&config, settings).expect("subscribe");
    let running = tokio::spawn(consumer.run(handler.clone(), stop.clone()));

    let api = DeadLetterApi::new(db.clone(), producer.clone());
    let list = |status: pb::DeadLetterStatus| {
        let request = pb::ListDeadLettersRequest {
            source_topic: topic.clone(),
            status: status as i32,
            ..Default::default()
        };
        let api = &api;
        async move {
            api.list_dead_letters(tonic::Request::new(request))
                .await
                .expect("listed")
                .into_inner()
                .dead_letters
        }
    };
    let parked = eventually(Duration::from_secs(20), || async {
        let parked = list(pb::DeadLetterStatus::Pending).await;
        (parked.len() == 2).then_some(parked)
    })
    .await
    .expect("both bad messages parked");
    assert_eq!(
        *handler.done.lock().expect("lock"),
        ["SKU-OK"],
        "the good one was not held up"
    );
    for letter in &parked {
        assert_eq!(letter.attempt_count, 3);
        assert!(
            letter.error.contains("simulated downstream outage"),
            "{}",
            letter.error
        );
        assert_eq!(letter.event_type, "zentra.inventory.v1.StockLow");
        assert!(letter.headers.iter().any(|h| h.key == "event_id"));
        assert!(letter.first_failure_time.is_some() && letter.last_failure_time.is_some());
    }
    let on_dlq = zentra_test_support::EventCollector::start(&config, &[format!("{topic}.dlq")])
        .collect(2)
        .await;
    assert_eq!(on_dlq.len(), 2, "published to the .dlq topic too");

    // The downstream recovers; the operator replays one and dismisses the other.
    handler
        .accept_bad
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let newest_first_bad_2 = &parked[0];
    let bad_1 = &parked[1];
    let replay = |key: &str| pb::ReplayDeadLetterRequest {
        dead_letter_id: bad_1.dead_letter_id.clone(),
        idempotency_key: key.to_owned(),
    };
    let replayed = api
        .replay_dead_letter(tonic::Request::new(replay("replay-1")))
        .await
        .expect("replayed")
        .into_inner();
    assert_eq!(
        replayed.dead_letter.as_ref().map(|d| d.status),
        Some(pb::DeadLetterStatus::Replayed as i32)
    );
    let again = api
        .replay_dead_letter(tonic::Request::new(replay("replay-1")))
        .await
        .expect("same key")
        .into_inner();
    assert_eq!(again, replayed);
    let twice = api
        .replay_dead_letter(tonic::Request::new(replay("replay-2")))
        .await
        .expect_err("already replayed");
    assert_eq!(twice.code(), tonic::Code::FailedPrecondition);
    eventually(Duration::from_secs(20), || async {
        handler
            .done
            .lock()
            .expect("lock")
            .contains(&"SKU-BAD-1".to_owned())
            .then_some(())
    })
    .await
    .expect("the replayed message is processed");

    let dismissed = api
        .dismiss_dead_letter(tonic::Request::new(pb::DismissDeadLetterRequest {
            dead_letter_id: newest_first_bad_2.dead_letter_id.clone(),
            reason: "order was cancelled meanwhile".to_owned(),
            idempotency_key: "dismiss-1".to_owned(),
        }))
        .await
        .expect("dismissed")
        .into_inner()
        .dead_letter
        .expect("record");
    assert_eq!(dismissed.status, pb::DeadLetterStatus::Dismissed as i32);
    assert_eq!(dismissed.dismiss_reason, "order was cancelled meanwhile");
    let bad = api
        .get_dead_letter(tonic::Request::new(pb::GetDeadLetterRequest {
            dead_letter_id: "../etc".to_owned(),
        }))
        .await
        .expect_err("malformed id");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    stop.cancel();
    running.await.expect("consumer stops");
    drop(db);
    delete_topics(&[topic.clone(), format!("{topic}.dlq")]).await;
    database.drop_database().await.expect("cleanup");
}
