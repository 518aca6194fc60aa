//! The audit after a chaos run: reads the six services' databases and counts the orders, sagas,
//! payments, stock, shipments and notifications that break an invariant. Every check is limited
//! to the orders and SKUs the load placed, so older data in a shared stack does not count.
//!
//! The databases are read one after another, not in one snapshot: audit a quiet stack, or sagas
//! still in flight show up as violations. This crate's sea-orm has no `with-uuid`, so ids travel
//! as text (`$1::text[]::uuid[]` keeps the indexes usable) and come back as `::text`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context as _;
use sea_orm::{
    ConnectOptions, ConnectionTrait as _, Database, DatabaseConnection, DbBackend, QueryResult,
    Statement, TryGetable, Value,
};
use serde::Serialize;

/// Offenders shown per check; the count says how many there are in all.
const EXAMPLES: usize = 3;

/// Saga states the engine still drives: a saga left in one after the run is stuck.
const ACTIVE_SAGA_STATES: [&str; 3] = ["RUNNING", "AWAITING_SHIPMENT", "COMPENSATING"];

/// Waits for an operator. The saga crate does not call it terminal (an operator can resume it);
/// for the audit it has ended, and is counted as parked.
const PARKED_SAGA_STATE: &str = "COMPENSATION_FAILED";

/// `notifications.trigger_event_type` holds the envelope's event type, the protobuf full name.
const ORDER_CONFIRMED_EVENT: &str = "zentra.order.v1.OrderConfirmed";

/// Facts keyed by order id as text.
type ByOrder<T> = HashMap<String, T>;

/// A service's database, in the queries.
type Db = DatabaseConnection;

/// One stack's databases, one small pool each.
pub struct Databases {
    /// `<prefix>order`: orders, order_lines, order_history.
    pub order: DatabaseConnection,
    /// `<prefix>inventory`: products, reservations, reservation_lines, stock_adjustments.
    pub inventory: DatabaseConnection,
    /// `<prefix>payment`: payments and payment_ledger.
    pub payment: DatabaseConnection,
    /// `<prefix>fulfillment`: shipments and shipment_lines.
    pub fulfillment: DatabaseConnection,
    /// `<prefix>notification`: notifications and their delivery attempts.
    pub notification: DatabaseConnection,
    /// `<prefix>saga`: sagas and saga_signals.
    pub saga: DatabaseConnection,
}

impl Databases {
    /// Connects to `<pg_url>/<db_prefix><service>` for each service; a database already named in
    /// `pg_url` is replaced, a query string kept.
    pub async fn connect(pg_url_without_db: &str, db_prefix: &str) -> anyhow::Result<Self> {
        let url = pg_url_without_db;
        Ok(Self {
            order: connect_one(url, db_prefix, "order").await?,
            inventory: connect_one(url, db_prefix, "inventory").await?,
            payment: connect_one(url, db_prefix, "payment").await?,
            fulfillment: connect_one(url, db_prefix, "fulfillment").await?,
            notification: connect_one(url, db_prefix, "notification").await?,
            saga: connect_one(url, db_prefix, "saga").await?,
        })
    }
}

async fn connect_one(url: &str, prefix: &str, service: &str) -> anyhow::Result<Db> {
    let name = format!("{prefix}{service}");
    let mut options = ConnectOptions::new(database_url(url, &name));
    // One query at a time: two connections leave the stack's own pools alone.
    options.max_connections(2).sqlx_logging(false);
    // The error names the database, never the URL, which may hold a password.
    Database::connect(options)
        .await
        .with_context(|| format!("connecting to database {name}"))
}

/// `base` with its path, if any, replaced by `/name`.
fn database_url(base: &str, name: &str) -> String {
    let (base, query) = match base.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (base, String::new()),
    };
    let authority = base.find("://").map_or(0, |at| at + 3);
    let end = base[authority..]
        .find('/')
        .map_or(base.len(), |at| authority + at);
    format!("{}/{name}{query}", &base[..end])
}

/// What the load placed.
#[derive(Debug, Clone, Default)]
pub struct Placed {
    /// Orders the gateway accepted. Their idempotency keys are read back from `order_history`.
    pub orders: Vec<uuid::Uuid>,
    /// SKUs the orders bought, with the stock each was created with; the stock checks assume
    /// each SKU was created for this run.
    pub skus: Vec<(String, i64)>,
}

