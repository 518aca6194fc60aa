//! The payment service's schema. Constraints hold the money invariants even against a buggy
//! caller: nothing is captured beyond the authorization or refunded beyond the capture.

use zentra_runtime::db::SqlMigration;

/// Every payment migration.
pub const MIGRATIONS: &[SqlMigration] = &[SqlMigration {
    name: "m0001_payments_ledger",
    up: r#"
CREATE TABLE payments (
    id                    UUID PRIMARY KEY,
    order_id              UUID        NOT NULL,
    status                TEXT        NOT NULL CHECK (status IN
                            ('AUTHORIZED', 'DECLINED', 'CAPTURED', 'PARTIALLY_REFUNDED', 'REFUNDED', 'VOIDED')),
    currency              TEXT        NOT NULL,
    amount_minor          BIGINT      NOT NULL CHECK (amount_minor > 0),
    captured_minor        BIGINT      NOT NULL DEFAULT 0 CHECK (captured_minor >= 0 AND captured_minor <= amount_minor),
    refunded_minor        BIGINT      NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0 AND refunded_minor <= captured_minor),
    decline_reason        TEXT        NOT NULL DEFAULT '',
    decline_message       TEXT        NOT NULL DEFAULT '',
    processor_reference   TEXT        NOT NULL DEFAULT '',
    authorization_expires_at TIMESTAMPTZ,
    captured_at           TIMESTAMPTZ,
    voided_at             TIMESTAMPTZ,
    last_refund_at        TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX payments_by_order ON payments (order_id, id DESC);

CREATE TABLE payment_ledger (
    id                   UUID PRIMARY KEY,
    payment_id           UUID        NOT NULL REFERENCES payments (id),
    order_id             UUID        NOT NULL,
    entry_type           TEXT        NOT NULL,
    currency             TEXT        NOT NULL,
    amount_minor         BIGINT      NOT NULL CHECK (amount_minor >= 0),
    reason               TEXT        NOT NULL DEFAULT '',
    processor_reference  TEXT        NOT NULL DEFAULT '',
    idempotency_key      TEXT        NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX payment_ledger_by_payment ON payment_ledger (payment_id, id);
CREATE INDEX payment_ledger_by_order ON payment_ledger (order_id, id);
"#,
}];
