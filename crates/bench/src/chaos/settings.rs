//! The chaos audit's options: flags over defaults that match `just up`.

use std::{path::PathBuf, time::Duration};

/// The options.
#[derive(Debug, Clone)]
pub struct ChaosSettings {
    /// Orders to place.
    pub count: u64,
    /// Orders per second.
    pub rate: f64,
    /// Services listen on base + 1 ..= base + 6.
    pub base_port: u16,
    /// The gateway's port.
    pub gateway_port: u16,
    /// The broker's port (its process is found by it).
    pub kafka_port: u16,
    /// PostgreSQL server (admin URL).
    pub pg_url: String,
    /// The stack's databases start with this.
    pub db_prefix: String,
    /// The stack's development keys (the operator key places orders): `dev-keys.env` of the
    /// state directory unless told.
    pub keys: PathBuf,
    /// The stack's state directory: its development certificates let the audit call services.
    pub state_dir: PathBuf,
    /// What is killed with SIGKILL, in turn.
    pub kill: Vec<String>,
    /// What is frozen with SIGSTOP after the kills, and for how long.
    pub freeze: Option<(String, Duration)>,
    /// How long to wait for every saga to end.
    pub settle: Duration,
    /// Sagas must end within this of the load's and the faults' end.
    pub terminal_bound: Duration,
    /// A killed service's consumers must hold their partitions again within this.
    pub resume_bound: Duration,
}

const USAGE: &str = "usage: zentra-chaos [--count 300] [--rate 10] [--kill inventory,order,payment,fulfillment,notification,saga,broker] \
[--freeze fulfillment:150s | --no-freeze] [--settle 300s] [--terminal-bound 60s] [--resume-bound 10s] [--base-port 50050] \
[--gateway-port 8080] [--kafka-port 9092] [--pg-url URL] [--db-prefix zentra_] [--state-dir DIR] [--keys FILE]";

const TARGETS: [&str; 7] = [
    "inventory",
    "order",
    "payment",
    "fulfillment",
    "notification",
    "saga",
    "broker",
];

fn seconds(flag: &str, value: &str) -> Result<Duration, String> {
    value
        .trim_end_matches('s')
        .parse::<u64>()
        .ok()
        .filter(|seconds| (1..=3600).contains(seconds))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{flag} {value}: whole seconds from 1 to 3600, like 30s\n{USAGE}"))
}

impl ChaosSettings {
    /// Parses the command line; environment variables of `just up` set the defaults.
    pub fn parse(args: Vec<String>) -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let port = |name: &str, default: u16| {
            var(name)
                .and_then(|value| value.parse().ok())
                .unwrap_or(default)
        };
        let mut settings = Self {
            count: 300,
            rate: 10.0,
            base_port: port("ZENTRA_STACK_BASE_PORT", 50050),
            gateway_port: port("ZENTRA_STACK_GATEWAY_PORT", 8080),
            kafka_port: port("ZENTRA_STACK_KAFKA_PORT", 9092),
            pg_url: var("ZENTRA_STACK_PG_URL")
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".to_owned()),
            db_prefix: var("ZENTRA_STACK_DB_PREFIX").unwrap_or_else(|| "zentra_".to_owned()),
            keys: PathBuf::new(),
            state_dir: crate::settings::default_state_dir(),
            kill: TARGETS.iter().map(|t| (*t).to_owned()).collect(),
            freeze: Some(("fulfillment".to_owned(), Duration::from_secs(150))),
            settle: Duration::from_secs(300),
            terminal_bound: Duration::from_secs(60),
            resume_bound: Duration::from_secs(10),
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                return Err(USAGE.to_owned());
            }
            if flag == "--no-freeze" {
                settings.freeze = None;
                continue;
            }
            let value = args
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let number = |flag: &str| {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{flag} {value}: a positive whole number\n{USAGE}"))
            };
            match flag.as_str() {
                "--count" => settings.count = number("--count")?.min(100_000),
                "--rate" => {
                    settings.rate = value
                        .parse::<f64>()
                        .ok()
                        .filter(|rate| rate.is_finite() && *rate > 0.0 && *rate <= 1000.0)
                        .ok_or_else(|| {
                            format!("--rate {value}: orders per second, 0 < rate <= 1000\n{USAGE}")
                        })?;
                }
                "--kill" => {
                    let targets: Vec<String> = value
                        .split(',')
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if let Some(unknown) = targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
                        return Err(format!(
                            "--kill: {unknown} is not one of {}",
                            TARGETS.join(", ")
                        ));
                    }
                    settings.kill = targets;
                }
                "--freeze" => {
                    let (target, time) = value.split_once(':').ok_or_else(|| {
                        format!("--freeze {value}: SERVICE:SECONDS, like fulfillment:150s")
                    })?;
                    if !TARGETS[..6].contains(&target) {
                        return Err(format!("--freeze: {target} is not a service"));
                    }
                    settings.freeze = Some((target.to_owned(), seconds("--freeze", time)?));
                }
                "--settle" => settings.settle = seconds(&flag, &value)?,
                "--terminal-bound" => settings.terminal_bound = seconds(&flag, &value)?,
                "--resume-bound" => settings.resume_bound = seconds(&flag, &value)?,
                "--base-port" => settings.base_port = port_value(&flag, &value)?,
                "--gateway-port" => settings.gateway_port = port_value(&flag, &value)?,
                "--kafka-port" => settings.kafka_port = port_value(&flag, &value)?,
                "--pg-url" => settings.pg_url = value,
                "--db-prefix" => settings.db_prefix = value,
                "--keys" => settings.keys = PathBuf::from(value),
                "--state-dir" => settings.state_dir = PathBuf::from(value),
                _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
            }
        }
        if settings.keys.as_os_str().is_empty() {
            settings.keys = settings.state_dir.join("dev-keys.env");
        }
        Ok(settings)
    }

    /// A connection to the service at `offset` from the base port (mutual TLS, with the
    /// certificate the stack issued to tools).
    pub async fn channel(&self, offset: u16) -> anyhow::Result<tonic::transport::Channel> {
        crate::settings::service_channel(&self.state_dir, self.base_port + offset).await
    }

    /// The operator's API key: `ZENTRA_OPERATOR_KEY`, else the keys file `just up` wrote.
    pub fn operator_key(&self) -> anyhow::Result<String> {
        if let Ok(key) = std::env::var("ZENTRA_OPERATOR_KEY")
            && !key.is_empty()
        {
            return Ok(key);
        }
        let text = std::fs::read_to_string(&self.keys).map_err(|error| {
            anyhow::anyhow!(
                "cannot read {}: {error} (start the stack with `just up`, or set ZENTRA_OPERATOR_KEY)",
                self.keys.display()
            )
        })?;
        text.lines()
            .filter_map(|line| line.trim().trim_start_matches("export ").split_once('='))
            .find(|(name, _)| *name == "ZENTRA_OPERATOR_KEY")
            .map(|(_, value)| value.trim_matches(['"', '\'']).to_owned())
            .ok_or_else(|| anyhow::anyhow!("{} has no ZENTRA_OPERATOR_KEY", self.keys.display()))
    }
}

fn port_value(flag: &str, value: &str) -> Result<u16, String> {
    value
        .parse::<u16>()
        .ok()
        .filter(|port| *port > 0)
        .ok_or_else(|| format!("{flag} {value}: a port number\n{USAGE}"))
}
