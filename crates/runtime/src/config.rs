//! Layered configuration: defaults, then an optional TOML file, then `ZENTRA_`-prefixed environment
//! variables (`ZENTRA_DATABASE__URL` sets `database.url`). Secrets never appear when config is shown.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};

/// Placeholder shown instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// Settings every service shares; a service's own settings sit beside them (see [`ServiceConfig`]).
// No deny_unknown_fields here: it is flattened beside the service's section. Nested sections deny them.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct CommonConfig {
    /// The gRPC / grpc-web listener.
    pub grpc: GrpcConfig,
    /// PostgreSQL.
    pub database: DatabaseConfig,
    /// Kafka.
    pub kafka: KafkaConfig,
    /// The transactional outbox relay.
    pub outbox: OutboxConfig,
    /// How long published outbox rows, inbox entries and idempotency keys are kept.
    pub retention: RetentionConfig,
    /// TLS of this process's calls to other services; plaintext when unset.
    pub client_tls: Option<ClientTlsConfig>,
    /// The key the gateway signs its callers' identity and role with (`x-zentra-assertion`),
    /// shared with every service. When set, a service takes operator and admin actions only
    /// from a caller the gateway vouched for in the role they need; a peer cannot forge one.
    pub caller_assertion_key: Option<Secret>,
    /// Logs, traces and metrics.
    pub telemetry: TelemetryConfig,
}

/// How long the runtime's bookkeeping rows are kept before a background task deletes them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Off: nothing is ever deleted.
    pub enabled: bool,
    /// How often the task looks for rows past their horizon.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Rows deleted per statement, so a backlog never takes one long lock.
    pub batch_size: u32,
    /// Published outbox rows, counted from publication: at least the outbox's republish window,
    /// or an event could not be published again after a broker lost its log.
    #[serde(with = "humantime_serde")]
    pub outbox: Duration,
    /// Inbox entries, counted from processing: at least the republish window, so an event
    /// published again is still recognised.
    #[serde(with = "humantime_serde")]
    pub inbox: Duration,
    /// Idempotency keys, counted from first use: a retry with the same key within this replays
    /// the first answer; after it, the key is new again. The saga refuses to resume or retry a
    /// step it first called longer ago than its own `saga.step_key_horizon`, which must stay
    /// below this.
    #[serde(with = "humantime_serde")]
    pub idempotency_keys: Duration,
    /// Audit records, counted from the request: who did what is kept long (400 days by
    /// default, a year and a quarter to look back on), then pruned like the rest.
    #[serde(with = "humantime_serde")]
    pub audit_records: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(10 * 60),
            batch_size: 5000,
            outbox: Duration::from_secs(7 * 24 * 3600),
            inbox: Duration::from_secs(7 * 24 * 3600),
            idempotency_keys: Duration::from_secs(35 * 24 * 3600),
            audit_records: Duration::from_secs(400 * 24 * 3600),
        }
    }
}

impl RetentionConfig {
    /// Horizons that would undo a guarantee are refused.
    pub fn check(&self, outbox: &OutboxConfig) -> Result<(), String> {
        if self.outbox < outbox.republish_window || self.inbox < outbox.republish_window {
            return Err(format!(
                "retention.outbox and retention.inbox must be at least outbox.republish_window ({})",
                humantime_serde::re::humantime::format_duration(outbox.republish_window)
            ));
        }
        if self.idempotency_keys < Duration::from_secs(24 * 3600) {
            return Err(
                "retention.idempotency_keys must be at least 24h: clients retry for \
                        longer than that"
                    .to_owned(),
            );
        }
        if self.audit_records < Duration::from_secs(30 * 24 * 3600) {
            return Err(
                "retention.audit_records must be at least 30d: an audit trail must outlive the \
                 incidents it explains"
                    .to_owned(),
            );
        }
        if self.batch_size == 0 || self.interval.is_zero() {
            return Err(
                "retention.batch_size and retention.interval must be above zero".to_owned(),
            );
        }
        Ok(())
    }
}

/// A service's whole configuration: the shared part plus the service's own section.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ServiceConfig<D> {
    /// Shared settings.
    #[serde(flatten)]
    pub common: CommonConfig,
    /// The service's own settings, under the service's name (for example `[inventory]`).
    #[serde(flatten)]
    pub domain: D,
}

