//! Validators for values several services accept: SKUs, currencies, prices, postal addresses.

use std::fmt;

use zentra_proto::common::v1::{Address, Money};

use crate::status::{Violations, check_text};

/// A stock keeping unit: 1..=64 characters of A-Z, 0-9, '-', '_' and '.'.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sku(String);

impl Sku {
    /// Validates a SKU, recording a violation under `field`.
    pub fn parse(field: &str, value: &str, violations: &mut Violations) -> Option<Self> {
        if value.is_empty() {
            violations.add(field, "is required");
            return None;
        }
        if value.len() > 64 {
            violations.add(field, "must be at most 64 characters");
            return None;
        }
        if !value.bytes().all(|b| {
            b.is_ascii_uppercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        }) {
            violations.add(field, "may hold only A-Z, 0-9, '-', '_' and '.'");
            return None;
        }
        Some(Self(value.to_owned()))
    }

    /// The SKU text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// ISO 4217 codes Zentra accepts, each with two minor-unit digits or none (JPY, KRW).
const CURRENCIES: &[&str] = &[
    "AUD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "INR", "JPY", "KRW",
    "MXN", "NOK", "NZD", "PLN", "SEK", "SGD", "USD", "ZAR",
];

/// Records a violation unless `code` is a supported ISO 4217 currency.
pub fn check_currency(field: &str, code: &str, violations: &mut Violations) -> bool {
    if CURRENCIES.contains(&code) {
        true
    } else {
        violations.add(
            field,
            "must be a supported ISO 4217 code such as USD or EUR",
        );
        false
    }
}

/// Longest e-mail address accepted (RFC 5321's path limit less its brackets).
pub const MAX_EMAIL: usize = 254;

/// Checks an e-mail address as a mail system will be handed it: at most 254 ASCII characters, a
/// local part of 1..=64 characters without spaces, quotes or brackets, one "@", and a domain of
/// two or more labels of letters, digits and inner hyphens. Quoted local parts and address
/// literals are refused: nobody needs them for order mail, and they are where parsers disagree.
pub fn check_email(field: &str, value: &str, violations: &mut Violations) {
    let local_ok = |local: &str| {
        (1..=64).contains(&local.len())
            && local
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&byte))
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
    };
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let valid = value.len() <= MAX_EMAIL
        && value.split_once('@').is_some_and(|(local, domain)| {
            local_ok(local) && domain.split('.').count() >= 2 && domain.split('.').all(label_ok)
        });
    if !valid {
        violations.add(
            field,
            "must be an e-mail address like ada@example.com (at most 254 characters)",
        );
    }
}

/// Highest unit price, in minor units (ten billion major units): bounds keep a line's total
/// (at most a million units) and an order's (at most a hundred lines) far from overflow.
pub const MAX_UNIT_PRICE: i64 = 1_000_000_000_000;

/// A validated unit price: a supported currency and `0..=MAX_UNIT_PRICE` minor units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
}

impl Price {
    /// Validates `money` under `field` (for example `unit_price`); a missing one is recorded as
    /// required.
    pub fn parse(field: &str, money: Option<&Money>, violations: &mut Violations) -> Option<Self> {
        let Some(money) = money else {
            violations.add(field, "is required");
            return None;
        };
        let amount_ok = (0..=MAX_UNIT_PRICE).contains(&money.amount_minor);
        if !amount_ok {
            violations.add(
                format!("{field}.amount_minor"),
                format!("must be 0..={MAX_UNIT_PRICE}"),
            );
        }
        let currency_ok = check_currency(
            &format!("{field}.currency_code"),
            &money.currency_code,
            violations,
        );
        (currency_ok && amount_ok).then(|| Self {
            amount_minor: money.amount_minor,
            currency: money.currency_code.clone(),
        })
    }

    /// The API message.
    pub fn to_proto(&self) -> Money {
        Money {
            currency_code: self.currency.clone(),
            amount_minor: self.amount_minor,
        }
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount_minor, self.currency)
    }
}

/// Checks a postal address under `field` (for example `shipping_address`).
pub fn check_address(field: &str, address: Option<&Address>, violations: &mut Violations) {
    let Some(address) = address else {
        violations.add(field, "is required");
        return;
    };
    check_text(
        &format!("{field}.recipient"),
        &address.recipient,
        200,
        violations,
    );
    if address.lines.is_empty() || address.lines.len() > 4 {
        violations.add(format!("{field}.lines"), "must hold 1..=4 lines");
    }
    for (index, line) in address.lines.iter().take(4).enumerate() {
        check_text(&format!("{field}.lines[{index}]"), line, 200, violations);
    }
    check_text(&format!("{field}.city"), &address.city, 100, violations);
    if !address.region.is_empty() {
        check_text(&format!("{field}.region"), &address.region, 100, violations);
    }
    check_text(
        &format!("{field}.postal_code"),
        &address.postal_code,
        20,
        violations,
    );
    let country = &address.country_code;
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        violations.add(
            format!("{field}.country_code"),
            "must be an ISO 3166-1 alpha-2 code such as DE",
        );
    }
}

#[cfg(test)]
mod email_tests {
    use super::*;

    #[test]
    fn only_plain_addresses_are_e_mail_addresses() {
        for good in [
            "ada@example.com",
            "a.b+orders@mail.example.co.uk",
            "x@a-b.io",
        ] {
            let mut violations = Violations::new();
            check_email("customer_email", good, &mut violations);
            assert!(violations.is_empty(), "{good}");
        }
        let long = format!("{}@example.com", "a".repeat(65));
        for bad in [
            "",
            "customer-7",
            "@example.com",
            "ada@",
            "ada@localhost",
            "ada@@example.com",
            "a da@example.com",
            "\"ada\"@example.com",
            "ada@[127.0.0.1]",
            "ada@-x.com",
            "ada@example.com\r\nBcc: all@example.com",
            ".ada@example.com",
            "ädä@example.com",
            long.as_str(),
        ] {
            let mut violations = Violations::new();
            check_email("customer_email", bad, &mut violations);
            assert!(!violations.is_empty(), "{bad:?} accepted");
        }
    }
}
