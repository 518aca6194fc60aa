//! Faults injected by an admin through the gateway really happen on the named service, and clear:
//! added latency, an error rate, an enforced TPS cap, and expiry after a duration.

use std::time::{Duration, Instant};

use tonic::{Code, transport::Channel};
use zentra_proto::{
    inventory::v1::{self as inventory, inventory_service_client::InventoryServiceClient},
    ops::v1::{self as ops, ops_service_client::OpsServiceClient},
};
use zentra_test_support::eventually;

use crate::helpers::{GatewayOptions, Platform, for_service, product_request, with_key};

fn duration(value: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(value).ok()
}

struct Faults {
    ops: OpsServiceClient<Channel>,
    admin: String,
    next_key: u32,
}

impl Faults {
    async fn inject(&mut self, fault: ops::Fault) -> ops::Fault {
        self.next_key += 1;
        self.ops
            .inject_fault(for_service(
                with_key(
                    ops::InjectFaultRequest {
                        fault: Some(fault),
                        idempotency_key: format!("fault-{}", self.next_key),
                        reason: String::new(),
                    },
                    &self.admin,
                ),
                "inventory",
            ))
            .await
            .expect("injected")
            .into_inner()
            .fault
            .expect("fault")
    }

    async fn clear(&mut self) {
        self.next_key += 1;
        self.ops
            .clear_faults(for_service(
                with_key(
                    ops::ClearFaultsRequest {
                        kind: 0,
                        idempotency_key: format!("clear-{}", self.next_key),
                        reason: String::new(),
                    },
                    &self.admin,
                ),
                "inventory",
            ))
            .await
            .expect("cleared");
    }

    async fn list(&mut self) -> Vec<ops::Fault> {
        self.ops
            .list_faults(for_service(
                with_key(ops::ListFaultsRequest {}, &self.admin),
                "inventory",
            ))
            .await
            .expect("listed")
            .into_inner()
            .faults
    }
}

async fn get_product(
    products: &mut InventoryServiceClient<Channel>,
    key: &str,
) -> Result<(), tonic::Status> {
    products
        .get_product(with_key(
            inventory::GetProductRequest {
                sku: "MUG-1".to_owned(),
            },
            key,
        ))
        .await
        .map(drop)
}

/// Three calls, each slow but successful.
async fn every_call_takes_at_least(
    products: &mut InventoryServiceClient<Channel>,
    key: &str,
    delay: Duration,
) {
    for _ in 0..3 {
        let started = Instant::now();
        get_product(products, key).await.expect("slow, not failed");
        assert!(started.elapsed() >= delay);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_take_effect_on_the_named_service_and_clear() {
    let mut platform = Platform::start("gw-faults").await;
    let (_, channel) = platform.gateway(&GatewayOptions::default()).await;
    let viewer = platform.keys.viewer.clone();
    let mut products = InventoryServiceClient::new(channel.clone());
    products
        .create_product(with_key(
            product_request("MUG-1", "create-1"),
            &platform.keys.operator,
        ))
        .await
        .expect("product");
    let mut faults = Faults {
        ops: OpsServiceClient::new(channel),
        admin: platform.keys.admin.clone(),
        next_key: 0,
    };

    // Latency: every call takes at least the injected delay, fixed or drawn from a range.
    faults
        .inject(ops::Fault {
            kind: ops::FaultKind::Latency as i32,
            latency_min: duration(Duration::from_millis(300)),
            ..Default::default()
        })
        .await;
    every_call_takes_at_least(&mut products, &viewer, Duration::from_millis(300)).await;
    faults.clear().await;
    faults
        .inject(ops::Fault {
            kind: ops::FaultKind::Latency as i32,
            latency_min: duration(Duration::from_millis(100)),
            latency_max: duration(Duration::from_millis(200)),
            ..Default::default()
        })
        .await;
    every_call_takes_at_least(&mut products, &viewer, Duration::from_millis(100)).await;
    faults.clear().await;

    // Error rate: the fraction of UNAVAILABLE answers is close to the rate.
    faults
        .inject(ops::Fault {
            kind: ops::FaultKind::ErrorRate as i32,
            error_rate: 0.3,
            ..Default::default()
        })
        .await;
    let calls = 400;
    let mut failed = 0;
    for _ in 0..calls {
        match get_product(&mut products, &viewer).await {
            Ok(()) => {}
            Err(status) if status.code() == Code::Unavailable => failed += 1,
            Err(status) => panic!("unexpected {status:?}"),
        }
    }
    let rate = f64::from(failed) / f64::from(calls);
    // Binomial(400, 0.3): the standard deviation is 0.023; 0.08 is over three of them.
    assert!((rate - 0.3).abs() <= 0.08, "error rate {rate}");
    faults.clear().await;

    // TPS cap: however hard it is called, at most the cap per second gets through.
    faults
        .inject(ops::Fault {
            kind: ops::FaultKind::TpsLimit as i32,
            tps_limit: 10,
            ..Default::default()
        })
        .await;
    let started = Instant::now();
    let until = started + Duration::from_secs(2);
    let callers = (0..4).map(|_| {
        let mut products = products.clone();
        let viewer = viewer.clone();
        tokio::spawn(async move {
            let (mut allowed, mut limited) = (0_u32, 0_u32);
            while Instant::now() < until {
                match get_product(&mut products, &viewer).await {
                    Ok(()) => allowed += 1,
                    Err(status) if status.code() == Code::ResourceExhausted => limited += 1,
                    Err(status) => panic!("unexpected {status:?}"),
                }
            }
            (allowed, limited)
        })
    });
    let (mut allowed, mut limited) = (0, 0);
    for caller in callers {
        let (ok, refused) = caller.await.expect("caller");
        allowed += ok;
        limited += refused;
    }
    let seconds = started.elapsed().as_secs_f64().ceil();
    // A cap of 10 per second over at most `seconds` started seconds.
    assert!(
        f64::from(allowed) <= 10.0 * (seconds + 1.0),
        "{allowed} calls passed a cap of 10/s in {seconds}s"
    );
    assert!(allowed >= 10, "the cap lets calls through: {allowed}");
    assert!(limited > 0);
    faults.clear().await;

    // A fault with a duration clears itself.
    let injected = faults
        .inject(ops::Fault {
            kind: ops::FaultKind::ErrorRate as i32,
            error_rate: 1.0,
            duration: duration(Duration::from_secs(1)),
            ..Default::default()
        })
        .await;
    assert!(injected.expire_time.is_some());
    let failing = get_product(&mut products, &viewer)
        .await
        .expect_err("every call fails while it lasts");
    assert_eq!(failing.code(), Code::Unavailable);
    let cleared = eventually(Duration::from_secs(5), || {
        let mut faults_client = faults.ops.clone();
        let admin = faults.admin.clone();
        async move {
            let listed = faults_client
                .list_faults(for_service(
                    with_key(ops::ListFaultsRequest {}, &admin),
                    "inventory",
                ))
                .await
                .ok()?
                .into_inner()
                .faults;
            listed.is_empty().then_some(())
        }
    })
    .await;
    assert!(
        cleared.is_some(),
        "the fault expired: {:?}",
        faults.list().await
    );
    get_product(&mut products, &viewer)
        .await
        .expect("healthy again");
    platform.stop().await;
}
