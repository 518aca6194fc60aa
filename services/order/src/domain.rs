//! Orders as the service understands them: validated placement, money arithmetic without floats
//! or overflow, and the lifecycle's legal transitions.

use std::collections::{BTreeSet, HashMap};

use zentra_proto::{common::v1::Address, order::v1 as pb};
use zentra_runtime::{
    status::{Preconditions, Violations, check_idempotency_key, check_text},
    validate::{Price, Sku, check_address, check_currency, check_email},
};

/// Most lines one order may hold.
pub const MAX_LINES: usize = 100;
/// Most units of one line.
pub const MAX_QUANTITY: i64 = 1_000_000;

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

/// A validated order placement, priced from the catalogue.
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
    /// Where the customer's mail goes; empty when none was given.
    pub customer_email: String,
}

/// Checks a customer id: 1..=64 printable ASCII characters.
pub fn check_customer_id(field: &str, value: &str, violations: &mut Violations) {
    if value.is_empty() || value.len() > 64 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        violations.add(field, "must be 1..=64 printable ASCII characters");
    }
}

/// One line as the customer asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedLine {
    /// Product.
    pub sku: Sku,
    /// Units.
    pub quantity: i64,
    /// The unit price the customer expects, in the order's currency, if they named one.
    pub expected_price: Option<i64>,
}

/// A validated placement request, not priced yet.
#[derive(Debug, Clone)]
pub struct OrderRequest {
    /// Customer.
    pub customer_id: String,
    /// Where to ship.
    pub shipping_address: Address,
    /// Lines in request order.
    pub lines: Vec<RequestedLine>,
    /// The order's currency.
    pub currency: String,
    /// Opaque payment method token.
    pub payment_method_token: String,
    /// Where the customer's mail goes; empty when none was given.
    pub customer_email: String,
}

/// Violation types of a refused pricing; clients match on them.
pub mod pricing {
    /// No product has the line's SKU.
    pub const UNKNOWN_PRODUCT: &str = "UNKNOWN_PRODUCT";
    /// The product is priced in another currency than the order.
    pub const CURRENCY_MISMATCH: &str = "CURRENCY_MISMATCH";
    /// The line's unit_price is not the product's current price.
    pub const PRICE_CHANGED: &str = "PRICE_CHANGED";
}

