//! PostgreSQL through sea-orm: the pool, and migrations applied at start.
//!
//! Migrations are SQL in code, applied in order by sea-orm-migration and recorded in its table.
//! The runtime's own tables (outbox, inbox, idempotency) come first in every service's list.

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait as _, Database, DatabaseConnection, DbErr};
use sea_orm_migration::{MigrationName, MigrationTrait, MigratorTraitSelf, SchemaManager};

use crate::config::DatabaseConfig;

/// A migration written as SQL statements.
#[derive(Debug, Clone, Copy)]
pub struct SqlMigration {
    /// Unique, ordered name, for example `m0001_products`.
    pub name: &'static str,
    /// The statements; run in one transaction.
    pub up: &'static str,
}

impl MigrationName for SqlMigration {
    fn name(&self) -> &str {
        self.name
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for SqlMigration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(self.up).await?;
        Ok(())
    }
}

/// The runtime's tables, needed by every service.
pub const RUNTIME_MIGRATIONS: &[SqlMigration] = &[
    SqlMigration {
        name: "m0000_runtime_outbox_inbox_idempotency",
        up: r#"
CREATE TABLE outbox (
    seq           BIGSERIAL PRIMARY KEY,
    event_id      UUID        NOT NULL UNIQUE,
    topic         TEXT        NOT NULL,
    record_key    TEXT        NOT NULL,
    event_type    TEXT        NOT NULL,
    envelope      BYTEA       NOT NULL,
    traceparent   TEXT        NOT NULL DEFAULT '',
    tracestate    TEXT        NOT NULL DEFAULT '',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ
);
-- The relay only ever looks for unsent rows, oldest first.
CREATE INDEX outbox_unsent ON outbox (seq) WHERE published_at IS NULL;

CREATE TABLE inbox (
    consumer      TEXT        NOT NULL,
    event_id      UUID        NOT NULL,
    topic         TEXT        NOT NULL,
    processed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

CREATE TABLE idempotency_keys (
    scope         TEXT        NOT NULL,
    key           TEXT        NOT NULL,
    fingerprint   BYTEA       NOT NULL,
    response      BYTEA,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
"#,
    },
    SqlMigration {
        name: "m0000a_runtime_dead_letters",
        up: r#"
CREATE TABLE dead_letters (
    id               UUID PRIMARY KEY,
    consumer_group   TEXT        NOT NULL,
    source_topic     TEXT        NOT NULL,
    partition        INT         NOT NULL,
    record_offset    BIGINT      NOT NULL,
    record_key       BYTEA       NOT NULL,
    headers          BYTEA       NOT NULL,
    payload          BYTEA       NOT NULL,
    event_id         TEXT        NOT NULL DEFAULT '',
    event_type       TEXT        NOT NULL DEFAULT '',
    error            TEXT        NOT NULL,
    attempt_count    INT         NOT NULL,
    status           TEXT        NOT NULL CHECK (status IN ('PENDING', 'REPLAYED', 'DISMISSED')),
    first_failure_at TIMESTAMPTZ NOT NULL,
    last_failure_at  TIMESTAMPTZ NOT NULL,
    replayed_at      TIMESTAMPTZ,
    dismissed_at     TIMESTAMPTZ,
    dismiss_reason   TEXT        NOT NULL DEFAULT '',
    UNIQUE (consumer_group, source_topic, partition, record_offset)
);
CREATE INDEX dead_letters_by_failure ON dead_letters (last_failure_at DESC);
"#,
    },
    SqlMigration {
        name: "m0000b_runtime_consumer_partitions",
        up: crate::kafka::LEASES_MIGRATION,
    },
    SqlMigration {
        name: "m0000c_runtime_dead_letters_by_identity",
        // Offsets repeat after a broker lost its log: a pending dead letter is known by its event
        // id (or a digest of an undecodable record). One replayed or dismissed that fails again is
        // a new pending record.
        up: r#"
ALTER TABLE dead_letters ADD COLUMN identity TEXT;
UPDATE dead_letters SET identity = CASE WHEN event_id <> '' THEN event_id
    ELSE 'offset:' || partition || ':' || record_offset || ':' || id END;
ALTER TABLE dead_letters ALTER COLUMN identity SET NOT NULL;
DO $$
DECLARE constraint_name TEXT;
BEGIN
    SELECT conname INTO constraint_name FROM pg_constraint
    WHERE conrelid = 'dead_letters'::regclass AND contype = 'u';
    IF constraint_name IS NOT NULL THEN
        EXECUTE 'ALTER TABLE dead_letters DROP CONSTRAINT ' || quote_ident(constraint_name);
    END IF;
END $$;
CREATE UNIQUE INDEX dead_letters_identity ON dead_letters (consumer_group, source_topic, identity)
    WHERE status = 'PENDING';
"#,
    },
    SqlMigration {
        name: "m0000d_runtime_audit_records",
        up: crate::audit::MIGRATION,
    },
    SqlMigration {
        name: "m0000e_runtime_retention_indexes",
        up: crate::retention::MIGRATION,
    },
    SqlMigration {
        name: "m0000f_runtime_audit_retention_index",
        up: crate::retention::AUDIT_MIGRATION,
    },
    SqlMigration {
        name: "m0000g_runtime_consumer_last_record",
        up: crate::kafka::LAST_RECORD_MIGRATION,
    },
];

/// A pooled connection idle for longer than this is tested before it is handed out.
const IDLE_BEFORE_TEST: Duration = Duration::from_secs(10);

/// Opens the pool.
pub async fn connect(config: &DatabaseConfig) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(config.url.expose().to_owned());
    options
        .max_connections(config.max_connections)
        .min_connections(config.min_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect_timeout(Duration::from_secs(5))
        // A connection is tested before use only when it sat idle: testing every checkout cost
        // a round trip on every request's path (sqlx still tests each one as it returns).
        .test_before_acquire_if_idle_for(IDLE_BEFORE_TEST)
        .sqlx_logging(false);
    Database::connect(options).await
}

/// Applies every migration not yet applied: the runtime's, then the service's.
pub async fn migrate(
    db: &DatabaseConnection,
    service_migrations: &'static [SqlMigration],
) -> Result<(), DbErr> {
    Migrations(service_migrations).up(db, None).await
}

struct Migrations(&'static [SqlMigration]);

#[sea_orm_migration::async_trait::async_trait]
impl MigratorTraitSelf for Migrations {
    fn migrations(&self) -> Vec<Box<dyn MigrationTrait>> {
        RUNTIME_MIGRATIONS
            .iter()
            .chain(self.0)
            .map(|migration| Box::new(*migration) as Box<dyn MigrationTrait>)
            .collect()
    }
}

/// Health probe for the database.
pub struct PostgresProbe(pub DatabaseConnection);

impl crate::ops::DependencyProbe for PostgresProbe {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn probe(&self) -> futures::future::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.0.ping().await.map_err(|error| error.to_string()) })
    }
}
