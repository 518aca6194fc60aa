//! The order service's own settings, under `[order]` (environment: `ZENTRA_ORDER__*`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration of the order service.
pub type Config = zentra_runtime::config::ServiceConfig<OrderConfig>;

/// The `[order]` section.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct OrderConfig {
    /// Order settings.
    #[serde(default)]
    pub order: OrderSettings,
}

/// Where prices come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrderSettings {
    /// The catalogue every order is priced from: the inventory service's URL.
    pub catalogue_url: String,
    /// Deadline of one price lookup; PlaceOrder answers UNAVAILABLE after it.
    #[serde(with = "humantime_serde")]
    pub catalogue_timeout: Duration,
}

impl Default for OrderSettings {
    fn default() -> Self {
        Self {
            catalogue_url: "http://127.0.0.1:50051".to_owned(),
            catalogue_timeout: Duration::from_secs(2),
        }
    }
}
