//! The chaos hub: per service, inject latency, an error rate, a TPS limit or a kill, see the faults
//! in force and clear them; the saga's circuit breakers beside them.

use std::time::Duration;

use gloo_timers::future::TimeoutFuture;
use leptos::{prelude::*, task::spawn_local};
use zentra_proto::{ops::v1 as ops, saga::v1 as saga};

use crate::{
    api::{Api, SERVICES, confirm, describe, new_key},
    format,
    session::{Role, use_session},
    widgets::{outcome_view, page_alive, shown},
};

fn duration(seconds: f64) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(Duration::from_secs_f64(seconds.max(0.0))).ok()
}

fn describe_fault(fault: &ops::Fault) -> String {
    let lasts = fault
        .duration
        .as_ref()
        .map(|d| format!(" for {}", format::latency(format::duration(Some(d)))))
        .unwrap_or_default();
    match ops::FaultKind::try_from(fault.kind) {
        Ok(ops::FaultKind::Latency) => format!(
            "latency {}–{}{lasts}",
            format::latency(format::duration(fault.latency_min.as_ref())),
            format::latency(format::duration(
                fault.latency_max.as_ref().or(fault.latency_min.as_ref())
            )),
        ),
        Ok(ops::FaultKind::ErrorRate) => {
            format!("error rate {:.0} %{lasts}", fault.error_rate * 100.0)
        }
        Ok(ops::FaultKind::TpsLimit) => format!("TPS limit {}{lasts}", fault.tps_limit),
        Ok(ops::FaultKind::Kill) => "kill".to_owned(),
        _ => "unknown".to_owned(),
    }
}