/// The domain settings of a service that has none of its own.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default)]
pub struct NoSettings {}

/// The gRPC listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address to bind; port 0 picks a free port, which the service reports once bound.
    pub listen_addr: SocketAddr,
    /// Upper bound on any request's handling time.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Origins whose pages may call over grpc-web (CORS); `["*"]` allows any. Empty by default:
    /// browsers reach the platform through the gateway, which serves the control center from
    /// its own origin, so nothing needs cross-origin calls unless a deployment says so.
    pub cors_allowed_origins: Vec<String>,
    /// Largest accepted request message.
    pub max_request_bytes: usize,
    /// Calls and streams open at once on one HTTP/2 connection (`SETTINGS_MAX_CONCURRENT_STREAMS`);
    /// a client needing more opens another connection.
    pub max_concurrent_streams: u32,
    /// Serve TLS (rustls, HTTP/2 by ALPN) with this certificate; plaintext when unset.
    pub tls: Option<TlsConfig>,
}

/// A server's TLS identity, as PEM files, and whom it lets in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert_path: std::path::PathBuf,
    /// Its private key.
    pub key_path: std::path::PathBuf,
    /// Mutual TLS: only clients with a certificate this CA signed get a connection at all, on
    /// every RPC (health, reflection and ops included). Unset: any client may connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_path: Option<std::path::PathBuf>,
}

/// How this process proves itself to the platform's other services, and whom it trusts, for
/// `https://` peers (PEM files).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// The CA whose signature a peer's certificate must carry.
    pub ca_path: std::path::PathBuf,
    /// This process's certificate, presented to peers that ask (mutual TLS).
    pub cert_path: std::path::PathBuf,
    /// Its private key.
    pub key_path: std::path::PathBuf,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            request_timeout: Duration::from_secs(30),
            cors_allowed_origins: Vec::new(),
            max_request_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 256,
            tls: None,
        }
    }
}

/// PostgreSQL connection pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connection URL; its password is redacted when shown.
    pub url: SecretUrl,
    /// Pool size upper bound.
    pub max_connections: u32,
    /// Connections kept open while idle.
    pub min_connections: u32,
    /// How long to wait for a connection from the pool.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Mutating RPCs that arrive together share one transaction, at most this many: one commit
    /// instead of many under load. 1 gives every call a transaction of its own.
    pub max_batch: usize,
}

/// The most pieces of work one shared transaction may carry: each after the first holds a
/// savepoint until the commit, and PostgreSQL keeps the subtransactions of a transaction in a
/// cache of 64 per connection, beyond which every snapshot in the server grows slower.
pub const MAX_BATCH_LIMIT: usize = 64;

impl DatabaseConfig {
    /// Values that parse but cannot work well.
    pub fn check(&self) -> Result<(), String> {
        if self.max_batch == 0 || self.max_batch > MAX_BATCH_LIMIT {
            return Err(format!(
                "database.max_batch must be between 1 and {MAX_BATCH_LIMIT}"
            ));
        }
        Ok(())
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: SecretUrl("postgres://postgres@127.0.0.1:5432/zentra".to_owned()),
            max_connections: 16,
            min_connections: 1,
            acquire_timeout: Duration::from_secs(5),
            max_batch: 64,
        }
    }
}

