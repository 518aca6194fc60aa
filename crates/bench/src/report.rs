//! The results as a readable table and as JSON.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    cost::{Counters, Statements},
    load::RunResult,
    settings::Mode,
};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
    /// Samples.
    pub count: u64,
}

impl Percentiles {
    /// From a histogram in µs.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
            count: histogram.len(),
        }
    }
}

/// What each ended saga cost.
#[derive(Debug, Clone, Serialize)]
pub struct CostPerSaga {
    /// PostgreSQL commits.
    pub commits: f64,
    /// Kafka records produced.
    pub kafka_records: f64,
    /// The same, by topic.
    pub kafka_records_by_topic: BTreeMap<String, f64>,
    /// gRPC calls served.
    pub grpc_calls: f64,
    /// PostgreSQL commits by database (named by service).
    pub commits_by_database: BTreeMap<String, f64>,
    /// Statements by database (named by service), with their execution and planning time,
    /// when the server loads `pg_stat_statements`.
    pub statements_by_database: BTreeMap<String, Statements>,
    /// CPU milliseconds by process: each service, all of PostgreSQL, the broker; measured over
    /// the load alone.
    pub cpu_ms: BTreeMap<String, f64>,
    /// CPU milliseconds of the harness around the platform (mail sink, supervisor, this
    /// bench), not counted in `cpu_ms`.
    pub harness_cpu_ms: BTreeMap<String, f64>,
    /// The Kafka hops' mean milliseconds per record (not per saga): `publish`, from an outbox
    /// event's transaction to the broker's acknowledgement, and `fetch <topic>`, from a record's
    /// production to a consumer receiving it.
    pub kafka_hop_ms: BTreeMap<String, f64>,
}

impl CostPerSaga {
    /// Spread `spent`, `cpu_ms` and `harness_cpu_ms` over `sagas`.
    pub fn of(
        spent: Counters,
        cpu_ms: BTreeMap<String, f64>,
        harness_cpu_ms: BTreeMap<String, f64>,
        sagas: u64,
    ) -> Self {
        let sagas = sagas.max(1) as f64;
        let per_saga = |map: BTreeMap<String, f64>| {
            map.into_iter()
                .map(|(key, value)| (key, value / sagas))
                .collect()
        };
        Self {
            commits: spent.commits / sagas,
            kafka_records: spent.produced / sagas,
            kafka_records_by_topic: per_saga(spent.produced_by_topic),
            grpc_calls: spent.grpc_calls / sagas,
            commits_by_database: per_saga(spent.commits_by_database),
            statements_by_database: spent
                .statements
                .into_iter()
                .map(|(database, statements)| (database, statements / sagas))
                .collect(),
            cpu_ms: per_saga(cpu_ms),
            harness_cpu_ms: per_saga(harness_cpu_ms),
            kafka_hop_ms: spent
                .hop_seconds
                .iter()
                .filter_map(|(hop, seconds)| {
                    let records = spent.hop_records.get(hop).copied().unwrap_or_default();
                    (records > 0.0).then(|| (hop.clone(), seconds / records * 1000.0))
                })
                .collect(),
        }
    }

    /// CPU milliseconds per saga over every process measured.
    pub fn cpu_ms_total(&self) -> f64 {
        self.cpu_ms.values().sum()
    }
}

