//! Stored orders to proto messages.

use zentra_proto::{common::v1::Money, order::v1 as pb};
use zentra_runtime::time::chrono_to_timestamp;

use crate::{
    domain::OrderState,
    store::{HistoryRow, Order},
};

fn money(currency: &str, amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: currency.to_owned(),
        amount_minor,
    })
}

/// Lines as the API shows them.
pub fn lines(order: &Order) -> Vec<pb::OrderLine> {
    order
        .lines
        .iter()
        .map(|(sku, quantity, unit_price, total)| pb::OrderLine {
            sku: sku.clone(),
            quantity: *quantity,
            unit_price: money(&order.currency, *unit_price),
            line_total: money(&order.currency, *total),
        })
        .collect()
}

/// The order total.
pub fn total(order: &Order) -> Option<Money> {
    money(&order.currency, order.total_minor)
}

/// An order as the API shows it.
pub fn order(order: &Order) -> pb::Order {
    pb::Order {
        order_id: order.id.to_string(),
        customer_id: order.customer_id.clone(),
        status: order.state.to_proto() as i32,
        lines: lines(order),
        total: total(order),
        shipping_address: Some(order.shipping_address.clone()),
        payment_method_token: order.payment_method_token.clone(),
        version: order.version,
        create_time: Some(chrono_to_timestamp(order.created_at)),
        update_time: Some(chrono_to_timestamp(order.updated_at)),
        rejection_reason: order.rejection_reason.clone(),
        cancellation_reason: order.cancellation_reason.clone(),
        customer_email: order.customer_email.clone(),
    }
}

/// An order as a caller of `viewer` role or above sees it: a viewer gets the payment token and
/// the e-mail address masked.
pub fn order_for(stored: &Order, viewer: bool) -> pb::Order {
    let mut shown = order(stored);
    if viewer {
        shown.payment_method_token = zentra_runtime::redact::mask(&shown.payment_method_token);
        shown.customer_email = zentra_runtime::redact::mask_email(&shown.customer_email);
    }
    shown
}

/// A history entry as the API shows it.
pub fn change(row: &HistoryRow) -> pb::OrderStatusChange {
    let status = |text: &str| {
        OrderState::parse(text).map_or(pb::OrderStatus::Unspecified, OrderState::to_proto) as i32
    };
    let cause = match row.cause.as_str() {
        "PLACED" => pb::OrderChangeCause::Placed,
        "SAGA_CONFIRMED" => pb::OrderChangeCause::SagaConfirmed,
        "SAGA_REJECTED" => pb::OrderChangeCause::SagaRejected,
        "CUSTOMER_CANCELLATION" => pb::OrderChangeCause::CustomerCancellation,
        "SAGA_CANCELLATION_COMPLETED" => pb::OrderChangeCause::SagaCancellationCompleted,
        _ => pb::OrderChangeCause::Unspecified,
    };
    pb::OrderStatusChange {
        from_status: status(&row.from_status),
        to_status: status(&row.to_status),
        change_time: Some(chrono_to_timestamp(row.changed_at)),
        cause: cause as i32,
        reason: row.reason.clone(),
        actor: String::new(),
        idempotency_key: row.idempotency_key.clone(),
        version: row.version,
    }
}
