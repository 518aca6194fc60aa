//! State gauges: what operators alert on, sampled every `telemetry.gauge_interval` (15 s) from the
//! service's database (the outbox backlog, pending dead letters, and what a service adds, such as
//! the saga's states) and from the process itself (CPU, memory, open files). A label value that
//! disappears from a sample is set to zero, so a series that drained reads 0, not its last value.

use std::{collections::BTreeMap, future::Future, pin::Pin, time::Duration};

use sea_orm::{ConnectionTrait as _, DatabaseConnection, DbBackend, DbErr, Statement};
use tokio_util::sync::CancellationToken;

use crate::telemetry::names;

/// One sampling of a [`Sampler`].
pub type Sampling<'a> = Pin<Box<dyn Future<Output = Result<(), DbErr>> + Send + 'a>>;

/// A source of gauge values, sampled in turn by [`run`].
pub trait Sampler: Send + 'static {
    /// Reads the values and sets the gauges.
    fn sample<'a>(&'a mut self, db: &'a DatabaseConnection) -> Sampling<'a>;
}

/// A gauge with one label whose values come and go: those seen before and missing now read 0.
#[derive(Debug)]
pub struct LabelledGauge {
    name: &'static str,
    labels: &'static [&'static str],
    seen: BTreeMap<Vec<String>, ()>,
}

impl LabelledGauge {
    /// The gauge `name` with labels `labels`.
    pub fn new(name: &'static str, labels: &'static [&'static str]) -> Self {
        Self {
            name,
            labels,
            seen: BTreeMap::new(),
        }
    }

    /// Sets every series to its value in `values` (label values in the order of the labels);
    /// a series set before and absent now is set to 0.
    pub fn set_all(&mut self, values: impl IntoIterator<Item = (Vec<String>, f64)>) {
        let mut now = BTreeMap::new();
        for (label_values, value) in values {
            self.set(&label_values, value);
            now.insert(label_values, ());
        }
        for gone in self.seen.keys().filter(|key| !now.contains_key(*key)) {
            self.set(gone, 0.0);
        }
        self.seen.extend(now);
    }

    fn set(&self, label_values: &[String], value: f64) {
        let labels: Vec<metrics::Label> = self
            .labels
            .iter()
            .zip(label_values)
            .map(|(key, value)| metrics::Label::new(*key, value.clone()))
            .collect();
        metrics::gauge!(self.name, labels).set(value);
    }
}

/// Rows of `(label..., value)` from `sql`: every column but the last is a label value (text),
/// the last a number (double precision).
pub async fn labelled_rows(
    db: &DatabaseConnection,
    sql: &str,
    labels: usize,
) -> Result<Vec<(Vec<String>, f64)>, DbErr> {
    let rows = db
        .query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await?;
    rows.into_iter()
        .map(|row| {
            let mut label_values = Vec::with_capacity(labels);
            for index in 0..labels {
                label_values.push(row.try_get_by_index::<String>(index)?);
            }
            Ok((label_values, row.try_get_by_index::<f64>(labels)?))
        })
        .collect()
}

/// The runtime's own gauges: the outbox backlog and its oldest event's age, and dead letters
/// pending per consumer group and topic.
pub struct RuntimeTables {
    dead_letters: LabelledGauge,
}

impl Default for RuntimeTables {
    fn default() -> Self {
        Self {
            dead_letters: LabelledGauge::new(names::DEAD_LETTERS_PENDING, &["group", "topic"]),
        }
    }
}

impl Sampler for RuntimeTables {
    fn sample<'a>(&'a mut self, db: &'a DatabaseConnection) -> Sampling<'a> {
        Box::pin(async move {
            let backlog = db
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT count(*)::float8, \
                            coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 \
                     FROM outbox WHERE published_at IS NULL",
                ))
                .await?;
            if let Some(row) = backlog {
                metrics::gauge!(names::OUTBOX_PENDING).set(row.try_get_by_index::<f64>(0)?);
                metrics::gauge!(names::OUTBOX_OLDEST_SECONDS).set(row.try_get_by_index::<f64>(1)?);
            }
            // Every group and topic the service consumes reports, with 0 when nothing waits:
            // "none pending" is a value on a dashboard, not a missing series.
            let pending = labelled_rows(
                db,
                "SELECT consumer_group, topic, sum(pending)::float8 FROM ( \
                   SELECT consumer_group, source_topic AS topic, 1 AS pending FROM dead_letters \
                   WHERE status = 'PENDING' \
                   UNION ALL \
                   SELECT DISTINCT consumer_group, topic, 0 FROM consumer_partitions \
                 ) AS groups GROUP BY 1, 2",
                2,
            )
            .await?;
            self.dead_letters.set_all(pending);
            Ok(())
        })
    }
}

/// The process: CPU time, resident memory and open file descriptors, from `/proc/self`.
#[derive(Debug, Default)]
pub struct Process;

/// Clock ticks per second of `/proc`'s CPU times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

impl Process {
    /// `(cpu seconds, resident bytes, open fds)` of this process, where `/proc` tells.
    pub fn read() -> Option<(f64, f64, f64)> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command's closing parenthesis: state is the first, utime the 12th.
        let (_, after) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let rss_kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        Some((ticks / TICKS_PER_SECOND, rss_kib * 1024.0, fds))
    }
}

impl Sampler for Process {
    fn sample<'a>(&'a mut self, _db: &'a DatabaseConnection) -> Sampling<'a> {
        Box::pin(async move {
            if let Some((cpu, rss, fds)) = Self::read() {
                // A gauge, as the `metrics` crate's counters are whole numbers; it only grows,
                // so rate() over it is the CPU share.
                metrics::gauge!(names::PROCESS_CPU_SECONDS).set(cpu);
                metrics::gauge!(names::PROCESS_RESIDENT_BYTES).set(rss);
                metrics::gauge!(names::PROCESS_OPEN_FDS).set(fds);
            }
            Ok(())
        })
    }
}

/// Samples every `interval` until `shutdown`; a sampler that fails is logged and tried again at
/// the next round, the others still run.
pub async fn run(
    db: DatabaseConnection,
    interval: Duration,
    mut samplers: Vec<Box<dyn Sampler>>,
    shutdown: CancellationToken,
) {
    loop {
        for sampler in &mut samplers {
            if let Err(error) = sampler.sample(&db).await {
                tracing::warn!(%error, "sampling gauges failed");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
