//! The notification service's storage.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement, Value};
use uuid::Uuid;
use zentra_runtime::{inbox, outbox};

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
    /// The W3C trace context of the event that caused it; its delivery continues that trace.
    pub traceparent: String,
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
    subject, body, status, attempts, next_attempt_at, sent_at, created_at, updated_at, traceparent";

/// What an event asks of the notification service, written by [`take_in`] in one statement.
#[derive(Debug, Clone, Default)]
pub struct Intake {
    /// Remember that this order was placed by this customer, mailed at this address (empty:
    /// none), from `OrderPlaced`.
    pub remember: Option<(Uuid, String, String)>,
    /// A mail to create, due now.
    pub mail: Option<NewNotification>,
}

/// A notification to store, due now.
#[derive(Debug, Clone)]
pub struct NewNotification {
    /// Triggering event id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The customer when the event names one; else the one remembered for the order.
    pub customer_id: Option<String>,
    /// The address when the event carries one (empty: nobody); else the one remembered.
    pub customer_email: Option<String>,
    /// Order.
    pub order_id: Uuid,
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: String,
}

/// Claims the event in the inbox and, on its first delivery, remembers the customer and creates
/// the mail: one statement. A mail goes only to the e-mail address the order was placed with;
/// one whose order has none (or is unknown) is not created. A customer id is never an address.
/// On the first delivery it gives whether a mail was created. A fenced `entry` also moves the
/// consumer's offset, so the statement needs no transaction.
pub async fn take_in<C: ConnectionTrait>(
    db: &C,
    entry: &inbox::Entry,
    intake: Intake,
) -> Result<inbox::Claimed<bool>, DbErr> {
    let (remember_order, remember_customer, remember_email) = match intake.remember {
        Some((order, customer, email)) => (Some(order), Some(customer), Some(email)),
        None => (None, None, None),
    };
    let mail = intake.mail;
    let mut values: Vec<Value> = entry.values().into();
    values.extend([
        remember_order.into(),
        remember_customer.into(),
        Uuid::now_v7().into(),
        mail.as_ref().map(|m| m.event_id).into(),
        mail.as_ref().map(|m| m.event_type.clone()).into(),
        mail.as_ref().map(|m| m.order_id).into(),
        mail.as_ref().and_then(|m| m.customer_id.clone()).into(),
        remember_email
            .or_else(|| mail.as_ref().and_then(|m| m.customer_email.clone()))
            .into(),
        mail.as_ref().map(|m| m.subject.clone()).into(),
        mail.map(|m| m.body).into(),
        zentra_runtime::events::current_trace_context()
            .traceparent
            .into(),
    ]);
    let fence_at = values.len() + 1;
    values.extend(entry.fence_values());
    let row = db
        .query_one_raw(statement(
            &format!(
                "WITH {}, \
                 remembered AS (INSERT INTO order_customers (order_id, customer_id, email) \
                     SELECT $4, $5, $11 WHERE $4::uuid IS NOT NULL AND EXISTS (SELECT 1 FROM claim) \
                     ON CONFLICT DO NOTHING), \
                 customer AS (SELECT coalesce($10::text, \
                     (SELECT customer_id FROM order_customers WHERE order_id = $9)) AS id, \
                     coalesce($11::text, (SELECT email FROM order_customers WHERE order_id = $9)) AS email \
                     WHERE $9::uuid IS NOT NULL), \
                 created AS (INSERT INTO notifications (id, trigger_event_id, trigger_event_type, \
                     customer_id, order_id, recipient, subject, body, status, next_attempt_at, traceparent) \
                     SELECT $6, $7, $8, c.id, $9, c.email, $12, $13, 'PENDING', now(), $14 \
                     FROM customer c WHERE c.id IS NOT NULL AND c.email <> '' \
                         AND EXISTS (SELECT 1 FROM claim) \
                     ON CONFLICT (trigger_event_id) DO NOTHING RETURNING 1) \
                 SELECT {}, EXISTS (SELECT 1 FROM created) AS created",
                entry.parts(1, fence_at, "true"),
                entry.columns()
            ),
            values,
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("intake statement returned no row".to_owned()))?;
    entry.outcome(&row, || row.try_get("", "created"))
}

/// Locks up to `limit` notifications due for delivery, oldest due first; other workers skip
/// them. A notification waits while an earlier one of its order is still on its first attempt
/// (perhaps being sent by another worker), so a customer never gets "confirmed" before
/// "received".
pub async fn lock_due<C: ConnectionTrait>(
    db: &C,
    limit: usize,
) -> Result<Vec<Notification>, DbErr> {
    Notification::find_by_statement(statement(
        &format!(
            "SELECT {COLUMNS} FROM notifications n WHERE status IN ('PENDING', 'RETRYING') \
             AND next_attempt_at <= now() \
             AND NOT EXISTS (SELECT 1 FROM notifications earlier WHERE earlier.order_id = n.order_id \
                 AND earlier.id < n.id AND earlier.status = 'PENDING') \
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED"
        ),
        [(limit as i64).into()],
    ))
    .all(db)
    .await
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone)]
pub struct Attempted {
    /// The notification.
    pub id: Uuid,
    /// Its attempt number, 1-based.
    pub attempt: i32,
    /// Its new state: SENT, RETRYING or DEAD_LETTERED.
    pub status: &'static str,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// When a retry is due.
    pub retry_in: Option<std::time::Duration>,
}

