//! The payment service's own settings, under `[payment]` (environment: `ZENTRA_PAYMENT__*`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration of the payment service.
pub type Config = zentra_runtime::config::ServiceConfig<PaymentConfig>;

/// The `[payment]` section.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PaymentConfig {
    /// Payment settings.
    #[serde(default)]
    pub payment: PaymentSettings,
}

/// Authorization validity and the simulated processor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentSettings {
    /// How long an authorization can be captured.
    #[serde(with = "humantime_serde")]
    pub authorization_validity: Duration,
    /// How long the simulated processor takes for `tok_timeout`.
    #[serde(with = "humantime_serde")]
    pub simulated_delay: Duration,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            authorization_validity: Duration::from_secs(7 * 24 * 60 * 60),
            simulated_delay: Duration::from_secs(30),
        }
    }
}
