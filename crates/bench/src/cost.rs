//! What each saga costs and what the services hold in memory: PostgreSQL commits of the stack's
//! databases (`pg_stat_database`), Kafka records produced and gRPC calls served (each service's
//! `/metrics`), and the resident memory of every service process (`/proc`).

use std::{collections::BTreeMap, time::Duration};

use http_body_util::BodyExt as _;
use sea_orm::{ConnectionTrait as _, Database, DatabaseConnection, DbBackend, Statement};
use tonic::transport::Channel;
use tower::ServiceExt as _;
use zentra_proto::ops::v1::{GetBuildInfoRequest, ops_service_client::OpsServiceClient};

use crate::settings::{SAGA_REPLICA, SERVICES, Settings};

/// Counters of the whole stack at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Committed transactions in the stack's databases.
    pub commits: f64,
    /// The same, per database.
    pub commits_by_database: BTreeMap<String, f64>,
    /// Kafka records acknowledged by the broker.
    pub produced: f64,
    /// The same, per topic.
    pub produced_by_topic: BTreeMap<String, f64>,
    /// gRPC calls answered.
    pub grpc_calls: f64,
    /// Statements per database, when `pg_stat_statements` is loaded (empty otherwise).
    pub statements: BTreeMap<String, Statements>,
    /// Seconds summed by the Kafka hops' histograms: `publish` (outbox to acknowledgement) and
    /// `fetch <topic>` (production to a consumer receiving it).
    pub hop_seconds: BTreeMap<String, f64>,
    /// How many records those sums cover.
    pub hop_records: BTreeMap<String, f64>,
}

/// What `pg_stat_statements` counted in one database: every statement the server ran,
/// `BEGIN` and `COMMIT` included, so each is one round trip.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Statements {
    /// Statements run.
    pub calls: f64,
    /// Milliseconds spent executing them.
    pub execution_ms: f64,
    /// Milliseconds spent planning them.
    pub planning_ms: f64,
}

impl std::ops::Sub for Statements {
    type Output = Statements;

    fn sub(self, earlier: Statements) -> Statements {
        Statements {
            calls: self.calls - earlier.calls,
            execution_ms: self.execution_ms - earlier.execution_ms,
            planning_ms: self.planning_ms - earlier.planning_ms,
        }
    }
}

impl std::ops::Div<f64> for Statements {
    type Output = Statements;

    fn div(self, by: f64) -> Statements {
        Statements {
            calls: self.calls / by,
            execution_ms: self.execution_ms / by,
            planning_ms: self.planning_ms / by,
        }
    }
}

impl Counters {
    /// `self - earlier`.
    pub fn since(self, earlier: &Counters) -> Counters {
        Counters {
            commits: self.commits - earlier.commits,
            commits_by_database: difference(self.commits_by_database, &earlier.commits_by_database),
            produced: self.produced - earlier.produced,
            produced_by_topic: difference(self.produced_by_topic, &earlier.produced_by_topic),
            grpc_calls: self.grpc_calls - earlier.grpc_calls,
            statements: difference(self.statements, &earlier.statements),
            hop_seconds: difference(self.hop_seconds, &earlier.hop_seconds),
            hop_records: difference(self.hop_records, &earlier.hop_records),
        }
    }
}

/// `now - earlier`, key by key (a key missing earlier counts from zero).
pub fn difference<V>(now: BTreeMap<String, V>, earlier: &BTreeMap<String, V>) -> BTreeMap<String, V>
where
    V: Copy + Default + std::ops::Sub<Output = V>,
{
    now.into_iter()
        .map(|(key, value)| {
            let before = earlier.get(&key).copied().unwrap_or_default();
            (key, value - before)
        })
        .collect()
}

/// Reads the stack's counters.
pub struct CostProbe {
    pg: DatabaseConnection,
    db_prefix: String,
    channels: Vec<Channel>,
    /// The services' process ids.
    pub pids: BTreeMap<&'static str, u32>,
}

