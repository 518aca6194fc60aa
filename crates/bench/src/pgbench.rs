//! The PostgreSQL commit bound, measured on the same machine in the same run: pgbench's
//! simple-update transactions per second on a scratch database.

use std::time::Duration;

use sea_orm::{ConnectionTrait as _, Database};
use tokio::process::Command;

/// The database pgbench runs in (left out of the stack's commit counts).
pub const DATABASE: &str = "zentra_bench_pgbench";

/// pgbench's TPS (simple-update, 8 clients, 2 threads) over `duration`.
pub async fn commit_bound(pg_url: &str, duration: Duration) -> anyhow::Result<f64> {
    let admin = Database::connect(pg_url.to_owned()).await?;
    let exists = admin
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"),
        ))
        .await?
        .is_some();
    if !exists {
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{DATABASE}\""))
            .await?;
    }
    admin.close().await?;
    let url = match pg_url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{DATABASE}"),
        None => anyhow::bail!("cannot derive a database URL from {pg_url}"),
    };
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", "4", &url])
        .output()
        .await
        .map_err(|error| anyhow::anyhow!("pgbench: {error} (install postgresql-client)"))?;
    anyhow::ensure!(
        init.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let seconds = duration.as_secs().max(1).to_string();
    let run = Command::new("pgbench")
        .args([
            "-n",
            "-b",
            "simple-update",
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            &seconds,
            &url,
        ])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&run.stdout);
    anyhow::ensure!(
        run.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    text.lines()
        .find_map(|line| {
            line.strip_prefix("tps = ")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench's output: {text}"))
}
