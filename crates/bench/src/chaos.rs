//! `zentra-chaos` (`just chaos`): a chaos audit of a running stack. It places orders through the
//! gateway with a mix of scenarios (approved, declined, insufficient funds, a transient processor
//! failure, out of stock on a five-unit SKU, customers cancelling at random moments), meanwhile
//! kills every service, the orchestrator and the broker with SIGKILL in turn and freezes one
//! participant (SIGSTOP, then SIGCONT) for longer than its timeout. Then it waits, for a bounded
//! time, until every saga has ended, audits the six databases ([`crate::audit`]) and prints how
//! long each killed process took to consume again. Any violation makes the exit code non-zero.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait as _, DatabaseConnection, DbBackend, Statement};
use tokio::task::JoinSet;
use tonic::{Code, Request, service::interceptor::InterceptedService, transport::Channel};
use zentra_proto::{
    common::v1::{Address, Money},
    inventory::v1::{self as inventory, inventory_service_client::InventoryServiceClient},
    ops::v1::{GetBuildInfoRequest, GetHealthSummaryRequest, ops_service_client::OpsServiceClient},
    order::v1::{self as order, order_service_client::OrderServiceClient},
};

use crate::{
    audit::{self, Databases, Placed},
    settings::SERVICES,
};

mod settings;

pub use settings::ChaosSettings;

/// Services whose consumers hold partition leases, with their consumer member ids in `just up`.
const CONSUMING: [&str; 5] = [
    "inventory",
    "payment",
    "fulfillment",
    "notification",
    "saga",
];

type KeyedChannel = InterceptedService<Channel, ApiKey>;

/// Adds the operator's key to every call through the gateway.
#[derive(Clone)]
pub struct ApiKey(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for ApiKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        request.metadata_mut().insert("x-api-key", self.0.clone());
        Ok(request)
    }
}

/// What the load did with one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    Approve,
    Decline,
    InsufficientFunds,
    Transient,
    OutOfStock,
    CancelSoon,
    CancelLate,
}

impl Scenario {
    fn of(index: u64) -> Self {
        match index % 10 {
            4 => Self::Decline,
            5 => Self::InsufficientFunds,
            6 => Self::Transient,
            7 => Self::OutOfStock,
            8 => Self::CancelSoon,
            9 => Self::CancelLate,
            _ => Self::Approve,
        }
    }

    fn token(self) -> &'static str {
        match self {
            Self::Decline => "tok_decline",
            Self::InsufficientFunds => "tok_insufficient_funds",
            Self::Transient => "tok_transient",
            _ => "tok_approve",
        }
    }
}

/// A fault the run applied, and how the platform came back from it.
#[derive(Debug, Clone)]
struct Fault {
    target: String,
    what: &'static str,
    at: Duration,
    /// Until the target's consumers held their partitions again (services that consume).
    resumed: Option<Duration>,
    /// Until every service reported SERVING again.
    healthy: Option<Duration>,
}

/// How long, once every saga ended, effects that follow a saga's end may take to appear.
const TRAILING_EFFECTS: Duration = Duration::from_secs(30);

