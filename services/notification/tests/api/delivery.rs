//! Notifications reach a real SMTP server once, retry when it is down, and dead-letter.

use std::time::Duration;

use zentra_proto::{
    common::v1::Money,
    fulfillment::v1 as fulfillment,
    notification::v1::{DeliveryOutcome, NotificationStatus},
    order::v1 as order,
};
use zentra_runtime::events::{EventMeta, envelope};
use zentra_test_support::eventually;

use crate::helpers::{SmtpServer, TestApp};

fn order_event<M: prost::Name>(
    event: &M,
    order_id: &str,
) -> zentra_proto::events::v1::EventEnvelope {
    envelope(
        event,
        EventMeta {
            producer: "order",
            aggregate_type: "order",
            aggregate_id: order_id.to_owned(),
            correlation_id: order_id.to_owned(),
            causation_id: String::new(),
        },
    )
}

/// The customer's notifications once there are `count`, all sent, within `within`.
async fn all_sent(
    app: &TestApp,
    customer: &str,
    count: usize,
    within: Duration,
) -> Option<Vec<zentra_proto::notification::v1::Notification>> {
    eventually(within, || async {
        let notifications = app.notifications(customer).await;
        (notifications.len() == count
            && notifications
                .iter()
                .all(|n| n.status == NotificationStatus::Sent as i32))
        .then_some(notifications)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_order_is_mailed_once_even_when_its_event_arrives_twice() {
    let smtp = SmtpServer::start().await;
    let app = TestApp::spawn("mailonce", smtp.port, 3).await;
    let order_id = uuid::Uuid::now_v7().to_string();
    let total = Some(Money {
        currency_code: "EUR".to_owned(),
        amount_minor: 4250,
    });
    let placed = order_event(
        &order::OrderPlaced {
            order_id: order_id.clone(),
            customer_id: "customer-7".to_owned(),
            customer_email: "customer-7@example.com".to_owned(),
            total: total.clone(),
            ..Default::default()
        },
        &order_id,
    );
    let confirmed = order_event(
        &order::OrderConfirmed {
            order_id: order_id.clone(),
            customer_id: "customer-7".to_owned(),
            total,
            customer_email: "customer-7@example.com".to_owned(),
        },
        &order_id,
    );
    app.publish("order.events", &placed).await;
    app.publish("order.events", &confirmed).await;
    app.publish("order.events", &confirmed).await; // delivered twice

    let sent = all_sent(&app, "customer-7", 2, Duration::from_secs(20))
        .await
        .expect("both notifications sent");
    tokio::time::sleep(Duration::from_millis(700)).await;

    let messages = smtp.messages();
    assert_eq!(messages.len(), 2, "placed and confirmed, each once");
    let confirmations: Vec<&String> = messages
        .iter()
        .filter(|m| m.contains("Total charged"))
        .collect();
    assert_eq!(confirmations.len(), 1);
    assert!(
        confirmations[0].contains("customer-7@example.com"),
        "{}",
        confirmations[0]
    );
    assert!(
        confirmations[0].contains("42.50 EUR"),
        "{}",
        confirmations[0]
    );
    assert!(sent.iter().all(
        |n| n.attempts.len() == 1 && n.attempts[0].outcome == DeliveryOutcome::Delivered as i32
    ));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_that_keeps_failing_is_retried_then_dead_lettered() {
    // Nothing listens on this port: every attempt fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let app = TestApp::spawn("maildead", port, 3).await;
    let order_id = uuid::Uuid::now_v7().to_string();
    let placed = order_event(
        &order::OrderPlaced {
            order_id: order_id.clone(),
            customer_id: "customer-9".to_owned(),
            customer_email: "customer-9@example.com".to_owned(),
            ..Default::default()
        },
        &order_id,
    );
    app.publish("order.events", &placed).await;

    let dead = eventually(Duration::from_secs(20), || async {
        let notifications = app.notifications("customer-9").await;
        notifications
            .into_iter()
            .find(|n| n.status == NotificationStatus::DeadLettered as i32)
    })
    .await
    .expect("dead-lettered");
    assert_eq!(dead.attempts.len(), 3);
    assert!(
        dead.attempts
            .iter()
            .all(|a| a.outcome == DeliveryOutcome::TransientFailure as i32 && !a.error.is_empty())
    );
    let times: Vec<i64> = dead
        .attempts
        .iter()
        .map(|a| {
            a.attempt_time
                .as_ref()
                .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
                .unwrap_or(0)
        })
        .collect();
    assert!(
        times[2] - times[1] >= times[1] - times[0],
        "backoff grows: {times:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_needs_a_filter_and_refuses_malformed_ones() {
    let app = TestApp::spawn("mailinput", 1, 1).await;
    let mut client = app.client.clone();
    let no_filter = client
        .list_notifications(zentra_proto::notification::v1::ListNotificationsRequest::default())
        .await
        .expect_err("filter required");
    assert_eq!(no_filter.code(), tonic::Code::InvalidArgument);
    let bad_order = client
        .list_notifications(zentra_proto::notification::v1::ListNotificationsRequest {
            order_id: "nope".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("malformed order id");
    assert_eq!(bad_order.code(), tonic::Code::InvalidArgument);
    let bad_id = client
        .get_notification(zentra_proto::notification::v1::GetNotificationRequest {
            notification_id: "x".repeat(10_000),
        })
        .await
        .expect_err("malformed id");
    assert_eq!(bad_id.code(), tonic::Code::InvalidArgument);
    assert!(!zentra_test_support::violated_fields(&bad_id).is_empty());
    let absent = client
        .get_notification(zentra_proto::notification::v1::GetNotificationRequest {
            notification_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("absent");
    assert_eq!(absent.code(), tonic::Code::NotFound);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_send_each_orders_mails_in_the_order_they_were_created() {
    let smtp = SmtpServer::start().await;
    let app = TestApp::spawn("mailorder", smtp.port, 3).await;
    let customer = format!("customer-{}", uuid::Uuid::now_v7().simple());
    let orders: Vec<String> = (0..12).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    for order_id in &orders {
        let total = Some(Money {
            currency_code: "EUR".to_owned(),
            amount_minor: 1000,
        });
        let placed = order::OrderPlaced {
            order_id: order_id.clone(),
            customer_id: customer.clone(),
            customer_email: format!("{customer}@example.com"),
            total: total.clone(),
            ..Default::default()
        };
        let confirmed = order::OrderConfirmed {
            order_id: order_id.clone(),
            customer_id: customer.clone(),
            total,
            customer_email: String::new(),
        };
        app.publish("order.events", &order_event(&placed, order_id))
            .await;
        app.publish("order.events", &order_event(&confirmed, order_id))
            .await;
    }

    let sent = all_sent(&app, &customer, 2 * orders.len(), Duration::from_secs(30))
        .await
        .expect("every mail sent");
    for order_id in &orders {
        let sent_at = |event_type: &str| {
            sent.iter()
                .find(|n| &n.order_id == order_id && n.trigger_event_type == event_type)
                .and_then(|n| n.sent_time)
                .map(|time| (time.seconds, time.nanos))
                .expect("sent")
        };
        assert!(
            sent_at("zentra.order.v1.OrderPlaced") <= sent_at("zentra.order.v1.OrderConfirmed"),
            "order {order_id}: \"confirmed\" went out before \"received\""
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipment_is_mailed_to_the_customer_who_placed_its_order_and_an_unknown_order_to_nobody()
{
    let smtp = SmtpServer::start().await;
    let app = TestApp::spawn("mailknown", smtp.port, 3).await;
    let customer = format!("customer-{}", uuid::Uuid::now_v7().simple());
    let order_id = uuid::Uuid::now_v7().to_string();
    let stranger = uuid::Uuid::now_v7().to_string();
    let placed = order::OrderPlaced {
        order_id: order_id.clone(),
        customer_id: customer.clone(),
        customer_email: format!("{customer}@example.com"),
        ..Default::default()
    };
    app.publish("order.events", &order_event(&placed, &order_id))
        .await;
    let shipped = |order_id: &str| {
        envelope(
            &fulfillment::ShipmentDispatched {
                shipment_id: uuid::Uuid::now_v7().to_string(),
                order_id: order_id.to_owned(),
                carrier: "Zentra Post".to_owned(),
                tracking_number: "ZP-1".to_owned(),
            },
            EventMeta {
                producer: "fulfillment",
                aggregate_type: "shipment",
                aggregate_id: order_id.to_owned(),
                correlation_id: order_id.to_owned(),
                causation_id: String::new(),
            },
        )
    };
    // The unknown order's shipment first: the known order's mails prove it was read.
    app.publish("fulfillment.events", &shipped(&stranger)).await;
    app.publish("fulfillment.events", &shipped(&order_id)).await;

    let sent = all_sent(&app, &customer, 2, Duration::from_secs(20))
        .await
        .expect("the received and the shipped mail sent");
    let recipient = format!("{customer}@example.com");
    assert!(sent.iter().all(|n| n.recipient == recipient), "{sent:?}");
    assert!(
        sent.iter()
            .any(|n| n.trigger_event_type == "zentra.fulfillment.v1.ShipmentDispatched")
    );
    let mut all = app
        .client
        .clone()
        .list_notifications(zentra_proto::notification::v1::ListNotificationsRequest {
            order_id: stranger.clone(),
            ..Default::default()
        })
        .await
        .expect("listed")
        .into_inner()
        .notifications;
    all.retain(|n| n.order_id == stranger);
    assert!(all.is_empty(), "a mail for an order nobody placed: {all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_only_to_the_orders_valid_e_mail_address_never_to_a_customer_id() {
    let smtp = SmtpServer::start().await;
    let app = TestApp::spawn("mailonly", smtp.port, 3).await;
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    // An id that looks like an address, with no address given; one with a header injection
    // (published by something other than the order service, which would have refused it); and
    // one whose id looks like someone else's address while its own address is valid.
    let cases = [
        (format!("mallory-{suffix}@attacker.example"), String::new()),
        (
            format!("eve-{suffix}"),
            format!("eve-{suffix}@example.com\r\nBcc: all@attacker.example"),
        ),
        (
            format!("victim-{suffix}@attacker.example"),
            format!("ada-{suffix}@example.com"),
        ),
    ];
    for (customer, email) in &cases {
        let order_id = uuid::Uuid::now_v7().to_string();
        let placed = order::OrderPlaced {
            order_id: order_id.clone(),
            customer_id: customer.clone(),
            customer_email: email.clone(),
            ..Default::default()
        };
        let confirmed = order::OrderConfirmed {
            order_id: order_id.clone(),
            customer_id: customer.clone(),
            total: None,
            customer_email: String::new(),
        };
        app.publish("order.events", &order_event(&placed, &order_id))
            .await;
        app.publish("order.events", &order_event(&confirmed, &order_id))
            .await;
    }
    // The last order's two mails prove the others were read (one partition, in order).
    let (valid_customer, valid_email) = &cases[2];
    let sent = all_sent(&app, valid_customer, 2, Duration::from_secs(20))
        .await
        .expect("the order with an address is mailed");
    assert!(sent.iter().all(|n| &n.recipient == valid_email), "{sent:?}");
    for (customer, _) in &cases[..2] {
        assert!(
            app.notifications(customer).await.is_empty(),
            "{customer} was mailed"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        smtp.messages()
            .iter()
            .all(|message| !message.contains("attacker.example>")
                && !message.contains("To: mallory")),
        "{:?}",
        smtp.messages()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_read_before_its_order_placed_is_still_mailed_to_the_address_it_carries() {
    // After a broker lost its log, republished events may come in another order than they were
    // first written: the outcome carries the address, so its mail does not wait for OrderPlaced.
    let smtp = SmtpServer::start().await;
    let app = TestApp::spawn("mailearly", smtp.port, 3).await;
    let customer = format!("customer-{}", uuid::Uuid::now_v7().simple());
    let email = format!("{customer}@example.com");
    let order_id = uuid::Uuid::now_v7().to_string();
    let confirmed = order::OrderConfirmed {
        order_id: order_id.clone(),
        customer_id: customer.clone(),
        total: None,
        customer_email: email.clone(),
    };
    app.publish("order.events", &order_event(&confirmed, &order_id))
        .await;
    let sent = all_sent(&app, &customer, 1, Duration::from_secs(20))
        .await
        .expect("the confirmation is mailed");
    assert_eq!(sent[0].recipient, email);
}
