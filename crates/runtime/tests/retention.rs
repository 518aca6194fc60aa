//! Retention against real PostgreSQL: rows past their horizon (audit records' included) are
//! deleted in batches, rows within it and unpublished outbox rows are kept, and a client retry within the key horizon still
//! replays its first answer.

use std::time::Duration;

use sea_orm::{ConnectionTrait as _, DatabaseConnection};
use zentra_proto::common::v1::Money;
use zentra_runtime::{
    config::{OutboxConfig, RetentionConfig},
    idempotency::{Begin, begin},
    retention,
};
use zentra_test_support::{TestDatabase, count};

const DAY: Duration = Duration::from_secs(24 * 3600);

async fn seed(db: &DatabaseConnection) {
    // 12 of each: 7 past every horizon below, 5 within it; 3 outbox rows never published.
    db.execute_unprepared(
        "INSERT INTO outbox (event_id, topic, record_key, event_type, envelope, created_at, published_at)
           SELECT gen_random_uuid(), 't', 'k', 'e', '', now() - make_interval(days => d), now() - make_interval(days => d)
           FROM unnest(ARRAY[40,39,38,37,36,35,34,1,1,1,0,0]) AS d;
         INSERT INTO outbox (event_id, topic, record_key, event_type, envelope, created_at)
           SELECT gen_random_uuid(), 't', 'k', 'e', '', now() - interval '60 days' FROM generate_series(1, 3);
         INSERT INTO inbox (consumer, event_id, topic, processed_at)
           SELECT 'c', gen_random_uuid(), 't', now() - make_interval(days => d)
           FROM unnest(ARRAY[40,39,38,37,36,35,34,1,1,1,0,0]) AS d;
         INSERT INTO idempotency_keys (scope, key, fingerprint, response, created_at)
           SELECT 'Old', 'k' || n, '\\x00', '\\x00', now() - interval '60 days' FROM generate_series(1, 7) AS n;
         INSERT INTO audit_records (id, action, caller, role, peer, target, reason, requested_at)
           SELECT gen_random_uuid(), 'a', 'key:ops', 'admin', 'p', 't', '', now() - make_interval(days => d)
           FROM unnest(ARRAY[500,450,401,399,30]) AS d;",
    )
    .await
    .expect("seed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_their_horizon_go_in_batches_and_a_retry_within_it_still_replays() {
    let database = TestDatabase::create("retention").await.expect("database");
    let db = database.connect().await.expect("connect");
    zentra_runtime::db::migrate(&db, &[])
        .await
        .expect("migrations");
    seed(&db).await;

    // A client's call, answered now: its key is within every horizon.
    let answer = Money {
        currency_code: "USD".to_owned(),
        amount_minor: 1299,
    };
    match begin::<Money>(&db, "PlaceOrder", "client-retry", b"fp")
        .await
        .expect("begin")
    {
        Begin::Fresh(tx) => tx.commit(&answer).await.expect("commit"),
        Begin::Replay(_) => panic!("a new key"),
    }

    let config = RetentionConfig {
        batch_size: 2,
        outbox: 30 * DAY,
        inbox: 30 * DAY,
        idempotency_keys: 30 * DAY,
        ..RetentionConfig::default()
    };
    config
        .check(&OutboxConfig::default())
        .expect("valid horizons");
    let pruned = retention::prune(&db, &config).await.expect("pruned");
    assert_eq!(
        (pruned.outbox, pruned.inbox, pruned.idempotency_keys),
        (7, 7, 7),
        "batches of 2 until none is left"
    );
    assert_eq!(
        pruned.audit_records, 3,
        "audit records past the default 400 days"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM audit_records").await, 2);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
        .await,
        3,
        "unpublished events are never pruned, however old"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM outbox").await, 8);
    assert_eq!(count(&db, "SELECT count(*) FROM inbox").await, 5);
    assert_eq!(count(&db, "SELECT count(*) FROM idempotency_keys").await, 1);

    // The client retries: the same answer, not a second effect.
    match begin::<Money>(&db, "PlaceOrder", "client-retry", b"fp")
        .await
        .expect("begin")
    {
        Begin::Replay(replayed) => assert_eq!(replayed, answer),
        Begin::Fresh(_) => panic!("the key was pruned within its horizon"),
    }
    // A second round finds nothing.
    assert_eq!(
        retention::prune(&db, &config).await.expect("pruned"),
        retention::Pruned::default()
    );

    drop(db);
    database.drop_database().await.expect("cleanup");
}

#[test]
fn horizons_that_would_undo_a_guarantee_are_refused() {
    let outbox = OutboxConfig::default();
    let short_outbox = RetentionConfig {
        outbox: Duration::from_secs(60),
        ..RetentionConfig::default()
    };
    assert!(
        short_outbox.check(&outbox).is_err(),
        "below the republish window"
    );
    let short_keys = RetentionConfig {
        idempotency_keys: Duration::from_secs(3600),
        ..RetentionConfig::default()
    };
    assert!(
        short_keys.check(&outbox).is_err(),
        "keys for less than a day"
    );
    let short_audit = RetentionConfig {
        audit_records: 7 * DAY,
        ..RetentionConfig::default()
    };
    assert!(
        short_audit.check(&outbox).is_err(),
        "an audit trail of a week"
    );
    assert!(RetentionConfig::default().check(&outbox).is_ok());
}