/// Runs the audit; `Ok(true)` when nothing was violated.
pub async fn run(settings: ChaosSettings) -> anyhow::Result<bool> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_ascii_uppercase();
    let gateway = Channel::from_shared(format!("http://127.0.0.1:{}", settings.gateway_port))?
        .connect()
        .await
        .map_err(|error| {
            anyhow::anyhow!("cannot reach the gateway: {error} (is `just up` running?)")
        })?;
    let key = ApiKey(settings.operator_key()?.parse()?);
    let orders = OrderServiceClient::with_interceptor(gateway.clone(), key.clone());
    let products = InventoryServiceClient::with_interceptor(gateway, key);
    let main_sku = format!("CHAOS-{run_id}-MUG");
    let small_sku = format!("CHAOS-{run_id}-FIVE");
    let skus = vec![(main_sku.clone(), 100_000), (small_sku.clone(), 5)];
    for (sku, stock) in &skus {
        create_product(products.clone(), sku, *stock).await?;
    }
    let databases = Databases::connect(&settings.pg_url, &settings.db_prefix).await?;
    if settings.kill.iter().any(|target| target == "broker") {
        check_broker_supervised(&settings).await?;
    }

    println!(
        "chaos {run_id}: {} orders at {}/s; killing {} in turn{}",
        settings.count,
        settings.rate,
        settings.kill.join(", "),
        settings
            .freeze
            .as_ref()
            .map(|(target, time)| format!("; freezing {target} for {}s", time.as_secs()))
            .unwrap_or_default()
    );
    let started = Instant::now();
    let load_time = Duration::from_secs_f64(settings.count as f64 / settings.rate);
    let faults = tokio::spawn(inflict(settings.clone(), started, load_time));
    let placed = load(orders, &settings, &main_sku, &small_sku).await;
    let load_end = started.elapsed();
    let faults = faults.await??;
    // Sagas cannot end while a participant is frozen: the bound counts from the later of the
    // load's end and the last fault's end.
    let quiet_from = started.elapsed().max(load_end);
    println!(
        "load done in {:.1}s: {} orders accepted; waiting up to {}s for every saga to end",
        load_end.as_secs_f64(),
        placed.len(),
        settings.settle.as_secs()
    );
    let ids: Vec<uuid::Uuid> = placed.iter().map(|(id, _)| *id).collect();
    let settled = settle(&databases.saga, &ids, settings.settle).await?;
    let terminal_after = started.elapsed().saturating_sub(quiet_from);
    // Some effects trail a saga's end: a confirmation's mail is taken in after the order's
    // event reaches notification. The audit is repeated until it finds nothing, for a while;
    // what it still finds then (a double, a loss) is a violation.
    let placed_ids = Placed { orders: ids, skus };
    let trailing = Instant::now();
    let report = loop {
        let report = audit::audit(&databases, &placed_ids).await?;
        if report.violations() == 0 || trailing.elapsed() >= TRAILING_EFFECTS {
            break report;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    print_faults(&faults);
    println!("\n{}", report.table());
    let mut by_scenario: BTreeMap<Scenario, usize> = BTreeMap::new();
    for (_, scenario) in &placed {
        *by_scenario.entry(*scenario).or_default() += 1;
    }
    println!("orders by scenario: {by_scenario:?}");
    println!("sagas by state: {:?}", report.sagas_by_state);
    let mut problems = report.violations();
    if settled {
        println!(
            "every saga ended {:.1}s after the load and the faults ended",
            terminal_after.as_secs_f64()
        );
        if terminal_after > settings.terminal_bound {
            println!(
                "VIOLATION: sagas ended later than {}s after the load",
                settings.terminal_bound.as_secs()
            );
            problems += 1;
        }
    } else {
        println!(
            "VIOLATION: sagas still open after {}s",
            settings.settle.as_secs()
        );
        problems += 1;
    }
    for fault in &faults {
        let late = fault
            .resumed
            .is_none_or(|resumed| resumed > settings.resume_bound);
        if fault.what == "SIGKILL" && CONSUMING.contains(&fault.target.as_str()) && late {
            println!(
                "VIOLATION: {}'s consumers did not resume within {}s",
                fault.target,
                settings.resume_bound.as_secs()
            );
            problems += 1;
        }
    }
    println!(
        "{}",
        if problems == 0 {
            "chaos audit: no violation".to_owned()
        } else {
            format!("chaos audit: {problems} violation(s)")
        }
    );
    Ok(problems == 0)
}

async fn create_product(
    client: InventoryServiceClient<KeyedChannel>,
    sku: &str,
    stock: i64,
) -> anyhow::Result<()> {
    let request = inventory::CreateProductRequest {
        sku: sku.to_owned(),
        name: format!("Chaos {sku}"),
        initial_stock: stock,
        low_stock_threshold: 0,
        unit_price: Some(usd(1299)),
        idempotency_key: format!("chaos-{sku}"),
    };
    retry(Duration::from_secs(60), || {
        let request = request.clone();
        let mut client = client.clone();
        async move { client.create_product(request).await.map(drop) }
    })
    .await
    .map_err(|status| anyhow::anyhow!("creating {sku}: {status}"))
}

fn usd(amount_minor: i64) -> Money {
    Money {
        currency_code: "USD".to_owned(),
        amount_minor,
    }
}

/// Calls `call` until it answers something other than a retryable status, or `budget` passes.
async fn retry<F, Fut>(budget: Duration, mut call: F) -> Result<(), tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let started = Instant::now();
    loop {
        match call().await {
            Ok(()) => return Ok(()),
            Err(status)
                if matches!(
                    status.code(),
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::Unknown
                        | Code::Internal
                        | Code::Aborted
                        | Code::ResourceExhausted
                        | Code::Cancelled
                ) && started.elapsed() < budget =>
            {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(status) => return Err(status),
        }
    }
}

/// Places the orders at the configured rate; returns the accepted ones with their scenario.
async fn load(
    orders: OrderServiceClient<KeyedChannel>,
    settings: &ChaosSettings,
    main_sku: &str,
    small_sku: &str,
) -> Vec<(uuid::Uuid, Scenario)> {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / settings.rate));
    for index in 0..settings.count {
        ticker.tick().await;
        let scenario = Scenario::of(index);
        let sku = if scenario == Scenario::OutOfStock {
            small_sku
        } else {
            main_sku
        };
        let request = order::PlaceOrderRequest {
            customer_id: format!("chaos-{}", index % 50),
            customer_email: format!("chaos-{}@customers.zentra.test", index % 50),
            shipping_address: Some(Address {
                recipient: "Chaos Customer".to_owned(),
                lines: vec!["1 Fault Street".to_owned()],
                city: "Killville".to_owned(),
                region: String::new(),
                postal_code: "12345".to_owned(),
                country_code: "US".to_owned(),
            }),
            lines: vec![order::OrderLine {
                sku: sku.to_owned(),
                quantity: 1,
                unit_price: None,
                line_total: None,
            }],
            currency_code: "USD".to_owned(),
            payment_method_token: scenario.token().to_owned(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        };
        let client = orders.clone();
        let accepted = Arc::clone(&accepted);
        tasks.spawn(async move {
            let Some(order_id) = place(client.clone(), request).await else {
                return;
            };
            if let Ok(mut accepted) = accepted.lock() {
                accepted.push((order_id, scenario));
            }
            let wait = match scenario {
                Scenario::CancelSoon => Duration::from_millis(rand_below(1500)),
                Scenario::CancelLate => Duration::from_millis(1500 + rand_below(4500)),
                _ => return,
            };
            tokio::time::sleep(wait).await;
            cancel(client, order_id).await;
        });
    }
    while tasks.join_next().await.is_some() {}
    accepted.lock().map(|a| a.clone()).unwrap_or_default()
}

