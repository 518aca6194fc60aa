//! `zentra-bench`: load on a running stack (`just up`), measured honestly: open-loop or
//! fixed-concurrency orders, end-to-end latency from each order's intended send time to its
//! saga's end in HDR histograms, per-step latency, cost per saga (PostgreSQL commits, Kafka
//! records, gRPC calls), the PostgreSQL commit bound from pgbench, and the services' memory.

pub mod audit;
pub mod chaos;
pub mod cost;
pub mod load;
pub mod pgbench;
pub mod report;
pub mod settings;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{
    cost::CostProbe,
    load::Clients,
    report::{CostPerSaga, IdleReport, Report, RunReport, SweepStep},
    settings::{Mode, Settings},
};

/// PostgreSQL publishes an idle backend's statistics within ten seconds.
const STATS_FLUSH: Duration = Duration::from_secs(11);

/// Runs the benchmark, prints the table and writes the JSON.
pub async fn run(settings: Settings, command: String) -> anyhow::Result<Report> {
    let clients = Clients::connect(&settings).await?;
    clients.ensure_product().await?;
    let probe = CostProbe::connect(&settings).await?;
    let pids = probe.pids.clone();
    let mut report = Report {
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or_default(),
        command,
        postgres_settings: probe.postgres_settings().await?,
        ..Report::default()
    };
    if report
        .postgres_settings
        .get("autovacuum")
        .is_some_and(|setting| setting == "off")
    {
        println!(
            "warning: this PostgreSQL runs with autovacuum off; every saga transition leaves a dead \
             row that nothing removes and a long run slows as they pile up (docs/BENCHMARKS.md). \
             deploy/local/bench-ab.sh switches it on for its run."
        );
    }

    if let Some(window) = settings.idle {
        let idle = measure_idle(&probe, window).await?;
        idle.print();
        report.idle = Some(idle);
    }

    let (stop_sampling, sampler) = cost::sample_memory(pids.clone());
    let measured = if settings.sweep {
        sweep(&clients, &settings, &probe, &mut report).await?
    } else {
        let run = measured_run(
            &clients,
            &settings,
            &probe,
            settings.mode,
            settings.count,
            settings.duration,
            "run",
        )
        .await?;
        report.runs.push(run.clone());
        Some(run)
    };
    let _ = stop_sampling.send(());
    let sampled = sampler.await.unwrap_or_default();
    for (service, pid) in &pids {
        let peak = sampled.get(service).copied().unwrap_or(0);
        let hwm = cost::memory_kib(*pid).map(|(_, hwm)| hwm).unwrap_or(0);
        // VmHWM covers start-up too; the sampled peak is the load's. Report the load's when
        // sampled, else the high-water mark.
        report
            .peak_rss_kib
            .insert((*service).to_owned(), if peak > 0 { peak } else { hwm });
    }
    report.peak_rss_total_mib = report.peak_rss_kib.values().sum::<u64>() as f64 / 1024.0;

    if settings.pgbench {
        println!(
            "\nrunning pgbench (simple-update) for {:?} on the same machine",
            settings.pgbench_duration
        );
        let tps = pgbench::commit_bound(&settings.pg_url, settings.pgbench_duration).await?;
        report.pgbench_tps = Some(tps);
        if let Some(run) = &measured
            && let Some(cost) = &run.cost_per_saga
            && cost.commits > 0.0
        {
            let bound = tps / cost.commits;
            report.commit_bound_sagas_per_second = Some(bound);
            report.commit_bound_fraction = Some(run.sagas_per_second / bound);
        }
    }
    print_summary(&report);
    if let Some(dir) = settings
        .json
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&settings.json, serde_json::to_string_pretty(&report)?)?;
    println!("\nJSON: {}", settings.json.display());
    Ok(report)
}

/// The stack's cost while it does nothing. Commit counts lag by up to PostgreSQL's statistics
/// interval at both ends alike, so over a steady idle window their difference is the rate.
async fn measure_idle(probe: &CostProbe, window: Duration) -> anyhow::Result<IdleReport> {
    println!("watching the idle stack for {window:?}");
    tokio::time::sleep(STATS_FLUSH).await;
    let before = probe.read().await?;
    let cpu_before = probe.cpu_ms();
    tokio::time::sleep(window).await;
    let cpu = cost::difference(probe.cpu_ms(), &cpu_before);
    let spent = probe.read().await?.since(&before);
    Ok(IdleReport::of(spent, cpu, window.as_secs_f64()))
}