/// Kafka producer and consumers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Prepended to every topic name, so several stacks (or tests) can share one broker.
    pub topic_prefix: String,
    /// Prepended to every consumer group id.
    pub group_prefix: String,
    /// Producer delivery timeout.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Partitions of topics the service creates.
    pub partitions: i32,
    /// How long the broker may hold a consumer's fetch while it has no new records. librdkafka's
    /// default (500 ms) adds up to half a second to every event hop of a saga.
    #[serde(with = "humantime_serde")]
    pub fetch_wait: Duration,
    /// This process's identity in the partition leases of its consumers. Give a process the
    /// same id across restarts and it takes its partitions back at once; empty: a fresh id per
    /// start (its old leases then move after `partition_lease`).
    pub member_id: String,
    /// How long a partition lease lasts without renewal: a killed member's partitions move to
    /// the others after at most this long. Renewed every third of it.
    #[serde(with = "humantime_serde")]
    pub partition_lease: Duration,
    /// A consumer whose owned partitions have unprocessed records and whose offsets do not move
    /// for this long reports itself NOT_SERVING.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
    /// Redis for hints that a topic has new records (`redis://127.0.0.1:6379`). With it, a
    /// consumer that has caught up stops fetching until a producer announces its topic, or
    /// `idle_fetch` passes; an idle platform then costs the broker almost nothing. Empty: every
    /// consumer fetches continuously, one fetch per `fetch_wait`.
    pub wake_url: SecretUrl,
    /// With hints: how long a consumer goes without records before it stops fetching.
    #[serde(with = "humantime_serde")]
    pub idle_after: Duration,
    /// With hints: how often a consumer that stopped fetching looks anyway. A lost hint delays
    /// a record by at most this long; nothing is lost.
    #[serde(with = "humantime_serde")]
    pub idle_fetch: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            topic_prefix: String::new(),
            group_prefix: String::new(),
            delivery_timeout: Duration::from_secs(10),
            partitions: 3,
            fetch_wait: Duration::from_millis(10),
            member_id: String::new(),
            partition_lease: Duration::from_secs(6),
            stall_after: Duration::from_secs(30),
            wake_url: SecretUrl::new(""),
            idle_after: Duration::from_millis(100),
            idle_fetch: Duration::from_secs(2),
        }
    }
}

impl KafkaConfig {
    /// Values that parse but cannot work: with hints, zero idle times would pause and resume
    /// the consumers in a loop.
    pub fn check(&self) -> Result<(), String> {
        if self.wake_url.expose().is_empty() {
            return Ok(());
        }
        if self.idle_after.is_zero() || self.idle_fetch.is_zero() {
            return Err(
                "kafka.idle_after and kafka.idle_fetch must be above zero when kafka.wake_url is set"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// The outbox relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// How often the relay looks for unsent events when nothing wakes it.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Events published per round.
    pub batch_size: u32,
    /// When the broker is found to have lost its log (a partition's offsets went back), the
    /// events published within this are published again; consumers skip what they saw.
    #[serde(with = "humantime_serde")]
    pub republish_window: Duration,
    /// Events published besides those another service of the platform reads
    /// ([`zentra_proto::PLATFORM_EVENTS`]), for subscribers outside it: event type names
    /// (`zentra.inventory.v1.StockReserved`), whole topics (`inventory.events`), or `*` for
    /// every event. The others are not written to the outbox at all.
    pub publish: Vec<String>,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(250),
            batch_size: 256,
            republish_window: Duration::from_secs(15 * 60),
            publish: Vec::new(),
        }
    }
}

impl OutboxConfig {
    /// Every entry of `publish` names an event type, an event topic or `*`.
    pub fn check(&self) -> Result<(), String> {
        let known = crate::events::event_types();
        for entry in &self.publish {
            let topic = entry
                .strip_suffix(".events")
                .is_some_and(|service| !service.is_empty() && !service.contains('.'));
            if entry != "*" && !topic && !known.iter().any(|name| name == entry) {
                return Err(format!(
                    "outbox.publish: {entry:?} is not an event type (for example \
                     zentra.inventory.v1.StockReserved), an event topic (inventory.events) or *"
                ));
            }
        }
        Ok(())
    }
}

/// Logs, traces and metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Initial log filter in tracing's EnvFilter syntax; changeable at runtime through the ops API.
    pub log_filter: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint for traces, for example `http://127.0.0.1:4317`; unset disables export.
    pub otlp_endpoint: Option<String>,
    /// How often state gauges (outbox backlog, dead letters, the process, saga states) are
    /// sampled.
    #[serde(with = "humantime_serde")]
    pub gauge_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_filter: "info,sqlx=warn,sea_orm_migration=warn".to_owned(),
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            gauge_interval: Duration::from_secs(15),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A URL that may hold a password: shown with the password replaced by [`REDACTED`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The real URL, for connecting; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced.
    pub fn redacted(&self) -> String {
        let Some(scheme_end) = self.0.find("://") else {
            return self.0.clone();
        };
        let rest = &self.0[scheme_end + 3..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let Some(at) = rest[..authority_end].rfind('@') else {
            return self.0.clone();
        };
        let userinfo = &rest[..at];
        match userinfo.find(':') {
            Some(colon) => format!(
                "{}{}:{REDACTED}{}",
                &self.0[..scheme_end + 3],
                &userinfo[..colon],
                &rest[at..]
            ),
            None => self.0.clone(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(SecretUrl)
    }
}

/// A secret string (key, token, password): shown as [`REDACTED`], never printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// Where configuration was read from, in order of precedence (last wins).
#[derive(Debug, Clone, Default)]
pub struct ConfigSources(pub Vec<String>);

/// Configuration errors: one line each.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is missing, mistyped or unknown.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// The file named by `--config` or `ZENTRA_CONFIG` is missing.
    #[error("invalid config: file {path} does not exist")]
    MissingFile {
        /// The path given.
        path: PathBuf,
    },
    /// A command-line argument is not understood.
    #[error("invalid arguments: {0} (usage: [--config FILE] [--print-config])")]
    Arguments(String),
}

/// What the command line asked for.
#[derive(Debug, Clone, Default)]
pub struct CommandLine {
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// `--print-config`: print the effective config (redacted) and exit.
    pub print_config: bool,
}

impl CommandLine {
    /// Parses `--config FILE` and `--print-config`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, ConfigError> {
        let mut parsed = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--config" => {
                    let path = args.next().ok_or_else(|| {
                        ConfigError::Arguments("--config needs a file path".to_owned())
                    })?;
                    parsed.config_file = Some(PathBuf::from(path));
                }
                "--print-config" => parsed.print_config = true,
                other => return Err(ConfigError::Arguments(format!("unknown argument {other}"))),
            }
        }
        Ok(parsed)
    }
}

