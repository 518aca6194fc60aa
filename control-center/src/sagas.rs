//! Sagas: search with filters (refreshed every three seconds), and one saga's timeline followed
//! live through the WatchSaga stream, with the operator's actions.

use gloo_timers::future::TimeoutFuture;
use leptos::{prelude::*, task::spawn_local};
use zentra_proto::{common::v1 as common, saga::v1 as pb};

use crate::{
    api::{confirm, describe, new_key},
    app::navigate,
    format,
    session::{Role, use_session},
    widgets::{listing, outcome_view, page_alive, shown},
};

/// Short names of saga states, for filters and badges.
pub fn state_name(state: i32) -> &'static str {
    match pb::SagaState::try_from(state) {
        Ok(pb::SagaState::Running) => "RUNNING",
        Ok(pb::SagaState::AwaitingShipment) => "AWAITING_SHIPMENT",
        Ok(pb::SagaState::Compensating) => "COMPENSATING",
        Ok(pb::SagaState::Completed) => "COMPLETED",
        Ok(pb::SagaState::Compensated) => "COMPENSATED",
        Ok(pb::SagaState::CompensationFailed) => "COMPENSATION_FAILED",
        _ => "UNKNOWN",
    }
}

/// Whether a saga in `state` has ended.
pub fn is_terminal(state: i32) -> bool {
    matches!(
        pb::SagaState::try_from(state),
        Ok(pb::SagaState::Completed | pb::SagaState::Compensated)
    )
}

fn state_class(state: i32) -> &'static str {
    match pb::SagaState::try_from(state) {
        Ok(pb::SagaState::Completed) => "badge ok",
        Ok(pb::SagaState::Compensated) => "badge warn",
        Ok(pb::SagaState::CompensationFailed) => "badge down",
        _ => "badge wait",
    }
}

/// Short names of steps.
pub fn step_name(step: i32) -> String {
    pb::SagaStepType::try_from(step)
        .map(|step| {
            step.as_str_name()
                .trim_start_matches("SAGA_STEP_TYPE_")
                .to_owned()
        })
        .unwrap_or_default()
}

const STATES: [pb::SagaState; 6] = [
    pb::SagaState::Running,
    pb::SagaState::AwaitingShipment,
    pb::SagaState::Compensating,
    pb::SagaState::Completed,
    pb::SagaState::Compensated,
    pb::SagaState::CompensationFailed,
];

/// Every step a saga can fail at, forward steps then compensations.
const FAILING_STEPS: [pb::SagaStepType; 13] = [
    pb::SagaStepType::ReserveStock,
    pb::SagaStepType::AuthorizePayment,
    pb::SagaStepType::PinReservation,
    pb::SagaStepType::CreateShipment,
    pb::SagaStepType::CapturePayment,
    pb::SagaStepType::ConfirmReservation,
    pb::SagaStepType::ConfirmOrder,
    pb::SagaStepType::CancelShipment,
    pb::SagaStepType::RefundPayment,
    pb::SagaStepType::VoidPayment,
    pb::SagaStepType::ReleaseStock,
    pb::SagaStepType::RejectOrder,
    pb::SagaStepType::CompleteCancellation,
];

