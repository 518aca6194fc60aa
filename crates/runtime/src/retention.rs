//! Retention: the runtime's bookkeeping tables (published outbox rows, inbox entries,
//! idempotency keys) and its audit records are pruned past their horizon by a background task, in small batches so no
//! delete holds a long lock. Horizons are checked at start against what they protect
//! ([`crate::config::RetentionConfig::check`]); unpublished outbox rows are never touched.

use std::time::Duration;

use sea_orm::{ConnectionTrait as _, DatabaseConnection, DbBackend, DbErr, Statement};
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;

/// Metric: rows deleted by retention, by table.
pub const PRUNED: &str = "zentra_retention_pruned_total";

/// Rows deleted by one round, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Published outbox rows.
    pub outbox: u64,
    /// Inbox entries.
    pub inbox: u64,
    /// Idempotency keys.
    pub idempotency_keys: u64,
    /// Audit records.
    pub audit_records: u64,
}

/// One table's prune: a batch of rows past `$1` seconds old, by the column that dates them.
struct Target {
    table: &'static str,
    sql: &'static str,
}

const TARGETS: [Target; 4] = [
    Target {
        table: "outbox",
        sql: "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox \
              WHERE published_at < now() - make_interval(secs => $1) LIMIT $2)",
    },
    Target {
        table: "inbox",
        sql: "DELETE FROM inbox WHERE ctid IN (SELECT ctid FROM inbox \
              WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2)",
    },
    Target {
        table: "idempotency_keys",
        sql: "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys \
              WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)",
    },
    Target {
        table: "audit_records",
        sql: "DELETE FROM audit_records WHERE id IN (SELECT id FROM audit_records \
              WHERE requested_at < now() - make_interval(secs => $1) LIMIT $2)",
    },
];

/// Deletes every row past its horizon, batch by batch.
pub async fn prune(db: &DatabaseConnection, config: &RetentionConfig) -> Result<Pruned, DbErr> {
    let horizons = [
        config.outbox,
        config.inbox,
        config.idempotency_keys,
        config.audit_records,
    ];
    let mut totals = [0_u64; 4];
    for ((target, horizon), total) in TARGETS.iter().zip(horizons).zip(&mut totals) {
        loop {
            let deleted = db
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    target.sql,
                    [
                        horizon.as_secs_f64().into(),
                        i64::from(config.batch_size).into(),
                    ],
                ))
                .await?
                .rows_affected();
            *total += deleted;
            if deleted < u64::from(config.batch_size) {
                break;
            }
        }
        if *total > 0 {
            metrics::counter!(PRUNED, "table" => target.table).increment(*total);
            tracing::info!(table = target.table, rows = *total, "pruned past retention");
        }
    }
    let [outbox, inbox, idempotency_keys, audit_records] = totals;
    Ok(Pruned {
        outbox,
        inbox,
        idempotency_keys,
        audit_records,
    })
}

/// Prunes every `interval` until `shutdown`; a failed round is logged and retried next time.
pub async fn run(db: DatabaseConnection, config: RetentionConfig, shutdown: CancellationToken) {
    if !config.enabled {
        return;
    }
    metrics::describe_counter!(
        PRUNED,
        "rows deleted past their retention horizon, by table"
    );
    // Not all replicas at once after a joint start.
    let mut next = Duration::from_secs(30);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(next) => {}
        }
        if let Err(error) = prune(&db, &config).await {
            tracing::warn!(%error, "retention round failed");
        }
        next = config.interval;
    }
}

/// Indexes that let the rounds find old rows without reading whole tables: BRIN, because each
/// column grows with insertion order and a BRIN index costs almost nothing to keep.
pub(crate) const MIGRATION: &str = r#"
CREATE INDEX outbox_published_at ON outbox USING brin (published_at);
CREATE INDEX inbox_processed_at ON inbox USING brin (processed_at);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys USING brin (created_at);
"#;

/// The same for audit records, added after them.
pub(crate) const AUDIT_MIGRATION: &str = r#"
CREATE INDEX audit_records_requested_at ON audit_records USING brin (requested_at);
"#;