/// One run with its cost measured around it.
async fn measured_run(
    clients: &Clients,
    settings: &Settings,
    probe: &CostProbe,
    mode: Mode,
    count: u64,
    duration: Duration,
    label: &str,
) -> anyhow::Result<RunReport> {
    tokio::time::sleep(STATS_FLUSH).await;
    let before = probe.read().await?;
    let cpu_before = probe.cpu_ms();
    let harness_before = cost::harness_cpu_ms();
    let run = load::run(clients, settings, mode, count, duration).await?;
    let cpu = cost::difference(probe.cpu_ms(), &cpu_before);
    let harness = cost::difference(cost::harness_cpu_ms(), &harness_before);
    println!("waiting {STATS_FLUSH:?} for PostgreSQL's statistics");
    tokio::time::sleep(STATS_FLUSH).await;
    let spent = probe.read().await?.since(&before);
    let ended = run.completed + run.compensated + run.failed;
    let report = RunReport::of(
        label,
        &run,
        Some(CostPerSaga::of(spent, cpu, harness, ended)),
    );
    report.print();
    Ok(report)
}

/// Waits (two minutes at most) until no saga is running or compensating and no mail is due.
async fn caught_up(databases: &audit::Databases) -> anyhow::Result<()> {
    use sea_orm::ConnectionTrait as _;
    let count = |db: &sea_orm::DatabaseConnection, sql: &'static str| {
        let db = db.clone();
        async move {
            let row = db
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    sql,
                ))
                .await?;
            anyhow::Ok(row.map_or(Ok(0), |row| row.try_get_by_index::<i64>(0))?)
        }
    };
    let started = std::time::Instant::now();
    let mut told = false;
    loop {
        let sagas = count(
            &databases.saga,
            "SELECT count(*) FROM sagas WHERE state IN ('RUNNING', 'COMPENSATING')",
        )
        .await?;
        let mails = count(
            &databases.notification,
            "SELECT count(*) FROM notifications WHERE status IN ('PENDING', 'RETRYING') \
               AND next_attempt_at <= now()",
        )
        .await?;
        if sagas == 0 && mails == 0 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            println!(
                "still {sagas} sagas running and {mails} mails due after 2 minutes; measuring anyway"
            );
            return Ok(());
        }
        if !told {
            println!("waiting for the stack to catch up: {sagas} sagas running, {mails} mails due");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Raises the rate by half a step at a time until a rate does not hold, narrows the gap between
/// the last rate that held and the first that did not with [`REFINEMENTS`] steps between them,
/// then measures latency at 25, 50, 75 and 100 % of the highest rate that held.
///
/// A rate holds when two steps at it, each on a stack that has caught up, are both sustainable
/// ([`Verdict`]): on a 2-core machine one 10 s step passes or fails on whether a checkpoint or an
/// autovacuum lands in it, and single steps put one build's peak 65 % apart (session 19).
async fn sweep(
    clients: &Clients,
    settings: &Settings,
    probe: &CostProbe,
    report: &mut Report,
) -> anyhow::Result<Option<RunReport>> {
    let databases = audit::Databases::connect(&settings.pg_url, &settings.db_prefix).await?;
    let mut rate = 10.0_f64;
    let mut peak = None;
    let mut failed = None;
    while rate <= 5000.0 {
        if holds(clients, settings, &databases, rate, report).await? {
            peak = Some(rate);
            rate *= 1.5;
        } else {
            failed = Some(rate);
            break;
        }
    }
    // A step of 1.5× leaves the peak known to a third of itself; each bisection halves that.
    if let (Some(mut low), Some(mut high)) = (peak, failed) {
        for _ in 0..REFINEMENTS {
            let rate = (low * high).sqrt();
            if holds(clients, settings, &databases, rate, report).await? {
                low = rate;
                peak = Some(rate);
            } else {
                high = rate;
            }
        }
    }
    report.peak_rate = peak;
    let Some(peak) = peak else {
        println!(
            "no rate kept p99 under {:?}: see the sweep's first step",
            settings.p99_bound
        );
        return Ok(None);
    };
    let seconds = settings.step.as_secs_f64();
    let mut at_peak = None;
    for percent in [25.0, 50.0, 75.0, 100.0] {
        // The step before (the sweep's overload above all) may have left sagas running and
        // mails waiting; measured alongside, they would be charged to this step's sagas.
        caught_up(&databases).await?;
        let rate = peak * percent / 100.0;
        let label = format!("{percent:.0} % of the peak ({rate:.1}/s)");
        let run = measured_run(
            clients,
            settings,
            probe,
            Mode::Rate(rate),
            (rate * seconds).ceil() as u64,
            settings.step,
            &label,
        )
        .await?;
        report.runs.push(run.clone());
        at_peak = Some(run);
    }
    // The run at 100 % is a third trial of the peak, with its cost measured: say whether it held.
    if let Some(run) = &at_peak {
        let verdict = Verdict::of(
            peak,
            settings,
            run.end_to_end_ms.p99,
            run.outstanding,
            run.sent,
            run.sagas_per_second,
        );
        report.peak_held = Some(verdict.sustainable());
        println!("the peak's own run: {verdict}");
    }
    Ok(at_peak)
}

/// Bisections between the last rate of the sweep that held and the first that did not.
const REFINEMENTS: usize = 2;

/// Whether `rate` holds: a step at it is sustainable, and so is a second one after the stack
/// has caught up. A step that fails is not repeated.
async fn holds(
    clients: &Clients,
    settings: &Settings,
    databases: &audit::Databases,
    rate: f64,
    report: &mut Report,
) -> anyhow::Result<bool> {
    for trial in 1..=2 {
        // An overloaded or lucky step leaves a backlog behind that would be charged to the next.
        caught_up(databases).await?;
        if !sweep_step(clients, settings, rate, trial, report).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The judgement of one step: sustainable when p99 stayed under the bound, nothing was left
/// outstanding and at least 90 % of the offered rate (or of what was sent, when the sender fell
/// behind) completed.
struct Verdict {
    rate: f64,
    p99_ms: f64,
    p99_bound_ms: f64,
    outstanding: u64,
    sagas_per_second: f64,
    expected: f64,
}

impl Verdict {
    fn of(
        rate: f64,
        settings: &Settings,
        p99_ms: f64,
        outstanding: u64,
        sent: u64,
        sagas_per_second: f64,
    ) -> Self {
        Self {
            rate,
            p99_ms,
            p99_bound_ms: settings.p99_bound.as_secs_f64() * 1000.0,
            outstanding,
            sagas_per_second,
            expected: 0.9 * rate.min(sent as f64 / settings.step.as_secs_f64()),
        }
    }

    fn sustainable(&self) -> bool {
        self.p99_ms <= self.p99_bound_ms
            && self.outstanding == 0
            && self.sagas_per_second >= self.expected
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>7.1}/s  p99 {:>9.1} ms  {:>7.1} sagas/s  ",
            self.rate, self.p99_ms, self.sagas_per_second
        )?;
        if self.sustainable() {
            return f.write_str("sustainable");
        }
        let mut reasons = Vec::new();
        if self.p99_ms > self.p99_bound_ms {
            reasons.push("p99 over the bound".to_owned());
        }
        if self.outstanding > 0 {
            reasons.push(format!("{} sagas outstanding", self.outstanding));
        }
        if self.sagas_per_second < self.expected {
            reasons.push("under 90 % of the offered rate completed".to_owned());
        }
        write!(f, "not sustainable ({})", reasons.join(", "))
    }
}

/// One step of the sweep at `rate`, its `trial`th: whether it was sustainable ([`Verdict`]).
async fn sweep_step(
    clients: &Clients,
    settings: &Settings,
    rate: f64,
    trial: u32,
    report: &mut Report,
) -> anyhow::Result<bool> {
    let seconds = settings.step.as_secs_f64();
    let run = load::run(
        clients,
        settings,
        Mode::Rate(rate),
        (rate * seconds).ceil() as u64,
        settings.step,
    )
    .await?;
    let verdict = Verdict::of(
        rate,
        settings,
        run.end_to_end.value_at_quantile(0.99) as f64 / 1000.0,
        run.outstanding,
        run.sent,
        run.throughput(),
    );
    println!("sweep {verdict}{}", if trial > 1 { ", again" } else { "" });
    report.sweep.push(SweepStep {
        rate,
        trial,
        p99_ms: verdict.p99_ms,
        sagas_per_second: verdict.sagas_per_second,
        sustainable: verdict.sustainable(),
    });
    Ok(verdict.sustainable())
}

fn print_summary(report: &Report) {
    println!("\nmemory (peak resident under load)");
    for (service, kib) in &report.peak_rss_kib {
        println!("  {service:<13} {:>7.1} MiB", *kib as f64 / 1024.0);
    }
    println!("  {:<13} {:>7.1} MiB", "all", report.peak_rss_total_mib);
    if let (Some(tps), Some(bound), Some(fraction)) = (
        report.pgbench_tps,
        report.commit_bound_sagas_per_second,
        report.commit_bound_fraction,
    ) {
        println!(
            "\ncommit bound: pgbench {tps:.0} TPS ÷ commits per saga = {bound:.0} sagas/s; the platform reached {:.0} % of it",
            fraction * 100.0
        );
    }
    if let Some(peak) = report.peak_rate {
        let held = match report.peak_held {
            Some(true) => " (its own run held)",
            Some(false) => " (its own run did NOT hold: see the 100 % run)",
            None => "",
        };
        println!("peak sustainable rate: {peak:.1} orders/s{held}");
    }
}
