//! Inventory's storage: every statement that reads or changes stock. Stock moves only through
//! conditional updates (`available >= $n`), so concurrent reservations can never oversell.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement, Value};
use uuid::Uuid;

use crate::{
    domain::{Price, Sku},
    error::InventoryError,
};

pub mod migrations;

/// A product row.
#[derive(Debug, Clone, FromQueryResult)]
pub struct ProductRow {
    /// SKU.
    pub sku: String,
    /// Name.
    pub name: String,
    /// Available units.
    pub available: i64,
    /// Reserved units.
    pub reserved: i64,
    /// Sold units.
    pub sold: i64,
    /// Low-stock threshold.
    pub low_stock_threshold: i64,
    /// Price in minor units.
    pub price_minor: i64,
    /// Currency.
    pub currency: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
}

/// Reservation states as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationState {
    /// Holding stock.
    Pending,
    /// Sold.
    Confirmed,
    /// Returned on request.
    Released,
    /// Returned on expiry.
    Expired,
}

impl ReservationState {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Confirmed => "CONFIRMED",
            Self::Released => "RELEASED",
            Self::Expired => "EXPIRED",
        }
    }

    fn parse(text: &str) -> Result<Self, DbErr> {
        match text {
            "PENDING" => Ok(Self::Pending),
            "CONFIRMED" => Ok(Self::Confirmed),
            "RELEASED" => Ok(Self::Released),
            "EXPIRED" => Ok(Self::Expired),
            other => Err(DbErr::Custom(format!("unknown reservation status {other}"))),
        }
    }
}

/// A reservation with its lines.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// Id.
    pub id: Uuid,
    /// Order.
    pub order_id: Uuid,
    /// State.
    pub state: ReservationState,
    /// Lines, by SKU.
    pub lines: Vec<(String, i64)>,
    /// Expiry of a pending hold, unless pinned.
    pub expires_at: DateTime<Utc>,
    /// When it was pinned: a pinned reservation never expires.
    pub pinned_at: Option<DateTime<Utc>>,
    /// Why released.
    pub release_reason: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, FromQueryResult)]
struct ReservationRow {
    id: Uuid,
    order_id: Uuid,
    status: String,
    expires_at: DateTime<Utc>,
    pinned_at: Option<DateTime<Utc>>,
    release_reason: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, FromQueryResult)]
struct LineRow {
    reservation_id: Uuid,
    sku: String,
    quantity: i64,
}