/// The saga search page.
#[component]
pub fn Sagas() -> impl IntoView {
    let api = use_session().api();
    let state = RwSignal::new(0_i32);
    let order_id = RwSignal::new(String::new());
    let failing_step = RwSignal::new(0_i32);
    let since_minutes = RwSignal::new(0_i64);
    let sagas = RwSignal::new(None::<Result<Vec<pb::Saga>, String>>);
    let alive = page_alive();
    spawn_local(async move {
        while shown(&alive) {
            let since = since_minutes.get_untracked();
            let request = pb::ListSagasRequest {
                page: Some(common::PageRequest {
                    page_size: 50,
                    page_token: String::new(),
                }),
                state: state.get_untracked(),
                order_id: order_id.get_untracked().trim().to_owned(),
                failing_step: failing_step.get_untracked(),
                create_time_range: (since > 0).then(|| common::TimeRange {
                    start_time: Some(format::timestamp_minutes_ago(since)),
                    end_time: None,
                }),
            };
            let result = api
                .sagas()
                .list_sagas(api.call(request))
                .await
                .map(|response| response.into_inner().sagas)
                .map_err(|status| describe(&status));
            if sagas.try_set(Some(result)).is_some() {
                break;
            }
            TimeoutFuture::new(3_000).await;
        }
    });
    view! {
        <section class="sagas">
            <h2>"Sagas"</h2>
            <p class="hint">"Filtered on the server; refreshed every three seconds. Select a saga for its timeline."</p>
            <div class="filters">
                <label>"State"
                    <select name="state" on:change=move |event| state.set(event_target_value(&event).parse().unwrap_or(0))>
                        <option value="0">"any"</option>
                        {STATES.iter().map(|s| view! { <option value=(*s as i32).to_string()>{state_name(*s as i32)}</option> }).collect_view()}
                    </select>
                </label>
                <label>"Failing step"
                    <select name="failing-step" on:change=move |event| failing_step.set(event_target_value(&event).parse().unwrap_or(0))>
                        <option value="0">"any"</option>
                        {FAILING_STEPS.iter().map(|s| view! { <option value=(*s as i32).to_string()>{step_name(*s as i32)}</option> }).collect_view()}
                    </select>
                </label>
                <label>"Created"
                    <select name="since" on:change=move |event| since_minutes.set(event_target_value(&event).parse().unwrap_or(0))>
                        <option value="0">"any time"</option>
                        <option value="15">"last 15 minutes"</option>
                        <option value="60">"last hour"</option>
                        <option value="1440">"last day"</option>
                    </select>
                </label>
                <label>"Order id"
                    <input name="order-id" placeholder="uuid" prop:value=move || order_id.get()
                        on:input=move |event| order_id.set(event_target_value(&event)) />
                </label>
            </div>
            {move || listing(sagas.get(), "No saga matches.", |list| view! {
                    <div class="scroll">
                    <table class="list">
                        <thead><tr><th>"Saga"</th><th>"Order"</th><th>"State"</th><th>"Step"</th><th>"Created"</th><th>"Reason"</th></tr></thead>
                        <tbody>
                            {list.into_iter().map(|saga| {
                                let id = saga.saga_id.clone();
                                let step = if saga.failing_step != 0 { saga.failing_step } else { saga.current_step };
                                view! {
                                    <tr class="saga-row" data-order=saga.order_id.clone()>
                                        <td class="mono" title=id.clone()><a href=format!("#/sagas/{id}")>{format::short_id(&id)}</a></td>
                                        <td class="mono" title=saga.order_id.clone()>{format::short_id(&saga.order_id)}</td>
                                        <td><span class=state_class(saga.state)>{state_name(saga.state)}</span></td>
                                        <td>{step_name(step)}</td>
                                        <td>{format::date_time(saga.create_time.as_ref())}</td>
                                        <td class="reason">{saga.failure_reason.clone()}</td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                    </div>
                }.into_any())}
        </section>
    }
}

/// One saga, live.
#[component]
pub fn SagaDetail(saga_id: String) -> impl IntoView {
    let session = use_session();
    let api = session.api();
    let operator = session.can(Role::Operator);
    let saga = RwSignal::new(None::<Result<pb::Saga, String>>);
    let live = RwSignal::new(false);
    let outcome = RwSignal::new(None::<Result<String, String>>);
    let reason = RwSignal::new("cancelled by an operator".to_owned());
    let alive = page_alive();
    {
        let api = api.clone();
        let saga_id = saga_id.clone();
        spawn_local(async move {
            // Follow the stream; when it ends early (a deadline, a restart) reconnect.
            while shown(&alive) {
                let stream = api
                    .sagas()
                    .watch_saga(api.call(pb::WatchSagaRequest {
                        saga_id: saga_id.clone(),
                        ..Default::default()
                    }))
                    .await;
                let mut stream = match stream {
                    Ok(stream) => stream.into_inner(),
                    Err(status) => {
                        let _ = saga.try_set(Some(Err(describe(&status))));
                        return;
                    }
                };
                let _ = live.try_set(true);
                let mut ended = false;
                while let Ok(Some(update)) = stream.message().await {
                    if !shown(&alive) {
                        return;
                    }
                    if let Some(update) = update.saga {
                        ended = is_terminal(update.state);
                        if saga.try_set(Some(Ok(update))).is_some() {
                            return;
                        }
                    }
                }
                let _ = live.try_set(false);
                if ended {
                    return;
                }
                TimeoutFuture::new(1_000).await;
            }
        });
    }

    let act = move |action: &'static str| {
        let api = api.clone();
        let saga_id = saga_id.clone();
        let question = match action {
            "retry" => "Run the scheduled retry of this saga now?",
            "cancel" => "Cancel this saga and compensate its completed steps?",
            _ => "Resume this parked saga?",
        };
        if !confirm(question) {
            return;
        }
        let reason = reason.get_untracked();
        spawn_local(async move {
            let mut client = api.sagas();
            let result = match action {
                "retry" => client
                    .retry_saga(api.call(pb::RetrySagaRequest {
                        saga_id,
                        idempotency_key: new_key("retry"),
                        reason: "retried from the control center".to_owned(),
                    }))
                    .await
                    .map(|_| "retry started".to_owned()),
                "cancel" => client
                    .cancel_saga(api.call(pb::CancelSagaRequest {
                        saga_id,
                        reason,
                        idempotency_key: new_key("cancel"),
                    }))
                    .await
                    .map(|_| "cancelled: compensating".to_owned()),
                _ => client
                    .resume_saga(api.call(pb::ResumeSagaRequest {
                        saga_id,
                        skip_failed_step: false,
                        reason,
                        idempotency_key: new_key("resume"),
                    }))
                    .await
                    .map(|_| "resumed".to_owned()),
            };
            let _ = outcome.try_set(Some(result.map_err(|status| describe(&status))));
        });
    };
    // Only what the saga service would accept in the saga's state is offered.
    let allowed = move || {
        saga.with(|saga| match saga {
            Some(Ok(saga)) => Allowed::of(saga),
            _ => Allowed::default(),
        })
    };

    view! {
        <section class="saga">
            <p><a href="#/sagas" on:click=move |_| navigate("sagas")>"← all sagas"</a></p>
            {move || match saga.get() {
                None => view! { <p class="hint">"connecting…"</p> }.into_any(),
                Some(Err(error)) => view! { <p class="error">{error}</p> }.into_any(),
                Some(Ok(saga)) => view! {
                    <header class="saga-head">
                        <h2>"Saga "<span class="mono">{saga.saga_id.clone()}</span></h2>
                        <span class=state_class(saga.state) id="saga-state">{state_name(saga.state)}</span>
                        <span class="hint">{move || if live.get() { "● live" } else { "" }}</span>
                    </header>
                    <dl class="facts">
                        <dt>"Order"</dt><dd class="mono">{saga.order_id.clone()}</dd>
                        <dt>"Created"</dt><dd>{format::time(saga.create_time.as_ref())}</dd>
                        <dt>"Updated"</dt><dd>{format::time(saga.update_time.as_ref())}</dd>
                        <dt>"Ended"</dt><dd>{format::time(saga.end_time.as_ref())}</dd>
                        <dt>"Compensation"</dt><dd>{pb::SagaCompensationCause::try_from(saga.compensation_cause).map(|c| c.as_str_name().trim_start_matches("SAGA_COMPENSATION_CAUSE_").to_owned()).unwrap_or_default()}</dd>
                        <dt>"Reason"</dt><dd class="reason">{saga.failure_reason.clone()}</dd>
                    </dl>
                    <ol class="timeline">
                        {saga.steps.iter().map(step_view).collect_view()}
                    </ol>
                }.into_any(),
            }}
            <div class="actions">
                <input name="reason" prop:value=move || reason.get() on:input=move |event| reason.set(event_target_value(&event)) disabled=!operator />
                {move || {
                    let allowed = allowed();
                    let button = |action: &'static str, label: &'static str| {
                        let act = act.clone();
                        view! { <button name=action disabled=!operator on:click=move |_| act(action)>{label}</button> }
                    };
                    view! {
                        {allowed.retry.then(|| button("retry", "Retry now"))}
                        {allowed.cancel.then(|| button("cancel", "Cancel"))}
                        {allowed.resume.then(|| button("resume", "Resume"))}
                        {(allowed == Allowed::default()).then(|| view! {
                            <span class="hint" id="no-actions">"Nothing to do in this state."</span>
                        })}
                    }
                }}
                {(!operator).then(|| view! { <span class="hint">"Actions need the operator role."</span> })}
            </div>
            {outcome_view(outcome)}
        </section>
    }
}

/// What an operator may do with a saga in its state, as the saga service decides it: retry a
/// step whose retry is scheduled, cancel until the goods are dispatched, resume a parked saga.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Allowed {
    retry: bool,
    cancel: bool,
    resume: bool,
}

impl Allowed {
    fn of(saga: &pb::Saga) -> Self {
        let state = pb::SagaState::try_from(saga.state).ok();
        let active = matches!(
            state,
            Some(
                pb::SagaState::Running
                    | pb::SagaState::AwaitingShipment
                    | pb::SagaState::Compensating
            )
        );
        let scheduled = saga
            .steps
            .last()
            .is_some_and(|step| step.status == pb::SagaStepStatus::RetryScheduled as i32);
        // Capturing follows the dispatch: from then on the saga is past its point of no return.
        let dispatched = saga.steps.iter().any(|step| {
            matches!(
                pb::SagaStepType::try_from(step.step),
                Ok(pb::SagaStepType::CapturePayment
                    | pb::SagaStepType::ConfirmReservation
                    | pb::SagaStepType::ConfirmOrder)
            )
        });
        Self {
            retry: active && scheduled,
            cancel: matches!(
                state,
                Some(pb::SagaState::Running | pb::SagaState::AwaitingShipment)
            ) && !dispatched,
            resume: state == Some(pb::SagaState::CompensationFailed),
        }
    }
}

fn step_view(step: &pb::SagaStep) -> impl IntoView + use<> {
    let status = pb::SagaStepStatus::try_from(step.status)
        .map(|status| {
            status
                .as_str_name()
                .trim_start_matches("SAGA_STEP_STATUS_")
                .to_owned()
        })
        .unwrap_or_default();
    let attempts = step
        .attempts
        .iter()
        .map(|attempt| {
            let outcome = pb::StepAttemptOutcome::try_from(attempt.outcome)
                .map(|outcome| {
                    outcome
                        .as_str_name()
                        .trim_start_matches("STEP_ATTEMPT_OUTCOME_")
                        .to_owned()
                })
                .unwrap_or_default();
            let error = if attempt.error_message.is_empty() {
                String::new()
            } else {
                format!("{} {}", attempt.error_code, attempt.error_message)
            };
            view! {
                <li class="attempt">
                    <span class="mono">{"#"}{attempt.attempt_number}</span>
                    <span>{format::time(attempt.start_time.as_ref())}</span>
                    <span>{format::between(attempt.start_time.as_ref(), attempt.end_time.as_ref())}</span>
                    <span class="outcome">{outcome}</span>
                    <span class="error">{error}</span>
                </li>
            }
        })
        .collect_view();
    view! {
        <li class="step" data-step=step_name(step.step)>
            <div class="step-head"><strong>{step_name(step.step)}</strong><span class="status">{status}</span></div>
            <ul class="attempts">{attempts}</ul>
        </li>
    }
}
