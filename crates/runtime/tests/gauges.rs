//! State gauges against real PostgreSQL: the outbox backlog and its oldest event's age, dead
//! letters pending per group and topic (0 for a consumed topic without any, and back to 0 once
//! handled, not left at their last value),
//! and the process's CPU, memory and open files, as Prometheus renders them.

use metrics_exporter_prometheus::PrometheusBuilder;
use sea_orm::ConnectionTrait as _;
use zentra_runtime::gauges::{Process, RuntimeTables, Sampler as _};
use zentra_test_support::TestDatabase;

/// The value of the series that `line_start` begins (name and labels), if rendered.
fn value(rendered: &str, line_start: &str) -> Option<f64> {
    rendered
        .lines()
        .find_map(|line| line.strip_prefix(line_start)?.trim().parse().ok())
}

// One thread: the recorder is this thread's, and every poll of the samplers happens on it.
#[tokio::test(flavor = "current_thread")]
async fn backlog_dead_letters_and_the_process_are_sampled_and_drained_series_read_zero() {
    let database = TestDatabase::create("gauges").await.expect("database");
    let db = database.connect().await.expect("connect");
    zentra_runtime::db::migrate(&db, &[])
        .await
        .expect("migrations");
    db.execute_unprepared(
        "INSERT INTO outbox (event_id, topic, record_key, event_type, envelope, created_at, published_at)
           VALUES (gen_random_uuid(), 't', 'k', 'e', '', now() - interval '90 seconds', NULL),
                  (gen_random_uuid(), 't', 'k', 'e', '', now() - interval '5 seconds', NULL),
                  (gen_random_uuid(), 't', 'k', 'e', '', now() - interval '1 hour', now());
         INSERT INTO dead_letters (id, consumer_group, source_topic, partition, record_offset, record_key,
             headers, payload, error, attempt_count, status, first_failure_at, last_failure_at, identity)
           SELECT gen_random_uuid(), g, t, 0, n, '', '', '', 'bad', 3, s, now(), now(), 'id-' || n
           FROM (VALUES ('inv', 'p.order.events', 'PENDING', 1), ('inv', 'p.order.events', 'PENDING', 2),
                        ('inv', 'p.inventory.commands', 'PENDING', 3), ('inv', 'p.order.events', 'DISMISSED', 4))
                AS rows (g, t, s, n);
         INSERT INTO consumer_partitions (consumer_group, topic, partition)
           VALUES ('inv', 'p.order.events', 0), ('inv', 'p.payment.events', 0), ('inv', 'p.payment.events', 1);",
    )
    .await
    .expect("seed");

    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut tables = RuntimeTables::default();
    tables.sample(&db).await.expect("sampled");
    Process.sample(&db).await.expect("sampled");
    let rendered = handle.render();

    assert_eq!(
        value(&rendered, "zentra_outbox_pending "),
        Some(2.0),
        "{rendered}"
    );
    let oldest = value(&rendered, "zentra_outbox_oldest_pending_seconds ").expect("oldest");
    assert!((89.0..3600.0).contains(&oldest), "{oldest}");
    assert_eq!(
        value(
            &rendered,
            "zentra_dead_letters_pending{group=\"inv\",topic=\"p.order.events\"} "
        ),
        Some(2.0),
        "{rendered}"
    );
    assert_eq!(
        value(
            &rendered,
            "zentra_dead_letters_pending{group=\"inv\",topic=\"p.inventory.commands\"} "
        ),
        Some(1.0)
    );
    // A topic the service consumes without a dead letter reads 0: a value, not a missing series.
    assert_eq!(
        value(
            &rendered,
            "zentra_dead_letters_pending{group=\"inv\",topic=\"p.payment.events\"} "
        ),
        Some(0.0),
        "{rendered}"
    );
    assert!(value(&rendered, "zentra_process_open_fds ").expect("fds") > 2.0);
    assert!(value(&rendered, "zentra_process_resident_memory_bytes ").expect("rss") > 1e6);
    assert!(value(&rendered, "zentra_process_cpu_seconds ").expect("cpu") >= 0.0);

    // Everything handled: the series read 0, they do not keep their last value.
    db.execute_unprepared(
        "UPDATE outbox SET published_at = now();
         UPDATE dead_letters SET status = 'DISMISSED' WHERE status = 'PENDING';",
    )
    .await
    .expect("drain");
    tables.sample(&db).await.expect("sampled");
    let rendered = handle.render();
    assert_eq!(value(&rendered, "zentra_outbox_pending "), Some(0.0));
    assert_eq!(
        value(&rendered, "zentra_outbox_oldest_pending_seconds "),
        Some(0.0)
    );
    assert_eq!(
        value(
            &rendered,
            "zentra_dead_letters_pending{group=\"inv\",topic=\"p.order.events\"} "
        ),
        Some(0.0),
        "{rendered}"
    );

    drop(db);
    database.drop_database().await.expect("cleanup");
}
