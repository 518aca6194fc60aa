//! The fulfillment service's schema. `next_step_at` makes the worker's progress durable: after a
//! restart it continues from the database.

use zentra_runtime::db::SqlMigration;

/// Every fulfillment migration.
pub const MIGRATIONS: &[SqlMigration] = &[
    SqlMigration {
        name: "m0001_shipments",
        up: r#"
CREATE TABLE shipments (
    id                   UUID PRIMARY KEY,
    order_id             UUID        NOT NULL UNIQUE,
    status               TEXT        NOT NULL CHECK (status IN
                           ('PENDING', 'PICKING', 'PACKED', 'DISPATCHED', 'CANCELLED', 'FAILED')),
    shipping_address     BYTEA       NOT NULL,
    country_code         TEXT        NOT NULL,
    carrier              TEXT        NOT NULL DEFAULT '',
    tracking_number      TEXT        NOT NULL DEFAULT '',
    failure_reason       TEXT        NOT NULL DEFAULT '',
    cancellation_reason  TEXT        NOT NULL DEFAULT '',
    next_step_at         TIMESTAMPTZ,
    picking_at           TIMESTAMPTZ,
    packed_at            TIMESTAMPTZ,
    dispatched_at        TIMESTAMPTZ,
    cancelled_at         TIMESTAMPTZ,
    failed_at            TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The worker reads only shipments in progress, soonest first.
CREATE INDEX shipments_due ON shipments (next_step_at) WHERE status IN ('PENDING', 'PICKING', 'PACKED');

CREATE TABLE shipment_lines (
    shipment_id  UUID   NOT NULL REFERENCES shipments (id),
    sku          TEXT   NOT NULL,
    quantity     BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (shipment_id, sku)
);
"#,
    },
    SqlMigration {
        name: "m0002_shipment_trace",
        up: r#"
-- The trace a shipment was created in, so the worker's steps belong to the order's trace.
ALTER TABLE shipments ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
"#,
    },
];
