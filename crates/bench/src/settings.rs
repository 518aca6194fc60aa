//! The benchmark's options: flags over defaults that match `just up`.

use std::{path::PathBuf, time::Duration};

/// How orders are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Open loop: this many orders per second whatever the answers; latency counts from each
    /// order's intended send time, so a slow platform cannot hide behind a slowed sender.
    Rate(f64),
    /// Closed loop: this many orders in flight, each followed by the next when its saga ends.
    Concurrency(usize),
}

/// The options.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Services listen on base + 1 (inventory) ..= base + 6 (saga), as `just up` starts them.
    pub base_port: u16,
    /// How orders are sent.
    pub mode: Mode,
    /// Orders to send at most.
    pub count: u64,
    /// Time to send for at most.
    pub duration: Duration,
    /// How long to wait for outstanding sagas after sending.
    pub drain: Duration,
    /// Share of orders whose payment is declined (they compensate), 0..=100.
    pub declined_percent: u32,
    /// Find the peak sustainable rate instead of one run.
    pub sweep: bool,
    /// A rate is sustainable while its p99 stays under this.
    pub p99_bound: Duration,
    /// Seconds per sweep step.
    pub step: Duration,
    /// PostgreSQL server (admin URL).
    pub pg_url: String,
    /// The stack's databases start with this.
    pub db_prefix: String,
    /// Run pgbench for the commit bound.
    pub pgbench: bool,
    /// How long pgbench runs.
    pub pgbench_duration: Duration,
    /// Where the JSON report goes.
    pub json: PathBuf,
    /// How long the idle stack is watched before the load; `None` skips it.
    pub idle: Option<Duration>,
    /// The stack's state directory: its development certificates let the benchmark in.
    pub state_dir: PathBuf,
}

/// `just up`'s state directory unless told: `$ZENTRA_CACHE/stack`, else `~/.cache/zentra/stack`.
pub fn default_state_dir() -> PathBuf {
    let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    var("ZENTRA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(var("HOME").unwrap_or_else(|| ".".to_owned())).join(".cache/zentra")
        })
        .join("stack")
}

/// A connection to the service on `port` of the stack keeping its state in `state_dir`: mutual
/// TLS with the certificate the stack issued to tools.
pub async fn service_channel(
    state_dir: &std::path::Path,
    port: u16,
) -> anyhow::Result<tonic::transport::Channel> {
    let layout = zentra_runtime::pki::Layout::of_stack(state_dir);
    let tls = layout.client_tls(zentra_runtime::pki::TOOLS_CERT);
    let url = format!("https://localhost:{port}");
    zentra_runtime::client::endpoint(&url, Some(&tls))
        .map_err(|error| {
            anyhow::anyhow!(
                "{error:#} (the certificates of `just up --state-dir {}`; pass --state-dir)",
                state_dir.display()
            )
        })?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|error| anyhow::anyhow!("cannot reach {url}: {error} (is `just up` running?)"))
}

const USAGE: &str = "usage: zentra-bench [--rate N | --concurrency N] [--count N] [--duration 60s] \
[--declined PERCENT] [--sweep [--p99-bound 50ms] [--step 10s]] [--base-port 50050] [--pg-url URL] \
[--db-prefix zentra_] [--state-dir DIR] [--no-pgbench] [--pgbench-duration 10s] [--idle 20s | --no-idle] [--json FILE]";

fn duration(flag: &str, value: &str) -> Result<Duration, String> {
    let parsed = if let Some(ms) = value.strip_suffix("ms") {
        ms.parse::<f64>().map(|ms| ms / 1000.0)
    } else {
        value.trim_end_matches('s').parse::<f64>()
    };
    parsed
        .ok()
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0 && *seconds <= 3600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{flag} {value}: expected a duration such as 10s or 50ms"))
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} {value}: expected a number"))
}

impl Settings {
    /// Parses the command line; the error is one line for the user.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut settings = Settings {
            base_port: 50050,
            mode: Mode::Rate(100.0),
            count: 3000,
            duration: Duration::from_secs(30),
            drain: Duration::from_secs(30),
            declined_percent: 0,
            sweep: false,
            p99_bound: Duration::from_millis(50),
            step: Duration::from_secs(10),
            pg_url: "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
            db_prefix: "zentra_".to_owned(),
            pgbench: true,
            pgbench_duration: Duration::from_secs(10),
            json: PathBuf::from("bench-results.json"),
            idle: Some(Duration::from_secs(20)),
            state_dir: default_state_dir(),
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))
            };
            match flag.as_str() {
                "--rate" => {
                    let rate: f64 = number(&flag, &value()?)?;
                    if !(rate > 0.0 && rate <= 20_000.0) {
                        return Err("--rate must be between 0 and 20000".to_owned());
                    }
                    settings.mode = Mode::Rate(rate);
                }
                "--concurrency" => {
                    let concurrency: usize = number(&flag, &value()?)?;
                    if !(1..=2000).contains(&concurrency) {
                        return Err("--concurrency must be between 1 and 2000".to_owned());
                    }
                    settings.mode = Mode::Concurrency(concurrency);
                }
                "--count" => {
                    settings.count = number(&flag, &value()?)?;
                    if !(1..=1_000_000).contains(&settings.count) {
                        return Err("--count must be between 1 and 1000000".to_owned());
                    }
                }
                "--duration" => settings.duration = duration(&flag, &value()?)?,
                "--drain" => settings.drain = duration(&flag, &value()?)?,
                "--declined" => {
                    settings.declined_percent = number(&flag, &value()?)?;
                    if settings.declined_percent > 100 {
                        return Err("--declined is a percentage, 0..=100".to_owned());
                    }
                }
                "--sweep" => settings.sweep = true,
                "--p99-bound" => settings.p99_bound = duration(&flag, &value()?)?,
                "--step" => settings.step = duration(&flag, &value()?)?,
                "--base-port" => settings.base_port = number(&flag, &value()?)?,
                "--pg-url" => settings.pg_url = value()?,
                "--db-prefix" => settings.db_prefix = value()?,
                "--state-dir" => settings.state_dir = PathBuf::from(value()?),
                "--no-pgbench" => settings.pgbench = false,
                "--pgbench-duration" => settings.pgbench_duration = duration(&flag, &value()?)?,
                "--json" => settings.json = PathBuf::from(value()?),
                "--idle" => settings.idle = Some(duration(&flag, &value()?)?),
                "--no-idle" => settings.idle = None,
                "-h" | "--help" => return Err(USAGE.to_owned()),
                other => return Err(format!("unknown argument {other}; {USAGE}")),
            }
        }
        if settings.base_port > u16::MAX - 6 {
            return Err("--base-port leaves no room for six services".to_owned());
        }
        Ok(settings)
    }

    /// A connection to the service at `offset` from the base port.
    pub async fn channel(&self, offset: u16) -> anyhow::Result<tonic::transport::Channel> {
        service_channel(&self.state_dir, self.base_port + offset).await
    }
}

/// The second orchestrator instance of `ZENTRA_STACK_SAGA_INSTANCES=2`, measured when it runs.
pub const SAGA_REPLICA: (&str, u16) = ("saga-2", 7);

/// The services, by port offset.
pub const SERVICES: [(&str, u16); 6] = [
    ("inventory", 1),
    ("order", 2),
    ("payment", 3),
    ("fulfillment", 4),
    ("notification", 5),
    ("saga", 6),
];
