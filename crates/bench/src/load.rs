//! The load: orders placed on the order service at a fixed rate (open loop) or a fixed number in
//! flight (closed loop), each followed to its saga's end through the saga's WatchSagas stream.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use tokio::{sync::oneshot, task::JoinSet, time::Instant};
use tonic::transport::Channel;
use zentra_proto::{
    common::v1::{Address, Money},
    inventory::v1::{self as inventory, inventory_service_client::InventoryServiceClient},
    order::v1::{self as order, order_service_client::OrderServiceClient},
    saga::v1::{self as saga, saga_service_client::SagaServiceClient},
};

use crate::settings::{Mode, Settings};

/// The benchmark's product: stock enough for any run.
pub const SKU: &str = "BENCH-1";

/// Latencies are kept in microseconds, up to an hour, to three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// How it sent.
    pub mode: Mode,
    /// Orders sent.
    pub sent: u64,
    /// Orders the order service accepted.
    pub placed: u64,
    /// PlaceOrder failures by status code.
    pub errors: BTreeMap<String, u64>,
    /// Sagas that completed.
    pub completed: u64,
    /// Sagas that compensated.
    pub compensated: u64,
    /// Sagas parked as COMPENSATION_FAILED.
    pub failed: u64,
    /// Placed orders whose saga had not ended when the run stopped waiting.
    pub outstanding: u64,
    /// From the first send to the last saga's end.
    pub wall: Duration,
    /// End to end: intended send time to the saga's end, in µs.
    pub end_to_end: Histogram<u64>,
    /// Each step: first attempt's start to last attempt's end, in µs.
    pub steps: BTreeMap<String, Histogram<u64>>,
    /// Where a saga's end-to-end time went, by segment (see [`Segments`]), in µs.
    pub segments: BTreeMap<String, Histogram<u64>>,
}

impl RunResult {
    /// Sagas that ended per second of the run.
    pub fn throughput(&self) -> f64 {
        (self.completed + self.compensated + self.failed) as f64 / self.wall.as_secs_f64().max(1e-3)
    }
}

enum Tracked {
    /// Placed, waiting for its saga.
    Waiting {
        intended: Instant,
        done: Option<oneshot::Sender<()>>,
    },
    /// Its saga ended before the placement's answer arrived.
    Ended { at: Instant, saga: saga::Saga },
    /// Counted; another watch stream's report of its end is a duplicate.
    Recorded,
}

#[derive(Default)]
struct Ledger {
    orders: HashMap<String, Tracked>,
    end_to_end: Option<Histogram<u64>>,
    steps: BTreeMap<String, Histogram<u64>>,
    segments: BTreeMap<String, Histogram<u64>>,
    completed: u64,
    compensated: u64,
    failed: u64,
    last_end: Option<Instant>,
}

impl Ledger {
    fn record(&mut self, intended: Instant, at: Instant, ended: &saga::Saga) {
        let micros = at.saturating_duration_since(intended).as_micros() as u64;
        let _ = self
            .end_to_end
            .get_or_insert_with(histogram)
            .record(micros.max(1));
        for step in &ended.steps {
            let (Some(first), Some(last)) = (step.attempts.first(), step.attempts.last()) else {
                continue;
            };
            let (Some(start), Some(end)) = (&first.start_time, &last.end_time) else {
                continue;
            };
            let micros = micros_between(start, end);
            let name = saga::SagaStepType::try_from(step.step)
                .map(|step| {
                    step.as_str_name()
                        .trim_start_matches("SAGA_STEP_TYPE_")
                        .to_owned()
                })
                .unwrap_or_default();
            let _ = self
                .steps
                .entry(name)
                .or_insert_with(histogram)
                .record(micros.max(1));
        }
        // The intended send time on the wall clock, which the saga's timestamps use.
        let intended_wall = std::time::SystemTime::now()
            .checked_sub(Instant::now().saturating_duration_since(intended))
            .unwrap_or(std::time::UNIX_EPOCH);
        let seen_wall = std::time::SystemTime::now()
            .checked_sub(Instant::now().saturating_duration_since(at))
            .unwrap_or(std::time::UNIX_EPOCH);
        if let Some(segments) = Segments::of(ended, intended_wall, seen_wall) {
            for (name, micros) in segments.named() {
                let _ = self
                    .segments
                    .entry(name.to_owned())
                    .or_insert_with(histogram)
                    .record(micros.max(1));
            }
        }
        match saga::SagaState::try_from(ended.state) {
            Ok(saga::SagaState::Completed) => self.completed += 1,
            Ok(saga::SagaState::Compensated) => self.compensated += 1,
            _ => self.failed += 1,
        }
        self.last_end = Some(at);
    }
}

