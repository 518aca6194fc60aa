//! What the stack runs and where: flags and `ZENTRA_STACK_*` variables over defaults.

use std::path::PathBuf;

use zentra_runtime::{
    config::ClientTlsConfig,
    pki::{Layout, TOOLS_CERT},
};

/// One process of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The tansu Kafka-protocol broker (in memory).
    Broker,
    /// A local SMTP sink for the notification service.
    Mail,
    /// A Zentra service; its port is the base port plus its offset.
    Service(&'static str, u16),
    /// The gateway, on its own port.
    Gateway,
    /// Prometheus scraping every process, with the platform's alert rules (`--prometheus`).
    Prometheus,
}

/// The domain services in start order, with their port offsets (inventory on base + 1, ...).
pub const SERVICES: [Component; 6] = [
    Component::Service("inventory", 1),
    Component::Service("order", 2),
    Component::Service("payment", 3),
    Component::Service("fulfillment", 4),
    Component::Service("notification", 5),
    Component::Service("saga", 6),
];

/// Every name the stack issues a certificate to: each service process, the gateway and the
/// developer's tools.
pub fn certificate_names() -> Vec<&'static str> {
    SERVICES
        .iter()
        .chain([&SAGA_REPLICA])
        .map(|component| component.name())
        .chain([
            Component::Gateway.name(),
            crate::prometheus::CERT,
            TOOLS_CERT,
        ])
        .collect()
}

/// A second orchestrator instance, sharing the saga's database, on base + 7; run when
/// `ZENTRA_STACK_SAGA_INSTANCES=2`.
pub const SAGA_REPLICA: Component = Component::Service("saga-2", 7);

impl Component {
    /// Its name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Component::Broker => "broker",
            Component::Mail => "mail",
            Component::Service(name, _) => name,
            Component::Gateway => "gateway",
            Component::Prometheus => "prometheus",
        }
    }

    /// The service a process runs: `saga` for both orchestrator instances.
    pub fn service(self) -> &'static str {
        let name = self.name();
        name.split_once('-').map_or(name, |(service, _)| service)
    }
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kafka {
    /// The stack starts tansu on this port.
    Start(u16),
    /// Use a broker that already runs (`host:port`).
    External(String),
}

/// Where a broker the stack starts keeps its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerStorage {
    /// tansu's in-memory object store (`memory://`).
    Memory,
    /// A SQLite file (`sqlite://`; tansu built with its `libsql` feature).
    Sqlite,
}

/// The stack's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Services to run (all by default; `--only` narrows it, the gateway included by name).
    pub only: Option<Vec<String>>,
    /// Where the service binaries are (default: beside this one).
    pub bin_dir: PathBuf,
    /// Where tools are (tansu, prometheus).
    pub tools_dir: PathBuf,
    /// Generated config, development keys and the combined log.
    pub state_dir: PathBuf,
    /// The gateway's port.
    pub gateway_port: u16,
    /// Services listen on base + 1 ..= base + 6.
    pub base_port: u16,
    /// The broker.
    pub kafka: Kafka,
    /// Where the started broker keeps its log (`ZENTRA_STACK_BROKER_STORAGE`): in memory, or in
    /// a SQLite file in the state directory, which tansu reads by offset rather than listing
    /// every batch on each fetch (docs/BENCHMARKS.md, session 21). Either starts empty.
    pub broker_storage: BrokerStorage,
    /// The SMTP sink's port.
    pub smtp_port: u16,
    /// PostgreSQL without a database (`postgres://postgres@127.0.0.1:5432`).
    pub pg_url: String,
    /// Database names are this plus the service name.
    pub db_prefix: String,
    /// Prefix of topics and consumer groups.
    pub topic_prefix: String,
    /// Orchestrator instances: 1, or 2 to run [`SAGA_REPLICA`] beside the first.
    pub saga_instances: u8,
    /// Redis, for the gateway's rate limits and the consumers' wake hints.
    pub redis_url: String,
    /// Consumers that caught up stop fetching until a hint (`ZENTRA_STACK_WAKE_HINTS=0` turns
    /// that off, to measure the difference).
    pub wake_hints: bool,
    /// The mail sink prints every mail it takes into the log (`ZENTRA_STACK_MAIL_LOG=0` makes it
    /// discard them: `just up-bench`, where printing cost more CPU than sending).
    pub mail_log: bool,
    /// Run Prometheus on this port beside the stack (`--prometheus`, `ZENTRA_STACK_PROMETHEUS_PORT`).
    pub prometheus_port: Option<u16>,
    /// How often Prometheus scrapes and evaluates rules.
    pub prometheus_interval: u16,
    /// The control center's built files.
    pub static_dir: Option<PathBuf>,
}

