//! The saga orchestrator binary.

use zentra_runtime::bin_support;
use zentra_saga::{Config, INFO, SagaOrchestrator};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, sources): (Config, _) = bin_support::load_config();
    let telemetry = bin_support::init_telemetry(INFO.name, &config);
    let service = SagaOrchestrator::start(config, sources, telemetry.telemetry().clone()).await?;
    println!("listening on {}", service.local_addr());
    service.run(bin_support::shutdown_signal()).await
}