/// Where one saga's end-to-end time went, in µs. The segments add up to the end-to-end time
/// (up to clock rounding): the hop from the order to the saga, the engine's own time before and
/// between calls, the calls themselves, the wait for the shipment (its creation to the next
/// step: the worker, `ShipmentDispatched` over Kafka, the signal), and the last call to the end
/// being seen on the watch stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    /// Intended send time to the saga's creation: PlaceOrder, the outbox relay, the broker, the
    /// saga's intake.
    pub to_saga: u64,
    /// Creation to the first call's start: claim and the written-ahead intent.
    pub to_first_call: u64,
    /// Every step's first attempt start to last attempt end, summed.
    pub calls: u64,
    /// CREATE_SHIPMENT's end to the next step's start.
    pub shipment: u64,
    /// The other gaps between one step's end and the next one's start.
    pub between_calls: u64,
    /// The last step's end to the end being seen by the bench.
    pub to_seen: u64,
}

fn micros_between(from: &prost_types::Timestamp, to: &prost_types::Timestamp) -> u64 {
    let micros = (to.seconds - from.seconds) * 1_000_000 + i64::from(to.nanos - from.nanos) / 1000;
    u64::try_from(micros).unwrap_or(0)
}

fn timestamp(at: std::time::SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(at)
}

impl Segments {
    /// The segments of an ended saga placed at `intended` and seen ended at `seen`; `None` for
    /// a saga without a timed step.
    pub fn of(
        saga: &saga::Saga,
        intended: std::time::SystemTime,
        seen: std::time::SystemTime,
    ) -> Option<Self> {
        let created = saga.create_time.as_ref()?;
        let spans: Vec<(i32, &prost_types::Timestamp, &prost_types::Timestamp)> = saga
            .steps
            .iter()
            .filter_map(|step| {
                let start = step.attempts.first()?.start_time.as_ref()?;
                let end = step.attempts.last()?.end_time.as_ref()?;
                Some((step.step, start, end))
            })
            .collect();
        let (first, last) = (spans.first()?, spans.last()?);
        let mut segments = Self {
            to_saga: micros_between(&timestamp(intended), created),
            to_first_call: micros_between(created, first.1),
            to_seen: micros_between(last.2, &timestamp(seen)),
            ..Self::default()
        };
        for (index, (step, start, end)) in spans.iter().enumerate() {
            segments.calls += micros_between(start, end);
            if let Some((_, next_start, _)) = spans.get(index + 1) {
                let gap = micros_between(end, next_start);
                if *step == saga::SagaStepType::CreateShipment as i32 {
                    segments.shipment += gap;
                } else {
                    segments.between_calls += gap;
                }
            }
        }
        Some(segments)
    }

    /// Each segment with its name, in the order they happen.
    pub fn named(&self) -> [(&'static str, u64); 6] {
        [
            ("1 order to saga", self.to_saga),
            ("2 saga to first call", self.to_first_call),
            ("3 calls", self.calls),
            ("4 between calls", self.between_calls),
            ("5 shipment", self.shipment),
            ("6 last call to seen", self.to_seen),
        ]
    }
}

fn ended(state: i32) -> bool {
    matches!(
        saga::SagaState::try_from(state),
        Ok(saga::SagaState::Completed
            | saga::SagaState::Compensated
            | saga::SagaState::CompensationFailed)
    )
}

/// Connections to the services the load uses.
#[derive(Clone)]
pub struct Clients {
    orders: Vec<OrderServiceClient<Channel>>,
    /// Every orchestrator instance: each streams the changes it makes itself at once.
    sagas: Vec<SagaServiceClient<Channel>>,
    inventory: InventoryServiceClient<Channel>,
}

impl Clients {
    /// Connects to `just up`'s services (several HTTP/2 connections for the orders).
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let mut orders = Vec::new();
        for _ in 0..4 {
            orders.push(OrderServiceClient::new(settings.channel(2).await?));
        }
        let mut sagas = vec![SagaServiceClient::new(settings.channel(6).await?)];
        // A second orchestrator (`ZENTRA_STACK_SAGA_INSTANCES=2`), when one runs.
        if let Ok(second) = settings.channel(crate::settings::SAGA_REPLICA.1).await {
            sagas.push(SagaServiceClient::new(second));
        }
        Ok(Self {
            orders,
            sagas,
            inventory: InventoryServiceClient::new(settings.channel(1).await?),
        })
    }

