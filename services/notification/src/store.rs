//! The notification service's storage.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement, Value};
use uuid::Uuid;

use crate::error::NotificationError;

pub mod migrations;

/// A stored notification.
#[derive(Debug, Clone, FromQueryResult)]
pub struct Notification {
    /// Id.
    pub id: Uuid,
    /// Event that caused it.
    pub trigger_event_id: Uuid,
    /// Its type.
    pub trigger_event_type: String,
    /// Customer.
    pub customer_id: String,
    /// Order.
    pub order_id: Uuid,
    /// Address.
    pub recipient: String,
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: String,
    /// PENDING, SENT, RETRYING, DEAD_LETTERED.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// When the next attempt is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was sent.
    pub sent_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
}

/// One delivery attempt.
#[derive(Debug, Clone, FromQueryResult)]
pub struct Attempt {
    /// Notification.
    pub notification_id: Uuid,
    /// 1-based attempt number.
    pub attempt: i32,
    /// When.
    pub attempted_at: DateTime<Utc>,
    /// DELIVERED or TRANSIENT_FAILURE.
    pub outcome: String,
    /// Error, if failed.
    pub error: String,
}

pub(crate) fn statement(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

const COLUMNS: &str = "id, trigger_event_id, trigger_event_type, customer_id, order_id, recipient, \
    subject, body, status, attempts, next_attempt_at, sent_at, created_at, updated_at";

/// Remembers which customer placed an order.
pub async fn remember_customer<C: ConnectionTrait>(
    db: &C,
    order_id: Uuid,
    customer_id: &str,
) -> Result<(), DbErr> {
    db.execute_raw(statement(
        "INSERT INTO order_customers (order_id, customer_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        [order_id.into(), customer_id.into()],
    ))
    .await?;
    Ok(())
}

/// The customer who placed an order, if known.
pub async fn customer_of<C: ConnectionTrait>(
    db: &C,
    order_id: Uuid,
) -> Result<Option<String>, DbErr> {
    let row = db
        .query_one_raw(statement(
            "SELECT customer_id FROM order_customers WHERE order_id = $1",
            [order_id.into()],
        ))
        .await?;
    row.map(|row| row.try_get::<String>("", "customer_id"))
        .transpose()
}

/// A notification to store, due now.
#[derive(Debug, Clone)]
pub struct NewNotification {
    /// Triggering event id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// Customer.
    pub customer_id: String,
    /// Order.
    pub order_id: Uuid,
    /// Address.
    pub recipient: String,
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: String,
}

/// Stores a notification due for delivery now; one per triggering event.
pub async fn insert<C: ConnectionTrait>(db: &C, new: &NewNotification) -> Result<(), DbErr> {
    db.execute_raw(statement(
        "INSERT INTO notifications (id, trigger_event_id, trigger_event_type, customer_id, order_id, \
         recipient, subject, body, status, next_attempt_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'PENDING', now()) ON CONFLICT (trigger_event_id) DO NOTHING",
        [
            Uuid::now_v7().into(),
            new.event_id.into(),
            new.event_type.clone().into(),
            new.customer_id.clone().into(),
            new.order_id.into(),
            new.recipient.clone().into(),
            new.subject.clone().into(),
            new.body.clone().into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Locks the next notification due for delivery; other workers skip it. A notification waits
/// while an earlier one of its order is still on its first attempt (perhaps being sent by
/// another worker), so a customer never gets "confirmed" before "received".
pub async fn lock_due<C: ConnectionTrait>(db: &C) -> Result<Option<Notification>, DbErr> {
    Notification::find_by_statement(statement(
        &format!(
            "SELECT {COLUMNS} FROM notifications n WHERE status IN ('PENDING', 'RETRYING') \
             AND next_attempt_at <= now() \
             AND NOT EXISTS (SELECT 1 FROM notifications earlier WHERE earlier.order_id = n.order_id \
                 AND earlier.id < n.id AND earlier.status = 'PENDING') \
             ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED"
        ),
        [],
    ))
    .one(db)
    .await
}

/// Records an attempt and the notification's new state.
pub async fn record_attempt<C: ConnectionTrait>(
    db: &C,
    notification: &Notification,
    error: Option<&str>,
    status: &str,
    retry_in: Option<std::time::Duration>,
) -> Result<(), DbErr> {
    let attempt = notification.attempts + 1;
    db.execute_raw(statement(
        "INSERT INTO delivery_attempts (notification_id, attempt, outcome, error) VALUES ($1, $2, $3, $4)",
        [
            notification.id.into(),
            attempt.into(),
            if error.is_none() { "DELIVERED" } else { "TRANSIENT_FAILURE" }.into(),
            error.unwrap_or_default().into(),
        ],
    ))
    .await?;
    db.execute_raw(statement(
        "UPDATE notifications SET attempts = $2, status = $3, updated_at = now(), \
         sent_at = CASE WHEN $3 = 'SENT' THEN now() ELSE sent_at END, \
         next_attempt_at = CASE WHEN $4::bigint IS NULL THEN NULL ELSE now() + $4 * interval '1 millisecond' END \
         WHERE id = $1",
        [
            notification.id.into(),
            attempt.into(),
            status.into(),
            retry_in.map(|d| d.as_millis() as i64).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// One notification.
pub async fn notification<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
) -> Result<Notification, NotificationError> {
    Notification::find_by_statement(statement(
        &format!("SELECT {COLUMNS} FROM notifications WHERE id = $1"),
        [id.into()],
    ))
    .one(db)
    .await?
    .ok_or_else(|| NotificationError::NotFound {
        notification_id: id.to_string(),
    })
}

/// Notifications newest first, after the cursor, filtered.
pub async fn list<C: ConnectionTrait>(
    db: &C,
    after: Option<Uuid>,
    order_id: Option<Uuid>,
    customer_id: Option<&str>,
    status: Option<&str>,
    limit: u64,
) -> Result<Vec<Notification>, DbErr> {
    Notification::find_by_statement(statement(
        &format!(
            "SELECT {COLUMNS} FROM notifications WHERE ($1::uuid IS NULL OR id < $1) \
             AND ($2::uuid IS NULL OR order_id = $2) AND ($3::text IS NULL OR customer_id = $3) \
             AND ($4::text IS NULL OR status = $4) ORDER BY id DESC LIMIT $5"
        ),
        [
            after.into(),
            order_id.into(),
            customer_id.map(str::to_owned).into(),
            status.map(str::to_owned).into(),
            (limit as i64).into(),
        ],
    ))
    .all(db)
    .await
}

/// Attempts of the given notifications, in order.
pub async fn attempts<C: ConnectionTrait>(db: &C, ids: Vec<Uuid>) -> Result<Vec<Attempt>, DbErr> {
    Attempt::find_by_statement(statement(
        "SELECT notification_id, attempt, attempted_at, outcome, error FROM delivery_attempts \
         WHERE notification_id = ANY($1) ORDER BY notification_id, attempt",
        [ids.into()],
    ))
    .all(db)
    .await
}