const USAGE: &str = "usage: zentra-stack [--only svc,svc] [--bin-dir DIR] [--state-dir DIR] [--prometheus] \
(ports and URLs: ZENTRA_STACK_GATEWAY_PORT, ZENTRA_STACK_BASE_PORT, ZENTRA_STACK_KAFKA_PORT, \
ZENTRA_STACK_KAFKA=host:port, ZENTRA_STACK_BROKER_STORAGE=memory|sqlite, ZENTRA_STACK_SMTP_PORT, ZENTRA_STACK_PG_URL, ZENTRA_STACK_DB_PREFIX, \
ZENTRA_STACK_TOPIC_PREFIX, ZENTRA_STACK_REDIS_URL, ZENTRA_STACK_STATIC_DIR, ZENTRA_STACK_WAKE_HINTS=0|1, \
ZENTRA_STACK_MAIL_LOG=0|1, ZENTRA_STACK_PROMETHEUS_PORT (9090), ZENTRA_STACK_PROMETHEUS_INTERVAL (15 s); \
ZENTRA_STACK_SAGA_INSTANCES=2 adds a second orchestrator on base + 7)";

impl Settings {
    /// Reads flags and the environment; the error is one line for the user.
    pub fn from_env(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let port = |name: &str, default: u16| -> Result<u16, String> {
            var(name).map_or(Ok(default), |value| {
                value
                    .parse()
                    .map_err(|_| format!("{name}={value} is not a port"))
            })
        };
        let cache = var("ZENTRA_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(var("HOME").unwrap_or_else(|| ".".to_owned())).join(".cache/zentra")
        });
        let here = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("."));
        let mut settings = Settings {
            only: None,
            bin_dir: here,
            tools_dir: cache.join("bin"),
            state_dir: cache.join("stack"),
            gateway_port: port("ZENTRA_STACK_GATEWAY_PORT", 8080)?,
            base_port: port("ZENTRA_STACK_BASE_PORT", 50050)?,
            kafka: match var("ZENTRA_STACK_KAFKA") {
                Some(external) => Kafka::External(external),
                None => Kafka::Start(port("ZENTRA_STACK_KAFKA_PORT", 9092)?),
            },
            broker_storage: match var("ZENTRA_STACK_BROKER_STORAGE").as_deref() {
                None | Some("memory") => BrokerStorage::Memory,
                Some("sqlite") => BrokerStorage::Sqlite,
                Some(other) => {
                    return Err(format!(
                        "ZENTRA_STACK_BROKER_STORAGE={other}: memory or sqlite"
                    ));
                }
            },
            smtp_port: port("ZENTRA_STACK_SMTP_PORT", 2525)?,
            pg_url: var("ZENTRA_STACK_PG_URL")
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".to_owned()),
            db_prefix: var("ZENTRA_STACK_DB_PREFIX").unwrap_or_else(|| "zentra_".to_owned()),
            topic_prefix: var("ZENTRA_STACK_TOPIC_PREFIX").unwrap_or_default(),
            saga_instances: match var("ZENTRA_STACK_SAGA_INSTANCES").as_deref() {
                None | Some("1") => 1,
                Some("2") => 2,
                Some(other) => {
                    return Err(format!("ZENTRA_STACK_SAGA_INSTANCES={other}: 1 or 2"));
                }
            },
            redis_url: var("ZENTRA_STACK_REDIS_URL")
                .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned()),
            static_dir: var("ZENTRA_STACK_STATIC_DIR").map(PathBuf::from),
            wake_hints: match var("ZENTRA_STACK_WAKE_HINTS").as_deref() {
                None | Some("1") => true,
                Some("0") => false,
                Some(other) => return Err(format!("ZENTRA_STACK_WAKE_HINTS={other}: 0 or 1")),
            },
            prometheus_port: None,
            prometheus_interval: match var("ZENTRA_STACK_PROMETHEUS_INTERVAL") {
                None => 15,
                Some(value) => value
                    .trim_end_matches('s')
                    .parse()
                    .ok()
                    // The rules' 5-minute rates need several samples.
                    .filter(|seconds| (1..=60).contains(seconds))
                    .ok_or_else(|| {
                        format!("ZENTRA_STACK_PROMETHEUS_INTERVAL={value}: 1s to 60s")
                    })?,
            },
            mail_log: match var("ZENTRA_STACK_MAIL_LOG").as_deref() {
                None | Some("1") => true,
                Some("0") => false,
                Some(other) => return Err(format!("ZENTRA_STACK_MAIL_LOG={other}: 0 or 1")),
            },
        };
        if settings.base_port > u16::MAX - 7 {
            return Err("ZENTRA_STACK_BASE_PORT leaves no room for the services".to_owned());
        }
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |flag: &str| {
                args.next()
                    .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))
            };
            match arg.as_str() {
                "--only" => {
                    let names: Vec<String> = value("--only")?
                        .split(',')
                        .map(|name| name.trim().to_owned())
                        .filter(|name| !name.is_empty())
                        .collect();
                    for name in &names {
                        let known = name == "gateway"
                            || SERVICES.iter().any(|service| service.name() == name);
                        if !known {
                            return Err(format!("--only: no service named {name}"));
                        }
                    }
                    settings.only = Some(names);
                }
                "--bin-dir" => settings.bin_dir = PathBuf::from(value("--bin-dir")?),
                "--state-dir" => settings.state_dir = PathBuf::from(value("--state-dir")?),
                "--prometheus" => {
                    settings.prometheus_port = Some(port("ZENTRA_STACK_PROMETHEUS_PORT", 9090)?);
                }
                "-h" | "--help" => return Err(USAGE.to_owned()),
                other => return Err(format!("unknown argument {other}; {USAGE}")),
            }
        }
        Ok(settings)
    }

    /// Every process to run, in start order.
    pub fn components(&self) -> Vec<Component> {
        let wanted = |name: &str| {
            self.only
                .as_ref()
                .is_none_or(|only| only.iter().any(|wanted| wanted == name))
        };
        let mut components = Vec::new();
        if matches!(self.kafka, Kafka::Start(_)) {
            components.push(Component::Broker);
        }
        if wanted("notification") {
            components.push(Component::Mail);
        }
        components.extend(
            SERVICES
                .into_iter()
                .filter(|service| wanted(service.name())),
        );
        if self.saga_instances == 2 && wanted("saga") {
            components.push(SAGA_REPLICA);
        }
        if wanted("gateway") {
            components.push(Component::Gateway);
        }
        if self.prometheus_port.is_some() {
            components.push(Component::Prometheus);
        }
        components
    }

    /// The port a component listens on.
    pub fn port(&self, component: Component) -> u16 {
        match component {
            Component::Broker => match self.kafka {
                Kafka::Start(port) => port,
                Kafka::External(_) => 0,
            },
            Component::Mail => self.smtp_port,
            Component::Service(_, offset) => self.base_port + offset,
            Component::Gateway => self.gateway_port,
            Component::Prometheus => self.prometheus_port.unwrap_or(0),
        }
    }

    /// `host:port` of the broker.
    pub fn bootstrap_servers(&self) -> String {
        match &self.kafka {
            Kafka::Start(port) => format!("127.0.0.1:{port}"),
            Kafka::External(servers) => servers.clone(),
        }
    }

    /// The stack's development certificates: a CA, and one certificate per process it signed.
    pub fn pki(&self) -> Layout {
        Layout::of_stack(&self.state_dir)
    }

    /// How the stack's own checks and the developer's tools call service ports (mutual TLS).
    pub fn client_tls(&self) -> ClientTlsConfig {
        self.pki().client_tls(TOOLS_CERT)
    }

    /// URL of a service for its clients: TLS, with the name its certificate carries.
    pub fn url(&self, service: &str) -> String {
        let offset = SERVICES
            .iter()
            .chain([&SAGA_REPLICA])
            .find(|candidate| candidate.name() == service)
            .map_or(0, |service| match service {
                Component::Service(_, offset) => *offset,
                _ => 0,
            });
        format!("https://localhost:{}", self.base_port + offset)
    }

    /// The database names the stack's services use.
    pub fn databases(&self) -> Vec<String> {
        SERVICES
            .iter()
            .map(|service| format!("{}{}", self.db_prefix, service.name()))
            .collect()
    }
}