fn rand_below(limit: u64) -> u64 {
    u64::from(uuid::Uuid::new_v4().as_fields().0) % limit.max(1)
}

/// Places one order, retrying under its key through restarts; `None` when it was refused.
async fn place(
    client: OrderServiceClient<KeyedChannel>,
    request: order::PlaceOrderRequest,
) -> Option<uuid::Uuid> {
    let placed = Arc::new(Mutex::new(None));
    let result = retry(Duration::from_secs(120), || {
        let mut client = client.clone();
        let request = request.clone();
        let placed = Arc::clone(&placed);
        async move {
            let response = client.place_order(request).await?.into_inner();
            let id = response
                .order
                .and_then(|order| uuid::Uuid::parse_str(&order.order_id).ok());
            if let Ok(mut placed) = placed.lock() {
                *placed = id;
            }
            Ok(())
        }
    })
    .await;
    if let Err(status) = result {
        eprintln!("chaos: an order was refused: {status}");
        return None;
    }
    placed.lock().ok().and_then(|placed| *placed)
}

async fn cancel(client: OrderServiceClient<KeyedChannel>, order_id: uuid::Uuid) {
    let request = order::CancelOrderRequest {
        order_id: order_id.to_string(),
        reason: "chaos: the customer changed their mind".to_owned(),
        expected_version: 0,
        idempotency_key: format!("chaos-cancel-{order_id}"),
    };
    let result = retry(Duration::from_secs(60), || {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.cancel_order(request).await.map(drop) }
    })
    .await;
    // Too late (already confirmed or rejected) is an answer, not a failure.
    if let Err(status) = result
        && status.code() != Code::FailedPrecondition
    {
        eprintln!("chaos: cancelling {order_id} failed: {status}");
    }
}

