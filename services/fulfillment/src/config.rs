//! The fulfillment service's own settings, under `[fulfillment]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration of the fulfillment service.
pub type Config = zentra_runtime::config::ServiceConfig<FulfillmentConfig>;

/// The `[fulfillment]` section.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct FulfillmentConfig {
    /// Fulfillment settings.
    #[serde(default)]
    pub fulfillment: FulfillmentSettings,
}

/// The worker's pace and the simulated failure mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FulfillmentSettings {
    /// Time each step (picking, packing, dispatch) takes.
    #[serde(with = "humantime_serde")]
    pub step_delay: Duration,
    /// How often the worker looks for due shipments at least. It sleeps until the next step it
    /// knows of, and a new shipment wakes it; this covers other replicas' shipments.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Destinations no carrier serves: shipments there fail while picking.
    pub unshippable_countries: Vec<String>,
    /// SKUs with this prefix cannot be shipped: such shipments fail while picking.
    pub unshippable_sku_prefix: String,
}

impl Default for FulfillmentSettings {
    fn default() -> Self {
        Self {
            step_delay: Duration::from_secs(2),
            poll_interval: Duration::from_secs(1),
            unshippable_countries: vec!["AQ".to_owned()],
            unshippable_sku_prefix: "NOSHIP-".to_owned(),
        }
    }
}