impl CostProbe {
    /// Connects to PostgreSQL.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let pids = service_pids(settings).await;
        Ok(Self {
            pg: Database::connect(settings.pg_url.clone()).await?,
            db_prefix: settings.db_prefix.clone(),
            channels: {
                let mut channels = Vec::new();
                for (name, offset) in SERVICES.iter().chain([&SAGA_REPLICA]) {
                    if pids.contains_key(name) {
                        channels.push(settings.channel(*offset).await?);
                    }
                }
                channels
            },
            pids,
        })
    }

    /// CPU milliseconds used so far by each service, PostgreSQL and the broker.
    pub fn cpu_ms(&self) -> BTreeMap<String, f64> {
        cpu_ms(&self.pids)
    }

    /// The counters now.
    pub async fn read(&self) -> anyhow::Result<Counters> {
        // LIKE treats _ as a wildcard: escape it so only the stack's databases count.
        let pattern = format!("{}%", self.db_prefix.replace('_', "\\_"));
        let rows = self
            .pg
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT datname::text, xact_commit FROM pg_stat_database WHERE datname LIKE $1",
                [pattern.clone().into()],
            ))
            .await?;
        let mut counters = Counters::default();
        for row in rows {
            let name: String = row.try_get_by_index(0)?;
            if name == crate::pgbench::DATABASE {
                // The commit bound's own database, not the stack's.
                continue;
            }
            let commits = row.try_get_by_index::<i64>(1)? as f64;
            counters.commits += commits;
            let service = name.strip_prefix(&self.db_prefix).unwrap_or(&name);
            counters
                .commits_by_database
                .insert(service.to_owned(), commits);
        }
        counters.statements = self.statements(&pattern).await;
        for channel in &self.channels {
            let page = metrics_page(channel.clone()).await?;
            counters.produced += sum(&page, "zentra_kafka_produced_total");
            for (topic, records) in by_label(&page, "zentra_kafka_produced_total", "topic") {
                *counters.produced_by_topic.entry(topic).or_default() += records;
            }
            counters.grpc_calls += sum(&page, "zentra_grpc_server_requests_total");
            for (suffix, into) in [
                ("_sum", &mut counters.hop_seconds),
                ("_count", &mut counters.hop_records),
            ] {
                *into.entry("publish".to_owned()).or_default() += sum(
                    &page,
                    &format!("zentra_outbox_publish_delay_seconds{suffix}"),
                );
                let name = format!("zentra_consumer_fetch_delay_seconds{suffix}");
                for (topic, value) in by_label(&page, &name, "topic") {
                    *into.entry(format!("fetch {topic}")).or_default() += value;
                }
            }
        }
        Ok(counters)
    }
}

/// The server settings a report records.
const RECORDED_SETTINGS: &[&str] = &[
    "autovacuum",
    "autovacuum_naptime",
    "server_version",
    "shared_buffers",
    "synchronous_commit",
    "max_wal_size",
    "checkpoint_timeout",
];

impl CostProbe {
    /// The PostgreSQL settings that change what a run measures, by name.
    pub async fn postgres_settings(&self) -> anyhow::Result<BTreeMap<String, String>> {
        // The names are this file's constants, not input.
        let names = RECORDED_SETTINGS
            .iter()
            .map(|name| format!("'{name}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = self
            .pg
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                format!(
                    "SELECT name::text, current_setting(name) FROM pg_settings \
                     WHERE name IN ({names})"
                ),
            ))
            .await?;
        let mut settings = BTreeMap::new();
        for row in rows {
            settings.insert(row.try_get_by_index(0)?, row.try_get_by_index(1)?);
        }
        Ok(settings)
    }

    /// Statements per database of the stack from `pg_stat_statements`; empty when the server
    /// does not load it (`shared_preload_libraries`), so a run without it still works.
    async fn statements(&self, pattern: &str) -> BTreeMap<String, Statements> {
        let query = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT d.datname::text, sum(s.calls)::float8, sum(s.total_exec_time)::float8, \
               sum(s.total_plan_time)::float8 \
             FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
             WHERE d.datname LIKE $1 GROUP BY d.datname",
            [pattern.into()],
        );
        let rows = match self.pg.query_all_raw(query.clone()).await {
            Ok(rows) => rows,
            // The view exists only where the extension was created; creating it is harmless
            // and fails only where the library is not loaded.
            Err(_) => match self
                .pg
                .execute_unprepared("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .await
            {
                Ok(_) => self.pg.query_all_raw(query).await.unwrap_or_default(),
                Err(_) => Vec::new(),
            },
        };
        let mut statements = BTreeMap::new();
        for row in rows {
            let (Ok(name), Ok(calls), Ok(execution_ms), Ok(planning_ms)) = (
                row.try_get_by_index::<String>(0),
                row.try_get_by_index::<f64>(1),
                row.try_get_by_index::<f64>(2),
                row.try_get_by_index::<f64>(3),
            ) else {
                continue;
            };
            if name == crate::pgbench::DATABASE {
                continue;
            }
            let service = name.strip_prefix(&self.db_prefix).unwrap_or(&name);
            statements.insert(
                service.to_owned(),
                Statements {
                    calls,
                    execution_ms,
                    planning_ms,
                },
            );
        }
        statements
    }
}

/// A service's `/metrics` text, over the connection its RPCs use (HTTP/2, mutual TLS).
async fn metrics_page(channel: Channel) -> anyhow::Result<String> {
    let request = http::Request::get("/metrics").body(tonic::body::Body::empty())?;
    let response = channel.oneshot(request).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "/metrics answered {}",
        response.status()
    );
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The series of `name` on a Prometheus page summed by the value of `label` (series without it
/// are left out).
fn by_label(page: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    let needle = format!("{label}=\"");
    for line in page.lines() {
        let Some(rest) = line
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('{'))
        else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let value_of_label = labels
            .split(',')
            .find_map(|pair| pair.strip_prefix(&needle)?.strip_suffix('"'));
        if let (Some(key), Ok(value)) = (value_of_label, value.trim().parse::<f64>()) {
            *sums.entry(key.to_owned()).or_default() += value;
        }
    }
    sums
}