/// Kills each target in turn over the first two thirds of the load, then freezes one; records
/// how each came back.
async fn inflict(
    settings: ChaosSettings,
    started: Instant,
    load_time: Duration,
) -> anyhow::Result<Vec<Fault>> {
    let mut faults = Vec::new();
    let databases = Databases::connect(&settings.pg_url, &settings.db_prefix).await?;
    let gap = load_time.mul_f64(0.66) / u32::try_from(settings.kill.len() + 1).unwrap_or(1);
    for target in &settings.kill {
        tokio::time::sleep(gap).await;
        let Some(pid) = pid_of(&settings, target).await else {
            eprintln!("chaos: no process found for {target}; not killed");
            continue;
        };
        let at = started.elapsed();
        let member = format!("stack-{target}");
        let before = db_now(&databases.order).await?;
        signal(pid, "KILL").await?;
        println!("{:>6.1}s  SIGKILL {target} (pid {pid})", at.as_secs_f64());
        let clock = Instant::now();
        let resumed = if CONSUMING.contains(&target.as_str()) {
            let db = service_db(&databases, target);
            wait_resumed(db, &member, before, Duration::from_secs(60)).await?
        } else {
            None
        };
        let healthy = wait_healthy(&settings, Duration::from_secs(90)).await;
        faults.push(Fault {
            target: target.clone(),
            what: "SIGKILL",
            at,
            resumed,
            healthy: healthy.then(|| clock.elapsed()),
        });
    }
    if let Some((target, duration)) = &settings.freeze
        && let Some(pid) = pid_of(&settings, target).await
    {
        let at = started.elapsed();
        signal(pid, "STOP").await?;
        println!(
            "{:>6.1}s  SIGSTOP {target} (pid {pid}) for {}s",
            at.as_secs_f64(),
            duration.as_secs()
        );
        tokio::time::sleep(*duration).await;
        signal(pid, "CONT").await?;
        let clock = Instant::now();
        let healthy = wait_healthy(&settings, Duration::from_secs(90)).await;
        faults.push(Fault {
            target: target.clone(),
            what: "SIGSTOP",
            at,
            resumed: None,
            healthy: healthy.then(|| clock.elapsed()),
        });
    }
    Ok(faults)
}

fn service_db<'a>(databases: &'a Databases, service: &str) -> &'a DatabaseConnection {
    match service {
        "inventory" => &databases.inventory,
        "payment" => &databases.payment,
        "fulfillment" => &databases.fulfillment,
        "notification" => &databases.notification,
        "saga" => &databases.saga,
        _ => &databases.order,
    }
}

async fn db_now(db: &DatabaseConnection) -> anyhow::Result<f64> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT extract(epoch FROM now())::float8 AS now",
        ))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no clock"))?;
    Ok(row.try_get("", "now")?)
}

