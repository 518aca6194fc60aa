//! Inventory's schema, in order. Constraints hold the invariants even against a buggy caller:
//! stock counters never go negative.

use zentra_runtime::db::SqlMigration;

/// Every inventory migration.
pub const MIGRATIONS: &[SqlMigration] = &[
    SqlMigration {
        name: "m0001_products_reservations",
        up: r#"
CREATE TABLE products (
    sku                  TEXT PRIMARY KEY,
    name                 TEXT        NOT NULL,
    available            BIGINT      NOT NULL CHECK (available >= 0),
    reserved             BIGINT      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold                 BIGINT      NOT NULL DEFAULT 0 CHECK (sold >= 0),
    low_stock_threshold  BIGINT      NOT NULL DEFAULT 0 CHECK (low_stock_threshold >= 0),
    price_minor          BIGINT      NOT NULL CHECK (price_minor >= 0),
    currency             TEXT        NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE reservations (
    id              UUID PRIMARY KEY,
    order_id        UUID        NOT NULL,
    status          TEXT        NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'RELEASED', 'EXPIRED')),
    expires_at      TIMESTAMPTZ NOT NULL,
    release_reason  TEXT        NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The expiry sweep reads only pending reservations, soonest first.
CREATE INDEX reservations_pending_expiry ON reservations (expires_at) WHERE status = 'PENDING';
CREATE INDEX reservations_by_order ON reservations (order_id, id DESC);

CREATE TABLE reservation_lines (
    reservation_id  UUID   NOT NULL REFERENCES reservations (id),
    sku             TEXT   NOT NULL REFERENCES products (sku),
    quantity        BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, sku)
);

CREATE TABLE stock_adjustments (
    id          BIGSERIAL PRIMARY KEY,
    sku         TEXT        NOT NULL REFERENCES products (sku),
    delta       BIGINT      NOT NULL,
    reason      TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
"#,
    },
    SqlMigration {
        name: "m0002_pinned_reservations",
        up: r#"
-- A reservation whose goods were promised to a shipment is pinned: it never expires.
ALTER TABLE reservations ADD COLUMN pinned_at TIMESTAMPTZ;
DROP INDEX reservations_pending_expiry;
CREATE INDEX reservations_pending_expiry ON reservations (expires_at)
    WHERE status = 'PENDING' AND pinned_at IS NULL;
"#,
    },
];