/// Process ids of the services that run, from their build info.
pub async fn service_pids(settings: &Settings) -> BTreeMap<&'static str, u32> {
    let mut pids = BTreeMap::new();
    for (name, offset) in SERVICES.into_iter().chain([SAGA_REPLICA]) {
        let Ok(channel) = settings.channel(offset).await else {
            continue;
        };
        let mut client = OpsServiceClient::new(channel);
        if let Ok(info) = client.get_build_info(GetBuildInfoRequest {}).await {
            pids.insert(name, info.into_inner().pid);
        }
    }
    pids
}

/// CPU time used so far, in milliseconds, by each service and by the processes the platform runs
/// on: every `postgres` process together, and the broker (`tansu`). Linux reports it in ticks of
/// 1/100 s (`USER_HZ`), so short runs read coarsely.
pub fn cpu_ms(services: &BTreeMap<&'static str, u32>) -> BTreeMap<String, f64> {
    let mut used: BTreeMap<String, f64> = BTreeMap::new();
    for (name, pid) in services {
        if let Some((_, ms)) = process_cpu(*pid) {
            used.insert((*name).to_owned(), ms);
        }
    }
    add_by_command(&mut used, &["postgres", "tansu"]);
    used
}

/// Adds the CPU time of every process whose command is one of `commands`, by command.
fn add_by_command(used: &mut BTreeMap<String, f64>, commands: &[&str]) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        if let Some((command, ms)) = process_cpu(pid)
            && commands.contains(&command.as_str())
        {
            *used.entry(command).or_default() += ms;
        }
    }
}

/// The processes that stand around the platform on this machine without being part of it: the
/// mail sink (standing in for an SMTP relay), the stack's supervisor and this bench.
pub const HARNESS: [&str; 3] = ["aiosmtpd", "zentra-stack", "zentra-bench"];

/// CPU time used so far, in milliseconds, by each process of the [`HARNESS`]: on a machine of
/// two cores what they use is not there for the platform.
pub fn harness_cpu_ms() -> BTreeMap<String, f64> {
    let mut used: BTreeMap<String, f64> = BTreeMap::new();
    add_by_command(&mut used, &HARNESS);
    used
}

/// A process's command name and CPU time (user + system) in ms, from `/proc/<pid>/stat`.
fn process_cpu(pid: u32) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<(String, f64)> {
    // The command is in parentheses and may itself hold spaces or parentheses.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let command = stat.get(open + 1..close)?.to_owned();
    let mut fields = stat.get(close + 2..)?.split_whitespace();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((command, (utime + stime) * 10.0))
}

/// Resident and peak resident memory of a process, in KiB (`VmRSS`, `VmHWM`).
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Samples the services' resident memory every 250 ms until stopped; the highest seen per
/// service, in KiB.
pub fn sample_memory(
    pids: BTreeMap<&'static str, u32>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<BTreeMap<&'static str, u64>>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut peaks: BTreeMap<&'static str, u64> = BTreeMap::new();
        loop {
            for (name, pid) in &pids {
                if let Some((rss, _)) = memory_kib(*pid) {
                    let peak = peaks.entry(name).or_default();
                    *peak = (*peak).max(rss);
                }
            }
            tokio::select! {
                _ = &mut stopped => return peaks,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    });
    (stop, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_summed_over_its_series_and_not_its_lookalikes() {
        let page = "# HELP x\nzentra_kafka_produced_total 3\nzentra_kafka_produced_total{a=\"b\"} 4\nzentra_kafka_produced_total_other 100\n";
        assert_eq!(sum(page, "zentra_kafka_produced_total"), 7.0);
    }

    #[test]
    fn series_are_summed_by_one_label_and_those_without_it_left_out() {
        let page = "zentra_kafka_produced_total{topic=\"a\",x=\"1\"} 3\nzentra_kafka_produced_total{x=\"2\",topic=\"a\"} 4\nzentra_kafka_produced_total{topic=\"b\"} 1\nzentra_kafka_produced_total 9\n";
        let sums = by_label(page, "zentra_kafka_produced_total", "topic");
        assert_eq!(sums.get("a"), Some(&7.0));
        assert_eq!(sums.get("b"), Some(&1.0));
        assert_eq!(sums.len(), 2);
    }

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (odd (name) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 9 0 100 1000 200";
        assert_eq!(parse_stat(stat), Some(("odd (name) x".to_owned(), 2810.0)));
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let (command, _) = process_cpu(std::process::id()).expect("own stat");
        assert!(!command.is_empty());
    }
}
