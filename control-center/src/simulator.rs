//! The order simulator: one order per scenario, followed to its saga's end; and a bounded load
//! test at a chosen rate and mix, measured from each order's intended send time to its saga's
//! end (open loop: a slow platform cannot hide its latency by slowing the sender down).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use gloo_timers::future::TimeoutFuture;
use leptos::{prelude::*, task::spawn_local};
use zentra_proto::{
    common::v1::{Address, Money},
    inventory::v1 as inventory,
    order::v1 as order,
    saga::v1 as saga,
};

use crate::{
    api::{Api, describe, new_key},
    sagas::{is_terminal, state_name},
    session::{Role, use_session},
    widgets::{page_alive, shown},
};

/// The fastest load the simulator sends: the gateway's default PlaceOrder limit per caller.
const MAX_RATE: u32 = 50;

/// A product with stock enough for any simulation.
const SKU: &str = "SIM-MUG";
const STOCK: i64 = 1_000_000;

/// The scenarios, with how each is produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// Everything succeeds.
    HappyPath,
    /// The card is declined.
    PaymentDeclined,
    /// More units than there are.
    OutOfStock,
    /// The destination cannot be shipped to.
    ShipmentFailure,
    /// The processor answers after the saga's deadline.
    SlowPayment,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario::HappyPath,
    Scenario::PaymentDeclined,
    Scenario::OutOfStock,
    Scenario::ShipmentFailure,
    Scenario::SlowPayment,
];

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::HappyPath => "Happy path",
            Scenario::PaymentDeclined => "Payment declined",
            Scenario::OutOfStock => "Out of stock",
            Scenario::ShipmentFailure => "Shipment failure",
            Scenario::SlowPayment => "Slow payment (timeout)",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Scenario::HappyPath => "happy",
            Scenario::PaymentDeclined => "declined",
            Scenario::OutOfStock => "out-of-stock",
            Scenario::ShipmentFailure => "shipment-failure",
            Scenario::SlowPayment => "slow-payment",
        }
    }

    fn order(self) -> order::PlaceOrderRequest {
        let (quantity, token, country) = match self {
            Scenario::HappyPath => (1, "tok_approve", "US"),
            Scenario::PaymentDeclined => (1, "tok_decline", "US"),
            Scenario::OutOfStock => (STOCK * 10, "tok_approve", "US"),
            Scenario::ShipmentFailure => (1, "tok_approve", "AQ"),
            Scenario::SlowPayment => (1, "tok_timeout", "US"),
        };
        order::PlaceOrderRequest {
            customer_id: format!("sim-{}", self.id()),
            customer_email: format!("sim-{}@customers.zentra.test", self.id()),
            shipping_address: Some(Address {
                recipient: "Simulated Customer".to_owned(),
                lines: vec!["1 Simulation Way".to_owned()],
                city: "Testville".to_owned(),
                region: String::new(),
                postal_code: "12345".to_owned(),
                country_code: country.to_owned(),
            }),
            // Priced by the order service from the catalogue.
            lines: vec![order::OrderLine {
                sku: SKU.to_owned(),
                quantity,
                unit_price: None,
                line_total: None,
            }],
            currency_code: "USD".to_owned(),
            payment_method_token: token.to_owned(),
            idempotency_key: new_key(self.id()),
        }
    }
}

/// Makes sure the simulation's product exists (idempotent by its fixed key).
async fn ensure_product(api: &Api) -> Result<(), String> {
    let created = api
        .inventory()
        .create_product(api.call(inventory::CreateProductRequest {
            sku: SKU.to_owned(),
            name: "Simulation mug".to_owned(),
            initial_stock: STOCK,
            low_stock_threshold: 10,
            unit_price: Some(Money {
                currency_code: "USD".to_owned(),
                amount_minor: 1299,
            }),
            idempotency_key: "control-center-simulation-product".to_owned(),
        }))
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(status) => Err(describe(&status)),
    }
}

async fn place(api: &Api, scenario: Scenario) -> Result<String, String> {
    api.orders()
        .place_order(api.call(scenario.order()))
        .await
        .map_err(|status| describe(&status))?
        .into_inner()
        .order
        .map(|order| order.order_id)
        .ok_or_else(|| "no order in the answer".to_owned())
}

