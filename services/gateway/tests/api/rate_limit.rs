//! Rate limits held in Redis: two gateways share one budget; over it is RESOURCE_EXHAUSTED with
//! retry information; wrong credentials spend their address's budget; a caller's budget spans
//! every route; an unreachable Redis follows the configured policy instead of hanging, failing
//! closed for actions by default.

use std::time::{Duration, Instant};

use tonic::{Code, transport::Channel};
use tonic_types::StatusExt as _;
use zentra_gateway::config::{Limit, UnavailablePolicy};
use zentra_proto::{
    inventory::v1::{self as inventory, inventory_service_client::InventoryServiceClient},
    order::v1::{self as order, order_service_client::OrderServiceClient},
};

use crate::helpers::{GatewayOptions, Platform, order_request, with_key};

/// The status is RESOURCE_EXHAUSTED with a retry delay, and says which budget is spent.
fn assert_limited(status: &tonic::Status, whose: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(whose), "{status:?}");
    let retry = status.get_error_details().retry_info().cloned();
    assert!(retry.is_some_and(|info| info.retry_delay.is_some()));
}

/// Calls ListOrders as fast as one connection allows until `until`; (allowed, limited).
async fn hammer(channel: Channel, key: String, until: Instant) -> (u32, u32) {
    let mut orders = OrderServiceClient::new(channel);
    let (mut allowed, mut limited) = (0, 0);
    while Instant::now() < until {
        match orders
            .list_orders(with_key(order::ListOrdersRequest::default(), &key))
            .await
        {
            Ok(_) => allowed += 1,
            Err(status) if status.code() == Code::ResourceExhausted => {
                let retry = status.get_error_details().retry_info().cloned();
                assert!(
                    retry.is_some_and(|info| info.retry_delay.is_some()),
                    "RetryInfo is attached: {status:?}"
                );
                assert!(status.metadata().get("retry-after-ms").is_some());
                limited += 1;
            }
            Err(status) => panic!("unexpected {status:?}"),
        }
    }
    (allowed, limited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_with_one_redis_share_one_budget() {
    let mut platform = Platform::start("gw-rate").await;
    let per_second = 20.0;
    let burst = 5;
    let options = GatewayOptions {
        limit: Limit { per_second, burst },
        ..GatewayOptions::default()
    };
    let (_, first) = platform.gateway(&options).await;
    let spare = first.clone();
    let (_, second) = platform.gateway(&options).await;

    let window = Duration::from_secs(3);
    let started = Instant::now();
    let until = started + window;
    let key = platform.keys.viewer.clone();
    let callers = [first.clone(), first, second.clone(), second]
        .into_iter()
        .map(|channel| tokio::spawn(hammer(channel, key.clone(), until)));
    let mut allowed = 0;
    let mut limited = 0;
    for caller in callers {
        let (ok, refused) = caller.await.expect("caller");
        allowed += ok;
        limited += refused;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // GCRA admits the burst at once, then one call per interval.
    let expected = f64::from(burst) + per_second * elapsed;
    let tolerance = 0.15 * expected + 2.0;
    assert!(
        (f64::from(allowed) - expected).abs() <= tolerance,
        "allowed {allowed}, expected {expected:.1} ± {tolerance:.1} over {elapsed:.2}s (limited {limited})"
    );
    assert!(limited > allowed, "the callers went well over the limit");

    // Another caller has its own budget.
    let mut orders = OrderServiceClient::new(spare);
    orders
        .list_orders(with_key(
            order::ListOrdersRequest::default(),
            &platform.keys.operator,
        ))
        .await
        .expect("a different caller is not limited by the first");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_fails_open_or_closed_as_configured() {
    let mut platform = Platform::start("gw-redis-down").await;
    // Nothing listens on port 1.
    let closed = GatewayOptions {
        redis_url: "redis://127.0.0.1:1".to_owned(),
        when_unavailable: UnavailablePolicy::FailClosed,
        ..GatewayOptions::default()
    };
    let (_, closed_channel) = platform.gateway(&closed).await;
    let refused = OrderServiceClient::new(closed_channel)
        .list_orders(with_key(
            order::ListOrdersRequest::default(),
            &platform.keys.viewer,
        ))
        .await
        .expect_err("fails closed");
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(refused.message().contains("rate limiter"), "{refused:?}");

    let open = GatewayOptions {
        when_unavailable: UnavailablePolicy::FailOpen,
        ..closed
    };
    let (address, open_channel) = platform.gateway(&open).await;
    let mut orders = OrderServiceClient::new(open_channel);
    orders
        .list_orders(with_key(
            order::ListOrdersRequest::default(),
            &platform.keys.viewer,
        ))
        .await
        .expect("reads fail open");
    // Actions fail closed unless configured otherwise: nobody places orders unlimited.
    let refused = orders
        .place_order(with_key(
            order_request("cust-redis-down", "redis-down-1"),
            &platform.keys.operator,
        ))
        .await
        .expect_err("actions fail closed");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let stored =
        zentra_test_support::count(platform.order_db(), "SELECT count(*) FROM orders").await;
    assert_eq!(stored, 0);
    let (_, metrics) = zentra_test_support::http_get_with(
        address,
        "/metrics",
        &[("x-api-key", &platform.keys.viewer)],
    )
    .await;
    assert!(
        metrics.lines().any(
            |line| line.starts_with("zentra_gateway_rate_limit_unavailable_total")
                && line.contains("fail_open")
        ),
        "{metrics}"
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_spend_their_address_budget_and_then_even_a_good_key_waits() {
    let mut platform = Platform::start("gw-rate-addr").await;
    let options = GatewayOptions {
        per_address: Limit {
            per_second: 0.5,
            burst: 5,
        },
        ..GatewayOptions::default()
    };
    let (_, channel) = platform.gateway(&options).await;
    let mut orders = OrderServiceClient::new(channel);
    let mut answers = Vec::new();
    for guess in 0..8 {
        let status = orders
            .list_orders(with_key(
                order::ListOrdersRequest::default(),
                &format!("zk_guess_{guess}"),
            ))
            .await
            .expect_err("a guessed key is refused");
        answers.push(status);
    }
    let codes: Vec<Code> = answers.iter().map(tonic::Status::code).collect();
    assert_eq!(codes[..5], [Code::Unauthenticated; 5], "{answers:?}");
    for status in &answers[5..] {
        assert_limited(status, "for this client address");
    }
    // The address is out of budget for everyone behind it until it refills.
    let waiting = orders
        .list_orders(with_key(
            order::ListOrdersRequest::default(),
            &platform.keys.viewer,
        ))
        .await
        .expect_err("the address must wait");
    assert_limited(&waiting, "for this client address");
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_budget_spans_every_route() {
    let mut platform = Platform::start("gw-rate-caller").await;
    let options = GatewayOptions {
        per_caller: Limit {
            per_second: 0.5,
            burst: 4,
        },
        ..GatewayOptions::default()
    };
    let (_, channel) = platform.gateway(&options).await;
    let key = platform.keys.viewer.clone();
    let mut orders = OrderServiceClient::new(channel.clone());
    let mut products = InventoryServiceClient::new(channel);
    // Two routes, each far below its own limit: together they spend one budget.
    for _ in 0..2 {
        orders
            .list_orders(with_key(order::ListOrdersRequest::default(), &key))
            .await
            .expect("within the budget");
        products
            .list_products(with_key(inventory::ListProductsRequest::default(), &key))
            .await
            .expect("within the budget");
    }
    let over = products
        .list_products(with_key(inventory::ListProductsRequest::default(), &key))
        .await
        .expect_err("the fifth call of the caller is over");
    assert_limited(&over, "for this caller across every route");
    // Another caller has its own budget.
    orders
        .list_orders(with_key(
            order::ListOrdersRequest::default(),
            &platform.keys.operator,
        ))
        .await
        .expect("another caller");
    platform.stop().await;
}
