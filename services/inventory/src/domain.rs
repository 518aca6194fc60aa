//! Inventory's domain types, validated at the edge: a proto request becomes one of these or an
//! INVALID_ARGUMENT naming every offending field.

use std::{collections::BTreeSet, time::Duration};

use uuid::Uuid;
use zentra_proto::inventory::v1 as pb;
use zentra_runtime::{
    status::{Violations, check_idempotency_key, check_text, parse_uuid},
    time::from_proto_duration,
};

pub use zentra_runtime::validate::{Price, Sku};

/// Most units one line may ask for; keeps sums far from overflow.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Most lines in one reservation.
pub const MAX_LINES: usize = 100;

/// A validated reservation request.
#[derive(Debug, Clone)]
pub struct ReserveStock {
    /// The order.
    pub order_id: Uuid,
    /// Lines, sorted by SKU (a fixed lock order rules out deadlocks between reservations).
    pub lines: Vec<(Sku, i64)>,
    /// Hold duration, if the request set one.
    pub hold: Option<Duration>,
    /// Idempotency key.
    pub idempotency_key: String,
}

impl ReserveStock {
    /// Validates a `ReserveStockRequest`.
    pub fn parse(
        request: &pb::ReserveStockRequest,
        max_hold: Duration,
    ) -> Result<Self, Violations> {
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        let order_id = parse_uuid("order_id", &request.order_id, &mut violations);
        if request.lines.is_empty() {
            violations.add("lines", "must hold at least one line");
        } else if request.lines.len() > MAX_LINES {
            violations.add("lines", format!("must hold at most {MAX_LINES} lines"));
        }
        let mut lines = Vec::with_capacity(request.lines.len());
        let mut seen = BTreeSet::new();
        for (index, line) in request.lines.iter().take(MAX_LINES).enumerate() {
            let sku = Sku::parse(&format!("lines[{index}].sku"), &line.sku, &mut violations);
            let quantity_ok = check_quantity(
                &format!("lines[{index}].quantity"),
                line.quantity,
                &mut violations,
            );
            if let Some(sku) = sku {
                if !seen.insert(sku.clone()) {
                    violations.add(format!("lines[{index}].sku"), "appears more than once");
                } else if quantity_ok {
                    lines.push((sku, line.quantity));
                }
            }
        }
        lines.sort();
        let hold = request
            .hold_duration
            .as_ref()
            .and_then(|d| from_proto_duration(d, "hold_duration", &mut violations));
        if let Some(hold) = hold {
            if hold.is_zero() {
                violations.add("hold_duration", "must be positive");
            } else if hold > max_hold {
                violations.add(
                    "hold_duration",
                    format!("must be at most {}s", max_hold.as_secs()),
                );
            }
        }
        match (violations.is_empty(), order_id) {
            (true, Some(order_id)) => Ok(Self {
                order_id,
                lines,
                hold,
                idempotency_key: request.idempotency_key.clone(),
            }),
            _ => Err(violations),
        }
    }
}

/// Records a violation unless `1 <= quantity <= MAX_QUANTITY`.
pub fn check_quantity(field: &str, quantity: i64, violations: &mut Violations) -> bool {
    if quantity < 1 {
        violations.add(field, "must be at least 1");
        false
    } else if quantity > MAX_QUANTITY {
        violations.add(field, format!("must be at most {MAX_QUANTITY}"));
        false
    } else {
        true
    }
}

/// A validated product creation.
#[derive(Debug, Clone)]
pub struct CreateProduct {
    /// SKU.
    pub sku: Sku,
    /// Name.
    pub name: String,
    /// Initial stock.
    pub initial_stock: i64,
    /// Low-stock threshold.
    pub low_stock_threshold: i64,
    /// Unit price.
    pub price: Price,
    /// Idempotency key.
    pub idempotency_key: String,
}