#[derive(Debug, Clone, PartialEq)]
struct Run {
    scenario: Scenario,
    order_id: Option<String>,
    saga_id: Option<String>,
    state: Option<i32>,
    order_status: Option<String>,
    reason: String,
    error: Option<String>,
}

/// The simulator page.
#[component]
pub fn Simulator() -> impl IntoView {
    let session = use_session();
    let operator = session.can(Role::Operator);
    let api = session.api();
    let runs = RwSignal::new(Vec::<Run>::new());
    let alive = page_alive();
    let start = {
        let api = api.clone();
        let alive = alive.clone();
        move |scenario: Scenario| {
            let api = api.clone();
            let alive = alive.clone();
            let index = runs.with_untracked(Vec::len);
            runs.update(|runs| {
                runs.push(Run {
                    scenario,
                    order_id: None,
                    saga_id: None,
                    state: None,
                    order_status: None,
                    reason: String::new(),
                    error: None,
                })
            });
            spawn_local(async move {
                let placed = match ensure_product(&api).await {
                    Ok(()) => place(&api, scenario).await,
                    Err(error) => Err(error),
                };
                let order_id = match placed {
                    Ok(order_id) => order_id,
                    Err(error) => {
                        runs.try_update(|runs| runs[index].error = Some(error));
                        return;
                    }
                };
                runs.try_update(|runs| runs[index].order_id = Some(order_id.clone()));
                // Follow the order's saga until it ends.
                while shown(&alive) {
                    let listed = api
                        .sagas()
                        .list_sagas(api.call(saga::ListSagasRequest {
                            order_id: order_id.clone(),
                            ..Default::default()
                        }))
                        .await;
                    if let Ok(listed) = listed
                        && let Some(found) = listed.into_inner().sagas.into_iter().next()
                    {
                        let ended = is_terminal(found.state);
                        runs.try_update(|runs| {
                            let run = &mut runs[index];
                            run.saga_id = Some(found.saga_id);
                            run.state = Some(found.state);
                            run.reason = found.failure_reason;
                        });
                        if ended {
                            let status = api
                                .orders()
                                .get_order(api.call(order::GetOrderRequest {
                                    order_id: order_id.clone(),
                                }))
                                .await
                                .ok()
                                .and_then(|response| response.into_inner().order)
                                .and_then(|order| order::OrderStatus::try_from(order.status).ok())
                                .map(|status| {
                                    status
                                        .as_str_name()
                                        .trim_start_matches("ORDER_STATUS_")
                                        .to_owned()
                                });
                            runs.try_update(|runs| runs[index].order_status = status);
                            return;
                        }
                    }
                    TimeoutFuture::new(500).await;
                }
            });
        }
    };
    view! {
        <section class="simulator">
            <h2>"Order simulator"</h2>
            <p class="hint">"Each button places one real order through the gateway and follows its saga to the end."</p>
            <div class="scenarios">
                {SCENARIOS.iter().map(|scenario| {
                    let scenario = *scenario;
                    let start = start.clone();
                    view! {
                        <button name=scenario.id() disabled=!operator on:click=move |_| start(scenario)>
                            {scenario.label()}
                        </button>
                    }
                }).collect_view()}
                {(!operator).then(|| view! { <span class="hint">"Placing orders needs the operator role."</span> })}
            </div>
            <table class="list runs">
                <thead><tr><th>"Scenario"</th><th>"Order"</th><th>"Saga"</th><th>"Saga state"</th><th>"Order status"</th><th>"Reason"</th></tr></thead>
                <tbody>
                    {move || runs.get().into_iter().rev().map(|run| view! {
                        <tr class="run" data-scenario=run.scenario.id()>
                            <td>{run.scenario.label()}</td>
                            <td class="mono">{run.order_id.clone().unwrap_or_default()}</td>
                            <td>{run.saga_id.clone().map(|id| view! { <a href=format!("#/sagas/{id}") title=id.clone()>{crate::format::short_id(&id)}</a> })}</td>
                            <td class="state">{match (&run.error, run.state) {
                                (Some(error), _) => error.clone(),
                                (None, Some(state)) => state_name(state).to_owned(),
                                (None, None) => "placing…".to_owned(),
                            }}</td>
                            <td class="order-status">{run.order_status.clone().unwrap_or_default()}</td>
                            <td class="reason">{run.reason.clone()}</td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table>
            <LoadTester api operator />
        </section>
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
struct LoadStats {
    running: bool,
    sent: u32,
    placed: u32,
    rejected_at_placement: u32,
    completed: u32,
    compensated: u32,
    other_end: u32,
    elapsed_seconds: f64,
    latencies_ms: Vec<f64>,
    last_error: Option<String>,
}

fn percentile(sorted: &[f64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A bounded open-loop load test.
#[component]
fn LoadTester(api: Api, operator: bool) -> impl IntoView {
    let count = RwSignal::new(100_u32);
    let rate = RwSignal::new(10_u32);
    let declined_percent = RwSignal::new(10_u32);
    let stats = RwSignal::new(LoadStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        on_cleanup(move || stop.store(true, Ordering::Relaxed));
    }
    let run = {
        let stop = stop.clone();
        move |_| {
            let (total, per_second, declined) = (
                count.get_untracked().clamp(1, 1000),
                rate.get_untracked().clamp(1, MAX_RATE),
                declined_percent.get_untracked().min(100),
            );
            stop.store(false, Ordering::Relaxed);
            stats.set(LoadStats {
                running: true,
                ..LoadStats::default()
            });
            let api = api.clone();
            let stop = stop.clone();
            spawn_local(async move {
                if let Err(error) = ensure_product(&api).await {
                    stats.try_update(|stats| {
                        stats.running = false;
                        stats.last_error = Some(error);
                    });
                    return;
                }
                let started = js_sys::Date::now();
                // Order id → intended send time.
                let pending: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
                let watching = Arc::new(AtomicBool::new(true));
                spawn_local(watch_ends(
                    api.clone(),
                    pending.clone(),
                    watching.clone(),
                    stats,
                ));
                for index in 0..total {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let intended = started + f64::from(index) * 1000.0 / f64::from(per_second);
                    let wait = intended - js_sys::Date::now();
                    if wait > 0.0 {
                        TimeoutFuture::new(wait as u32).await;
                    }
                    let scenario = if (index * 100 / total.max(1)) % 100 < declined {
                        Scenario::PaymentDeclined
                    } else {
                        Scenario::HappyPath
                    };
                    if stats.try_update(|stats| stats.sent += 1).is_none() {
                        break;
                    }
                    let api = api.clone();
                    let pending = pending.clone();
                    spawn_local(async move {
                        match place(&api, scenario).await {
                            Ok(order_id) => {
                                if let Ok(mut pending) = pending.lock() {
                                    pending.insert(order_id, intended);
                                }
                                stats.try_update(|stats| stats.placed += 1);
                            }
                            Err(error) => {
                                stats.try_update(|stats| {
                                    stats.rejected_at_placement += 1;
                                    stats.last_error = Some(error);
                                });
                            }
                        }
                    });
                }
                // Wait for the outstanding sagas, at most a minute.
                let deadline = js_sys::Date::now() + 60_000.0;
                loop {
                    let done = stats.with_untracked(|stats| {
                        stats.completed
                            + stats.compensated
                            + stats.other_end
                            + stats.rejected_at_placement
                            >= stats.sent
                    });
                    if done || stop.load(Ordering::Relaxed) || js_sys::Date::now() > deadline {
                        break;
                    }
                    TimeoutFuture::new(250).await;
                    stats.update(|stats| {
                        stats.elapsed_seconds = (js_sys::Date::now() - started) / 1000.0
                    });
                }
                watching.store(false, Ordering::Relaxed);
                stats.try_update(|stats| {
                    stats.running = false;
                    stats.elapsed_seconds = (js_sys::Date::now() - started) / 1000.0;
                });
            });
        }
    };
    let stop_now = move |_| stop.store(true, Ordering::Relaxed);
    let number = |signal: RwSignal<u32>| {
        move |event| signal.set(event_target_value(&event).parse().unwrap_or(0))
    };
    view! {
        <h2>"Load tester"</h2>
        <p class="hint">"At most 1000 orders at up to 100 per second; stops by itself. Latency runs from each order's intended send time to its saga's end."</p>
        <div class="filters">
            <label>"Orders"<input name="count" type="number" min="1" max="1000" prop:value=move || count.get().to_string() on:input=number(count) /></label>
            <label>"Per second"<input name="rate" type="number" min="1" max=MAX_RATE prop:value=move || rate.get().to_string() on:input=number(rate) /></label>
            <label>"Declined %"<input name="declined" type="number" min="0" max="100" prop:value=move || declined_percent.get().to_string() on:input=number(declined_percent) /></label>
            <button name="run-load" disabled=move || !operator || stats.with(|stats| stats.running) on:click=run>"Run"</button>
            <button name="stop-load" class="quiet" disabled=move || !stats.with(|stats| stats.running) on:click=stop_now>"Stop"</button>
        </div>
        {move || {
            let stats = stats.get();
            let ended = stats.completed + stats.compensated + stats.other_end;
            let mut sorted = stats.latencies_ms.clone();
            sorted.sort_by(f64::total_cmp);
            let throughput = if stats.elapsed_seconds > 0.0 { f64::from(ended) / stats.elapsed_seconds } else { 0.0 };
            let success = if ended > 0 { f64::from(stats.completed) / f64::from(ended) * 100.0 } else { 0.0 };
            view! {
                <dl class="facts load">
                    <dt>"Sent"</dt><dd class="sent">{stats.sent}</dd>
                    <dt>"Placed"</dt><dd>{stats.placed}</dd>
                    <dt>"Completed"</dt><dd class="completed">{stats.completed}</dd>
                    <dt>"Compensated"</dt><dd>{stats.compensated}</dd>
                    <dt>"Refused"</dt><dd>{stats.rejected_at_placement}</dd>
                    <dt>"Throughput"</dt><dd>{format!("{throughput:.1} sagas/s")}</dd>
                    <dt>"Success"</dt><dd>{format!("{success:.0} %")}</dd>
                    <dt>"p50"</dt><dd>{format!("{:.0} ms", percentile(&sorted, 0.5))}</dd>
                    <dt>"p90"</dt><dd>{format!("{:.0} ms", percentile(&sorted, 0.9))}</dd>
                    <dt>"p99"</dt><dd>{format!("{:.0} ms", percentile(&sorted, 0.99))}</dd>
                    <dt>"State"</dt><dd class="load-state">{if stats.running { "running" } else if stats.sent > 0 { "finished" } else { "idle" }}</dd>
                </dl>
                {stats.last_error.map(|error| view! { <p class="error">{error}</p> })}
            }
        }}
    }
}

/// Follows every saga transition and records the end of each of the load test's orders.
async fn watch_ends(
    api: Api,
    pending: Arc<Mutex<HashMap<String, f64>>>,
    watching: Arc<AtomicBool>,
    stats: RwSignal<LoadStats>,
) {
    while watching.load(Ordering::Relaxed) {
        let Ok(stream) = api
            .sagas()
            .watch_sagas(api.call(saga::WatchSagasRequest {
                states: Vec::new(),
                include_active_snapshot: false,
            }))
            .await
        else {
            TimeoutFuture::new(1_000).await;
            continue;
        };
        let mut stream = stream.into_inner();
        while let Ok(Some(update)) = stream.message().await {
            if !watching.load(Ordering::Relaxed) {
                return;
            }
            let Some(update) = update.saga else { continue };
            if !is_terminal(update.state)
                && update.state != saga::SagaState::CompensationFailed as i32
            {
                continue;
            }
            let intended = pending
                .lock()
                .ok()
                .and_then(|mut pending| pending.remove(&update.order_id));
            let Some(intended) = intended else { continue };
            let latency = js_sys::Date::now() - intended;
            let _ = stats.try_update(|stats| {
                stats.latencies_ms.push(latency);
                match saga::SagaState::try_from(update.state) {
                    Ok(saga::SagaState::Completed) => stats.completed += 1,
                    Ok(saga::SagaState::Compensated) => stats.compensated += 1,
                    _ => stats.other_end += 1,
                }
            });
        }
    }
}
