//! Events leave through the outbox and reach the real broker exactly once per event id.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use sea_orm::DatabaseTransaction;
use tonic::metadata::MetadataValue;
use zentra_proto::inventory::v1 as pb;
use zentra_runtime::{
    CancellationToken,
    events::payload,
    inbox,
    kafka::{ConsumerSettings, EventConsumer, EventHandler, HandlerError, ReceivedEvent},
    outbox::AfterPublish,
};

use crate::helpers::{Options, TestApp, reserve_request};

/// Stops a consumer and waits until it has closed.
struct Stop {
    token: CancellationToken,
    running: tokio::task::JoinHandle<()>,
}

impl Stop {
    async fn cancel(self) {
        self.token.cancel();
        let _ = self.running.await;
    }
}

/// Records every delivery, and applies each event through the inbox.
#[derive(Clone)]
struct Recorder {
    deliveries: Arc<Mutex<Vec<ReceivedEvent>>>,
    applied: Arc<Mutex<Vec<String>>>,
}

impl EventHandler for Recorder {
    /// The event id, when this delivery applied it.
    type Applied = Option<String>;

    async fn handle(
        &self,
        event: &ReceivedEvent,
        tx: &DatabaseTransaction,
    ) -> Result<Option<String>, HandlerError> {
        self.deliveries.lock().expect("lock").push(event.clone());
        let first =
            inbox::claim(tx, "test-recorder", &event.envelope.event_id, &event.topic).await?;
        Ok(first.then(|| event.envelope.event_id.clone()))
    }

    fn committed(&self, applied: Vec<Option<String>>) {
        self.applied
            .lock()
            .expect("lock")
            .extend(applied.into_iter().flatten());
    }
}

impl Recorder {
    fn start(app: &TestApp) -> (Self, Stop) {
        let recorder = Recorder {
            deliveries: Arc::default(),
            applied: Arc::default(),
        };
        let config = app.env.common_config().kafka;
        let consumer = EventConsumer::new(
            &config,
            ConsumerSettings {
                initial_backoff: Duration::from_millis(50),
                ..ConsumerSettings::new("recorder", vec![app.events_topic.clone()])
            },
            app.service.db().clone(),
        )
        .expect("consumer created");
        let token = CancellationToken::new();
        let running = tokio::spawn(consumer.run(recorder.clone(), token.clone()));
        (recorder, Stop { token, running })
    }

    async fn wait_for_deliveries(&self, count: usize) -> Vec<ReceivedEvent> {
        zentra_test_support::eventually(Duration::from_secs(20), || async {
            let deliveries = self.deliveries.lock().expect("lock").clone();
            (deliveries.len() >= count).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{count} deliveries expected"));
        // Anything more that was going to arrive has time to.
        tokio::time::sleep(Duration::from_millis(700)).await;
        self.deliveries.lock().expect("lock").clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_crash_between_publishing_and_marking_sent_is_absorbed_by_the_inbox() {
    let app = TestApp::spawn_with(
        "outboxcrash",
        Options {
            run_outbox_relay: false,
            ..Options::default()
        },
    )
    .await;
    app.create_product("SKU-EV", 5).await;
    app.reserve("SKU-EV", 1, "crash-reserve")
        .await
        .expect("reserved");
    assert_eq!(app.service.relay().pending().await.expect("pending"), 1);

    // Published, then the relay "dies" before marking the row sent.
    let published = app
        .service
        .relay()
        .publish_round(AfterPublish::Crash)
        .await
        .expect("round");
    assert_eq!(published, 1);
    assert_eq!(app.service.relay().pending().await.expect("pending"), 1);

    // The restarted relay publishes it again and this time marks it.
    let republished = app
        .service
        .relay()
        .publish_round(AfterPublish::MarkSent)
        .await
        .expect("round");
    assert_eq!(republished, 1);
    assert_eq!(app.service.relay().pending().await.expect("pending"), 0);
    assert_eq!(
        app.service
            .relay()
            .publish_round(AfterPublish::MarkSent)
            .await
            .expect("round"),
        0
    );

    let (recorder, stop) = Recorder::start(&app);
    let deliveries = recorder.wait_for_deliveries(2).await;
    stop.cancel().await;
    let ids: Vec<&str> = deliveries
        .iter()
        .map(|d| d.envelope.event_id.as_str())
        .collect();
    assert_eq!(ids.len(), 2, "the broker saw the event twice: {ids:?}");
    assert_eq!(ids[0], ids[1]);
    assert_eq!(
        *recorder.applied.lock().expect("lock"),
        [ids[0].to_owned()],
        "applied once"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_reaches_the_broker_once_with_its_trace_context() {
    let app = TestApp::spawn("outboxonce").await;
    app.create_product("SKU-ONCE", 5).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(reserve_request("SKU-ONCE", 2, "once-reserve"));
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{trace_id}-00f067aa0ba902b7-01")).expect("header"),
    );
    let reservation = app
        .client
        .clone()
        .reserve_stock(request)
        .await
        .expect("reserved")
        .into_inner()
        .reservation
        .expect("reservation");
    app.client
        .clone()
        .release_reservation(pb::ReleaseReservationRequest {
            reservation_id: reservation.reservation_id.clone(),
            reason: "test".to_owned(),
            idempotency_key: "once-release".to_owned(),
        })
        .await
        .expect("released");

    let (recorder, stop) = Recorder::start(&app);
    let deliveries = recorder.wait_for_deliveries(2).await;
    stop.cancel().await;
    assert_eq!(deliveries.len(), 2, "one delivery per event");
    assert_ne!(
        deliveries[0].envelope.event_id,
        deliveries[1].envelope.event_id
    );

    let reserved: pb::StockReserved =
        payload(&deliveries[0].envelope).expect("StockReserved first");
    assert_eq!(reserved.reservation_id, reservation.reservation_id);
    assert_eq!(
        deliveries[0].key, reservation.reservation_id,
        "keyed by aggregate"
    );
    assert_eq!(deliveries[0].envelope.correlation_id, reservation.order_id);
    let traceparent = deliveries[0]
        .envelope
        .trace_context
        .as_ref()
        .map(|t| t.traceparent.clone())
        .unwrap_or_default();
    assert!(
        traceparent.contains(trace_id),
        "trace continues into the event: {traceparent}"
    );

    let released: pb::ReservationReleased =
        payload(&deliveries[1].envelope).expect("ReservationReleased second");
    assert_eq!(released.reason, "test");
    assert_eq!(recorder.applied.lock().expect("lock").len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_no_part_of_the_platform_reads_are_not_written_unless_asked_for() {
    let app = TestApp::spawn_with(
        "outboxoptin",
        Options {
            run_outbox_relay: false,
            publish_events: false,
            ..Options::default()
        },
    )
    .await;
    app.create_product("SKU-QUIET", 5).await;
    let reservation = app
        .reserve("SKU-QUIET", 1, "quiet-reserve")
        .await
        .expect("reserved");
    app.confirm(&reservation.reservation_id, "quiet-confirm")
        .await
        .expect("confirmed");
    assert_eq!(
        app.count("outbox").await,
        0,
        "StockReserved and ReservationConfirmed are read by no service of the platform"
    );
    app.stop().await;
}