impl OrderRequest {
    /// Validates a `PlaceOrderRequest`'s form (prices are checked against the catalogue later).
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
        if !request.customer_email.is_empty() {
            check_email("customer_email", &request.customer_email, &mut violations);
        }
        if request.lines.is_empty() {
            violations.add("lines", "must hold at least one line");
        } else if request.lines.len() > MAX_LINES {
            violations.add("lines", format!("must hold at most {MAX_LINES} lines"));
        }
        let mut lines = Vec::new();
        let mut seen = BTreeSet::new();
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
            // A price is optional: the catalogue prices the line; one given is an expectation.
            let expected_price = line.unit_price.as_ref().and_then(|_| {
                let price = Price::parse(
                    &field("unit_price"),
                    line.unit_price.as_ref(),
                    &mut violations,
                )?;
                if currency_ok && price.currency != request.currency_code {
                    violations.add(
                        field("unit_price.currency_code"),
                        "must equal currency_code",
                    );
                }
                Some(price.amount_minor)
            });
            if let Some(sku) = sku {
                lines.push(RequestedLine {
                    sku,
                    quantity: line.quantity,
                    expected_price,
                });
            }
        }
        if !violations.is_empty() {
            return Err(violations);
        }
        Ok(Self {
            customer_id: request.customer_id.clone(),
            shipping_address: request.shipping_address.clone().unwrap_or_default(),
            lines,
            currency: request.currency_code.clone(),
            payment_method_token: request.payment_method_token.clone(),
            customer_email: request.customer_email.clone(),
        })
    }

    /// The SKUs to price, in line order.
    pub fn skus(&self) -> Vec<Sku> {
        self.lines.iter().map(|line| line.sku.clone()).collect()
    }

    /// Prices every line from `catalogue` (the current price of each SKU that exists). Refused,
    /// with every line that cannot be priced as asked, when a product is unknown, priced in
    /// another currency, or costs other than the customer expects.
    pub fn price(self, catalogue: &HashMap<Sku, Price>) -> Result<PlaceOrder, Preconditions> {
        let mut failed = Preconditions::new();
        let mut lines = Vec::with_capacity(self.lines.len());
        let mut total: Option<i64> = Some(0);
        for (index, line) in self.lines.iter().enumerate() {
            let Some(price) = catalogue.get(&line.sku) else {
                failed.add(
                    pricing::UNKNOWN_PRODUCT,
                    format!("lines[{index}].sku"),
                    format!("no product {} in the catalogue", line.sku),
                );
                continue;
            };
            if price.currency != self.currency {
                failed.add(
                    pricing::CURRENCY_MISMATCH,
                    format!("lines[{index}].sku"),
                    format!(
                        "{} is priced in {}, the order is in {}",
                        line.sku, price.currency, self.currency
                    ),
                );
                continue;
            }
            if let Some(expected) = line.expected_price
                && expected != price.amount_minor
            {
                failed.add(
                    pricing::PRICE_CHANGED,
                    format!("lines[{index}].unit_price"),
                    format!(
                        "{} costs {price} now, not {expected} {}",
                        line.sku, self.currency
                    ),
                );
                failed.note(line.sku.as_str(), price.to_string());
                continue;
            }
            // Prices are at most MAX_UNIT_PRICE and quantities MAX_QUANTITY, but stay checked.
            let line_total = price.amount_minor.checked_mul(line.quantity);
            total = total
                .zip(line_total)
                .and_then(|(sum, line_total)| sum.checked_add(line_total));
            lines.push(Line {
                sku: line.sku.clone(),
                quantity: line.quantity,
                unit_price: price.amount_minor,
                total: line_total.unwrap_or(i64::MAX),
            });
        }
        if !failed.is_empty() {
            return Err(failed);
        }
        let Some(total) = total else {
            failed.add(
                "TOTAL_OVERFLOW",
                "lines",
                "the order's total at current prices is too large",
            );
            return Err(failed);
        };
        Ok(PlaceOrder {
            customer_id: self.customer_id,
            shipping_address: self.shipping_address,
            lines,
            currency: self.currency,
            total,
            payment_method_token: self.payment_method_token,
            customer_email: self.customer_email,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sku(text: &str) -> Sku {
        Sku::parse("sku", text, &mut Violations::new()).expect("valid sku")
    }

    fn asked(lines: &[(&str, i64, Option<i64>)]) -> OrderRequest {
        OrderRequest {
            customer_id: "c".to_owned(),
            shipping_address: Address::default(),
            lines: lines
                .iter()
                .map(|(text, quantity, expected_price)| RequestedLine {
                    sku: sku(text),
                    quantity: *quantity,
                    expected_price: *expected_price,
                })
                .collect(),
            currency: "USD".to_owned(),
            payment_method_token: "tok".to_owned(),
            customer_email: String::new(),
        }
    }

    fn catalogue(entries: &[(&str, i64, &str)]) -> HashMap<Sku, Price> {
        entries
            .iter()
            .map(|(text, amount_minor, currency)| {
                (
                    sku(text),
                    Price {
                        amount_minor: *amount_minor,
                        currency: (*currency).to_owned(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn lines_are_priced_from_the_catalogue_whatever_the_client_leaves_out() {
        let order = asked(&[("A", 2, None), ("B", 3, Some(500))])
            .price(&catalogue(&[("A", 1000, "USD"), ("B", 500, "USD")]))
            .expect("priced");
        let prices: Vec<_> = order
            .lines
            .iter()
            .map(|line| (line.unit_price, line.total))
            .collect();
        assert_eq!(prices, [(1000, 2000), (500, 1500)]);
        assert_eq!(order.total, 3500);
    }

    #[test]
    fn every_line_that_cannot_be_priced_as_asked_is_named_with_the_current_price() {
        let refused = asked(&[
            ("A", 1, Some(1)),
            ("B", 1, None),
            ("C", 1, None),
            ("D", 1, None),
        ])
        .price(&catalogue(&[
            ("A", 1000, "USD"),
            ("B", 700, "EUR"),
            ("D", 5, "USD"),
        ]))
        .expect_err("refused");
        let violations: Vec<_> = refused
            .violations()
            .map(|(kind, subject, _)| format!("{kind} {subject}"))
            .collect();
        assert_eq!(
            violations,
            [
                "PRICE_CHANGED lines[0].unit_price",
                "CURRENCY_MISMATCH lines[1].sku",
                "UNKNOWN_PRODUCT lines[2].sku",
            ]
        );
        let status = refused.into_status(pricing::PRICE_CHANGED, "zentra.order.v1");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("A costs 1000 USD now, not 1 USD"));
    }

    #[test]
    fn a_total_that_would_overflow_is_refused() {
        // A hundred lines of a million units at the highest price: 10^20 minor units.
        let skus: Vec<String> = (0..MAX_LINES).map(|index| format!("S{index}")).collect();
        let asked_lines: Vec<(&str, i64, Option<i64>)> = skus
            .iter()
            .map(|text| (text.as_str(), MAX_QUANTITY, None))
            .collect();
        let prices: Vec<(&str, i64, &str)> = skus
            .iter()
            .map(|text| {
                (
                    text.as_str(),
                    zentra_runtime::validate::MAX_UNIT_PRICE,
                    "USD",
                )
            })
            .collect();
        let refused = asked(&asked_lines)
            .price(&catalogue(&prices))
            .expect_err("overflow refused");
        assert_eq!(refused.violations().count(), 1);
    }

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
