//! The payment service's storage. Money moves only through conditional updates, so concurrent
//! calls can never capture twice or refund beyond the capture.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement, Value};
use uuid::Uuid;

use crate::error::PaymentError;

pub mod migrations;

/// A stored payment.
#[derive(Debug, Clone, FromQueryResult)]
pub struct Payment {
    /// Id.
    pub id: Uuid,
    /// Order.
    pub order_id: Uuid,
    /// Status text.
    pub status: String,
    /// Currency.
    pub currency: String,
    /// Authorized amount.
    pub amount_minor: i64,
    /// Captured amount.
    pub captured_minor: i64,
    /// Refunded amount.
    pub refunded_minor: i64,
    /// Decline reason text.
    pub decline_reason: String,
    /// Decline message.
    pub decline_message: String,
    /// Processor reference.
    pub processor_reference: String,
    /// Authorization expiry.
    pub authorization_expires_at: Option<DateTime<Utc>>,
    /// Capture time.
    pub captured_at: Option<DateTime<Utc>>,
    /// Void time.
    pub voided_at: Option<DateTime<Utc>>,
    /// Last refund time.
    pub last_refund_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
}

/// A ledger entry.
#[derive(Debug, Clone, FromQueryResult)]
pub struct LedgerEntry {
    /// Id.
    pub id: Uuid,
    /// Payment.
    pub payment_id: Uuid,
    /// Order.
    pub order_id: Uuid,
    /// AUTHORIZATION, CAPTURE, RELEASE, REFUND.
    pub entry_type: String,
    /// Currency.
    pub currency: String,
    /// Amount.
    pub amount_minor: i64,
    /// Reason.
    pub reason: String,
    /// Processor reference.
    pub processor_reference: String,
    /// Key of the request.
    pub idempotency_key: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

fn statement(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

const COLUMNS: &str = "id, order_id, status, currency, amount_minor, captured_minor, refunded_minor, \
    decline_reason, decline_message, processor_reference, authorization_expires_at, captured_at, \
    voided_at, last_refund_at, created_at, updated_at";

/// A new payment's row.
#[derive(Debug, Clone)]
pub struct NewPayment<'a> {
    /// Id.
    pub id: Uuid,
    /// Order.
    pub order_id: Uuid,
    /// AUTHORIZED or DECLINED.
    pub status: &'static str,
    /// Currency.
    pub currency: &'a str,
    /// Amount.
    pub amount_minor: i64,
    /// Decline reason text, if declined.
    pub decline_reason: &'a str,
    /// Decline message, if declined.
    pub decline_message: &'a str,
    /// Processor reference.
    pub processor_reference: &'a str,
    /// Authorization expiry, if authorized.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Inserts a payment.
pub async fn insert<C: ConnectionTrait>(
    db: &C,
    new: &NewPayment<'_>,
) -> Result<Payment, PaymentError> {
    Payment::find_by_statement(statement(
        &format!(
            "INSERT INTO payments (id, order_id, status, currency, amount_minor, decline_reason, \
             decline_message, processor_reference, authorization_expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
        ),
        [
            new.id.into(),
            new.order_id.into(),
            new.status.into(),
            new.currency.into(),
            new.amount_minor.into(),
            new.decline_reason.into(),
            new.decline_message.into(),
            new.processor_reference.into(),
            new.expires_at.into(),
        ],
    ))
    .one(db)
    .await?
    .ok_or_else(|| PaymentError::NotFound {
        payment_id: new.id.to_string(),
    })
}

/// One payment.
pub async fn payment<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<Payment, PaymentError> {
    Payment::find_by_statement(statement(
        &format!("SELECT {COLUMNS} FROM payments WHERE id = $1"),
        [id.into()],
    ))
    .one(db)
    .await?
    .ok_or_else(|| PaymentError::NotFound {
        payment_id: id.to_string(),
    })
}

/// Runs a conditional update returning the payment; `None` when its condition did not hold.
pub async fn update_if<C: ConnectionTrait>(
    db: &C,
    set_and_where: &str,
    values: impl IntoIterator<Item = Value>,
) -> Result<Option<Payment>, DbErr> {
    Payment::find_by_statement(statement(
        &format!("UPDATE payments SET updated_at = now(), {set_and_where} RETURNING {COLUMNS}"),
        values,
    ))
    .one(db)
    .await
}

/// Appends a ledger entry.
pub async fn append_ledger<C: ConnectionTrait>(
    db: &C,
    payment: &Payment,
    entry_type: &str,
    amount_minor: i64,
    reason: &str,
    idempotency_key: &str,
) -> Result<(), DbErr> {
    db.execute_raw(statement(
        "INSERT INTO payment_ledger (id, payment_id, order_id, entry_type, currency, amount_minor, \
         reason, processor_reference, idempotency_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        [
            Uuid::now_v7().into(),
            payment.id.into(),
            payment.order_id.into(),
            entry_type.into(),
            payment.currency.clone().into(),
            amount_minor.into(),
            reason.into(),
            payment.processor_reference.clone().into(),
            idempotency_key.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Payments newest first, after the cursor id, filtered.
pub async fn list<C: ConnectionTrait>(
    db: &C,
    after: Option<Uuid>,
    order_id: Option<Uuid>,
    status: Option<&str>,
    limit: u64,
) -> Result<Vec<Payment>, DbErr> {
    Payment::find_by_statement(statement(
        &format!(
            "SELECT {COLUMNS} FROM payments WHERE ($1::uuid IS NULL OR id < $1) \
             AND ($2::uuid IS NULL OR order_id = $2) AND ($3::text IS NULL OR status = $3) \
             ORDER BY id DESC LIMIT $4"
        ),
        [
            after.into(),
            order_id.into(),
            status.map(str::to_owned).into(),
            (limit as i64).into(),
        ],
    ))
    .all(db)
    .await
}

/// Ledger entries oldest first, after the cursor id, by order and/or payment.
pub async fn ledger<C: ConnectionTrait>(
    db: &C,
    after: Option<Uuid>,
    order_id: Option<Uuid>,
    payment_id: Option<Uuid>,
    limit: u64,
) -> Result<Vec<LedgerEntry>, DbErr> {
    LedgerEntry::find_by_statement(statement(
        "SELECT id, payment_id, order_id, entry_type, currency, amount_minor, reason, \
         processor_reference, idempotency_key, created_at FROM payment_ledger \
         WHERE ($1::uuid IS NULL OR id > $1) AND ($2::uuid IS NULL OR order_id = $2) \
           AND ($3::uuid IS NULL OR payment_id = $3) ORDER BY id LIMIT $4",
        [
            after.into(),
            order_id.into(),
            payment_id.into(),
            (limit as i64).into(),
        ],
    ))
    .all(db)
    .await
}
