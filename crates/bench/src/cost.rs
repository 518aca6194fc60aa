//! What each saga costs and what the services hold in memory: PostgreSQL commits of the stack's
//! databases (`pg_stat_database`), Kafka records produced and gRPC calls served (each service's
//! `/metrics`), and the resident memory of every service process (`/proc`).

use std::{collections::BTreeMap, time::Duration};

use sea_orm::{ConnectionTrait as _, Database, DatabaseConnection, DbBackend, Statement};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use zentra_proto::ops::v1::{GetBuildInfoRequest, ops_service_client::OpsServiceClient};

use crate::settings::{SERVICES, Settings};

/// Counters of the whole stack at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// Committed transactions in the stack's databases.
    pub commits: f64,
    /// Kafka records acknowledged by the broker.
    pub produced: f64,
    /// gRPC calls answered.
    pub grpc_calls: f64,
}

impl Counters {
    /// `self - earlier`.
    pub fn since(self, earlier: Counters) -> Counters {
        Counters {
            commits: self.commits - earlier.commits,
            produced: self.produced - earlier.produced,
            grpc_calls: self.grpc_calls - earlier.grpc_calls,
        }
    }
}

/// Reads the stack's counters.
pub struct CostProbe {
    pg: DatabaseConnection,
    db_prefix: String,
    ports: Vec<u16>,
}

impl CostProbe {
    /// Connects to PostgreSQL.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            pg: Database::connect(settings.pg_url.clone()).await?,
            db_prefix: settings.db_prefix.clone(),
            ports: SERVICES
                .iter()
                .map(|(_, offset)| settings.base_port + offset)
                .collect(),
        })
    }

    /// The counters now.
    pub async fn read(&self) -> anyhow::Result<Counters> {
        // LIKE treats _ as a wildcard: escape it so only the stack's databases count.
        let pattern = format!("{}%", self.db_prefix.replace('_', "\\_"));
        let row = self
            .pg
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT coalesce(sum(xact_commit), 0)::bigint FROM pg_stat_database WHERE datname LIKE $1",
                [pattern.into()],
            ))
            .await?;
        let commits = row
            .and_then(|row| row.try_get_by_index::<i64>(0).ok())
            .unwrap_or(0) as f64;
        let mut counters = Counters {
            commits,
            ..Counters::default()
        };
        for port in &self.ports {
            let page = metrics_page(*port).await?;
            counters.produced += sum(&page, "zentra_kafka_produced_total");
            counters.grpc_calls += sum(&page, "zentra_grpc_server_requests_total");
        }
        Ok(counters)
    }
}

/// A service's `/metrics` text over plain HTTP/1.1.
async fn metrics_page(port: u16) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// The sum of every series of `name` on a Prometheus page.
fn sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Process ids of the services, from their build info.
pub async fn service_pids(settings: &Settings) -> BTreeMap<&'static str, u32> {
    let mut pids = BTreeMap::new();
    for (name, offset) in SERVICES {
        let Ok(mut client) = OpsServiceClient::connect(settings.url(offset)).await else {
            continue;
        };
        if let Ok(info) = client.get_build_info(GetBuildInfoRequest {}).await {
            pids.insert(name, info.into_inner().pid);
        }
    }
    pids
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
}
