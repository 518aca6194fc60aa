//! The saga orchestrator's schema: one row per saga (the queryable columns, plus its timeline as
//! a JSON document written atomically with every transition), and the signals waiting for it.

use zentra_runtime::db::SqlMigration;

/// Every saga migration.
pub const MIGRATIONS: &[SqlMigration] = &[
    SqlMigration {
        name: "m0001_sagas",
        up: r#"
CREATE TABLE sagas (
    id                 UUID PRIMARY KEY,
    order_id           UUID        NOT NULL UNIQUE,
    state              TEXT        NOT NULL CHECK (state IN ('RUNNING', 'AWAITING_SHIPMENT',
                           'COMPENSATING', 'COMPLETED', 'COMPENSATED', 'COMPENSATION_FAILED')),
    current_step       TEXT        NOT NULL DEFAULT '',
    failing_step       TEXT        NOT NULL DEFAULT '',
    compensation_cause TEXT        NOT NULL DEFAULT '',
    -- What the saga needs of the order: the encoded OrderPlaced.
    order_data         BYTEA       NOT NULL,
    -- Ids made by steps, reports received, and every step with every attempt.
    data               JSONB       NOT NULL,
    version            BIGINT      NOT NULL DEFAULT 1,
    -- When the engine must look at the saga next; NULL while only a signal can move it.
    next_run_at        TIMESTAMPTZ,
    -- The orchestrator instance driving it, until lease_until.
    lease_owner        TEXT,
    lease_until        TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    ended_at           TIMESTAMPTZ
);
CREATE INDEX sagas_due ON sagas (next_run_at) WHERE next_run_at IS NOT NULL;
CREATE INDEX sagas_by_state ON sagas (state, id DESC);
CREATE INDEX sagas_by_update ON sagas (updated_at);

-- Reports and requests from outside the engine (shipment events, command acknowledgements,
-- cancellations, operator actions). Appending never contends with the engine; the engine applies
-- and deletes them in the transaction of its next transition.
CREATE TABLE saga_signals (
    id          BIGSERIAL PRIMARY KEY,
    saga_id     UUID        NOT NULL REFERENCES sagas (id),
    signal      JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX saga_signals_by_saga ON saga_signals (saga_id, id);
"#,
    },
    SqlMigration {
        name: "m0002_sagas_written_by",
        up: r#"
-- The instance that wrote a saga's current version: a watcher hears its own instance's changes
-- directly and reads only the other instances' changes from the table.
ALTER TABLE sagas ADD COLUMN written_by TEXT NOT NULL DEFAULT '';
"#,
    },
    SqlMigration {
        name: "m0003_bulk_operations",
        up: r#"
-- An operator action on many sagas (crate::bulk): the sagas are fixed when it starts, one item
-- each, and acted on one at a time by the instance holding the operation's lease.
CREATE TABLE bulk_operations (
    id                UUID PRIMARY KEY,
    action            TEXT        NOT NULL CHECK (action IN ('RETRY', 'CANCEL', 'RESUME', 'SKIP')),
    -- The SagaFilter as asked, encoded.
    filter            BYTEA       NOT NULL,
    state             TEXT        NOT NULL CHECK (state IN ('RUNNING', 'SUCCEEDED', 'CANCELLED')),
    sagas_per_second  INT         NOT NULL CHECK (sagas_per_second > 0),
    caller            TEXT        NOT NULL,
    role              TEXT        NOT NULL,
    reason            TEXT        NOT NULL,
    cancelled_by      TEXT        NOT NULL DEFAULT '',
    lease_owner       TEXT,
    lease_until       TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    ended_at          TIMESTAMPTZ
);
CREATE INDEX bulk_operations_running ON bulk_operations (id) WHERE state = 'RUNNING';

CREATE TABLE bulk_operation_items (
    operation_id  UUID        NOT NULL REFERENCES bulk_operations (id),
    saga_id       UUID        NOT NULL,
    order_id      UUID        NOT NULL,
    outcome       TEXT        NOT NULL DEFAULT 'PENDING'
                      CHECK (outcome IN ('PENDING', 'APPLIED', 'REFUSED', 'CANCELLED')),
    message       TEXT        NOT NULL DEFAULT '',
    done_at       TIMESTAMPTZ,
    PRIMARY KEY (operation_id, saga_id)
);
"#,
    },
];
