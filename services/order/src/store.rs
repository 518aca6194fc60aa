//! The order service's storage. A status change is one conditional update on `version`, so two
//! concurrent changes of one order cannot both win.

use chrono::{DateTime, Utc};
use prost::Message as _;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement, Value};
use uuid::Uuid;
use zentra_proto::common::v1::Address;

use crate::{
    domain::{OrderState, PlaceOrder},
    error::OrderError,
};

pub mod migrations;

/// A stored order with its lines.
#[derive(Debug, Clone)]
pub struct Order {
    /// Id.
    pub id: Uuid,
    /// Customer.
    pub customer_id: String,
    /// Status.
    pub state: OrderState,
    /// Currency.
    pub currency: String,
    /// Total in minor units.
    pub total_minor: i64,
    /// Shipping address.
    pub shipping_address: Address,
    /// Payment method token.
    pub payment_method_token: String,
    /// Where the customer's mail goes; empty when none was given.
    pub customer_email: String,
    /// Why rejected.
    pub rejection_reason: String,
    /// Why cancelled.
    pub cancellation_reason: String,
    /// Optimistic-concurrency version.
    pub version: i64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
    /// Lines: sku, quantity, unit price, line total.
    pub lines: Vec<(String, i64, i64, i64)>,
}

#[derive(FromQueryResult)]
struct OrderRow {
    id: Uuid,
    customer_id: String,
    status: String,
    currency: String,
    total_minor: i64,
    shipping_address: Vec<u8>,
    payment_method_token: String,
    customer_email: String,
    rejection_reason: String,
    cancellation_reason: String,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(FromQueryResult)]
struct LineRow {
    order_id: Uuid,
    sku: String,
    quantity: i64,
    unit_price_minor: i64,
    line_total_minor: i64,
}

/// One recorded status change.
#[derive(Debug, Clone, FromQueryResult)]
pub struct HistoryRow {
    /// Version the change produced.
    pub version: i64,
    /// From.
    pub from_status: String,
    /// To.
    pub to_status: String,
    /// Why (placed, saga confirmed, ...).
    pub cause: String,
    /// Free-text reason.
    pub reason: String,
    /// Key of the request that made it.
    pub idempotency_key: String,
    /// When.
    pub changed_at: DateTime<Utc>,
}

fn statement(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

const COLUMNS: &str = "id, customer_id, status, currency, total_minor, shipping_address, \
    payment_method_token, customer_email, rejection_reason, cancellation_reason, version, created_at, \
    updated_at";

/// Inserts a placed order, its lines and the first history entry, in one statement; the order
/// as stored.
pub async fn insert<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    order: &PlaceOrder,
    idempotency_key: &str,
) -> Result<Order, OrderError> {
    let skus: Vec<String> = order.lines.iter().map(|l| l.sku.to_string()).collect();
    let quantities: Vec<i64> = order.lines.iter().map(|l| l.quantity).collect();
    let prices: Vec<i64> = order.lines.iter().map(|l| l.unit_price).collect();
    let totals: Vec<i64> = order.lines.iter().map(|l| l.total).collect();
    let row = OrderRow::find_by_statement(statement(
        &format!(
            "WITH placed AS ( \
               INSERT INTO orders (id, customer_id, status, currency, total_minor, shipping_address, payment_method_token, customer_email) \
               VALUES ($1, $2, 'PENDING', $3, $4, $5, $6, $12) RETURNING {COLUMNS}), \
             lines AS ( \
               INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price_minor, line_total_minor) \
               SELECT placed.id, n, sku, q, p, t FROM placed, \
                 unnest($7::text[], $8::bigint[], $9::bigint[], $10::bigint[]) WITH ORDINALITY AS l (sku, q, p, t, n)), \
             history AS ( \
               INSERT INTO order_history (order_id, version, from_status, to_status, cause, reason, idempotency_key) \
               SELECT placed.id, 1, '', 'PENDING', 'PLACED', '', $11 FROM placed) \
             SELECT {COLUMNS} FROM placed"
        ),
        [
            id.into(),
            order.customer_id.clone().into(),
            order.currency.clone().into(),
            order.total.into(),
            order.shipping_address.encode_to_vec().into(),
            order.payment_method_token.clone().into(),
            skus.clone().into(),
            quantities.clone().into(),
            prices.clone().into(),
            totals.clone().into(),
            idempotency_key.into(),
            order.customer_email.clone().into(),
        ],
    ))
    .one(db)
    .await?
    .ok_or_else(|| OrderError::NotFound {
        order_id: id.to_string(),
    })?;
    let lines = skus
        .into_iter()
        .zip(quantities)
        .zip(prices.into_iter().zip(totals))
        .map(|((sku, quantity), (price, total))| (sku, quantity, price, total))
        .collect();
    Ok(assemble(row, lines)?)
}

/// A status change to apply.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// The new status.
    pub to: OrderState,
    /// Cause recorded in history.
    pub cause: &'a str,
    /// Reason recorded in history (and as rejection/cancellation reason).
    pub reason: &'a str,
    /// Version the caller expects; 0 means "whatever is current".
    pub expected_version: i64,
    /// Key of the request.
    pub idempotency_key: &'a str,
}

