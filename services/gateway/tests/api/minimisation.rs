//! What a viewer may not see through the gateway: payment tokens and e-mail addresses come
//! masked and dead letters without their headers and payload; an operator sees them whole.

use zentra_proto::{
    order::v1::{self as order, order_service_client::OrderServiceClient},
    saga::v1::{self as saga, dead_letter_service_client::DeadLetterServiceClient},
};

use crate::helpers::{GatewayOptions, Platform, for_service, order_request, with_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_payment_tokens_masked_and_no_dead_letter_payloads() {
    let mut platform = Platform::start("gw-minimise").await;
    let (_, channel) = platform.gateway(&GatewayOptions::default()).await;
    let keys = platform.keys.clone();
    let mut orders = OrderServiceClient::new(channel.clone());
    let mut request = order_request("cust-mask", "mask-1");
    request.payment_method_token = "tok_visa_4242".to_owned();
    let placed = orders
        .place_order(with_key(request, &keys.operator))
        .await
        .expect("placed")
        .into_inner()
        .order
        .expect("order");

    let get = |key: &str| {
        with_key(
            order::GetOrderRequest {
                order_id: placed.order_id.clone(),
            },
            key,
        )
    };
    let seen = orders
        .get_order(get(&keys.viewer))
        .await
        .expect("viewer reads")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(seen.payment_method_token, "••••4242");
    assert_eq!(seen.customer_email, "a•••@example.com");
    let listed = orders
        .list_orders(with_key(order::ListOrdersRequest::default(), &keys.viewer))
        .await
        .expect("viewer lists")
        .into_inner()
        .orders;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].payment_method_token, "••••4242");
    let whole = orders
        .get_order(get(&keys.operator))
        .await
        .expect("operator reads")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(whole.payment_method_token, "tok_visa_4242");
    assert_eq!(whole.customer_email, "ada@example.com");

    let payload = b"{\"customer\":\"ada@example.com\"}";
    let parked = platform.park_dead_letter(payload).await;
    let mut dead_letters = DeadLetterServiceClient::new(channel);
    let listed = dead_letters
        .list_dead_letters(for_service(
            with_key(saga::ListDeadLettersRequest::default(), &keys.viewer),
            "inventory",
        ))
        .await
        .expect("viewer lists dead letters")
        .into_inner()
        .dead_letters;
    assert_eq!(listed.len(), 1);
    let get = |key: &str| {
        for_service(
            with_key(
                saga::GetDeadLetterRequest {
                    dead_letter_id: parked.clone(),
                },
                key,
            ),
            "inventory",
        )
    };
    let shown = dead_letters
        .get_dead_letter(get(&keys.viewer))
        .await
        .expect("viewer inspects")
        .into_inner()
        .dead_letter
        .expect("dead letter");
    for letter in [&listed[0], &shown] {
        assert!(letter.redacted);
        assert!(letter.payload.is_empty() && letter.headers.is_empty());
        // What failed and why stays visible.
        assert_eq!(letter.error, "cannot decode the command");
    }
    let whole = dead_letters
        .get_dead_letter(get(&keys.operator))
        .await
        .expect("operator inspects")
        .into_inner()
        .dead_letter
        .expect("dead letter");
    assert!(!whole.redacted);
    assert_eq!(whole.payload, payload);

    platform.stop().await;
}
