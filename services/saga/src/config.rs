//! The saga orchestrator's own settings, under `[saga]` (environment: `ZENTRA_SAGA__*`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use zentra_runtime::circuit_breaker::BreakerSettings;

use crate::machine::RetryPolicy;

/// The whole configuration of the saga orchestrator.
pub type Config = zentra_runtime::config::ServiceConfig<SagaConfig>;

/// The `[saga]` section.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SagaConfig {
    /// Saga settings.
    #[serde(default)]
    pub saga: SagaSettings,
}

/// Where the services the saga calls are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Endpoints {
    /// Inventory service URL.
    pub inventory: String,
    /// Payment service URL.
    pub payment: String,
    /// Fulfillment service URL.
    pub fulfillment: String,
    /// Order service URL.
    pub order: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Self {
            inventory: "http://127.0.0.1:50051".to_owned(),
            order: "http://127.0.0.1:50052".to_owned(),
            payment: "http://127.0.0.1:50053".to_owned(),
            fulfillment: "http://127.0.0.1:50054".to_owned(),
        }
    }
}

/// The engine, its calls and its sweeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SagaSettings {
    /// This instance's name in leases. Empty: a fresh random one per process. A fixed name lets a
    /// restarted instance take its sagas back at once instead of after the lease expires.
    pub instance_id: String,
    /// The services.
    pub endpoints: Endpoints,
    /// Deadline of every downstream call.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// How long inventory holds the reserved stock for the saga.
    #[serde(with = "humantime_serde")]
    pub reservation_hold: Duration,
    /// Retries, step timeouts, the shipment wait and command acknowledgements.
    pub retry: RetryPolicy,
    /// The breaker in front of each downstream service.
    pub circuit_breaker: BreakerSettings,
    /// How long a claimed saga stays with this instance without a transition; a crashed
    /// instance's sagas are taken over after this.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often the engine looks for due sagas when nothing woke it. Its own timers (retries,
    /// waits) wake it on time; this covers sagas another instance left behind.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Sagas driven at once by this instance.
    pub concurrency: usize,
    /// Most transitions stored in one transaction. Transitions of different sagas that are
    /// ready while another batch is written share the next commit; 1 writes each alone.
    pub commit_batch: usize,
    /// How often reconciliation looks for PENDING orders without a saga.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// A PENDING order older than this without a saga gets one started by reconciliation.
    #[serde(with = "humantime_serde")]
    pub reconcile_after: Duration,
    /// The Watch streams.
    pub watch: WatchSettings,
    /// An operator may resume or retry a step only within this of its first call: the
    /// participants remember a step's idempotency key for `retention.idempotency_keys` (which
    /// must be longer), and a call with a forgotten key would act twice. Older steps are
    /// checked by hand and skipped (`ResumeSaga` with `skip_failed_step`).
    #[serde(with = "humantime_serde")]
    pub step_key_horizon: Duration,
}

/// Limits of the Watch streams, which all share one change feed per process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchSettings {
    /// Streams open at once in this process; one more is RESOURCE_EXHAUSTED with RetryInfo.
    pub max_streams: usize,
    /// A stream ends (OK) after this long, or at the caller's deadline if that is sooner; the
    /// client opens a new one.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            max_streams: 2000,
            max_lifetime: Duration::from_secs(30 * 60),
        }
    }
}

impl Default for SagaSettings {
    fn default() -> Self {
        Self {
            instance_id: String::new(),
            endpoints: Endpoints::default(),
            call_timeout: Duration::from_secs(3),
            reservation_hold: Duration::from_secs(30 * 60),
            retry: RetryPolicy::default(),
            circuit_breaker: BreakerSettings::default(),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(2),
            concurrency: 64,
            commit_batch: 64,
            reconcile_interval: Duration::from_secs(30),
            reconcile_after: Duration::from_secs(60),
            watch: WatchSettings::default(),
            step_key_horizon: Duration::from_secs(30 * 24 * 3600),
        }
    }
}