/// One invariant and how often it is broken.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What must hold, in a few words.
    pub name: &'static str,
    /// Orders, SKUs or idempotency keys that break it.
    pub violations: u64,
    /// The first few offenders with what was found.
    pub detail: String,
}

/// Every check's outcome and where the placed orders' sagas ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    /// Every check, in the order they ran.
    pub checks: Vec<Check>,
    /// The placed orders' sagas per stored state.
    pub sagas_by_state: Vec<(String, u64)>,
    /// Sagas still RUNNING, AWAITING_SHIPMENT or COMPENSATING; parked ones are not counted.
    pub not_terminal: u64,
}

impl AuditReport {
    /// Violations over all checks; zero means the run kept every invariant.
    pub fn violations(&self) -> u64 {
        self.checks.iter().map(|check| check.violations).sum()
    }

    /// The checks as an aligned text table: check, violations, detail.
    pub fn table(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).fold(5, usize::max);
        let line = |name: &str, count: &str, detail: &str| {
            let row = format!("{name:<width$}  {count:>10}  {detail}");
            format!("{}\n", row.trim_end())
        };
        let mut table = line("check", "violations", "detail");
        table.push_str(&line(&"-".repeat(width), &"-".repeat(10), "------"));
        for check in &self.checks {
            let count = check.violations.to_string();
            table.push_str(&line(check.name, &count, &check.detail));
        }
        table
    }
}

/// Reads every database, then runs every check.
pub async fn audit(db: &Databases, placed: &Placed) -> anyhow::Result<AuditReport> {
    let ids: BTreeSet<String> = placed.orders.iter().map(ToString::to_string).collect();
    let ids: Vec<String> = ids.into_iter().collect();
    let facts = Facts {
        orders: orders(&db.order, &ids).await?,
        duplicates: duplicate_placements(&db.order, &ids).await?,
        sagas: saga_states(&db.saga, &ids).await?,
        charges: charges(&db.payment, &ids).await?,
        open: open_authorizations(&db.payment, &ids).await?,
        stock: stock(&db.inventory, &placed.skus).await?,
        pending: pending_reservations(&db.inventory, &ids).await?,
        expired: expired_reservations(&db.inventory, &ids).await?,
        shipments: shipments(&db.fulfillment, &ids).await?,
        confirmations: confirmations(&db.notification, &ids).await?,
        ids,
    };
    let mut by_state = BTreeMap::<String, u64>::new();
    for state in facts.sagas.values() {
        *by_state.entry(state.clone()).or_default() += 1;
    }
    Ok(AuditReport {
        checks: [order_checks, payment_checks, stock_checks, delivery_checks]
            .iter()
            .flat_map(|checks| checks(&facts))
            .collect(),
        not_terminal: facts.sagas.values().filter(|s| is_active(s)).count() as u64,
        sagas_by_state: by_state.into_iter().collect(),
    })
}

/// Money moved for one order, summed from the payment ledger.
struct Charges {
    captured: i64,
    refunded: i64,
    captures: i64,
}

/// One placed SKU's counters beside the reservation quantities that should explain them.
struct Stock {
    sku: String,
    initial: i64,
    present: bool,
    available: i64,
    reserved: i64,
    sold: i64,
    adjusted: i64,
    confirmed: i64,
    pending: i64,
}

/// Everything the checks read.
struct Facts {
    /// Placed order ids, sorted and deduplicated, so examples come out in a stable order.
    ids: Vec<String>,
    /// Status and total_minor.
    orders: ByOrder<(String, i64)>,
    duplicates: Vec<(String, i64)>,
    sagas: ByOrder<String>,
    charges: ByOrder<Charges>,
    /// (order, payment) still AUTHORIZED.
    open: Vec<(String, String)>,
    stock: Vec<Stock>,
    pending: Vec<(String, i64)>,
    /// Orders with a reservation whose hold ran out (its stock went back on sale).
    expired: ByOrder<i64>,
    shipments: ByOrder<String>,
    confirmations: ByOrder<i64>,
}

impl Facts {
    fn status(&self, id: &str) -> Option<&str> {
        self.orders.get(id).map(|(status, _)| status.as_str())
    }

    /// The order's total if its stored status is one of `statuses`.
    fn total_if(&self, id: &str, statuses: &[&str]) -> Option<i64> {
        let (status, total) = self.orders.get(id)?;
        statuses.contains(&status.as_str()).then_some(*total)
    }
}