    /// Creates the benchmark's product once (idempotent by its fixed key).
    pub async fn ensure_product(&self) -> anyhow::Result<()> {
        let created = self
            .inventory
            .clone()
            .create_product(inventory::CreateProductRequest {
                sku: SKU.to_owned(),
                name: "Benchmark mug".to_owned(),
                initial_stock: 1_000_000_000,
                low_stock_threshold: 0,
                unit_price: Some(Money {
                    currency_code: "USD".to_owned(),
                    amount_minor: 1299,
                }),
                idempotency_key: "zentra-bench-product".to_owned(),
            })
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(status) => Err(anyhow::anyhow!("creating the product: {status}")),
        }
    }
}

fn order_request(index: u64, declined_percent: u32) -> order::PlaceOrderRequest {
    // Spread evenly: order i is declined when the running share of declines steps up at i.
    let percent = u64::from(declined_percent);
    let declined = (index + 1) * percent / 100 > index * percent / 100;
    order::PlaceOrderRequest {
        customer_id: format!("bench-{}", index % 1000),
        customer_email: format!("bench-{}@customers.zentra.test", index % 1000),
        shipping_address: Some(Address {
            recipient: "Bench Customer".to_owned(),
            lines: vec!["1 Load Street".to_owned()],
            city: "Benchville".to_owned(),
            region: String::new(),
            postal_code: "12345".to_owned(),
            country_code: "US".to_owned(),
        }),
        // Priced by the order service from the catalogue.
        lines: vec![order::OrderLine {
            sku: SKU.to_owned(),
            quantity: 1,
            unit_price: None,
            line_total: None,
        }],
        currency_code: "USD".to_owned(),
        payment_method_token: if declined {
            "tok_decline"
        } else {
            "tok_approve"
        }
        .to_owned(),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
    }
}

