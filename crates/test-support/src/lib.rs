//! Fixtures for Zentra's integration tests. Every test gets its own PostgreSQL database, its own
//! topic and consumer-group prefix and its own Redis key prefix, so tests run in parallel against
//! one shared server of each kind and a rerun never sees old data.
//!
//! Environment (all optional): `ZENTRA_TEST_PG_URL` (admin URL, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), `ZENTRA_TEST_KAFKA` (default `127.0.0.1:9092`),
//! `ZENTRA_TEST_REDIS` (default `redis://127.0.0.1:6379`),
//! `TEST_LOG` (a log filter; logs are off without it).

pub mod hostile;
pub mod otlp;
pub mod smtp;
pub mod tls;

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use sea_orm::{ConnectionTrait as _, Database, DatabaseConnection};
use zentra_runtime::{
    config::{CommonConfig, SecretUrl, TelemetryConfig},
    telemetry::{self, Telemetry},
};

/// Admin URL of the shared PostgreSQL server.
pub fn postgres_admin_url() -> String {
    std::env::var("ZENTRA_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Bootstrap servers of the shared broker.
pub fn kafka_bootstrap() -> String {
    std::env::var("ZENTRA_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// URL of the shared Redis server.
pub fn redis_url() -> String {
    std::env::var("ZENTRA_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A short unique id for names.
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Process telemetry for tests: quiet unless `TEST_LOG` holds a filter.
pub fn telemetry() -> Telemetry {
    let filter = std::env::var("TEST_LOG")
        .ok()
        .filter(|filter| !filter.is_empty())
        .map(|filter| {
            if filter == "1" {
                "info".to_owned()
            } else {
                filter
            }
        })
        .unwrap_or_else(|| "off".to_owned());
    let config = TelemetryConfig {
        log_filter: filter,
        ..TelemetryConfig::default()
    };
    telemetry::init("test", &config)
        .map(|guard| guard.telemetry().clone())
        .unwrap_or_else(|error| panic!("telemetry: {error}"))
}

/// A uniquely named database on the shared server; dropped by [`TestDatabase::drop_database`].
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates `zt_<label>_<unique>`.
    pub async fn create(label: &str) -> anyhow::Result<Self> {
        let name = format!("zt_{label}_{}", unique_suffix());
        let admin = admin().await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("creating database {name}"))?;
        admin.close().await?;
        let url = replace_database(&postgres_admin_url(), &name);
        Ok(Self { name, url })
    }

    /// Creates a database with exactly this name (for programs that derive the name themselves).
    pub async fn create_named(name: &str) -> anyhow::Result<Self> {
        let admin = admin().await?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("creating database {name}"))?;
        admin.close().await?;
        let url = replace_database(&postgres_admin_url(), name);
        Ok(Self {
            name: name.to_owned(),
            url,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a connection pool to it.
    pub async fn connect(&self) -> anyhow::Result<DatabaseConnection> {
        Ok(Database::connect(self.url.clone()).await?)
    }

    /// Drops it, ending any connection still open.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        let admin = admin().await?;
        admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await?;
        admin.close().await?;
        Ok(())
    }
}

async fn admin() -> anyhow::Result<DatabaseConnection> {
    Database::connect(postgres_admin_url())
        .await
        .context("cannot reach PostgreSQL (run deploy/local/infra-up.sh)")
}

fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[authority_end..]
        .find('/')
        .map(|i| authority_end + i)
        .unwrap_or(base.len());
    let mut replaced = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        replaced.push('?');
        replaced.push_str(query);
    }
    replaced
}

/// One test's isolated slice of the shared infrastructure.
pub struct TestEnv {
    /// Its database.
    pub database: TestDatabase,
    /// Prefix of its topics, consumer groups and Redis keys.
    pub prefix: String,
}

impl TestEnv {
    /// A fresh database and prefix for a test of `label`.
    pub async fn new(label: &str) -> anyhow::Result<Self> {
        Ok(Self {
            database: TestDatabase::create(label).await?,
            prefix: format!("zt-{label}-{}.", unique_suffix()),
        })
    }

    /// Shared config pointing at this environment: its database, prefixed topics and groups,
    /// port 0, a fast outbox relay.
    pub fn common_config(&self) -> CommonConfig {
        let mut config = CommonConfig::default();
        config.database.url = SecretUrl::new(self.database.url());
        config.database.max_connections = 12;
        config.kafka.bootstrap_servers = kafka_bootstrap();
        config.kafka.topic_prefix = self.prefix.clone();
        config.kafka.group_prefix = self.prefix.clone();
        config.kafka.partitions = 1;
        config.outbox.poll_interval = Duration::from_millis(20);
        config.telemetry.gauge_interval = Duration::from_millis(200);
        config
    }

    /// Drops the database and deletes the topics named.
    pub async fn cleanup(self, topics: &[String]) -> anyhow::Result<()> {
        delete_topics(topics).await;
        self.database.drop_database().await
    }
}

/// Deletes topics; a broker that fails to is only logged (the prefix keeps tests apart anyway).
pub async fn delete_topics(topics: &[String]) {
    use rdkafka::{
        ClientConfig,
        admin::{AdminClient, AdminOptions},
        client::DefaultClientContext,
    };
    if topics.is_empty() {
        return;
    }
    let admin: Result<AdminClient<DefaultClientContext>, _> = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create();
    let Ok(admin) = admin else { return };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(error) = admin.delete_topics(&names, &AdminOptions::new()).await {
        tracing::warn!(%error, "deleting test topics failed");
    }
}

/// Deletes every topic whose name starts with `prefix` (a whole stack's, say), as the broker's
/// metadata lists them now.
pub async fn delete_topics_with_prefix(prefix: &str) {
    use rdkafka::{
        ClientConfig,
        consumer::{BaseConsumer, Consumer as _},
    };
    let consumer: Result<BaseConsumer, _> = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create();
    let Ok(consumer) = consumer else { return };
    let names = tokio::task::spawn_blocking(move || {
        consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .map(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .map(|topic| topic.name().to_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default();
    let ours: Vec<String> = names
        .into_iter()
        .filter(|name| name.starts_with(prefix))
        .collect();
    delete_topics(&ours).await;
}

/// Finds a command-line tool the project installs (`deploy/local/install-tools.sh`): on PATH or
/// in the tool cache.
pub fn tool(name: &str) -> PathBuf {
    let cache = std::env::var_os("ZENTRA_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/zentra")));
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cache.map(|cache| cache.join("bin")));
    for dir in candidates {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("{name} not found: run deploy/local/install-tools.sh");
}

/// Runs a command-line client to completion and returns its standard output; fails the test with
/// both outputs when it does not succeed.
pub fn run_tool(command: &mut std::process::Command) -> String {
    let output = command.output().expect("tool runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A plain HTTP/1.1 GET of `path`: the status line with headers, and the body.
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> (String, String) {
    http_get_with(address, path, &[]).await
}

/// [`http_get`] with extra request headers.
pub async fn http_get_with(
    address: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, String) {
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: {address}\r\n{extra}connection: close\r\n\r\n");
    let (head, body) = http_exchange(address, request.as_bytes()).await;
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// One HTTP/1.1 exchange on a fresh connection: sends `request` as it is, reads to the end;
/// the response's head and its body, chunking undone.
pub async fn http_exchange(
    address: impl tokio::net::ToSocketAddrs,
    request: &[u8],
) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or(response.len());
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let body = response.get(split + 4..).unwrap_or_default();
    let chunked = head
        .lines()
        .any(|line| line.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    (head, body)
}

/// The body of a chunked HTTP/1.1 response, its chunks joined.
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = rest.windows(2).position(|window| window == b"\r\n") {
        let size_line = String::from_utf8_lossy(&rest[..end]);
        let size = size_line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            break;
        };
        let chunk = &rest[end + 2..];
        if size == 0 || chunk.len() < size {
            break;
        }
        body.extend_from_slice(&chunk[..size]);
        rest = chunk[size..]
            .strip_prefix(b"\r\n")
            .unwrap_or(&chunk[size..]);
    }
    body
}

/// Field paths named by a status's `BadRequest` details (empty when it has none).
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a query whose first column is a bigint (`SELECT count(*) ...`) and returns it.
pub async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
    use sea_orm::{DbBackend, Statement};
    db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
        .and_then(|row| row.try_get_by_index::<i64>(0).ok())
        .unwrap_or_else(|| panic!("{sql}: no number"))
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Collects every event on some topics from their beginning (partitions assigned directly, no
/// group).
pub struct EventCollector {
    received: std::sync::Arc<std::sync::Mutex<Vec<zentra_runtime::kafka::ReceivedEvent>>>,
    stop: zentra_runtime::CancellationToken,
    running: tokio::task::JoinHandle<()>,
}

impl EventCollector {
    /// Starts collecting `topics` from their beginning.
    pub async fn start(config: &zentra_runtime::config::KafkaConfig, topics: &[String]) -> Self {
        let tail = zentra_runtime::kafka::TopicTail::from_beginning(config, topics)
            .await
            .unwrap_or_else(|error| panic!("collector assigns its topics: {error}"));
        let received: std::sync::Arc<std::sync::Mutex<Vec<_>>> = std::sync::Arc::default();
        let stop = zentra_runtime::CancellationToken::new();
        let running = tokio::spawn({
            let received = std::sync::Arc::clone(&received);
            let stop = stop.clone();
            async move {
                loop {
                    let event = tokio::select! {
                        () = stop.cancelled() => return,
                        event = tail.recv() => event,
                    };
                    if let Ok(mut received) = received.lock() {
                        received.push(event);
                    }
                }
            }
        });
        Self {
            received,
            stop,
            running,
        }
    }

    /// Waits until at least `count` events arrived (20 s at most), gives stragglers 700 ms, stops
    /// and returns everything received.
    pub async fn collect(self, count: usize) -> Vec<zentra_runtime::kafka::ReceivedEvent> {
        let received = std::sync::Arc::clone(&self.received);
        eventually(Duration::from_secs(20), || {
            let received = std::sync::Arc::clone(&received);
            async move {
                let len = received.lock().map(|r| r.len()).unwrap_or(0);
                (len >= count).then_some(())
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        self.stop.cancel();
        // The consumer is closed before the test goes on (librdkafka dislikes clients that
        // outlive the process's last await).
        let _ = self.running.await;
        received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_replaces_the_path_and_keeps_the_query() {
        assert_eq!(
            replace_database("postgres://u@h:5432/postgres?sslmode=disable", "zt_x"),
            "postgres://u@h:5432/zt_x?sslmode=disable"
        );
        assert_eq!(
            replace_database("postgres://u@h", "zt_x"),
            "postgres://u@h/zt_x"
        );
    }
}