/// `name value, name value` with one decimal, largest first.
fn breakdown(map: &BTreeMap<String, f64>) -> String {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| b.1.total_cmp(a.1));
    entries
        .into_iter()
        .map(|(name, value)| format!("{name} {value:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// What it was.
    pub label: String,
    /// Offered orders per second (open loop).
    pub offered_rate: Option<f64>,
    /// Orders in flight (closed loop).
    pub concurrency: Option<usize>,
    /// Orders sent.
    pub sent: u64,
    /// Orders accepted.
    pub placed: u64,
    /// PlaceOrder failures by code.
    pub errors: BTreeMap<String, u64>,
    /// Sagas completed.
    pub completed: u64,
    /// Sagas compensated.
    pub compensated: u64,
    /// Sagas parked for an operator.
    pub compensation_failed: u64,
    /// Sagas not ended when the run stopped waiting.
    pub outstanding: u64,
    /// First send to last end.
    pub wall_seconds: f64,
    /// Ended sagas per second.
    pub sagas_per_second: f64,
    /// Intended send time to saga end.
    pub end_to_end_ms: Percentiles,
    /// Each step's duration.
    pub steps_ms: BTreeMap<String, Percentiles>,
    /// Where the end-to-end time went, by segment (`load::Segments`).
    pub segments_ms: BTreeMap<String, Percentiles>,
    /// Cost per ended saga, when measured.
    pub cost_per_saga: Option<CostPerSaga>,
}

impl RunReport {
    /// Summarises a run.
    pub fn of(label: impl Into<String>, run: &RunResult, cost: Option<CostPerSaga>) -> Self {
        let (offered_rate, concurrency) = match run.mode {
            Mode::Rate(rate) => (Some(rate), None),
            Mode::Concurrency(workers) => (None, Some(workers)),
        };
        Self {
            label: label.into(),
            offered_rate,
            concurrency,
            sent: run.sent,
            placed: run.placed,
            errors: run.errors.clone(),
            completed: run.completed,
            compensated: run.compensated,
            compensation_failed: run.failed,
            outstanding: run.outstanding,
            wall_seconds: run.wall.as_secs_f64(),
            sagas_per_second: run.throughput(),
            end_to_end_ms: Percentiles::of(&run.end_to_end),
            steps_ms: run
                .steps
                .iter()
                .map(|(step, histogram)| (step.clone(), Percentiles::of(histogram)))
                .collect(),
            segments_ms: run
                .segments
                .iter()
                .map(|(segment, histogram)| (segment.clone(), Percentiles::of(histogram)))
                .collect(),
            cost_per_saga: cost,
        }
    }

    /// The run as lines of a table.
    pub fn print(&self) {
        let load = match (self.offered_rate, self.concurrency) {
            (Some(rate), _) => format!("{rate:.0}/s offered"),
            (_, Some(workers)) => format!("{workers} in flight"),
            _ => String::new(),
        };
        println!("\n{} ({load})", self.label);
        println!(
            "  orders  sent {}  placed {}  errors {:?}",
            self.sent, self.placed, self.errors
        );
        println!(
            "  sagas   completed {}  compensated {}  parked {}  outstanding {}  in {:.1} s  → {:.1} sagas/s",
            self.completed,
            self.compensated,
            self.compensation_failed,
            self.outstanding,
            self.wall_seconds,
            self.sagas_per_second
        );
        let p = &self.end_to_end_ms;
        println!(
            "  end to end   p50 {:>8.1} ms  p90 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
            p.p50, p.p90, p.p99, p.max
        );
        for (step, p) in &self.steps_ms {
            println!(
                "  {step:<22} p50 {:>7.1} ms  p99 {:>7.1} ms  ({} samples)",
                p.p50, p.p99, p.count
            );
        }
        for (segment, p) in &self.segments_ms {
            println!(
                "  {segment:<22} p50 {:>7.1} ms  p99 {:>7.1} ms",
                p.p50, p.p99
            );
        }
        if let Some(cost) = &self.cost_per_saga {
            println!(
                "  per saga     {:.1} PostgreSQL commits, {:.1} Kafka records, {:.1} gRPC calls",
                cost.commits, cost.kafka_records, cost.grpc_calls
            );
            println!("  commits      {}", breakdown(&cost.commits_by_database));
            println!("  records      {}", breakdown(&cost.kafka_records_by_topic));
            if !cost.kafka_hop_ms.is_empty() {
                println!("  hop ms       {}", breakdown(&cost.kafka_hop_ms));
            }
            if !cost.statements_by_database.is_empty() {
                let all =
                    cost.statements_by_database
                        .values()
                        .fold(Statements::default(), |sum, one| Statements {
                            calls: sum.calls + one.calls,
                            execution_ms: sum.execution_ms + one.execution_ms,
                            planning_ms: sum.planning_ms + one.planning_ms,
                        });
                let calls = cost
                    .statements_by_database
                    .iter()
                    .map(|(database, statements)| (database.clone(), statements.calls))
                    .collect();
                println!(
                    "  statements   {:.1} ({:.2} ms executing, {:.2} ms planning): {}",
                    all.calls,
                    all.execution_ms,
                    all.planning_ms,
                    breakdown(&calls)
                );
            }
            println!(
                "  CPU ms       {:.1} in all: {}",
                cost.cpu_ms_total(),
                breakdown(&cost.cpu_ms)
            );
            println!(
                "  harness      {:.1} CPU ms, not counted above: {}",
                cost.harness_cpu_ms.values().sum::<f64>(),
                breakdown(&cost.harness_cpu_ms)
            );
        }
    }
}

/// One step of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepStep {
    /// Offered rate.
    pub rate: f64,
    /// 1 for a rate's first step, 2 for the step that confirms it.
    pub trial: u32,
    /// Its p99 in ms.
    pub p99_ms: f64,
    /// Ended sagas per second.
    pub sagas_per_second: f64,
    /// p99 under the bound, no backlog, and 90 % of the offered rate completed.
    pub sustainable: bool,
}