/// Runs one load in `mode` and waits for its sagas.
pub async fn run(
    clients: &Clients,
    settings: &Settings,
    mode: Mode,
    count: u64,
    duration: Duration,
) -> anyhow::Result<RunResult> {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    // Follow every saga transition, on every instance, from before the first order.
    let mut watchers = JoinSet::new();
    for client in &clients.sagas {
        let mut stream = client
            .clone()
            .watch_sagas(saga::WatchSagasRequest {
                states: Vec::new(),
                include_active_snapshot: false,
            })
            .await?
            .into_inner();
        let ledger = ledger.clone();
        watchers.spawn(async move {
            while let Ok(Some(update)) = stream.message().await {
                let Some(update) = update.saga else { continue };
                if !ended(update.state) {
                    continue;
                }
                let at = Instant::now();
                let Ok(mut ledger) = ledger.lock() else {
                    return;
                };
                let order_id = update.order_id.clone();
                match ledger.orders.remove(&order_id) {
                    Some(Tracked::Waiting { intended, done }) => {
                        ledger.record(intended, at, &update);
                        ledger.orders.insert(order_id, Tracked::Recorded);
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                    }
                    Some(seen @ (Tracked::Ended { .. } | Tracked::Recorded)) => {
                        ledger.orders.insert(order_id, seen);
                    }
                    None => {
                        ledger
                            .orders
                            .insert(order_id, Tracked::Ended { at, saga: update });
                    }
                }
            }
        });
    }

    let sent = Arc::new(AtomicU64::new(0));
    let placed = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let started = Instant::now();
    let place = {
        let (ledger, placed, errors, clients) = (
            ledger.clone(),
            placed.clone(),
            errors.clone(),
            clients.clone(),
        );
        let declined = settings.declined_percent;
        move |index: u64, intended: Instant, done: Option<oneshot::Sender<()>>| {
            let (ledger, placed, errors) = (ledger.clone(), placed.clone(), errors.clone());
            let mut client = clients.orders[(index % clients.orders.len() as u64) as usize].clone();
            async move {
                match client.place_order(order_request(index, declined)).await {
                    Ok(response) => {
                        placed.fetch_add(1, Ordering::Relaxed);
                        let Some(order) = response.into_inner().order else {
                            return;
                        };
                        let Ok(mut ledger) = ledger.lock() else {
                            return;
                        };
                        match ledger.orders.remove(&order.order_id) {
                            Some(Tracked::Ended { at, saga }) => {
                                ledger.record(intended, at, &saga);
                                ledger.orders.insert(order.order_id, Tracked::Recorded);
                                if let Some(done) = done {
                                    let _ = done.send(());
                                }
                            }
                            _ => {
                                ledger
                                    .orders
                                    .insert(order.order_id, Tracked::Waiting { intended, done });
                            }
                        }
                    }
                    Err(status) => {
                        if let Ok(mut errors) = errors.lock() {
                            *errors.entry(format!("{:?}", status.code())).or_default() += 1;
                        }
                    }
                }
            }
        }
    };

    let mut tasks = JoinSet::new();
    match mode {
        Mode::Rate(rate) => {
            for index in 0..count {
                let intended = started + Duration::from_secs_f64(index as f64 / rate);
                if intended.duration_since(started) > duration {
                    break;
                }
                tokio::time::sleep_until(intended).await;
                sent.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(place(index, intended, None));
            }
        }
        Mode::Concurrency(workers) => {
            let next = Arc::new(AtomicU64::new(0));
            for _ in 0..workers {
                let (next, sent, place) = (next.clone(), sent.clone(), place.clone());
                let drain = settings.drain;
                tasks.spawn(async move {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= count || started.elapsed() > duration {
                            return;
                        }
                        sent.fetch_add(1, Ordering::Relaxed);
                        let (done, ended) = oneshot::channel();
                        place(index, Instant::now(), Some(done)).await;
                        // A failed placement drops the sender: go on at once.
                        let _ = tokio::time::timeout(drain, ended).await;
                    }
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}

    // Wait for the sagas still running.
    let deadline = Instant::now() + settings.drain;
    loop {
        let waiting = ledger
            .lock()
            .map(|ledger| {
                ledger
                    .orders
                    .values()
                    .filter(|tracked| matches!(tracked, Tracked::Waiting { .. }))
                    .count()
            })
            .unwrap_or(0);
        if waiting == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watchers.abort_all();
    let ledger = ledger
        .lock()
        .map_err(|_| anyhow::anyhow!("ledger poisoned"))?;
    let outstanding = ledger
        .orders
        .values()
        .filter(|tracked| matches!(tracked, Tracked::Waiting { .. }))
        .count() as u64;
    let wall = ledger
        .last_end
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(started);
    Ok(RunResult {
        mode,
        sent: sent.load(Ordering::Relaxed),
        placed: placed.load(Ordering::Relaxed),
        errors: errors
            .lock()
            .map(|errors| errors.clone())
            .unwrap_or_default(),
        completed: ledger.completed,
        compensated: ledger.compensated,
        failed: ledger.failed,
        outstanding,
        wall,
        end_to_end: ledger.end_to_end.clone().unwrap_or_else(histogram),
        steps: ledger.steps.clone(),
        segments: ledger.segments.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_add_up_to_the_end_to_end_time() {
        let t0 = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |ms: u64| Some(timestamp(t0 + Duration::from_millis(ms)));
        let step = |step: saga::SagaStepType, start: u64, end: u64| saga::SagaStep {
            step: step as i32,
            attempts: vec![saga::StepAttempt {
                start_time: at(start),
                end_time: at(end),
                ..Default::default()
            }],
            ..Default::default()
        };
        let ended = saga::Saga {
            create_time: at(10),
            steps: vec![
                step(saga::SagaStepType::ReserveStock, 20, 25),
                step(saga::SagaStepType::AuthorizePayment, 26, 30),
                step(saga::SagaStepType::CreateShipment, 31, 35),
                step(saga::SagaStepType::CapturePayment, 100, 104),
                step(saga::SagaStepType::ConfirmOrder, 105, 110),
            ],
            ..Default::default()
        };
        let segments =
            Segments::of(&ended, t0, t0 + Duration::from_millis(115)).expect("timed steps");
        assert_eq!(
            segments,
            Segments {
                to_saga: 10_000,
                to_first_call: 10_000,
                calls: 22_000,
                shipment: 65_000,
                between_calls: 3_000,
                to_seen: 5_000,
            }
        );
        let total: u64 = segments.named().iter().map(|(_, micros)| micros).sum();
        assert_eq!(total, 115_000);
    }

    #[test]
    fn declines_are_spread_evenly_over_any_count() {
        let declined = |count: u64, percent: u32| {
            (0..count)
                .filter(|index| {
                    order_request(*index, percent).payment_method_token == "tok_decline"
                })
                .count()
        };
        assert_eq!(declined(20, 10), 2);
        assert_eq!(declined(100, 25), 25);
        assert_eq!(declined(50, 0), 0);
        assert_eq!(declined(7, 100), 7);
    }
}