fn statement(sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

const PRODUCT_COLUMNS: &str = "sku, name, available, reserved, sold, low_stock_threshold, \
                               price_minor, currency, created_at, updated_at";

/// Inserts a product; `ProductExists` if the SKU is taken.
pub async fn insert_product<C: ConnectionTrait>(
    db: &C,
    product: &crate::domain::CreateProduct,
) -> Result<ProductRow, InventoryError> {
    let row = ProductRow::find_by_statement(statement(
        &format!(
            "INSERT INTO products (sku, name, available, low_stock_threshold, price_minor, currency) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sku) DO NOTHING RETURNING {PRODUCT_COLUMNS}"
        ),
        [
            product.sku.as_str().into(),
            product.name.clone().into(),
            product.initial_stock.into(),
            product.low_stock_threshold.into(),
            product.price.amount_minor.into(),
            product.price.currency.clone().into(),
        ],
    ))
    .one(db)
    .await?;
    row.ok_or_else(|| InventoryError::ProductExists {
        sku: product.sku.to_string(),
    })
}

/// One product.
pub async fn product<C: ConnectionTrait>(db: &C, sku: &str) -> Result<ProductRow, InventoryError> {
    ProductRow::find_by_statement(statement(
        &format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE sku = $1"),
        [sku.into()],
    ))
    .one(db)
    .await?
    .ok_or_else(|| InventoryError::ProductNotFound {
        sku: sku.to_owned(),
    })
}

/// The products among `skus` that exist, in no particular order.
pub async fn products<C: ConnectionTrait>(db: &C, skus: &[Sku]) -> Result<Vec<ProductRow>, DbErr> {
    let skus: Vec<String> = skus.iter().map(|sku| sku.as_str().to_owned()).collect();
    ProductRow::find_by_statement(statement(
        &format!("SELECT {PRODUCT_COLUMNS} FROM products WHERE sku = ANY($1)"),
        [skus.into()],
    ))
    .all(db)
    .await
}

/// A product's price before and after a change.
#[derive(Debug, Clone)]
pub struct Repriced {
    /// The product, with its new price.
    pub product: ProductRow,
    /// Its price before, in minor units.
    pub previous_minor: i64,
    /// The currency of that price.
    pub previous_currency: String,
}

/// Sets a product's price and returns it with the price it had.
pub async fn set_price<C: ConnectionTrait>(
    db: &C,
    sku: &Sku,
    price: &Price,
) -> Result<Repriced, InventoryError> {
    #[derive(FromQueryResult)]
    struct Previous {
        previous_minor: i64,
        previous_currency: String,
    }
    // The CTE locks the row before reading it, so the price it returns is the one replaced.
    let sql = format!(
        "WITH old AS (SELECT sku, price_minor AS previous_minor, currency AS previous_currency                       FROM products WHERE sku = $1 FOR UPDATE)          UPDATE products p SET price_minor = $2, currency = $3, updated_at = now()          FROM old WHERE p.sku = old.sku          RETURNING {}, old.previous_minor, old.previous_currency",
        PRODUCT_COLUMNS
            .split(", ")
            .map(|column| format!("p.{column}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let row = db
        .query_one_raw(statement(
            &sql,
            [
                sku.as_str().into(),
                price.amount_minor.into(),
                price.currency.clone().into(),
            ],
        ))
        .await?
        .ok_or_else(|| InventoryError::ProductNotFound {
            sku: sku.to_string(),
        })?;
    let product = ProductRow::from_query_result(&row, "")?;
    let previous = Previous::from_query_result(&row, "")?;
    Ok(Repriced {
        product,
        previous_minor: previous.previous_minor,
        previous_currency: previous.previous_currency,
    })
}

/// Products in SKU order after `after`, filtered; `limit` rows at most.
pub async fn list_products<C: ConnectionTrait>(
    db: &C,
    after: Option<&str>,
    sku_prefix: &str,
    low_stock_only: bool,
    limit: u64,
) -> Result<Vec<ProductRow>, DbErr> {
    ProductRow::find_by_statement(statement(
        &format!(
            "SELECT {PRODUCT_COLUMNS} FROM products \
             WHERE ($1::text IS NULL OR sku > $1) AND starts_with(sku, $2) \
               AND (NOT $3 OR available <= low_stock_threshold) \
             ORDER BY sku LIMIT $4"
        ),
        [
            after.map(str::to_owned).into(),
            sku_prefix.into(),
            low_stock_only.into(),
            (limit as i64).into(),
        ],
    ))
    .all(db)
    .await
}

/// Adds `delta` to available stock (negative removes, never below zero).
pub async fn adjust_stock<C: ConnectionTrait>(
    db: &C,
    sku: &Sku,
    delta: i64,
    reason: &str,
) -> Result<ProductRow, InventoryError> {
    let updated = ProductRow::find_by_statement(statement(
        &format!(
            "UPDATE products SET available = available + $2, updated_at = now() \
             WHERE sku = $1 AND available + $2 >= 0 RETURNING {PRODUCT_COLUMNS}"
        ),
        [sku.as_str().into(), delta.into()],
    ))
    .one(db)
    .await?;
    let Some(updated) = updated else {
        let current = product(db, sku.as_str()).await?;
        return Err(InventoryError::InsufficientStock {
            sku: sku.to_string(),
            requested: -delta,
            available: current.available,
        });
    };
    db.execute_raw(statement(
        "INSERT INTO stock_adjustments (sku, delta, reason) VALUES ($1, $2, $3)",
        [sku.as_str().into(), delta.into(), reason.into()],
    ))
    .await?;
    Ok(updated)
}

/// Stock after taking one line: what is left and the threshold.
#[derive(Debug, Clone, FromQueryResult)]
pub struct Taken {
    /// SKU.
    pub sku: String,
    /// Available after taking.
    pub available: i64,
    /// The product's threshold.
    pub low_stock_threshold: i64,
}

/// Takes `quantity` from available into reserved, or fails without changing anything.
pub async fn take_stock<C: ConnectionTrait>(
    db: &C,
    sku: &Sku,
    quantity: i64,
) -> Result<Taken, InventoryError> {
    let taken = Taken::find_by_statement(statement(
        "UPDATE products SET available = available - $2, reserved = reserved + $2, updated_at = now() \
         WHERE sku = $1 AND available >= $2 RETURNING sku, available, low_stock_threshold",
        [sku.as_str().into(), quantity.into()],
    ))
    .one(db)
    .await?;
    match taken {
        Some(taken) => Ok(taken),
        None => {
            let current = product(db, sku.as_str()).await?;
            Err(InventoryError::InsufficientStock {
                sku: sku.to_string(),
                requested: quantity,
                available: current.available,
            })
        }
    }
}

const RESERVATION_COLUMNS: &str =
    "id, order_id, status, expires_at, pinned_at, release_reason, created_at, updated_at";

/// Inserts a pending reservation and its lines (sorted by SKU) in one statement; the
/// reservation as stored.
pub async fn insert_reservation<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    order_id: Uuid,
    lines: &[(Sku, i64)],
    expires_at: DateTime<Utc>,
) -> Result<Reservation, DbErr> {
    let skus: Vec<String> = lines.iter().map(|(sku, _)| sku.to_string()).collect();
    let quantities: Vec<i64> = lines.iter().map(|(_, quantity)| *quantity).collect();
    let row = ReservationRow::find_by_statement(statement(
        &format!(
            "WITH held AS (INSERT INTO reservations (id, order_id, status, expires_at) \
               VALUES ($1, $2, 'PENDING', $3) RETURNING {RESERVATION_COLUMNS}), \
             lines AS (INSERT INTO reservation_lines (reservation_id, sku, quantity) \
               SELECT held.id, sku, quantity FROM held, \
                 unnest($4::text[], $5::bigint[]) AS line (sku, quantity)) \
             SELECT {RESERVATION_COLUMNS} FROM held"
        ),
        [
            id.into(),
            order_id.into(),
            expires_at.into(),
            skus.clone().into(),
            quantities.clone().into(),
        ],
    ))
    .one(db)
    .await?
    .ok_or_else(|| DbErr::RecordNotFound(format!("reservation {id}")))?;
    assemble(row, skus.into_iter().zip(quantities).collect())
}

/// One reservation; `lock` takes a row lock for a state change.
pub async fn reservation<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    lock: bool,
) -> Result<Reservation, InventoryError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row = ReservationRow::find_by_statement(statement(
        &format!("SELECT {RESERVATION_COLUMNS} FROM reservations WHERE id = $1{lock}"),
        [id.into()],
    ))
    .one(db)
    .await?
    .ok_or_else(|| InventoryError::ReservationNotFound {
        reservation_id: id.to_string(),
    })?;
    let mut reservations = with_lines(db, vec![row]).await?;
    reservations
        .pop()
        .ok_or_else(|| InventoryError::Database(DbErr::Custom("reservation vanished".to_owned())))
}

/// Reservations, newest first (ids are time-ordered), after the cursor id, filtered.
pub async fn list_reservations<C: ConnectionTrait>(
    db: &C,
    after: Option<Uuid>,
    order_id: Option<Uuid>,
    state: Option<ReservationState>,
    limit: u64,
) -> Result<Vec<Reservation>, DbErr> {
    let rows = ReservationRow::find_by_statement(statement(
        "SELECT id, order_id, status, expires_at, pinned_at, release_reason, created_at, updated_at \
         FROM reservations \
         WHERE ($1::uuid IS NULL OR id < $1) AND ($2::uuid IS NULL OR order_id = $2) \
           AND ($3::text IS NULL OR status = $3) \
         ORDER BY id DESC LIMIT $4",
        [
            after.into(),
            order_id.into(),
            state.map(|state| state.as_str().to_owned()).into(),
            (limit as i64).into(),
        ],
    ))
    .all(db)
    .await?;
    with_lines(db, rows).await
}

async fn with_lines<C: ConnectionTrait>(
    db: &C,
    rows: Vec<ReservationRow>,
) -> Result<Vec<Reservation>, DbErr> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let lines = LineRow::find_by_statement(statement(
        "SELECT reservation_id, sku, quantity FROM reservation_lines \
         WHERE reservation_id = ANY($1) ORDER BY reservation_id, sku",
        [ids.into()],
    ))
    .all(db)
    .await?;
    rows.into_iter()
        .map(|row| {
            let of_row = lines
                .iter()
                .filter(|line| line.reservation_id == row.id)
                .map(|line| (line.sku.clone(), line.quantity))
                .collect();
            assemble(row, of_row)
        })
        .collect()
}

