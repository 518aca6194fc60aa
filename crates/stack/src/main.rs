//! `zentra-stack`: the whole platform on one machine (`just up`).

use zentra_runtime::bin_support;
use zentra_stack::settings::Settings;

#[tokio::main]
async fn main() {
    let settings = match Settings::from_env(std::env::args().skip(1)) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(bin_support::EXIT_CONFIG);
        }
    };
    if let Err(error) = zentra_stack::run(settings, bin_support::shutdown_signal()).await {
        eprintln!("zentra-stack: {error:#}");
        std::process::exit(1);
    }
}
