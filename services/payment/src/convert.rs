//! Stored payments to proto messages.

use zentra_proto::{common::v1::Money, payment::v1 as pb};
use zentra_runtime::time::chrono_to_timestamp;

use crate::store::{LedgerEntry, Payment};

/// An amount.
pub fn money(currency: &str, amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: currency.to_owned(),
        amount_minor,
    })
}

/// A stored status as the API enum.
pub fn status(text: &str) -> pb::PaymentStatus {
    match text {
        "AUTHORIZED" => pb::PaymentStatus::Authorized,
        "DECLINED" => pb::PaymentStatus::Declined,
        "CAPTURED" => pb::PaymentStatus::Captured,
        "PARTIALLY_REFUNDED" => pb::PaymentStatus::PartiallyRefunded,
        "REFUNDED" => pb::PaymentStatus::Refunded,
        "VOIDED" => pb::PaymentStatus::Voided,
        _ => pb::PaymentStatus::Unspecified,
    }
}

/// The stored text of an API status; `None` for UNSPECIFIED or statuses never stored.
pub fn status_text(status: pb::PaymentStatus) -> Option<&'static str> {
    Some(match status {
        pb::PaymentStatus::Authorized => "AUTHORIZED",
        pb::PaymentStatus::Declined => "DECLINED",
        pb::PaymentStatus::Captured => "CAPTURED",
        pb::PaymentStatus::PartiallyRefunded => "PARTIALLY_REFUNDED",
        pb::PaymentStatus::Refunded => "REFUNDED",
        pb::PaymentStatus::Voided => "VOIDED",
        _ => return None,
    })
}

/// A stored decline reason as the API enum.
pub fn decline_reason(text: &str) -> pb::DeclineReason {
    match text {
        "CARD_DECLINED" => pb::DeclineReason::CardDeclined,
        "INSUFFICIENT_FUNDS" => pb::DeclineReason::InsufficientFunds,
        _ => pb::DeclineReason::Unspecified,
    }
}

/// A payment as the API shows it.
pub fn payment(payment: &Payment) -> pb::Payment {
    pb::Payment {
        payment_id: payment.id.to_string(),
        order_id: payment.order_id.to_string(),
        status: status(&payment.status) as i32,
        amount: money(&payment.currency, payment.amount_minor),
        captured_amount: money(&payment.currency, payment.captured_minor),
        refunded_amount: money(&payment.currency, payment.refunded_minor),
        decline_reason: decline_reason(&payment.decline_reason) as i32,
        decline_message: payment.decline_message.clone(),
        processor_reference: payment.processor_reference.clone(),
        authorization_expire_time: payment.authorization_expires_at.map(chrono_to_timestamp),
        authorize_time: (payment.status != "DECLINED")
            .then(|| chrono_to_timestamp(payment.created_at)),
        capture_time: payment.captured_at.map(chrono_to_timestamp),
        void_time: payment.voided_at.map(chrono_to_timestamp),
        last_refund_time: payment.last_refund_at.map(chrono_to_timestamp),
        create_time: Some(chrono_to_timestamp(payment.created_at)),
        update_time: Some(chrono_to_timestamp(payment.updated_at)),
    }
}

/// A ledger entry as the API shows it.
pub fn ledger_entry(entry: &LedgerEntry) -> pb::LedgerEntry {
    let entry_type = match entry.entry_type.as_str() {
        "AUTHORIZATION" => pb::LedgerEntryType::Authorization,
        "CAPTURE" => pb::LedgerEntryType::Capture,
        "RELEASE" => pb::LedgerEntryType::Release,
        "REFUND" => pb::LedgerEntryType::Refund,
        _ => pb::LedgerEntryType::Unspecified,
    };
    pb::LedgerEntry {
        entry_id: entry.id.to_string(),
        payment_id: entry.payment_id.to_string(),
        order_id: entry.order_id.to_string(),
        entry_type: entry_type as i32,
        amount: money(&entry.currency, entry.amount_minor),
        reason: entry.reason.clone(),
        processor_reference: entry.processor_reference.clone(),
        idempotency_key: entry.idempotency_key.clone(),
        create_time: Some(chrono_to_timestamp(entry.created_at)),
    }
}
