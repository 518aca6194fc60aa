//! The fulfillment service's storage. Every state change is conditional on the state it leaves,
//! so the worker and a cancellation can never both win, and a step is never applied twice.

use chrono::{DateTime, Utc};
use prost::Message as _;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement, Value};
use uuid::Uuid;
use zentra_proto::common::v1::Address;

use crate::error::FulfillmentError;

pub mod migrations;

/// A stored shipment with its lines.
#[derive(Debug, Clone)]
pub struct Shipment {
    /// The row.
    pub row: ShipmentRow,
    /// The address.
    pub address: Address,
    /// Lines: sku, quantity.
    pub lines: Vec<(String, i64)>,
}

/// A shipment row.
#[derive(Debug, Clone, FromQueryResult)]
pub struct ShipmentRow {
    /// Id.
    pub id: Uuid,
    /// Order.
    pub order_id: Uuid,
    /// Status text.
    pub status: String,
    /// Encoded address.
    pub shipping_address: Vec<u8>,
    /// Destination country.
    pub country_code: String,
    /// Carrier.
    pub carrier: String,
    /// Tracking number.
    pub tracking_number: String,
    /// Why it failed.
    pub failure_reason: String,
    /// Why it was cancelled.
    pub cancellation_reason: String,
    /// Picking started.
    pub picking_at: Option<DateTime<Utc>>,
    /// Packed.
    pub packed_at: Option<DateTime<Utc>>,
    /// Dispatched.
    pub dispatched_at: Option<DateTime<Utc>>,
    /// Cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Failed.
    pub failed_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
    /// The W3C trace context it was created in (the order's trace), continued by the worker.
    pub traceparent: String,
}

#[derive(FromQueryResult)]
struct LineRow {
    shipment_id: Uuid,
    sku: String,
    quantity: i64,
}

fn statement(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

const COLUMNS: &str = "id, order_id, status, shipping_address, country_code, carrier, tracking_number, \
    failure_reason, cancellation_reason, picking_at, packed_at, dispatched_at, cancelled_at, failed_at, \
    created_at, updated_at, traceparent";

/// Inserts a PENDING shipment due for picking after `delay`; `AlreadyShipped` if the order has one.
pub async fn insert<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    order_id: Uuid,
    address: &Address,
    lines: &[(String, i64)],
    delay: std::time::Duration,
) -> Result<Shipment, FulfillmentError> {
    let skus: Vec<String> = lines.iter().map(|(sku, _)| sku.clone()).collect();
    let quantities: Vec<i64> = lines.iter().map(|(_, q)| *q).collect();
    // The row, its lines and the row as stored, in one statement; the lines go in only with a
    // new row (a foreign key is checked at the statement's end).
    let row = ShipmentRow::find_by_statement(statement(
        &format!(
            "WITH shipment AS ( \
               INSERT INTO shipments (id, order_id, status, shipping_address, country_code, next_step_at, traceparent) \
               VALUES ($1, $2, 'PENDING', $3, $4, now() + $5 * interval '1 millisecond', $8) \
               ON CONFLICT (order_id) DO NOTHING RETURNING {COLUMNS}), \
             lines AS (INSERT INTO shipment_lines (shipment_id, sku, quantity) \
               SELECT shipment.id, l.sku, l.q FROM shipment, unnest($6::text[], $7::bigint[]) AS l (sku, q)) \
             SELECT {COLUMNS} FROM shipment"
        ),
        [
            id.into(),
            order_id.into(),
            address.encode_to_vec().into(),
            address.country_code.clone().into(),
            (delay.as_millis() as i64).into(),
            skus.into(),
            quantities.into(),
            zentra_runtime::events::current_trace_context()
                .traceparent
                .into(),
        ],
    ))
    .one(db)
    .await?
    .ok_or_else(|| FulfillmentError::AlreadyShipped {
        order_id: order_id.to_string(),
    })?;
    let mut lines = lines.to_vec();
    // As every read returns them.
    lines.sort();
    Ok(Shipment::new(row, lines)?)
}

impl Shipment {
    /// A row with its lines.
    pub fn new(row: ShipmentRow, lines: Vec<(String, i64)>) -> Result<Self, DbErr> {
        let address = Address::decode(row.shipping_address.as_slice())
            .map_err(|error| DbErr::Custom(format!("stored address undecodable: {error}")))?;
        Ok(Self {
            row,
            address,
            lines,
        })
    }
}

