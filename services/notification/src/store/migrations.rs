//! The notification service's schema.

use zentra_runtime::db::SqlMigration;

/// Every notification migration.
pub const MIGRATIONS: &[SqlMigration] = &[
    SqlMigration {
        name: "m0001_notifications",
        up: r#"
-- Who placed which order, learnt from OrderPlaced, so payment and shipment events find the customer.
CREATE TABLE order_customers (
    order_id     UUID PRIMARY KEY,
    customer_id  TEXT NOT NULL
);

CREATE TABLE notifications (
    id                  UUID PRIMARY KEY,
    trigger_event_id    UUID        NOT NULL UNIQUE,
    trigger_event_type  TEXT        NOT NULL,
    customer_id         TEXT        NOT NULL,
    order_id            UUID        NOT NULL,
    recipient           TEXT        NOT NULL,
    subject             TEXT        NOT NULL,
    body                TEXT        NOT NULL,
    status              TEXT        NOT NULL CHECK (status IN ('PENDING', 'SENT', 'RETRYING', 'DEAD_LETTERED')),
    attempts            INT         NOT NULL DEFAULT 0,
    next_attempt_at     TIMESTAMPTZ,
    sent_at             TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status IN ('PENDING', 'RETRYING');
CREATE INDEX notifications_by_order ON notifications (order_id, id DESC);
CREATE INDEX notifications_by_customer ON notifications (customer_id, id DESC);

CREATE TABLE delivery_attempts (
    notification_id  UUID        NOT NULL REFERENCES notifications (id),
    attempt          INT         NOT NULL,
    attempted_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    outcome          TEXT        NOT NULL,
    error            TEXT        NOT NULL DEFAULT '',
    PRIMARY KEY (notification_id, attempt)
);
"#,
    },
    SqlMigration {
        name: "m0002_pending_by_order",
        up: r#"
-- The delivery workers' "an earlier mail of this order is still pending" check, as an index probe
-- instead of a scan of every due mail per lock (docs/BENCHMARKS.md, session 8).
CREATE INDEX notifications_pending_by_order ON notifications (order_id, id) WHERE status = 'PENDING';
"#,
    },
    SqlMigration {
        name: "m0003_order_email",
        up: r#"
-- Mail goes only to the address the order was placed with (validated by the order service);
-- orders remembered before have none, and are not mailed.
ALTER TABLE order_customers ADD COLUMN email TEXT NOT NULL DEFAULT '';
"#,
    },
    SqlMigration {
        name: "m0004_notification_trace",
        up: r#"
-- The trace of the event a mail answers, so its delivery belongs to the order's trace.
ALTER TABLE notifications ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
"#,
    },
];
