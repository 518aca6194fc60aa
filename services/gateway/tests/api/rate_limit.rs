//! Rate limits held in Redis: two gateways share one budget; over it is RESOURCE_EXHAUSTED with
//! retry information; an unreachable Redis follows the configured policy instead of hanging.

use std::time::{Duration, Instant};

use tonic::{Code, transport::Channel};
use tonic_types::StatusExt as _;
use zentra_gateway::config::{Limit, UnavailablePolicy};
use zentra_proto::order::v1::{self as order, order_service_client::OrderServiceClient};

use crate::helpers::{GatewayOptions, Platform, with_key};

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
    OrderServiceClient::new(open_channel)
        .list_orders(with_key(
            order::ListOrdersRequest::default(),
            &platform.keys.viewer,
        ))
        .await
        .expect("fails open");
    let (_, metrics) = zentra_test_support::http_get(address, "/metrics").await;
    assert!(
        metrics.lines().any(
            |line| line.starts_with("zentra_gateway_rate_limit_unavailable_total")
                && line.contains("fail_open")
        ),
        "{metrics}"
    );
    platform.stop().await;
}