/// Waits until `member` holds live leases taken after `since` (epoch seconds) and no partition of
/// its groups is left unowned; returns the time it took, or `None` past `budget`.
async fn wait_resumed(
    db: &DatabaseConnection,
    member: &str,
    since: f64,
    budget: Duration,
) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    while started.elapsed() < budget {
        let row = db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT count(*) FILTER (WHERE owner = $1 AND lease_until > now() \
                                          AND extract(epoch FROM updated_at) > $2) AS taken, \
                        count(*) FILTER (WHERE owner IS NULL OR lease_until <= now()) AS unowned \
                 FROM consumer_partitions",
                [member.into(), since.into()],
            ))
            .await?;
        if let Some(row) = row {
            let taken: i64 = row.try_get("", "taken")?;
            let unowned: i64 = row.try_get("", "unowned")?;
            if taken > 0 && unowned == 0 {
                return Ok(Some(started.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(None)
}

/// Waits until every service answers its health summary with SERVING.
async fn wait_healthy(settings: &ChaosSettings, budget: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < budget {
        let mut all = true;
        for (_, offset) in SERVICES {
            let serving = match settings.channel(offset).await {
                Ok(channel) => OpsServiceClient::new(channel)
                    .get_health_summary(GetHealthSummaryRequest {})
                    .await
                    .is_ok_and(|summary| {
                        summary.into_inner().status
                            == zentra_proto::ops::v1::HealthStatus::Serving as i32
                    }),
                Err(_) => false,
            };
            all &= serving;
        }
        if all {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Refuses to kill a broker that nothing would restart: one the stack found already listening
/// (started by `just infra` for the tests) is not its child, and killing it would measure a
/// broker that never comes back instead of a crash.
async fn check_broker_supervised(settings: &ChaosSettings) -> anyhow::Result<()> {
    let Some(pid) = pid_of(settings, "broker").await else {
        anyhow::bail!(
            "no broker process listens on 127.0.0.1:{}; is `just up` running?",
            settings.kafka_port
        );
    };
    let parent = parent_of(pid).unwrap_or_default();
    let parent_cmdline = std::fs::read(format!("/proc/{parent}/cmdline")).unwrap_or_default();
    anyhow::ensure!(
        String::from_utf8_lossy(&parent_cmdline).contains("zentra-stack"),
        "the broker on 127.0.0.1:{} (pid {pid}) was not started by `just up`, so nothing would \
         restart it after a kill: stop it (`just infra-down`) and restart `just up`, or leave the \
         broker out (--kill inventory,order,payment,fulfillment,notification,saga)",
        settings.kafka_port
    );
    Ok(())
}

/// The parent process id, from `/proc/<pid>/stat` (the fields after the command's closing
/// parenthesis: state, then the parent's id).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after) = stat.rsplit_once(')')?;
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The process id of a service (from its build info) or of the broker (from `/proc`).
async fn pid_of(settings: &ChaosSettings, target: &str) -> Option<u32> {
    if target == "broker" {
        let needle = format!("127.0.0.1:{}", settings.kafka_port);
        let entries = std::fs::read_dir("/proc").ok()?;
        return entries.flatten().find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains("tansu") && cmdline.contains(" broker ") && cmdline.contains(&needle))
                .then_some(pid)
        });
    }
    let offset = SERVICES.iter().find(|(name, _)| *name == target)?.1;
    let mut client = OpsServiceClient::new(settings.channel(offset).await.ok()?);
    let info = client.get_build_info(GetBuildInfoRequest {}).await.ok()?;
    Some(info.into_inner().pid)
}

async fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

/// Waits until the placed orders all have a saga in a state the engine no longer drives.
async fn settle(
    saga: &DatabaseConnection,
    orders: &[uuid::Uuid],
    budget: Duration,
) -> anyhow::Result<bool> {
    let ids: Vec<String> = orders.iter().map(ToString::to_string).collect();
    let started = Instant::now();
    loop {
        let row = saga
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT count(*) FILTER (WHERE state IN ('COMPLETED', 'COMPENSATED', 'COMPENSATION_FAILED')) AS ended \
                 FROM sagas WHERE order_id = ANY($1::text[]::uuid[])",
                [ids.clone().into()],
            ))
            .await?;
        let ended: i64 = match row {
            Some(row) => row.try_get("", "ended")?,
            None => 0,
        };
        if usize::try_from(ended).unwrap_or(0) >= ids.len() {
            return Ok(true);
        }
        if started.elapsed() > budget {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_faults(faults: &[Fault]) {
    println!(
        "\n{:<14} {:<8} {:>8} {:>20} {:>20}",
        "target", "fault", "at", "consuming again after", "all SERVING after"
    );
    for fault in faults {
        let seconds = |d: Option<Duration>| {
            d.map_or_else(|| "—".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()))
        };
        println!(
            "{:<14} {:<8} {:>7.1}s {:>20} {:>20}",
            fault.target,
            fault.what,
            fault.at.as_secs_f64(),
            seconds(fault.resumed),
            seconds(fault.healthy)
        );
    }
}
