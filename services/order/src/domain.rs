//! Orders as the service understands them: validated placement, money arithmetic without floats
//! or overflow, and the lifecycle's legal transitions.

use std::collections::BTreeSet;

use zentra_proto::{common::v1::Address, order::v1 as pb};
use zentra_runtime::{
    status::{Violations, check_idempotency_key, check_text},
    validate::{Sku, check_address, check_currency},
};

/// Most lines one order may hold.
pub const MAX_LINES: usize = 100;
/// Most units of one line.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Highest unit price, in minor units (ten billion major units).
pub const MAX_UNIT_PRICE: i64 = 1_000_000_000_000;

/// An order's place in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderState {
    /// Placed; the saga is working on it.
    Pending,
    /// Done: stock, payment and shipment succeeded.
    Confirmed,
    /// The saga gave up and compensated.
    Rejected,
    /// The customer asked to cancel; the saga compensates.
    CancellationRequested,
    /// Cancelled after compensation.
    Cancelled,
}

impl OrderState {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Confirmed => "CONFIRMED",
            Self::Rejected => "REJECTED",
            Self::CancellationRequested => "CANCELLATION_REQUESTED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// Parses the stored text.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "PENDING" => Self::Pending,
            "CONFIRMED" => Self::Confirmed,
            "REJECTED" => Self::Rejected,
            "CANCELLATION_REQUESTED" => Self::CancellationRequested,
            "CANCELLED" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Whether the lifecycle allows moving from `self` to `target`.
    pub fn can_become(self, target: Self) -> bool {
        use OrderState::*;
        matches!(
            (self, target),
            (Pending, Confirmed)
                | (Pending, Rejected)
                | (Pending, CancellationRequested)
                // The cancellation came after the point of no return (the goods were dispatched).
                | (CancellationRequested, Confirmed)
                | (CancellationRequested, Rejected)
                | (CancellationRequested, Cancelled)
        )
    }

    /// The API enum.
    pub fn to_proto(self) -> pb::OrderStatus {
        match self {
            Self::Pending => pb::OrderStatus::Pending,
            Self::Confirmed => pb::OrderStatus::Confirmed,
            Self::Rejected => pb::OrderStatus::Rejected,
            Self::CancellationRequested => pb::OrderStatus::CancellationRequested,
            Self::Cancelled => pb::OrderStatus::Cancelled,
        }
    }

    /// From the API enum; `None` for UNSPECIFIED or unknown values.
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::OrderStatus::try_from(value).ok()? {
            pb::OrderStatus::Unspecified => None,
            pb::OrderStatus::Pending => Some(Self::Pending),
            pb::OrderStatus::Confirmed => Some(Self::Confirmed),
            pb::OrderStatus::Rejected => Some(Self::Rejected),
            pb::OrderStatus::CancellationRequested => Some(Self::CancellationRequested),
            pb::OrderStatus::Cancelled => Some(Self::Cancelled),
        }
    }
}

/// One priced line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Product.
    pub sku: Sku,
    /// Units.
    pub quantity: i64,
    /// Unit price in minor units.
    pub unit_price: i64,
    /// quantity × unit price.
    pub total: i64,
}

/// A validated, priced order placement.
#[derive(Debug, Clone)]
pub struct PlaceOrder {
    /// Customer.
    pub customer_id: String,
    /// Where to ship.
    pub shipping_address: Address,
    /// Priced lines.
    pub lines: Vec<Line>,
    /// Currency of every amount.
    pub currency: String,
    /// Sum of line totals.
    pub total: i64,
    /// Opaque payment method token.
    pub payment_method_token: String,
}

/// Checks a customer id: 1..=64 printable ASCII characters.
pub fn check_customer_id(field: &str, value: &str, violations: &mut Violations) {
    if value.is_empty() || value.len() > 64 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        violations.add(field, "must be 1..=64 printable ASCII characters");
    }
}

impl PlaceOrder {
    /// Validates and prices a `PlaceOrderRequest`.
    pub fn parse(request: &pb::PlaceOrderRequest) -> Result<Self, Violations> {
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        check_customer_id("customer_id", &request.customer_id, &mut violations);
        check_address(
            "shipping_address",
            request.shipping_address.as_ref(),
            &mut violations,
        );
        let currency_ok = check_currency("currency_code", &request.currency_code, &mut violations);
        check_text(
            "payment_method_token",
            &request.payment_method_token,
            128,
            &mut violations,
        );
        if request.lines.is_empty() {
            violations.add("lines", "must hold at least one line");
        } else if request.lines.len() > MAX_LINES {
            violations.add("lines", format!("must hold at most {MAX_LINES} lines"));
        }
        let mut lines = Vec::new();
        let mut seen = BTreeSet::new();
        let mut total: Option<i64> = Some(0);
        for (index, line) in request.lines.iter().take(MAX_LINES).enumerate() {
            let field = |name: &str| format!("lines[{index}].{name}");
            let sku = Sku::parse(&field("sku"), &line.sku, &mut violations);
            if let Some(sku) = &sku
                && !seen.insert(sku.clone())
            {
                violations.add(field("sku"), "appears more than once");
            }
            if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                violations.add(field("quantity"), format!("must be 1..={MAX_QUANTITY}"));
            }
            let unit_price = match &line.unit_price {
                None => {
                    violations.add(field("unit_price"), "is required");
                    None
                }
                Some(price) => {
                    if currency_ok && price.currency_code != request.currency_code {
                        violations.add(
                            field("unit_price.currency_code"),
                            "must equal currency_code",
                        );
                    }
                    if !(0..=MAX_UNIT_PRICE).contains(&price.amount_minor) {
                        violations.add(
                            field("unit_price.amount_minor"),
                            format!("must be 0..={MAX_UNIT_PRICE}"),
                        );
                        None
                    } else {
                        Some(price.amount_minor)
                    }
                }
            };
            // Bounds above keep this far from i64::MAX, but the arithmetic stays checked.
            let line_total = unit_price.and_then(|price| price.checked_mul(line.quantity));
            total = match (total, line_total) {
                (Some(sum), Some(line_total)) => sum.checked_add(line_total),
                _ => None,
            };
            if let (Some(sku), Some(unit_price), Some(line_total)) = (sku, unit_price, line_total) {
                lines.push(Line {
                    sku,
                    quantity: line.quantity,
                    unit_price,
                    total: line_total,
                });
            }
        }
        if !violations.is_empty() {
            return Err(violations);
        }
        let Some(total) = total else {
            violations.add("lines", "order total overflows");
            return Err(violations);
        };
        Ok(Self {
            customer_id: request.customer_id.clone(),
            shipping_address: request.shipping_address.clone().unwrap_or_default(),
            lines,
            currency: request.currency_code.clone(),
            total,
            payment_method_token: request.payment_method_token.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_lifecycle_transitions_are_legal() {
        use OrderState::*;
        let all = [
            Pending,
            Confirmed,
            Rejected,
            CancellationRequested,
            Cancelled,
        ];
        let legal: Vec<_> = all
            .iter()
            .flat_map(|from| all.iter().map(move |to| (*from, *to)))
            .filter(|(from, to)| from.can_become(*to))
            .map(|(from, to)| format!("{}->{}", from.as_str(), to.as_str()))
            .collect();
        assert_eq!(
            legal,
            [
                "PENDING->CONFIRMED",
                "PENDING->REJECTED",
                "PENDING->CANCELLATION_REQUESTED",
                "CANCELLATION_REQUESTED->CONFIRMED",
                "CANCELLATION_REQUESTED->REJECTED",
                "CANCELLATION_REQUESTED->CANCELLED",
            ]
        );
    }
}