fn is_active(state: &str) -> bool {
    ACTIVE_SAGA_STATES.contains(&state)
}

/// Runs one statement; `what` names the table for the error.
async fn query(
    db: &Db,
    what: &str,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> anyhow::Result<Vec<QueryResult>> {
    let statement = Statement::from_sql_and_values(DbBackend::Postgres, sql, values);
    let rows = db.query_all_raw(statement).await;
    rows.with_context(|| format!("reading {what}"))
}

/// Rows of two columns, `key` (text) and `value`, collected; the placed ids are `$1`.
async fn keyed<T: TryGetable, C: FromIterator<(String, T)>>(
    db: &Db,
    what: &str,
    sql: &str,
    ids: &[String],
) -> anyhow::Result<C> {
    let rows = query(db, what, sql, [ids.to_vec().into()]).await?;
    let pair = |row: &QueryResult| -> anyhow::Result<(String, T)> {
        Ok((row.try_get("", "key")?, row.try_get("", "value")?))
    };
    rows.iter().map(pair).collect()
}

/// Status and total of each placed order (`orders.status`, `total_minor`). A placed id missing
/// here breaks "every accepted order is recorded".
async fn orders(db: &Db, ids: &[String]) -> anyhow::Result<ByOrder<(String, i64)>> {
    let sql = "SELECT id::text AS id, status, total_minor FROM orders \
               WHERE id = ANY($1::text[]::uuid[])";
    let rows = query(db, "orders", sql, [ids.to_vec().into()]).await?;
    let order = |row: &QueryResult| -> anyhow::Result<(String, (String, i64))> {
        let status_and_total = (row.try_get("", "status")?, row.try_get("", "total_minor")?);
        Ok((row.try_get("", "id")?, status_and_total))
    };
    rows.iter().map(order).collect()
}

/// Idempotency keys of placed orders that made more than one order (the `cause = 'PLACED'` rows
/// of `order_history`): a retried placement must return the first order, never make another.
async fn duplicate_placements(db: &Db, ids: &[String]) -> anyhow::Result<Vec<(String, i64)>> {
    let sql = "SELECT idempotency_key AS key, count(DISTINCT order_id) AS value FROM order_history \
               WHERE cause = 'PLACED' AND idempotency_key IN (SELECT idempotency_key \
                 FROM order_history WHERE order_id = ANY($1::text[]::uuid[]) AND cause = 'PLACED') \
               GROUP BY 1 HAVING count(DISTINCT order_id) > 1 ORDER BY 1";
    keyed(db, "order history", sql, ids).await
}

/// The state of each placed order's saga (`sagas.state`); `sagas.order_id` is UNIQUE, so no
/// order can have two.
async fn saga_states(db: &Db, ids: &[String]) -> anyhow::Result<ByOrder<String>> {
    let sql = "SELECT order_id::text AS key, state AS value FROM sagas \
               WHERE order_id = ANY($1::text[]::uuid[])";
    keyed(db, "sagas", sql, ids).await
}

/// What each placed order was charged, from `payment_ledger` (`entry_type` CAPTURE or REFUND,
/// `amount_minor`): one row per money movement, written with the payment's change, so a second
/// capture shows even where the `payments` row was overwritten.
async fn charges(db: &Db, ids: &[String]) -> anyhow::Result<ByOrder<Charges>> {
    let sql = "SELECT order_id::text AS order_id, \
                 coalesce(sum(amount_minor) FILTER (WHERE entry_type = 'CAPTURE'), 0)::bigint AS captured, \
                 coalesce(sum(amount_minor) FILTER (WHERE entry_type = 'REFUND'), 0)::bigint AS refunded, \
                 count(*) FILTER (WHERE entry_type = 'CAPTURE') AS captures \
               FROM payment_ledger WHERE order_id = ANY($1::text[]::uuid[]) GROUP BY order_id";
    let rows = query(db, "payment ledger", sql, [ids.to_vec().into()]).await?;
    let charged = |row: &QueryResult| -> anyhow::Result<(String, Charges)> {
        let charges = Charges {
            captured: row.try_get("", "captured")?,
            refunded: row.try_get("", "refunded")?,
            captures: row.try_get("", "captures")?,
        };
        Ok((row.try_get("", "order_id")?, charges))
    };
    rows.iter().map(charged).collect()
}

/// Placed orders' payments still AUTHORIZED (`payments.status`: neither captured nor voided), as
/// (order, payment): money held on a card. One past `authorization_expires_at` counts too, since
/// nothing in payment moves it out of AUTHORIZED.
async fn open_authorizations(db: &Db, ids: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let sql = "SELECT order_id::text AS key, id::text AS value FROM payments \
               WHERE order_id = ANY($1::text[]::uuid[]) AND status = 'AUTHORIZED' ORDER BY 1, 2";
    keyed(db, "payments", sql, ids).await
}

/// Each placed SKU's `products` counters (available, reserved, sold) beside what should explain
/// them: the sum of `stock_adjustments.delta`, and the quantities of its CONFIRMED and PENDING
/// `reservation_lines`, over every order (one placed but never acknowledged moves stock too).
async fn stock(db: &Db, skus: &[(String, i64)]) -> anyhow::Result<Vec<Stock>> {
    let sql = "SELECT s.sku, p.sku IS NOT NULL AS present, coalesce(p.available, 0) AS available, \
                 coalesce(p.reserved, 0) AS reserved, coalesce(p.sold, 0) AS sold, \
                 coalesce((SELECT sum(delta) FROM stock_adjustments a WHERE a.sku = s.sku), 0)::bigint AS adjusted, \
                 coalesce(q.confirmed, 0)::bigint AS confirmed, coalesce(q.pending, 0)::bigint AS pending \
               FROM unnest($1::text[]) AS s (sku) LEFT JOIN products p ON p.sku = s.sku \
               LEFT JOIN LATERAL (SELECT sum(l.quantity) FILTER (WHERE r.status = 'CONFIRMED') AS confirmed, \
                   sum(l.quantity) FILTER (WHERE r.status = 'PENDING') AS pending \
                 FROM reservation_lines l JOIN reservations r ON r.id = l.reservation_id \
                 WHERE l.sku = s.sku) q ON true ORDER BY s.sku";
    let initial: HashMap<&str, i64> = skus.iter().map(|(sku, n)| (sku.as_str(), *n)).collect();
    let names: Vec<String> = initial.keys().map(|sku| (*sku).to_owned()).collect();
    let mut stock = Vec::new();
    for row in query(db, "products", sql, [names.into()]).await? {
        let sku: String = row.try_get("", "sku")?;
        stock.push(Stock {
            initial: initial.get(sku.as_str()).copied().unwrap_or_default(),
            present: row.try_get("", "present")?,
            available: row.try_get("", "available")?,
            reserved: row.try_get("", "reserved")?,
            sold: row.try_get("", "sold")?,
            adjusted: row.try_get("", "adjusted")?,
            confirmed: row.try_get("", "confirmed")?,
            pending: row.try_get("", "pending")?,
            sku,
        });
    }
    Ok(stock)
}

/// Placed orders still holding a PENDING reservation (`reservations.status`), with how many:
/// stock nobody will confirm or release once the saga has ended.
async fn pending_reservations(db: &Db, ids: &[String]) -> anyhow::Result<Vec<(String, i64)>> {
    let sql = "SELECT order_id::text AS key, count(*) AS value FROM reservations \
               WHERE order_id = ANY($1::text[]::uuid[]) AND status = 'PENDING' GROUP BY 1 ORDER BY 1";
    keyed(db, "reservations", sql, ids).await
}

/// Placed orders with a reservation whose hold ran out, with how many.
async fn expired_reservations(db: &Db, ids: &[String]) -> anyhow::Result<ByOrder<i64>> {
    let sql = "SELECT order_id::text AS key, count(*) AS value FROM reservations \
               WHERE order_id = ANY($1::text[]::uuid[]) AND status = 'EXPIRED' GROUP BY 1";
    keyed(db, "reservations", sql, ids).await
}

/// Each placed order's shipment status (`shipments.status`); `shipments.order_id` is UNIQUE, so
/// no order can have two.
async fn shipments(db: &Db, ids: &[String]) -> anyhow::Result<ByOrder<String>> {
    let sql = "SELECT order_id::text AS key, status AS value FROM shipments \
               WHERE order_id = ANY($1::text[]::uuid[])";
    keyed(db, "shipments", sql, ids).await
}

/// OrderConfirmed notifications per placed order, whatever their delivery status. Each event
/// makes one (`trigger_event_id` is UNIQUE), so two mean the event was emitted twice.
async fn confirmations(db: &Db, ids: &[String]) -> anyhow::Result<ByOrder<i64>> {
    let sql = format!(
        "SELECT order_id::text AS key, count(*) AS value FROM notifications \
         WHERE order_id = ANY($1::text[]::uuid[]) AND trigger_event_type = '{ORDER_CONFIRMED_EVENT}' \
         GROUP BY 1"
    );
    keyed(db, "notifications", &sql, ids).await
}

/// A check from its offenders: every one counted, the first few shown.
fn tally(name: &'static str, offenders: impl IntoIterator<Item = String>) -> Check {
    let (mut violations, mut examples) = (0_u64, Vec::new());
    for offender in offenders {
        violations += 1;
        if examples.len() < EXAMPLES {
            examples.push(offender);
        }
    }
    if violations > examples.len() as u64 {
        examples.push("...".to_owned());
    }
    let detail = examples.join("; ");
    Check {
        name,
        violations,
        detail,
    }
}

/// A check over the placed orders in id order; `offence` says what is wrong with one, if anything.
fn per_order(f: &Facts, name: &'static str, offence: impl Fn(&String) -> Option<String>) -> Check {
    tally(name, f.ids.iter().filter_map(offence))
}

/// Checks 1 and 2: every accepted order recorded once, with one saga that ended and agrees
/// with it.
fn order_checks(f: &Facts) -> Vec<Check> {
    let missing = f.ids.iter().filter(|id| !f.orders.contains_key(*id));
    let missing = missing.map(|id| format!("{id} missing"));
    let twice = f
        .duplicates
        .iter()
        .map(|(key, n)| format!("key {key} made {n} orders"));
    vec![
        // An accepted order is in `orders`, and no idempotency key made a second order.
        tally("order recorded once", missing.chain(twice)),
        per_order(f, "one saga per order", |id| {
            (!f.sagas.contains_key(id)).then(|| format!("{id} has none"))
        }),
        // No saga is left in a state the engine still drives.
        per_order(f, "no saga stuck", |id| {
            let state = f.sagas.get(id)?;
            is_active(state).then(|| format!("{id} {state}"))
        }),
        // No saga gave up compensating.
        per_order(f, "no saga parked", |id| {
            (f.sagas.get(id)? == PARKED_SAGA_STATE).then(|| id.clone())
        }),
        // Not asked for, but an order left PENDING under a COMPLETED saga shows nowhere else:
        // COMPLETED goes with CONFIRMED, COMPENSATED with REJECTED or CANCELLED.
        per_order(f, "order agrees with saga", |id| {
            let (state, status) = (f.sagas.get(id)?.as_str(), f.status(id)?);
            let agrees = match state {
                "COMPLETED" => status == "CONFIRMED",
                "COMPENSATED" => matches!(status, "REJECTED" | "CANCELLED"),
                _ => true,
            };
            (!agrees).then(|| format!("{id} saga {state}, order {status}"))
        }),
    ]
}

/// Checks 3 to 6: the money matches each order's outcome.
fn payment_checks(f: &Facts) -> Vec<Check> {
    let open = f.open.iter().filter_map(|(order, payment)| {
        let state = f.sagas.get(order)?;
        (!is_active(state)).then(|| format!("{order} payment {payment} ({state})"))
    });
    vec![
        // A CONFIRMED order was captured for exactly its total.
        per_order(f, "confirmed order captured in full", |id| {
            let total = f.total_if(id, &["CONFIRMED"])?;
            let captured = f.charges.get(id).map_or(0, |c| c.captured);
            (captured != total).then(|| format!("{id} captured {captured} of {total}"))
        }),
        // A REJECTED or CANCELLED order kept no money: captured minus refunded is zero.
        per_order(f, "rejected order not charged", |id| {
            f.total_if(id, &["REJECTED", "CANCELLED"])?;
            let net = f.charges.get(id).map_or(0, |c| c.captured - c.refunded);
            (net != 0).then(|| format!("{id} net charge {net}"))
        }),
        per_order(f, "at most one capture", |id| {
            let captures = f.charges.get(id)?.captures;
            (captures > 1).then(|| format!("{id} {captures} captures"))
        }),
        // No authorization stays open once the saga has ended (parked sagas included).
        tally("no open authorization", open),
    ]
}

/// Check 7: each placed SKU's stock adds up, nothing stays reserved, nothing was oversold.
fn stock_checks(f: &Facts) -> Vec<Check> {
    let present = || f.stock.iter().filter(|s| s.present);
    let missing = f.stock.iter().filter(|s| !s.present);
    // available = initial + adjustments - confirmed - pending, and the `sold` and `reserved`
    // counters equal the confirmed and pending reservation quantities.
    let unbalanced = present().filter_map(|s| {
        let expected = s.initial + s.adjusted - s.confirmed - s.pending;
        let counters = [
            ("available", s.available, expected),
            ("sold", s.sold, s.confirmed),
            ("reserved", s.reserved, s.pending),
        ];
        let wrong: Vec<String> = (counters.into_iter())
            .filter(|(_, found, expected)| found != expected)
            .map(|(counter, found, expected)| format!("{counter} {found} not {expected}"))
            .collect();
        (!wrong.is_empty()).then(|| format!("{} {}", s.sku, wrong.join(", ")))
    });
    let unbalanced = missing
        .map(|s| format!("{} missing", s.sku))
        .chain(unbalanced);
    let reserved = present().filter(|s| s.reserved != 0);
    let reserved = reserved.map(|s| format!("{} reserved {}", s.sku, s.reserved));
    let pending = f.pending.iter().map(|(id, n)| format!("{id} {n} pending"));
    // Only the end state is stored; the CHECK constraints on `products` kept every state on the
    // way non-negative, so a negative counter or an oversold SKU here is all there is to find.
    let negative = present().filter_map(|s| {
        let oversold = s.confirmed + s.pending - (s.initial + s.adjusted);
        if s.available < 0 || s.reserved < 0 || s.sold < 0 {
            Some(format!("{} negative counter", s.sku))
        } else {
            (oversold > 0).then(|| format!("{} oversold by {oversold}", s.sku))
        }
    });
    vec![
        tally("stock balances", unbalanced),
        tally("no reservation pending", reserved.chain(pending)),
        tally("stock never negative", negative),
    ]
}

/// Checks 8 and 9: what reached the customer matches the order's outcome.
fn delivery_checks(f: &Facts) -> Vec<Check> {
    vec![
        // A CONFIRMED order has its one shipment, DISPATCHED: payment is captured only after
        // dispatch.
        per_order(f, "confirmed order shipped once", |id| {
            f.total_if(id, &["CONFIRMED"])?;
            match f.shipments.get(id).map(String::as_str) {
                None => Some(format!("{id} no shipment")),
                Some("DISPATCHED") => None,
                Some(status) => Some(format!("{id} shipment {status}")),
            }
        }),
        // Goods that left were never put back on sale: their reservation was pinned before the
        // shipment existed, so its hold could not run out.
        per_order(f, "dispatched stock never expired", |id| {
            (f.shipments.get(id)? == "DISPATCHED" && f.expired.contains_key(id)).then(|| id.clone())
        }),
        per_order(f, "no dispatch for rejected order", |id| {
            f.total_if(id, &["REJECTED", "CANCELLED"])?;
            (f.shipments.get(id)? == "DISPATCHED").then(|| id.clone())
        }),
        // A CONFIRMED order has exactly one OrderConfirmed notification, any other order none.
        per_order(f, "confirmed order notified once", |id| {
            let status = f.status(id)?;
            let sent = f.confirmations.get(id).copied().unwrap_or_default();
            (sent != i64::from(status == "CONFIRMED")).then(|| format!("{id} {sent} for {status}"))
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_replaces_the_path_and_keeps_the_query() {
        let url = database_url("postgres://u:p@h:1/postgres?sslmode=disable", "z_saga");
        assert_eq!(url, "postgres://u:p@h:1/z_saga?sslmode=disable");
        assert_eq!(
            database_url("postgres://h:1", "z_order"),
            "postgres://h:1/z_order"
        );
    }

    #[test]
    fn table_counts_every_offender_and_shows_a_few() {
        let many = tally("no saga stuck", (0..5).map(|n| n.to_string()));
        let checks = vec![many, tally("x", [])];
        let table = AuditReport {
            checks,
            ..AuditReport::default()
        }
        .table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "check          violations  detail");
        assert_eq!(lines[2], "no saga stuck           5  0; 1; 2; ...");
        assert_eq!(lines[3], "x                       0");
    }
}
