//! The saga store against PostgreSQL: what one transaction storing several sagas' transitions
//! does when one of them lost its lease.

use std::time::Duration;

use chrono::Utc;
use sea_orm::{ConnectionTrait as _, DatabaseConnection, TransactionTrait as _};
use uuid::Uuid;
use zentra_proto::{events::v1::EventEnvelope, order::v1::OrderPlaced};
use zentra_runtime::{
    inbox::Claimed,
    kafka::{Fence, leases::Advance},
    outbox,
};
use zentra_saga::{
    domain::{Saga, SagaState},
    machine::Signal,
    store::{self, Lease},
};
use zentra_test_support::{TestDatabase, count};

fn new_saga() -> Saga {
    let order_id = Uuid::now_v7();
    let order = OrderPlaced {
        order_id: order_id.to_string(),
        customer_id: "store-test".to_owned(),
        ..OrderPlaced::default()
    };
    Saga::new(order_id, order, None, Utc::now())
}

/// One outcome record of `saga`, as the engine would write it with a transition.
fn record(saga: &Saga) -> outbox::Rows {
    let mut rows = outbox::Rows::default();
    rows.push(
        "saga.events",
        &EventEnvelope {
            event_id: Uuid::now_v7().to_string(),
            event_type: "zentra.saga.v1.SagaCompleted".to_owned(),
            aggregate_id: saga.id.to_string(),
            ..EventEnvelope::default()
        },
    )
    .expect("record");
    rows
}

