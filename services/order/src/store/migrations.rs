//! The order service's schema.

use zentra_runtime::db::SqlMigration;

/// Every order migration.
pub const MIGRATIONS: &[SqlMigration] = &[
    SqlMigration {
        name: "m0001_orders",
        up: r#"
CREATE TABLE orders (
    id                    UUID PRIMARY KEY,
    customer_id           TEXT        NOT NULL,
    status                TEXT        NOT NULL CHECK (status IN
                            ('PENDING', 'CONFIRMED', 'REJECTED', 'CANCELLATION_REQUESTED', 'CANCELLED')),
    currency              TEXT        NOT NULL,
    total_minor           BIGINT      NOT NULL CHECK (total_minor >= 0),
    shipping_address      BYTEA       NOT NULL,
    payment_method_token  TEXT        NOT NULL,
    rejection_reason      TEXT        NOT NULL DEFAULT '',
    cancellation_reason   TEXT        NOT NULL DEFAULT '',
    version               BIGINT      NOT NULL DEFAULT 1,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX orders_by_customer ON orders (customer_id, id DESC);
CREATE INDEX orders_by_status ON orders (status, id DESC);

CREATE TABLE order_lines (
    order_id          UUID   NOT NULL REFERENCES orders (id),
    line_no           INT    NOT NULL,
    sku               TEXT   NOT NULL,
    quantity          BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_minor  BIGINT NOT NULL CHECK (unit_price_minor >= 0),
    line_total_minor  BIGINT NOT NULL CHECK (line_total_minor >= 0),
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE order_history (
    order_id         UUID        NOT NULL REFERENCES orders (id),
    version          BIGINT      NOT NULL,
    from_status      TEXT        NOT NULL,
    to_status        TEXT        NOT NULL,
    cause            TEXT        NOT NULL,
    reason           TEXT        NOT NULL DEFAULT '',
    idempotency_key  TEXT        NOT NULL,
    changed_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, version)
);
"#,
    },
    SqlMigration {
        name: "m0002_order_customer_email",
        // Where the customer's mail goes: given at placement, validated, empty when none was given.
        up: "ALTER TABLE orders ADD COLUMN customer_email TEXT NOT NULL DEFAULT ''",
    },
];