/// Loads configuration: defaults, then `file` (or `ZENTRA_CONFIG`), then `ZENTRA_*` variables.
pub fn load<D>(file: Option<PathBuf>) -> Result<(ServiceConfig<D>, ConfigSources), ConfigError>
where
    D: Serialize + DeserializeOwned + Default,
{
    load_from(file, Env::prefixed("ZENTRA_").split("__"))
}

/// Like [`load`], with the environment layer given.
pub fn load_from<D>(
    file: Option<PathBuf>,
    env: Env,
) -> Result<(ServiceConfig<D>, ConfigSources), ConfigError>
where
    D: Serialize + DeserializeOwned + Default,
{
    let mut sources = vec!["defaults".to_owned()];
    let mut figment = Figment::from(Serialized::defaults(ServiceConfig::<D>::default()));
    let file = file.or_else(|| std::env::var_os("ZENTRA_CONFIG").map(PathBuf::from));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::MissingFile { path });
        }
        sources.push(path.display().to_string());
        figment = figment.merge(Toml::file_exact(path));
    }
    // ZENTRA_CONFIG names the file; it is not a setting.
    figment = figment.merge(env.ignore(&["config"]));
    sources.push("environment".to_owned());
    // Extracted separately, not through serde's flatten, so an error names the key at fault.
    let invalid = |error: figment::Error| ConfigError::Invalid(one_line(&error));
    let common = figment.extract::<CommonConfig>().map_err(invalid)?;
    common.kafka.check().map_err(ConfigError::Invalid)?;
    common.database.check().map_err(ConfigError::Invalid)?;
    common.outbox.check().map_err(ConfigError::Invalid)?;
    common
        .retention
        .check(&common.outbox)
        .map_err(ConfigError::Invalid)?;
    let domain = figment.extract::<D>().map_err(invalid)?;
    Ok((ServiceConfig { common, domain }, ConfigSources(sources)))
}

fn one_line(error: &figment::Error) -> String {
    error
        .clone()
        .into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
        .replace('\n', " ")
}

