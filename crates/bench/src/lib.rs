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
        ..Report::default()
    };

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

/// Raises the rate by half a step at a time until p99 passes the bound or a backlog builds,
/// narrows the gap between the last sustainable rate and the first that was not with
/// [`REFINEMENTS`] steps between them, then measures latency at 25, 50, 75 and 100 % of the
/// highest sustainable rate.
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
        if sweep_step(clients, settings, rate, report).await? {
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
            // An overloaded step leaves a backlog behind that would be charged to the next.
            caught_up(&databases).await?;
            let rate = (low * high).sqrt();
            if sweep_step(clients, settings, rate, report).await? {
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
    Ok(at_peak)
}

/// Bisections between the last sustainable step of the sweep and the first that was not.
const REFINEMENTS: usize = 2;

/// One step of the sweep at `rate`: whether p99 stayed under the bound, nothing was left
/// outstanding and at least 90 % of the offered rate completed.
async fn sweep_step(
    clients: &Clients,
    settings: &Settings,
    rate: f64,
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
    let p99 = run.end_to_end.value_at_quantile(0.99) as f64 / 1000.0;
    let sustainable = p99 <= settings.p99_bound.as_secs_f64() * 1000.0
        && run.outstanding == 0
        && run.throughput() >= 0.9 * rate.min(run.sent as f64 / seconds);
    println!(
        "sweep {rate:>7.1}/s  p99 {p99:>9.1} ms  {:>7.1} sagas/s  {}",
        run.throughput(),
        if sustainable {
            "sustainable"
        } else {
            "not sustainable"
        }
    );
    report.sweep.push(SweepStep {
        rate,
        p99_ms: p99,
        sagas_per_second: run.throughput(),
        sustainable,
    });
    Ok(sustainable)
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
        println!("peak sustainable rate: {peak:.1} orders/s");
    }
}
