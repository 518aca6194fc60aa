//! What a service's `main` needs: command line, config (invalid config is one line on stderr
//! and exit code 2), `--print-config`, telemetry, and a shutdown signal.

use serde::{Serialize, de::DeserializeOwned};

use crate::{
    config::{self, CommandLine, ConfigSources, ServiceConfig, to_toml},
    telemetry::{self, TelemetryGuard},
};

/// Exit code for bad configuration or arguments.
pub const EXIT_CONFIG: i32 = 2;

/// Loads the service's config from the command line and environment; prints it and exits when
/// `--print-config` is given; exits with one clear line when it is invalid.
pub fn load_config<D>() -> (ServiceConfig<D>, ConfigSources)
where
    D: Serialize + DeserializeOwned + Default,
{
    let loaded = CommandLine::parse(std::env::args().skip(1)).and_then(|command_line| {
        let (config, sources) = config::load::<D>(command_line.config_file)?;
        Ok((config, sources, command_line.print_config))
    });
    match loaded {
        Ok((config, _, true)) => {
            print!("{}", to_toml(&config));
            std::process::exit(0);
        }
        Ok((config, sources, false)) => (config, sources),
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(EXIT_CONFIG);
        }
    }
}

/// Initialises telemetry or exits with one line.
pub fn init_telemetry<D>(service: &str, config: &ServiceConfig<D>) -> TelemetryGuard {
    match telemetry::init(service, &config.common.telemetry) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("invalid config: telemetry: {error}");
            std::process::exit(EXIT_CONFIG);
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