/// Applies `change` to order `id` if the lifecycle allows it and nobody changed the order since
/// it was read; returns the order after the change.
pub async fn change_status<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    change: Change<'_>,
) -> Result<Order, OrderError> {
    let current = order(db, id).await?;
    if change.expected_version != 0 && change.expected_version != current.version {
        return Err(OrderError::VersionConflict {
            order_id: id.to_string(),
            expected: change.expected_version,
            actual: current.version,
        });
    }
    if !current.state.can_become(change.to) {
        return Err(OrderError::IllegalTransition {
            order_id: id.to_string(),
            status: current.state.as_str(),
            target: change.to.as_str(),
        });
    }
    let reason_column = match change.to {
        OrderState::Rejected => "rejection_reason",
        _ => "cancellation_reason",
    };
    // The change and its history entry in one statement; the lines do not change.
    let updated = OrderRow::find_by_statement(statement(
        &format!(
            "WITH changed AS (UPDATE orders SET status = $3, {reason_column} = \
               CASE WHEN $4 = '' THEN {reason_column} ELSE $4 END, \
               version = version + 1, updated_at = now() WHERE id = $1 AND version = $2 \
               RETURNING {COLUMNS}), \
             history AS ( \
               INSERT INTO order_history (order_id, version, from_status, to_status, cause, reason, idempotency_key) \
               SELECT id, version, $5, $3, $6, $4, $7 FROM changed) \
             SELECT {COLUMNS} FROM changed"
        ),
        [
            id.into(),
            current.version.into(),
            change.to.as_str().into(),
            change.reason.into(),
            current.state.as_str().into(),
            change.cause.into(),
            change.idempotency_key.into(),
        ],
    ))
    .one(db)
    .await?;
    let Some(row) = updated else {
        let actual = order(db, id).await?.version;
        return Err(OrderError::VersionConflict {
            order_id: id.to_string(),
            expected: current.version,
            actual,
        });
    };
    Ok(assemble(row, current.lines)?)
}

/// One order.
pub async fn order<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<Order, OrderError> {
    let row = OrderRow::find_by_statement(statement(
        &format!("SELECT {COLUMNS} FROM orders WHERE id = $1"),
        [id.into()],
    ))
    .one(db)
    .await?
    .ok_or_else(|| OrderError::NotFound {
        order_id: id.to_string(),
    })?;
    with_lines(db, vec![row])
        .await?
        .pop()
        .ok_or(OrderError::NotFound {
            order_id: id.to_string(),
        })
}

/// Filters of [`list`].
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this status.
    pub state: Option<OrderState>,
    /// Only this customer.
    pub customer_id: Option<String>,
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    pub created_to: Option<DateTime<Utc>>,
}

/// Orders newest first (ids are time-ordered), after the cursor id.
pub async fn list<C: ConnectionTrait>(
    db: &C,
    after: Option<Uuid>,
    filter: &Filter,
    limit: u64,
) -> Result<Vec<Order>, DbErr> {
    let rows = OrderRow::find_by_statement(statement(
        &format!(
            "SELECT {COLUMNS} FROM orders \
             WHERE ($1::uuid IS NULL OR id < $1) AND ($2::text IS NULL OR status = $2) \
               AND ($3::text IS NULL OR customer_id = $3) \
               AND ($4::timestamptz IS NULL OR created_at >= $4) \
               AND ($5::timestamptz IS NULL OR created_at < $5) \
             ORDER BY id DESC LIMIT $6"
        ),
        [
            after.into(),
            filter.state.map(|s| s.as_str().to_owned()).into(),
            filter.customer_id.clone().into(),
            filter.created_from.into(),
            filter.created_to.into(),
            (limit as i64).into(),
        ],
    ))
    .all(db)
    .await?;
    with_lines(db, rows).await
}

/// An order's status changes, oldest first.
pub async fn history<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<Vec<HistoryRow>, OrderError> {
    order(db, id).await?;
    Ok(HistoryRow::find_by_statement(statement(
        "SELECT version, from_status, to_status, cause, reason, idempotency_key, changed_at \
         FROM order_history WHERE order_id = $1 ORDER BY version",
        [id.into()],
    ))
    .all(db)
    .await?)
}

async fn with_lines<C: ConnectionTrait>(db: &C, rows: Vec<OrderRow>) -> Result<Vec<Order>, DbErr> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let lines = LineRow::find_by_statement(statement(
        "SELECT order_id, sku, quantity, unit_price_minor, line_total_minor FROM order_lines \
         WHERE order_id = ANY($1) ORDER BY order_id, line_no",
        [ids.into()],
    ))
    .all(db)
    .await?;
    rows.into_iter()
        .map(|row| {
            let of_row = lines
                .iter()
                .filter(|line| line.order_id == row.id)
                .map(|l| {
                    (
                        l.sku.clone(),
                        l.quantity,
                        l.unit_price_minor,
                        l.line_total_minor,
                    )
                })
                .collect();
            assemble(row, of_row)
        })
        .collect()
}

fn assemble(row: OrderRow, lines: Vec<(String, i64, i64, i64)>) -> Result<Order, DbErr> {
    Ok(Order {
        lines,
        id: row.id,
        state: OrderState::parse(&row.status)
            .ok_or_else(|| DbErr::Custom(format!("unknown order status {}", row.status)))?,
        shipping_address: Address::decode(row.shipping_address.as_slice())
            .map_err(|error| DbErr::Custom(format!("stored address undecodable: {error}")))?,
        customer_id: row.customer_id,
        currency: row.currency,
        total_minor: row.total_minor,
        payment_method_token: row.payment_method_token,
        customer_email: row.customer_email,
        rejection_reason: row.rejection_reason,
        cancellation_reason: row.cancellation_reason,
        version: row.version,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}
