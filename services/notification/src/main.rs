//! The notification service binary.

use zentra_notification::{Config, INFO, NotificationService};
use zentra_runtime::bin_support;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, sources): (Config, _) = bin_support::load_config();
    let telemetry = bin_support::init_telemetry(INFO.name, &config);
    let service =
        NotificationService::start(config, sources, telemetry.telemetry().clone()).await?;
    println!("listening on {}", service.local_addr());
    service.run(bin_support::shutdown_signal()).await
}