impl CreateProduct {
    /// Validates a `CreateProductRequest`.
    pub fn parse(request: &pb::CreateProductRequest) -> Result<Self, Violations> {
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        let sku = Sku::parse("sku", &request.sku, &mut violations);
        let name = request.name.trim();
        check_text("name", name, 200, &mut violations);
        if !(0..=1_000_000_000).contains(&request.initial_stock) {
            violations.add("initial_stock", "must be between 0 and 1000000000");
        }
        if !(0..=1_000_000_000).contains(&request.low_stock_threshold) {
            violations.add("low_stock_threshold", "must be between 0 and 1000000000");
        }
        let price = Price::parse("unit_price", request.unit_price.as_ref(), &mut violations);
        match (violations.is_empty(), sku, price) {
            (true, Some(sku), Some(price)) => Ok(Self {
                sku,
                name: name.to_owned(),
                initial_stock: request.initial_stock,
                low_stock_threshold: request.low_stock_threshold,
                price,
                idempotency_key: request.idempotency_key.clone(),
            }),
            _ => Err(violations),
        }
    }
}

/// A validated price change.
#[derive(Debug, Clone)]
pub struct SetProductPrice {
    /// The product.
    pub sku: Sku,
    /// Its new price.
    pub price: Price,
}

impl SetProductPrice {
    /// Validates a `SetProductPriceRequest`.
    pub fn parse(request: &pb::SetProductPriceRequest) -> Result<Self, Violations> {
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        let sku = Sku::parse("sku", &request.sku, &mut violations);
        let price = Price::parse("unit_price", request.unit_price.as_ref(), &mut violations);
        match (violations.is_empty(), sku, price) {
            (true, Some(sku), Some(price)) => Ok(Self { sku, price }),
            _ => Err(violations),
        }
    }
}

/// Validates the SKUs of a `BatchGetProductsRequest`: 1..=MAX_LINES, each once.
pub fn parse_batch_skus(skus: &[String]) -> Result<Vec<Sku>, Violations> {
    let mut violations = Violations::new();
    if skus.is_empty() {
        violations.add("skus", "must hold at least one SKU");
    } else if skus.len() > MAX_LINES {
        violations.add("skus", format!("must hold at most {MAX_LINES} SKUs"));
    }
    let mut seen = BTreeSet::new();
    let mut parsed = Vec::with_capacity(skus.len());
    for (index, sku) in skus.iter().take(MAX_LINES).enumerate() {
        let field = format!("skus[{index}]");
        if let Some(sku) = Sku::parse(&field, sku, &mut violations) {
            if seen.insert(sku.clone()) {
                parsed.push(sku);
            } else {
                violations.add(field, "appears more than once");
            }
        }
    }
    if violations.is_empty() {
        Ok(parsed)
    } else {
        Err(violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(lines: Vec<(&str, i64)>) -> pb::ReserveStockRequest {
        pb::ReserveStockRequest {
            order_id: Uuid::now_v7().to_string(),
            lines: lines
                .into_iter()
                .map(|(sku, quantity)| pb::ReservationLine {
                    sku: sku.to_owned(),
                    quantity,
                })
                .collect(),
            hold_duration: None,
            idempotency_key: "k".to_owned(),
        }
    }

    fn fields(violations: &Violations) -> Vec<String> {
        violations
            .fields()
            .map(|(field, _)| field.to_owned())
            .collect()
    }

    #[test]
    fn lines_are_sorted_by_sku_for_a_fixed_lock_order() {
        let parsed =
            ReserveStock::parse(&request(vec![("B", 1), ("A", 2)]), Duration::from_secs(60));
        let skus: Vec<_> = parsed
            .map(|p| p.lines.into_iter().map(|(s, _)| s.to_string()).collect())
            .unwrap_or_default();
        assert_eq!(skus, ["A", "B"]);
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut bad = request(vec![("a b", 0), ("OK", -1), ("OK", 1)]);
        bad.order_id = "not-a-uuid".to_owned();
        bad.idempotency_key.clear();
        let violations = ReserveStock::parse(&bad, Duration::from_secs(60))
            .err()
            .unwrap_or_default();
        assert_eq!(
            fields(&violations),
            [
                "idempotency_key",
                "order_id",
                "lines[0].sku",
                "lines[0].quantity",
                "lines[1].quantity",
                "lines[2].sku"
            ]
        );
    }

    #[test]
    fn overlong_sku_and_hold_are_refused() {
        let mut bad = request(vec![(&"X".repeat(65), 1)]);
        bad.hold_duration = Some(prost_types::Duration {
            seconds: 90_000,
            nanos: 0,
        });
        let violations = ReserveStock::parse(&bad, Duration::from_secs(86_400))
            .err()
            .unwrap_or_default();
        assert_eq!(fields(&violations), ["lines[0].sku", "hold_duration"]);
    }
}
