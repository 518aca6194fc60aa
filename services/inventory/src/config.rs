//! Inventory's own settings, under `[inventory]` (environment: `ZENTRA_INVENTORY__*`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration of the inventory service.
pub type Config = zentra_runtime::config::ServiceConfig<InventoryConfig>;

/// The `[inventory]` section.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct InventoryConfig {
    /// Inventory settings.
    #[serde(default)]
    pub inventory: InventorySettings,
}

/// Reservation holds and the expiry sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InventorySettings {
    /// How long a reservation holds stock when the request does not say.
    #[serde(with = "humantime_serde")]
    pub default_hold: Duration,
    /// The longest hold a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_hold: Duration,
    /// How often expired reservations are looked for.
    #[serde(with = "humantime_serde")]
    pub expiry_sweep_interval: Duration,
    /// Whether this process runs the outbox relay (tests drive it by hand).
    pub run_outbox_relay: bool,
}

impl Default for InventorySettings {
    fn default() -> Self {
        Self {
            default_hold: Duration::from_secs(15 * 60),
            max_hold: Duration::from_secs(24 * 60 * 60),
            expiry_sweep_interval: Duration::from_secs(1),
            run_outbox_relay: true,
        }
    }
}