/// The chaos page.
#[component]
pub fn Chaos() -> impl IntoView {
    let session = use_session();
    let admin = session.can(Role::Admin);
    let operator = session.can(Role::Operator);
    let api = session.api();
    let faults = RwSignal::new(Vec::<(&'static str, Result<Vec<ops::Fault>, String>)>::new());
    let breakers = RwSignal::new(None::<Result<Vec<saga::CircuitBreaker>, String>>);
    let outcome = RwSignal::new(None::<Result<String, String>>);
    let alive = page_alive();
    {
        let api = api.clone();
        spawn_local(async move {
            while shown(&alive) {
                let listed = futures::future::join_all(SERVICES.iter().map(|service| {
                    let api = api.clone();
                    async move {
                        let result = api
                            .ops()
                            .list_faults(api.request(ops::ListFaultsRequest {}, service))
                            .await
                            .map(|response| response.into_inner().faults)
                            .map_err(|status| describe(&status));
                        (*service, result)
                    }
                }))
                .await;
                if faults.try_set(listed).is_some() {
                    break;
                }
                let listed = api
                    .breakers()
                    .list_circuit_breakers(api.call(saga::ListCircuitBreakersRequest::default()))
                    .await
                    .map(|response| response.into_inner().circuit_breakers)
                    .map_err(|status| describe(&status));
                let _ = breakers.try_set(Some(listed));
                TimeoutFuture::new(2_000).await;
            }
        });
    }
    let reset = {
        let api = api.clone();
        move |downstream: String| {
            let api = api.clone();
            spawn_local(async move {
                let result = api
                    .breakers()
                    .reset_circuit_breaker(api.call(saga::ResetCircuitBreakerRequest {
                        downstream: downstream.clone(),
                        idempotency_key: new_key("reset"),
                        reason: "reset from the control center".to_owned(),
                    }))
                    .await
                    .map(|_| format!("breaker of {downstream} reset"))
                    .map_err(|status| describe(&status));
                let _ = outcome.try_set(Some(result));
            });
        }
    };
    view! {
        <section class="chaos">
            <h2>"Chaos hub"</h2>
            <p class="hint">"Faults really happen in the service named, and clear after their duration or when cleared."
                {(!admin).then_some(" Injecting and clearing faults needs the admin role.")}</p>
            {outcome_view(outcome)}
            <div class="cards">
                {SERVICES.iter().map(|service| {
                    let service = *service;
                    view! {
                        <FaultCard service api=api.clone() admin outcome
                            current=Signal::derive(move || faults.with(|all| all.iter().find(|(name, _)| *name == service).map(|(_, faults)| faults.clone()))) />
                    }
                }).collect_view()}
            </div>
            <h2>"Circuit breakers"</h2>
            <p class="hint">"The saga orchestrator's breakers, one per service it calls."</p>
            {move || match breakers.get() {
                None => view! { <p class="hint">"loading…"</p> }.into_any(),
                Some(Err(error)) => view! { <p class="error">{error}</p> }.into_any(),
                Some(Ok(list)) => {
                    let reset = reset.clone();
                    view! {
                        <table class="list breakers">
                            <thead><tr><th>"Service"</th><th>"State"</th><th>"Failures"</th><th>"Calls in window"</th><th>"Last error"</th><th></th></tr></thead>
                            <tbody>
                                {list.into_iter().map(|breaker| {
                                    let reset = reset.clone();
                                    let downstream = breaker.downstream.clone();
                                    let state = saga::CircuitBreakerState::try_from(breaker.state)
                                        .map(|s| s.as_str_name().trim_start_matches("CIRCUIT_BREAKER_STATE_").to_owned())
                                        .unwrap_or_default();
                                    view! {
                                        <tr data-downstream=breaker.downstream.clone()>
                                            <td>{breaker.downstream.clone()}</td>
                                            <td class="state">{state}</td>
                                            <td>{format!("{}/{}", breaker.consecutive_failure_count, breaker.failure_threshold)}</td>
                                            <td>{format!("{} failed of {}", breaker.window_failure_count, breaker.window_call_count)}</td>
                                            <td class="reason">{breaker.last_error.clone()}</td>
                                            <td><button class="quiet" disabled=!operator on:click=move |_| reset(downstream.clone())>"Reset"</button></td>
                                        </tr>
                                    }
                                }).collect_view()}
                            </tbody>
                        </table>
                    }.into_any()
                }
            }}
        </section>
    }
}

#[component]
fn FaultCard(
    service: &'static str,
    api: Api,
    admin: bool,
    outcome: RwSignal<Option<Result<String, String>>>,
    current: Signal<Option<Result<Vec<ops::Fault>, String>>>,
) -> impl IntoView {
    let latency_ms = RwSignal::new(200.0_f64);
    let error_percent = RwSignal::new(50.0_f64);
    let tps = RwSignal::new(5_u32);
    let seconds = RwSignal::new(60.0_f64);
    let inject = {
        let api = api.clone();
        move |kind: ops::FaultKind| {
            if kind == ops::FaultKind::Kill
                && !confirm(&format!(
                    "Kill {service}? It stops as a crash would; its supervisor restarts it."
                ))
            {
                return;
            }
            let lasts = seconds.get_untracked();
            let mut fault = ops::Fault {
                kind: kind as i32,
                duration: (lasts > 0.0 && kind != ops::FaultKind::Kill)
                    .then(|| duration(lasts))
                    .flatten(),
                ..Default::default()
            };
            match kind {
                ops::FaultKind::Latency => {
                    fault.latency_min = duration(latency_ms.get_untracked() / 1000.0)
                }
                ops::FaultKind::ErrorRate => {
                    fault.error_rate = (error_percent.get_untracked() / 100.0).clamp(0.0, 1.0)
                }
                ops::FaultKind::TpsLimit => fault.tps_limit = tps.get_untracked(),
                _ => {}
            }
            let api = api.clone();
            spawn_local(async move {
                let result = api
                    .ops()
                    .inject_fault(api.request(
                        ops::InjectFaultRequest {
                            fault: Some(fault),
                            idempotency_key: new_key("fault"),
                            reason: "injected from the control center".to_owned(),
                        },
                        service,
                    ))
                    .await
                    .map(|response| {
                        let fault = response.into_inner().fault.unwrap_or_default();
                        format!("{service}: {}", describe_fault(&fault))
                    })
                    .map_err(|status| describe(&status));
                let _ = outcome.try_set(Some(result));
            });
        }
    };
    let clear = move |_| {
        let api = api.clone();
        spawn_local(async move {
            let result = api
                .ops()
                .clear_faults(api.request(
                    ops::ClearFaultsRequest {
                        kind: 0,
                        idempotency_key: new_key("clear"),
                        reason: "cleared from the control center".to_owned(),
                    },
                    service,
                ))
                .await
                .map(|response| format!("{service}: {} cleared", response.into_inner().cleared))
                .map_err(|status| describe(&status));
            let _ = outcome.try_set(Some(result));
        });
    };
    let number = |signal: RwSignal<f64>| {
        move |event| signal.set(event_target_value(&event).parse().unwrap_or(0.0))
    };
    let (latency, errors, limit, kill) = (inject.clone(), inject.clone(), inject.clone(), inject);
    view! {
        <article class="card fault-card" data-service=service>
            <header><h3>{service}</h3></header>
            <ul class="faults">
                {move || match current.get() {
                    None => view! { <li class="hint">"…"</li> }.into_any(),
                    Some(Err(error)) => view! { <li class="error">{error}</li> }.into_any(),
                    Some(Ok(list)) if list.is_empty() => view! { <li class="hint">"no faults"</li> }.into_any(),
                    Some(Ok(list)) => list.iter().map(|fault| view! { <li class="fault">{describe_fault(fault)}</li> }).collect_view().into_any(),
                }}
            </ul>
            <div class="fault-controls">
                <label>"ms"<input name="latency-ms" type="number" min="0" prop:value=move || latency_ms.get().to_string() on:input=number(latency_ms) /></label>
                <button name="inject-latency" disabled=!admin on:click=move |_| latency(ops::FaultKind::Latency)>"Latency"</button>
                <label>"%"<input name="error-percent" type="number" min="0" max="100" prop:value=move || error_percent.get().to_string() on:input=number(error_percent) /></label>
                <button name="inject-errors" disabled=!admin on:click=move |_| errors(ops::FaultKind::ErrorRate)>"Errors"</button>
                <label>"TPS"<input name="tps" type="number" min="1" prop:value=move || tps.get().to_string() on:input=move |event| tps.set(event_target_value(&event).parse().unwrap_or(1)) /></label>
                <button name="inject-tps" disabled=!admin on:click=move |_| limit(ops::FaultKind::TpsLimit)>"TPS limit"</button>
                <label>"for s"<input name="seconds" type="number" min="0" prop:value=move || seconds.get().to_string() on:input=number(seconds) /></label>
                <button name="kill" class="danger" disabled=!admin on:click=move |_| kill(ops::FaultKind::Kill)>"Kill"</button>
                <button name="clear" class="quiet" disabled=!admin on:click=clear>"Clear"</button>
            </div>
        </article>
    }
}
