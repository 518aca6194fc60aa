//! The gateway binary.

use zentra_gateway::{Config, Gateway, SERVICE};
use zentra_runtime::bin_support;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, sources): (Config, _) = bin_support::load_config();
    let telemetry = bin_support::init_telemetry(SERVICE, &config);
    let gateway = match Gateway::start(config, sources, telemetry.telemetry().clone()).await {
        Ok(gateway) => gateway,
        Err(error) if error.to_string().starts_with("invalid config") => {
            eprintln!("{error}");
            std::process::exit(bin_support::EXIT_CONFIG);
        }
        Err(error) => return Err(error),
    };
    // Scripts and supervisors read this line to learn the port when it was 0.
    println!("listening on {}", gateway.local_addr());
    gateway.run(bin_support::shutdown_signal()).await
}