/// What the stack costs while nothing happens, measured before the load.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// How long it was watched.
    pub seconds: f64,
    /// Share of one core used, in percent, by process: each service, all of PostgreSQL, the
    /// broker.
    pub cpu_percent: BTreeMap<String, f64>,
    /// Their sum.
    pub cpu_percent_total: f64,
    /// PostgreSQL commits per second, by database.
    pub commits_per_second: BTreeMap<String, f64>,
    /// Their sum.
    pub commits_per_second_total: f64,
    /// Kafka records produced per second.
    pub records_per_second: f64,
}

impl IdleReport {
    /// From what was spent over `seconds`.
    pub fn of(spent: Counters, cpu_ms: BTreeMap<String, f64>, seconds: f64) -> Self {
        let rate = |map: BTreeMap<String, f64>, scale: f64| -> BTreeMap<String, f64> {
            map.into_iter()
                .map(|(key, value)| (key, value * scale / seconds))
                .collect()
        };
        // CPU ms per second ÷ 1000 ms = share of one core; × 100 for percent.
        let cpu_percent = rate(cpu_ms, 0.1);
        Self {
            seconds,
            cpu_percent_total: cpu_percent.values().sum(),
            cpu_percent,
            commits_per_second_total: spent.commits / seconds,
            commits_per_second: rate(spent.commits_by_database, 1.0),
            records_per_second: spent.produced / seconds,
        }
    }

    /// The idle cost as lines of a table.
    pub fn print(&self) {
        println!("\nidle ({:.0} s, before the load)", self.seconds);
        println!(
            "  CPU          {:.1} % of one core: {}",
            self.cpu_percent_total,
            breakdown(&self.cpu_percent)
        );
        println!(
            "  commits/s    {:.1}: {}",
            self.commits_per_second_total,
            breakdown(&self.commits_per_second)
        );
        println!("  records/s    {:.1}", self.records_per_second);
    }
}

/// Everything measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// Seconds since the epoch.
    pub unix_time: u64,
    /// The command line.
    pub command: String,
    /// The stack's cost with no load, measured first.
    pub idle: Option<IdleReport>,
    /// Single runs, or the sweep's runs at fractions of the peak.
    pub runs: Vec<RunReport>,
    /// The sweep's ladder.
    pub sweep: Vec<SweepStep>,
    /// The highest rate that held twice in the sweep.
    pub peak_rate: Option<f64>,
    /// Whether the sweep's measured run at 100 % of the peak was sustainable too.
    pub peak_held: Option<bool>,
    /// The PostgreSQL server's settings that change what a run measures (autovacuum above all:
    /// without it every saga transition leaves a dead row that nothing removes).
    pub postgres_settings: BTreeMap<String, String>,
    /// pgbench simple-update TPS on this machine.
    pub pgbench_tps: Option<f64>,
    /// pgbench TPS ÷ commits per saga.
    pub commit_bound_sagas_per_second: Option<f64>,
    /// Throughput ÷ commit bound.
    pub commit_bound_fraction: Option<f64>,
    /// Highest resident memory seen per service under the load, KiB.
    pub peak_rss_kib: BTreeMap<String, u64>,
    /// Their sum, MiB.
    pub peak_rss_total_mib: f64,
}