async fn signal_ids(db: &sea_orm::DatabaseConnection, saga_id: Uuid) -> Vec<i64> {
    store::signals(db, saga_id)
        .await
        .expect("signals")
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

#[tokio::test]
async fn a_transition_whose_lease_is_lost_writes_nothing_and_leaves_the_rest_of_its_transaction_alone()
 {
    let (database, db) = migrated("saga-store").await;
    let (kept, lost) = (new_saga(), new_saga());
    for saga in [&kept, &lost] {
        assert!(
            store::insert(&db, saga, "test", std::time::Duration::from_secs(30))
                .await
                .expect("insert")
        );
        store::add_signal(&db, saga.id, &Signal::RetryNow)
            .await
            .expect("signal");
    }
    let claimed = store::claim_due(&db, "test", Duration::from_secs(30), 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
    let mut sagas = claimed.into_iter().map(|(saga, has_signals)| {
        assert!(has_signals);
        saga
    });
    let (mut first, mut second) = (
        sagas.next().expect("first claimed"),
        sagas.next().expect("second claimed"),
    );
    if first.id != kept.id {
        std::mem::swap(&mut first, &mut second);
    }
    let (first_signals, second_signals) = (
        signal_ids(&db, first.id).await,
        signal_ids(&db, second.id).await,
    );
    // A signal that arrives while the step runs is not one the transition applied.
    store::add_signal(&db, first.id, &Signal::RetryNow)
        .await
        .expect("late signal");
    // The second saga's lease went to another claimant meanwhile.
    second.lease = Some("another:claim".to_owned());
    first.state = SagaState::Compensating;

    let tx = db.begin().await.expect("begin");
    let lost_result = store::save(
        &tx,
        &second,
        (second.lease.as_deref().unwrap_or_default(), "test"),
        Lease::Release,
        &second_signals,
        record(&second),
    )
    .await
    .expect("save of the lost saga");
    let kept_result = store::save(
        &tx,
        &first,
        (first.lease.as_deref().unwrap_or_default(), "test"),
        Lease::Release,
        &first_signals,
        record(&first),
    )
    .await
    .expect("save of the kept saga");
    tx.commit().await.expect("commit");

    assert_eq!(lost_result, None);
    let saved = kept_result.expect("the kept saga's lease holds");
    assert!(saved.has_signals, "the late signal still waits");
    let stored = store::by_id(&db, first.id)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(stored.state, SagaState::Compensating);
    assert_eq!(stored.version, 2);
    let untouched = store::by_id(&db, second.id)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(untouched.version, 1);
    assert_eq!(untouched.state, SagaState::Running);
    let signals = |id: Uuid| format!("SELECT count(*) FROM saga_signals WHERE saga_id = '{id}'");
    assert_eq!(
        count(&db, &signals(first.id)).await,
        1,
        "only the late signal is left"
    );
    assert_eq!(
        count(&db, &signals(second.id)).await,
        1,
        "the lost saga keeps its signal"
    );
    let records = |id: Uuid| format!("SELECT count(*) FROM outbox WHERE record_key = '{id}'");
    assert_eq!(
        count(&db, &records(first.id)).await,
        1,
        "the kept saga's record"
    );
    assert_eq!(
        count(&db, &records(second.id)).await,
        0,
        "no record of the lost transition"
    );
    drop(db);
    database.drop_database().await.expect("drop");
}

#[tokio::test]
async fn a_transition_alone_is_written_without_a_transaction_and_only_under_its_lease() {
    let (database, db) = migrated("saga-store-alone").await;
    let saga = new_saga();
    assert!(
        store::insert(&db, &saga, "test", std::time::Duration::from_secs(30))
            .await
            .expect("insert")
    );
    let (mut claimed, _) = store::claim_due(&db, "test", Duration::from_secs(30), 1)
        .await
        .expect("claim")
        .pop()
        .expect("claimed");
    let token = claimed.lease.clone().expect("a lease token");
    claimed.state = SagaState::Completed;

    let stale = store::save(
        &db,
        &claimed,
        ("an:expired-claim", "test"),
        Lease::Release,
        &[],
        record(&claimed),
    )
    .await
    .expect("save under a stale token");
    assert_eq!(stale, None);
    let records = format!(
        "SELECT count(*) FROM outbox WHERE record_key = '{}'",
        saga.id
    );
    assert_eq!(
        count(&db, &records).await,
        0,
        "nothing written without the lease"
    );

    let saved = store::save(
        &db,
        &claimed,
        (&token, "test"),
        Lease::Release,
        &[],
        record(&claimed),
    )
    .await
    .expect("save")
    .expect("the lease holds");
    assert!(!saved.has_signals);
    let stored = store::by_id(&db, saga.id)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(stored.state, SagaState::Completed);
    assert_eq!(stored.lease, None, "released");
    assert_eq!(count(&db, &records).await, 1, "the record with the row");
    drop(db);
    database.drop_database().await.expect("drop");
}

/// The value of the series that `line_start` begins (name and labels), if rendered.
fn rendered_value(rendered: &str, line_start: &str) -> Option<f64> {
    rendered
        .lines()
        .find_map(|line| line.strip_prefix(line_start)?.trim().parse().ok())
}

// One thread: the recorder is this thread's, and every poll of the sampler happens on it.
#[tokio::test(flavor = "current_thread")]
async fn sagas_not_yet_ended_are_gauged_by_state_with_the_oldest_age_and_ended_ones_are_not() {
    use zentra_runtime::gauges::Sampler as _;

    let (database, db) = migrated("saga-gauges").await;
    // (state, started, last changed): a running saga's age counts from its start however
    // recently it retried; a parked one's from when it parked.
    for (state, started, changed) in [
        ("RUNNING", "1 second", "1 second"),
        ("RUNNING", "3 seconds", "1 second"),
        ("COMPENSATION_FAILED", "1 hour", "10 minutes"),
        ("COMPLETED", "2 hours", "1 hour"),
    ] {
        sea_orm::ConnectionTrait::execute_unprepared(
            &db,
            &format!(
                "INSERT INTO sagas (id, order_id, state, order_data, data, created_at, updated_at) \
                 VALUES (gen_random_uuid(), gen_random_uuid(), '{state}', '', '{{}}', \
                 now() - interval '{started}', now() - interval '{changed}')"
            ),
        )
        .await
        .expect("seed");
    }
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    zentra_saga::gauges::SagaStates::default()
        .sample(&db)
        .await
        .expect("sampled");
    let rendered = handle.render();
    let value = |series: &str| rendered_value(&rendered, series);
    assert_eq!(
        value("zentra_sagas{state=\"RUNNING\"} "),
        Some(2.0),
        "{rendered}"
    );
    assert_eq!(
        value("zentra_sagas{state=\"COMPENSATION_FAILED\"} "),
        Some(1.0)
    );
    assert_eq!(value("zentra_sagas{state=\"COMPENSATING\"} "), Some(0.0));
    assert_eq!(
        value("zentra_sagas{state=\"AWAITING_SHIPMENT\"} "),
        Some(0.0)
    );
    assert!(!rendered.contains("COMPLETED"), "{rendered}");
    let parked_for =
        value("zentra_saga_oldest_seconds{state=\"COMPENSATION_FAILED\"} ").expect("oldest parked");
    assert!(
        (599.0..3000.0).contains(&parked_for),
        "since it parked: {parked_for}"
    );
    let running_for = value("zentra_saga_oldest_seconds{state=\"RUNNING\"} ").expect("oldest");
    assert!(
        (2.9..600.0).contains(&running_for),
        "since it started: {running_for}"
    );

    drop(db);
    database.drop_database().await.expect("cleanup");
}

/// A fresh database of its own with the saga's schema, and a connection to it.
async fn migrated(label: &str) -> (TestDatabase, DatabaseConnection) {
    let database = TestDatabase::create(label).await.expect("database");
    let db = database.connect().await.expect("connect");
    zentra_runtime::db::migrate(&db, store::migrations::MIGRATIONS)
        .await
        .expect("migrate");
    (database, db)
}

/// A new saga inserted under a lease of `owner` for `lease`, as the intake starts one.
async fn born(db: &DatabaseConnection, owner: &str, lease: Duration) -> Saga {
    let mut saga = new_saga();
    saga.lease = Some(store::lease_token(owner));
    assert!(
        store::insert(db, &saga, owner, lease)
            .await
            .expect("insert")
    );
    saga
}

/// A saga the intake starts is born under its instance's lease and driven without a claim; if
/// that instance dies before driving it, nothing is lost: its restart gives the lease back at
/// once, and any other instance claims the saga when the lease expires.
#[tokio::test]
async fn a_saga_born_under_a_lease_is_claimed_by_nobody_else_until_its_owner_gives_it_back_or_the_lease_expires()
 {
    let (_database, db) = migrated("saga-born-leased").await;
    let claim = |owner: &'static str| {
        let db = db.clone();
        async move {
            store::claim_due(&db, owner, Duration::from_secs(30), 10)
                .await
                .expect("claim")
                .into_iter()
                .map(|(saga, _)| saga.id)
                .collect::<Vec<_>>()
        }
    };

    // Held for 30 s by instance "a": "b" finds nothing, until "a" restarts and gives it back.
    let held = born(&db, "a", Duration::from_secs(30)).await;
    assert!(claim("b").await.is_empty(), "claimed under a live lease");
    assert_eq!(store::release_leases(&db, "a").await.expect("release"), 1);
    assert_eq!(claim("b").await, vec![held.id]);

    // Held briefly by "c", which never comes back: claimable once the lease expires.
    let orphan = born(&db, "c", Duration::from_millis(300)).await;
    assert!(claim("b").await.is_empty(), "claimed under a live lease");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(claim("b").await, vec![orphan.id]);

    // Its owner writes under the lease it was born with, which a claim by another would end.
    let mut mine = born(&db, "d", Duration::from_secs(30)).await;
    let lease = mine.lease.clone().expect("lease");
    mine.state = SagaState::Running;
    let saved = store::save(
        &db,
        &mine,
        (&lease, "d"),
        Lease::Release,
        &[],
        outbox::Rows::default(),
    )
    .await
    .expect("save");
    assert!(saved.is_some(), "the owner's write under its birth lease");
}

/// A signal for a saga nobody holds takes the saga's lease in the statement that records it, so
/// its instance drives the saga without a claim; a saga another instance holds only gets the
/// signal; a redelivered event writes nothing.
#[tokio::test]
async fn a_signal_takes_the_lease_of_a_saga_nobody_holds_and_leaves_a_held_one_to_its_holder() {
    let (_database, db) = migrated("saga-signal-lease").await;
    let entry = || {
        zentra_runtime::inbox::Entry::new("saga", &Uuid::now_v7().to_string(), "fulfillment.events")
            .expect("entry")
    };
    let lease = Duration::from_secs(30);

    let free = new_saga();
    assert!(store::insert(&db, &free, "x", lease).await.expect("insert"));
    let token = store::lease_token("a");
    let event = entry();
    let signalled = store::add_signal_once(
        &db,
        &event,
        store::SignalTarget::Order(free.order_id),
        &Signal::RetryNow,
        Some((&token, lease)),
    )
    .await
    .expect("signal")
    .expect("the saga exists");
    let Claimed::First(Some(taken)) = signalled else {
        panic!("the free saga's lease was not taken with its signal: {signalled:?}");
    };
    assert_eq!(taken.id, free.id);
    assert_eq!(taken.lease.as_deref(), Some(token.as_str()));
    assert!(
        store::claim_due(&db, "b", lease, 10)
            .await
            .expect("claim")
            .is_empty(),
        "another instance claimed a saga taken with its signal"
    );
    assert_eq!(signal_ids(&db, free.id).await.len(), 1);
    let again = store::add_signal_once(
        &db,
        &event,
        store::SignalTarget::Order(free.order_id),
        &Signal::RetryNow,
        Some((&store::lease_token("c"), lease)),
    )
    .await
    .expect("redelivery");
    assert!(
        matches!(again, Some(Claimed::Duplicate)),
        "a redelivery wrote something: {again:?}"
    );
    assert_eq!(signal_ids(&db, free.id).await.len(), 1);

    // Held by "b": the signal waits for it, the lease stays b's.
    let mut held = new_saga();
    held.lease = Some(store::lease_token("b"));
    assert!(store::insert(&db, &held, "b", lease).await.expect("insert"));
    let signalled = store::add_signal_once(
        &db,
        &entry(),
        store::SignalTarget::Saga(held.id),
        &Signal::RetryNow,
        Some((&store::lease_token("a"), lease)),
    )
    .await
    .expect("signal")
    .expect("the saga exists");
    assert!(
        matches!(signalled, Claimed::First(None)),
        "took a lease another instance holds: {signalled:?}"
    );
    assert_eq!(signal_ids(&db, held.id).await.len(), 1);
    let lease_owner = store::by_id(&db, held.id)
        .await
        .expect("read")
        .expect("saga")
        .lease;
    assert_eq!(lease_owner, held.lease);
}

/// A signal carrying the consumer's offset (a fenced inbox entry) needs no transaction: the
/// signal, the inbox entry and the offset are written by one statement, and only while the
/// consumer holds the partition under its epoch. A stale epoch writes nothing at all, and so does
/// a signal for a saga that does not exist (its event must be read again).
#[tokio::test]
async fn a_signal_moves_the_offset_in_its_own_statement_only_for_the_partitions_holder() {
    let (_database, db) = migrated("saga-signal-fence").await;
    db.execute_unprepared(
        "INSERT INTO consumer_partitions (consumer_group, topic, partition, next_offset, owner, epoch, lease_until) \
         VALUES ('saga', 'fulfillment.events', 0, 9, 'a', 3, now() + interval '1 minute')",
    )
    .await
    .expect("partition row");
    let offset = || {
        count(
            &db,
            "SELECT next_offset FROM consumer_partitions WHERE consumer_group = 'saga'",
        )
    };
    let inbox_entries = || count(&db, "SELECT count(*) FROM inbox");
    let fence = |epoch: i64, next: i64| Fence {
        group: "saga".to_owned(),
        member: "a".to_owned(),
        advance: Advance {
            topic: "fulfillment.events".to_owned(),
            partition: 0,
            epoch,
            next,
            last: 77,
        },
    };
    let fenced = |fence: Fence| {
        zentra_runtime::inbox::Entry::new("saga", &Uuid::now_v7().to_string(), "fulfillment.events")
            .expect("entry")
            .fenced(Some(fence))
    };
    let lease = Duration::from_secs(30);
    let saga = new_saga();
    // A saga started by its OrderPlaced: the same fence, in the insert.
    let started = |fence: Fence| {
        let (db, saga) = (db.clone(), saga.clone());
        async move {
            store::insert_moving(&db, &saga, "x", lease, Some(&fence))
                .await
                .expect("insert")
        }
    };
    assert_eq!(started(fence(2, 10)).await, Claimed::Fenced);
    assert!(
        store::by_id(&db, saga.id).await.expect("read").is_none(),
        "a stale holder started a saga"
    );
    assert_eq!(offset().await, 9);
    assert_eq!(started(fence(3, 10)).await, Claimed::First(()));
    assert!(store::by_id(&db, saga.id).await.expect("read").is_some());
    assert_eq!(
        started(fence(3, 10)).await,
        Claimed::Duplicate,
        "the order has its saga"
    );
    assert_eq!(offset().await, 10);
    let signal = |entry: zentra_runtime::inbox::Entry, target| {
        let db = db.clone();
        async move {
            store::add_signal_once(&db, &entry, target, &Signal::RetryNow, None)
                .await
                .expect("statement")
        }
    };

    // A stale epoch: the partition was taken over since. Nothing is written.
    let stale = signal(fenced(fence(2, 11)), store::SignalTarget::Saga(saga.id)).await;
    assert!(
        matches!(stale, Some(Claimed::Fenced)),
        "a stale holder wrote: {stale:?}"
    );
    assert_eq!(offset().await, 10);
    assert_eq!(inbox_entries().await, 0);
    assert!(signal_ids(&db, saga.id).await.is_empty());

    // No such saga: nothing is written either, so the event is read again.
    let missing = signal(
        fenced(fence(3, 11)),
        store::SignalTarget::Saga(Uuid::now_v7()),
    )
    .await;
    assert!(
        missing.is_none(),
        "a missing saga was signalled: {missing:?}"
    );
    assert_eq!(offset().await, 10);
    assert_eq!(inbox_entries().await, 0);

    // The holder: signal, inbox entry and offset together.
    let entry = fenced(fence(3, 11));
    let first = signal(entry.clone(), store::SignalTarget::Saga(saga.id)).await;
    assert!(matches!(first, Some(Claimed::First(None))), "{first:?}");
    assert_eq!(offset().await, 11);
    assert_eq!(inbox_entries().await, 1);
    assert_eq!(signal_ids(&db, saga.id).await.len(), 1);

    // The same event again (read twice): only the offset moves.
    let again = signal(
        entry.fenced(Some(fence(3, 12))),
        store::SignalTarget::Saga(saga.id),
    )
    .await;
    assert!(matches!(again, Some(Claimed::Duplicate)), "{again:?}");
    assert_eq!(offset().await, 12);
    assert_eq!(signal_ids(&db, saga.id).await.len(), 1);
}
