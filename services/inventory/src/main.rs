//! The inventory service binary.

use zentra_inventory::{Config, INFO, Inventory};
use zentra_runtime::bin_support;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, sources): (Config, _) = bin_support::load_config();
    let telemetry = bin_support::init_telemetry(INFO.name, &config);
    let inventory = Inventory::start(config, sources, telemetry.telemetry().clone()).await?;
    // Scripts and supervisors read this line to learn the port when it was 0.
    println!("listening on {}", inventory.local_addr());
    inventory.run(bin_support::shutdown_signal()).await
}