/// Renders a config as TOML; secrets are already redacted by their types.
pub fn to_toml<C: Serialize>(config: &C) -> String {
    toml::to_string_pretty(config).unwrap_or_else(|error| format!("# cannot render: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_redacted_but_user_and_host_stay() {
        let url = SecretUrl::new("postgres://zentra:hunter2@db.local:5432/orders");
        assert_eq!(
            url.redacted(),
            "postgres://zentra:<redacted>@db.local:5432/orders"
        );
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(
            !to_toml(&DatabaseConfig {
                url,
                ..Default::default()
            })
            .contains("hunter2")
        );
    }

    #[test]
    fn url_without_password_is_shown_as_is() {
        let url = SecretUrl::new("postgres://postgres@127.0.0.1/zentra");
        assert_eq!(url.redacted(), "postgres://postgres@127.0.0.1/zentra");
    }

    #[test]
    fn environment_overrides_defaults_with_double_underscore_nesting() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ZENTRA_KAFKA__TOPIC_PREFIX", "t1.");
            jail.set_env("ZENTRA_OUTBOX__POLL_INTERVAL", "2s");
            let (config, sources) = load::<NoSettings>(None).map_err(|e| e.to_string())?;
            assert_eq!(config.common.kafka.topic_prefix, "t1.");
            assert_eq!(config.common.outbox.poll_interval, Duration::from_secs(2));
            assert_eq!(sources.0, vec!["defaults", "environment"]);
            Ok(())
        });
    }

    #[test]
    fn file_layer_sits_between_defaults_and_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "zentra.toml",
                "[kafka]\ntopic_prefix = \"file.\"\npartitions = 7\n",
            )?;
            jail.set_env("ZENTRA_KAFKA__TOPIC_PREFIX", "env.");
            let (config, _) =
                load::<NoSettings>(Some("zentra.toml".into())).map_err(|e| e.to_string())?;
            assert_eq!(config.common.kafka.topic_prefix, "env.");
            assert_eq!(config.common.kafka.partitions, 7);
            Ok(())
        });
    }

    #[test]
    fn zero_idle_times_with_hints_are_refused_in_one_line() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ZENTRA_KAFKA__WAKE_URL", "redis://127.0.0.1:6379");
            jail.set_env("ZENTRA_KAFKA__IDLE_FETCH", "0s");
            let error = load::<NoSettings>(None).err().map(|e| e.to_string());
            assert_eq!(
                error.as_deref(),
                Some(
                    "invalid config: kafka.idle_after and kafka.idle_fetch must be above zero when kafka.wake_url is set"
                )
            );
            Ok(())
        });
    }

    #[test]
    fn a_batch_past_the_subtransaction_cache_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ZENTRA_DATABASE__MAX_BATCH", "65");
            let error = load::<NoSettings>(None).err().map(|e| e.to_string());
            assert_eq!(
                error.as_deref(),
                Some("invalid config: database.max_batch must be between 1 and 64")
            );
            jail.set_env("ZENTRA_DATABASE__MAX_BATCH", "64");
            assert!(load::<NoSettings>(None).is_ok());
            Ok(())
        });
    }

    #[test]
    fn a_mistyped_value_is_one_clear_line() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ZENTRA_OUTBOX__BATCH_SIZE", "lots");
            let error = load::<NoSettings>(None)
                .err()
                .ok_or("expected an error")?
                .to_string();
            assert!(error.starts_with("invalid config:"), "{error}");
            assert!(
                error.to_lowercase().contains("outbox.batch_size"),
                "{error}"
            );
            assert!(!error.contains('\n'));
            Ok(())
        });
    }

    #[test]
    fn events_to_publish_are_types_topics_or_everything() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "ZENTRA_OUTBOX__PUBLISH",
                r#"["inventory.events", "zentra.payment.v1.PaymentCaptured", "*"]"#,
            );
            let (config, _) = load::<NoSettings>(None).map_err(|error| error.to_string())?;
            assert_eq!(config.common.outbox.publish.len(), 3);
            jail.set_env(
                "ZENTRA_OUTBOX__PUBLISH",
                r#"["zentra.payment.v1.PaymentCapturd"]"#,
            );
            let error = load::<NoSettings>(None)
                .err()
                .ok_or("expected an error")?
                .to_string();
            assert!(
                error.starts_with(
                    "invalid config: outbox.publish: \"zentra.payment.v1.PaymentCapturd\""
                ),
                "{error}"
            );
            assert!(!error.contains('\n'));
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_is_reported() {
        let error = load::<NoSettings>(Some("/nonexistent/zentra.toml".into()))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("invalid config: file /nonexistent/zentra.toml does not exist")
        );
    }
}
