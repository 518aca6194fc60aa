//! One message per event type and customer. Events that concern no customer render nothing.

use zentra_proto::{
    common::v1::Money, events::v1::EventEnvelope, fulfillment::v1 as fulfillment,
    order::v1 as order, payment::v1 as payment,
};
use zentra_runtime::events::payload;

/// What an event tells about an order, before the customer is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The order.
    pub order_id: String,
    /// The customer, when the event names one.
    pub customer_id: Option<String>,
    /// The address the event carries, if any; else the one remembered for the order.
    pub customer_email: Option<String>,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

fn amount(money: Option<&Money>) -> String {
    match money {
        Some(money) => format!(
            "{}.{:02} {}",
            money.amount_minor / 100,
            money.amount_minor % 100,
            money.currency_code
        ),
        None => "an amount".to_owned(),
    }
}

/// The event types customers are told about: those [`render`] renders.
pub const RENDERED: &[&str] = &[
    "zentra.order.v1.OrderPlaced",
    "zentra.order.v1.OrderConfirmed",
    "zentra.order.v1.OrderRejected",
    "zentra.order.v1.OrderCancelled",
    "zentra.payment.v1.PaymentDeclined",
    "zentra.fulfillment.v1.ShipmentDispatched",
];

/// Renders the message for an event; `None` for event types customers are not told about.
pub fn render(envelope: &EventEnvelope) -> Option<Rendered> {
    let short = |id: &str| id.chars().take(8).collect::<String>();
    let rendered = match envelope.event_type.as_str() {
        "zentra.order.v1.OrderPlaced" => {
            let event: order::OrderPlaced = payload(envelope)?;
            Rendered {
                subject: format!("We received your order {}", short(&event.order_id)),
                body: format!(
                    "Thank you for your order {} of {} item line(s), total {}.\nWe will let you know when it is confirmed.",
                    event.order_id,
                    event.lines.len(),
                    amount(event.total.as_ref())
                ),
                customer_id: Some(event.customer_id),
                customer_email: Some(event.customer_email),
                order_id: event.order_id,
            }
        }
        "zentra.order.v1.OrderConfirmed" => {
            let event: order::OrderConfirmed = payload(envelope)?;
            Rendered {
                subject: format!("Your order {} is confirmed", short(&event.order_id)),
                body: format!(
                    "Your order {} is confirmed. Total charged: {}.",
                    event.order_id,
                    amount(event.total.as_ref())
                ),
                customer_id: Some(event.customer_id),
                customer_email: Some(event.customer_email),
                order_id: event.order_id,
            }
        }
        "zentra.order.v1.OrderRejected" => {
            let event: order::OrderRejected = payload(envelope)?;
            Rendered {
                subject: format!(
                    "We could not complete your order {}",
                    short(&event.order_id)
                ),
                body: format!(
                    "Your order {} could not be completed: {}.\nYou have not been charged.",
                    event.order_id, event.reason
                ),
                customer_id: Some(event.customer_id),
                customer_email: Some(event.customer_email),
                order_id: event.order_id,
            }
        }
        "zentra.order.v1.OrderCancelled" => {
            let event: order::OrderCancelled = payload(envelope)?;
            Rendered {
                subject: format!("Your order {} is cancelled", short(&event.order_id)),
                body: format!("Your order {} is cancelled as you asked.", event.order_id),
                customer_id: Some(event.customer_id),
                customer_email: Some(event.customer_email),
                order_id: event.order_id,
            }
        }
        "zentra.payment.v1.PaymentDeclined" => {
            let event: payment::PaymentDeclined = payload(envelope)?;
            Rendered {
                subject: format!("Payment for order {} was declined", short(&event.order_id)),
                body: format!(
                    "The payment of {} for order {} was declined: {}.",
                    amount(event.amount.as_ref()),
                    event.order_id,
                    event.decline_message
                ),
                customer_id: None,
                customer_email: None,
                order_id: event.order_id,
            }
        }
        "zentra.fulfillment.v1.ShipmentDispatched" => {
            let event: fulfillment::ShipmentDispatched = payload(envelope)?;
            Rendered {
                subject: format!("Your order {} is on its way", short(&event.order_id)),
                body: format!(
                    "Your order {} was handed to {}. Tracking number: {}.",
                    event.order_id, event.carrier, event.tracking_number
                ),
                customer_id: None,
                customer_email: None,
                order_id: event.order_id,
            }
        }
        _ => return None,
    };
    Some(rendered)
}

#[cfg(test)]
mod tests {
    use prost::Name as _;
    use zentra_proto::events::v1::EventEnvelope;

    use super::*;

    /// An envelope carrying an empty payload of `event_type`.
    fn empty(event_type: &str) -> EventEnvelope {
        let placed_url = order::OrderPlaced::type_url();
        let prefix = placed_url
            .strip_suffix(&order::OrderPlaced::full_name())
            .expect("a type URL ends with the type's name");
        EventEnvelope {
            event_type: event_type.to_owned(),
            payload: Some(prost_types::Any {
                type_url: format!("{prefix}{event_type}"),
                value: Vec::new(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn exactly_the_listed_event_types_are_rendered() {
        for event_type in zentra_runtime::events::event_types() {
            assert_eq!(
                render(&empty(&event_type)).is_some(),
                RENDERED.contains(&event_type.as_str()),
                "{event_type}"
            );
        }
    }
}