/// One shipment.
pub async fn shipment<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<Shipment, FulfillmentError> {
    let row = ShipmentRow::find_by_statement(statement(
        &format!("SELECT {COLUMNS} FROM shipments WHERE id = $1"),
        [id.into()],
    ))
    .one(db)
    .await?
    .ok_or_else(|| FulfillmentError::NotFound {
        shipment_id: id.to_string(),
    })?;
    with_lines(db, vec![row])
        .await?
        .pop()
        .ok_or(FulfillmentError::NotFound {
            shipment_id: id.to_string(),
        })
}

/// Moves a shipment from `from` with the given SET clause (parameters start at $3); the row as
/// it is now, or `None` when it was no longer in `from`. Its lines do not change.
pub async fn transition<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    from: &[&str],
    set: &str,
    mut values: Vec<Value>,
) -> Result<Option<ShipmentRow>, DbErr> {
    let from: Vec<String> = from.iter().map(|s| (*s).to_owned()).collect();
    let mut all: Vec<Value> = vec![id.into(), from.into()];
    all.append(&mut values);
    ShipmentRow::find_by_statement(statement(
        &format!(
            "UPDATE shipments SET updated_at = now(), {set} WHERE id = $1 AND status = ANY($2) \
             RETURNING {COLUMNS}"
        ),
        all,
    ))
    .one(db)
    .await
}

/// Locks the shipments whose step is due, `limit` at most, with their lines; other workers skip
/// them.
pub async fn lock_due<C: ConnectionTrait>(db: &C, limit: u32) -> Result<Vec<Shipment>, DbErr> {
    let rows = ShipmentRow::find_by_statement(statement(
        &format!(
            "SELECT {COLUMNS} FROM shipments WHERE status IN ('PENDING', 'PICKING', 'PACKED') \
             AND next_step_at <= now() ORDER BY next_step_at LIMIT $1 FOR UPDATE SKIP LOCKED"
        ),
        [i64::from(limit).into()],
    ))
    .all(db)
    .await?;
    with_lines(db, rows).await
}

/// How long until the next shipment step is due; `None` when no shipment waits for one.
pub async fn next_due_in<C: ConnectionTrait>(db: &C) -> Result<Option<std::time::Duration>, DbErr> {
    #[derive(FromQueryResult)]
    struct Due {
        millis: Option<i64>,
    }
    let due = Due::find_by_statement(statement(
        "SELECT ceil(extract(epoch FROM min(next_step_at) - now()) * 1000)::bigint AS millis \
         FROM shipments WHERE status IN ('PENDING', 'PICKING', 'PACKED') AND next_step_at IS NOT NULL",
        [],
    ))
    .one(db)
    .await?;
    // No shipment waiting gives NULL (GREATEST would have turned that into 0); overdue is 0.
    Ok(due
        .and_then(|due| due.millis)
        .map(|millis| std::time::Duration::from_millis(u64::try_from(millis).unwrap_or(0))))
}

/// Shipments newest first, after the cursor id, filtered.
pub async fn list<C: ConnectionTrait>(
    db: &C,
    after: Option<Uuid>,
    order_id: Option<Uuid>,
    status: Option<&str>,
    limit: u64,
) -> Result<Vec<Shipment>, DbErr> {
    let rows = ShipmentRow::find_by_statement(statement(
        &format!(
            "SELECT {COLUMNS} FROM shipments WHERE ($1::uuid IS NULL OR id < $1) \
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
    .await?;
    with_lines(db, rows).await
}

/// A row read or written alone, with its lines.
pub async fn with_its_lines<C: ConnectionTrait>(
    db: &C,
    row: ShipmentRow,
) -> Result<Shipment, DbErr> {
    let id = row.id;
    with_lines(db, vec![row])
        .await?
        .pop()
        .ok_or_else(|| DbErr::RecordNotFound(format!("shipment {id}")))
}

async fn with_lines<C: ConnectionTrait>(
    db: &C,
    rows: Vec<ShipmentRow>,
) -> Result<Vec<Shipment>, DbErr> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let lines = LineRow::find_by_statement(statement(
        "SELECT shipment_id, sku, quantity FROM shipment_lines WHERE shipment_id = ANY($1) \
         ORDER BY shipment_id, sku",
        [ids.into()],
    ))
    .all(db)
    .await?;
    rows.into_iter()
        .map(|row| {
            let of_row = lines
                .iter()
                .filter(|line| line.shipment_id == row.id)
                .map(|line| (line.sku.clone(), line.quantity))
                .collect();
            Shipment::new(row, of_row)
        })
        .collect()
}