fn assemble(row: ReservationRow, lines: Vec<(String, i64)>) -> Result<Reservation, DbErr> {
    Ok(Reservation {
        lines,
        id: row.id,
        order_id: row.order_id,
        state: ReservationState::parse(&row.status)?,
        expires_at: row.expires_at,
        pinned_at: row.pinned_at,
        release_reason: row.release_reason,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// Moves a pending reservation's stock: to `sold` when confirming, back to `available` when
/// releasing or expiring, and records the new state; the reservation as it is now.
pub async fn settle<C: ConnectionTrait>(
    db: &C,
    reservation: &Reservation,
    to: ReservationState,
    reason: &str,
) -> Result<Reservation, DbErr> {
    let skus: Vec<String> = reservation
        .lines
        .iter()
        .map(|(sku, _)| sku.clone())
        .collect();
    let quantities: Vec<i64> = reservation.lines.iter().map(|(_, q)| *q).collect();
    // Lock the products in SKU order, the order reservations take them in, so a settle and a
    // reservation touching the same products can never deadlock. Its own statement: the order
    // in which one statement's parts lock rows is not promised.
    db.execute_raw(statement(
        "SELECT 1 FROM products WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
        [skus.clone().into()],
    ))
    .await?;
    let stock_change = if to == ReservationState::Confirmed {
        "reserved = p.reserved - l.quantity, sold = p.sold + l.quantity"
    } else {
        "reserved = p.reserved - l.quantity, available = p.available + l.quantity"
    };
    let row = ReservationRow::find_by_statement(statement(
        &format!(
            "WITH stock AS (UPDATE products AS p SET {stock_change}, updated_at = now() \
               FROM unnest($1::text[], $2::bigint[]) AS l (sku, quantity) WHERE p.sku = l.sku) \
             UPDATE reservations SET status = $4, release_reason = $5, updated_at = now() \
             WHERE id = $3 RETURNING {RESERVATION_COLUMNS}"
        ),
        [
            skus.into(),
            quantities.into(),
            reservation.id.into(),
            to.as_str().into(),
            reason.into(),
        ],
    ))
    .one(db)
    .await?
    .ok_or_else(|| DbErr::RecordNotFound(format!("reservation {}", reservation.id)))?;
    assemble(row, reservation.lines.clone())
}

/// Pins a pending reservation: from now on it never expires. The reservation as it is now, or
/// `None` when it was not pending and unpinned.
pub async fn pin<C: ConnectionTrait>(
    db: &C,
    reservation: &Reservation,
) -> Result<Option<Reservation>, DbErr> {
    let row = ReservationRow::find_by_statement(statement(
        &format!(
            "UPDATE reservations SET pinned_at = now(), updated_at = now() \
             WHERE id = $1 AND status = 'PENDING' AND pinned_at IS NULL \
             RETURNING {RESERVATION_COLUMNS}"
        ),
        [reservation.id.into()],
    ))
    .one(db)
    .await?;
    row.map(|row| assemble(row, reservation.lines.clone()))
        .transpose()
}

/// Locks up to `limit` unpinned pending reservations past their expiry; other sweepers skip them.
pub async fn lock_expired<C: ConnectionTrait>(db: &C, limit: u64) -> Result<Vec<Uuid>, DbErr> {
    // One at a time keeps each sweep transaction to one reservation's products.
    #[derive(FromQueryResult)]
    struct Id {
        id: Uuid,
    }
    let ids = Id::find_by_statement(statement(
        "SELECT id FROM reservations \
         WHERE status = 'PENDING' AND pinned_at IS NULL AND expires_at <= now() \
         ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        [(limit as i64).into()],
    ))
    .all(db)
    .await?;
    Ok(ids.into_iter().map(|row| row.id).collect())
}