/// Records attempts and their notifications' new states, with the events they emit: one
/// statement for a whole round. Returns whether a later notification of one of their orders is
/// pending: it was waiting for these and is due now.
pub async fn record_attempts<C: ConnectionTrait>(
    db: &C,
    attempted: &[Attempted],
    events: outbox::Rows,
) -> Result<bool, DbErr> {
    if attempted.is_empty() {
        return Ok(false);
    }
    let ids: Vec<Uuid> = attempted.iter().map(|a| a.id).collect();
    let attempts: Vec<i32> = attempted.iter().map(|a| a.attempt).collect();
    let statuses: Vec<String> = attempted.iter().map(|a| a.status.to_owned()).collect();
    let errors: Vec<String> = attempted
        .iter()
        .map(|a| a.error.clone().unwrap_or_default())
        .collect();
    // -1: no retry.
    let retries: Vec<i64> = attempted
        .iter()
        .map(|a| a.retry_in.map_or(-1, |d| d.as_millis() as i64))
        .collect();
    let records = if events.is_empty() {
        String::new()
    } else {
        format!(", records AS ({})", outbox::Rows::insert(6, "true"))
    };
    let mut values: Vec<Value> = vec![
        ids.into(),
        attempts.into(),
        statuses.into(),
        errors.into(),
        retries.into(),
    ];
    if !events.is_empty() {
        values.extend(events.values());
    }
    let rows = db
        .query_all_raw(statement(
        &format!(
            "WITH attempted AS (SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], \
                 $5::bigint[]) AS a (id, attempt, status, error, retry_ms)), \
             logged AS (INSERT INTO delivery_attempts (notification_id, attempt, outcome, error) \
                 SELECT id, attempt, CASE WHEN status = 'SENT' THEN 'DELIVERED' ELSE 'TRANSIENT_FAILURE' END, \
                     error FROM attempted){records} \
             UPDATE notifications n SET attempts = a.attempt, status = a.status, updated_at = now(), \
                 sent_at = CASE WHEN a.status = 'SENT' THEN now() ELSE n.sent_at END, \
                 next_attempt_at = CASE WHEN a.retry_ms < 0 THEN NULL \
                     ELSE now() + a.retry_ms * interval '1 millisecond' END \
             FROM attempted a WHERE n.id = a.id \
             RETURNING a.attempt = 1 AND EXISTS (SELECT 1 FROM notifications later WHERE later.order_id = n.order_id \
                 AND later.id > n.id AND later.status = 'PENDING') AS later_pending"
        ),
        values,
    ))
    .await?;
    rows.iter().try_fold(false, |any, row| {
        Ok(any || row.try_get::<bool>("", "later_pending")?)
    })
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
