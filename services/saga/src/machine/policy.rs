//! How steps are retried and timed out.

use std::time::Duration;

use rand::RngExt as _;
use serde::{Deserialize, Serialize};

/// How steps are retried and timed out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts of a call step that reached the downstream before it fails for good.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles per attempt up to `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay between attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Each delay is scaled by a random factor in `1 ± jitter`, so retries of many sagas spread.
    pub jitter: f64,
    /// A step fails for good once this long has passed since its first attempt (durable: counted
    /// from the stored start time, so a restart does not reset it).
    #[serde(with = "humantime_serde")]
    pub step_timeout: Duration,
    /// How long to wait for ShipmentDispatched or ShipmentFailed after the shipment was created;
    /// then fulfillment is asked, and a shipment still not dispatched is cancelled.
    #[serde(with = "humantime_serde")]
    pub shipment_timeout: Duration,
    /// While waiting for the shipment's report, fulfillment is asked this often, so a report
    /// lost on the way (a broker that lost its log) costs no more than this.
    #[serde(with = "humantime_serde")]
    pub shipment_check_interval: Duration,
    /// A compensation command is sent again when no acknowledgement came within this.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// FAILED acknowledgements of one compensation before the saga parks as COMPENSATION_FAILED.
    pub max_command_failures: u32,
    /// While a downstream's breaker is open: true fails the step at once (forward steps then
    /// compensate), false waits for the breaker within the step's timeout.
    pub fail_fast_when_open: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            jitter: 0.2,
            step_timeout: Duration::from_secs(60),
            shipment_timeout: Duration::from_secs(120),
            shipment_check_interval: Duration::from_secs(15),
            ack_timeout: Duration::from_secs(10),
            max_command_failures: 5,
            fail_fast_when_open: false,
        }
    }
}

impl RetryPolicy {
    /// Delay after the `failures`-th failed attempt (from 1), with jitter.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(20);
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 {
            rand::rng().random_range((1.0 - jitter)..=(1.0 + jitter))
        } else {
            1.0
        };
        base.mul_f64(factor)
    }
}
