//! Dead letters of every consuming service: list and filter, inspect a record (its envelope
//! decoded, headers, error, attempts), replay it to its topic or dismiss it.

use leptos::{prelude::*, task::spawn_local};
use prost::Message as _;
use zentra_proto::{events::v1::EventEnvelope, saga::v1 as pb};

use crate::{
    api::{CONSUMING_SERVICES, confirm, describe, new_key},
    format,
    session::{Role, use_session},
    widgets::{listing, outcome_view, page_alive, shown, wait_or_refresh},
};

fn status_name(status: i32) -> &'static str {
    match pb::DeadLetterStatus::try_from(status) {
        Ok(pb::DeadLetterStatus::Pending) => "PENDING",
        Ok(pb::DeadLetterStatus::Replayed) => "REPLAYED",
        Ok(pb::DeadLetterStatus::Dismissed) => "DISMISSED",
        _ => "UNKNOWN",
    }
}

/// The dead-letter page.
#[component]
pub fn DeadLetters() -> impl IntoView {
    let session = use_session();
    let operator = session.can(Role::Operator);
    let api = session.api();
    let service = RwSignal::new(CONSUMING_SERVICES[0].to_owned());
    let status = RwSignal::new(pb::DeadLetterStatus::Pending as i32);
    let topic = RwSignal::new(String::new());
    let records = RwSignal::new(None::<Result<Vec<pb::DeadLetter>, String>>);
    let selected = RwSignal::new(None::<pb::DeadLetter>);
    let outcome = RwSignal::new(None::<Result<String, String>>);
    let refresh = RwSignal::new(0_u32);
    let alive = page_alive();
    {
        let api = api.clone();
        spawn_local(async move {
            while shown(&alive) {
                let target = service.get_untracked();
                let request = pb::ListDeadLettersRequest {
                    status: status.get_untracked(),
                    source_topic: topic.get_untracked().trim().to_owned(),
                    ..Default::default()
                };
                let result = api
                    .dead_letters()
                    .list_dead_letters(api.request(request, &target))
                    .await
                    .map(|response| response.into_inner().dead_letters)
                    .map_err(|status| describe(&status));
                if records.try_set(Some(result)).is_some() {
                    break;
                }
                // Every three seconds, or at once after a change of filter or an action.
                wait_or_refresh(refresh, 12).await;
            }
        });
    }
    let act = move |replay: bool| {
        let Some(record) = selected.get_untracked() else {
            return;
        };
        let question = if replay {
            "Replay this record to its original topic?"
        } else {
            "Dismiss this record?"
        };
        if !confirm(question) {
            return;
        }
        let api = api.clone();
        let target = service.get_untracked();
        spawn_local(async move {
            let mut client = api.dead_letters();
            let result = if replay {
                client
                    .replay_dead_letter(api.request(
                        pb::ReplayDeadLetterRequest {
                            dead_letter_id: record.dead_letter_id.clone(),
                            idempotency_key: new_key("replay"),
                            reason: "replayed from the control center".to_owned(),
                        },
                        &target,
                    ))
                    .await
                    .map(|response| {
                        let response = response.into_inner();
                        format!(
                            "replayed to {} partition {} offset {}",
                            record.source_topic, response.replay_partition, response.replay_offset
                        )
                    })
            } else {
                client
                    .dismiss_dead_letter(api.request(
                        pb::DismissDeadLetterRequest {
                            dead_letter_id: record.dead_letter_id.clone(),
                            reason: "dismissed from the control center".to_owned(),
                            idempotency_key: new_key("dismiss"),
                        },
                        &target,
                    ))
                    .await
                    .map(|_| "dismissed".to_owned())
            };
            let _ = outcome.try_set(Some(result.map_err(|status| describe(&status))));
            let _ = selected.try_set(None);
            let _ = refresh.try_update(|count| *count += 1);
        });
    };
    let act_replay = act.clone();
    let bump = move || refresh.update(|count| *count += 1);
    view! {
        <section class="dlq">
            <h2>"Dead letters"</h2>
            <p class="hint">"Messages a consumer gave up on after its attempts, kept with their context."</p>
            <div class="filters">
                <label>"Service"
                    <select name="service" on:change=move |event| { service.set(event_target_value(&event)); selected.set(None); bump(); }>
                        {CONSUMING_SERVICES.iter().map(|name| view! { <option value=*name>{*name}</option> }).collect_view()}
                    </select>
                </label>
                <label>"Status"
                    <select name="status" on:change=move |event| { status.set(event_target_value(&event).parse().unwrap_or(0)); bump(); }>
                        <option value="1">"pending"</option>
                        <option value="2">"replayed"</option>
                        <option value="3">"dismissed"</option>
                        <option value="0">"any"</option>
                    </select>
                </label>
                <label>"Topic"
                    <input name="topic" placeholder="full topic name" prop:value=move || topic.get()
                        on:change=move |event| { topic.set(event_target_value(&event)); bump(); } />
                </label>
            </div>
            {outcome_view(outcome)}
            {move || listing(records.get(), "No dead letters here.", |list| view! {
                    <div class="scroll">
                    <table class="list">
                        <thead><tr><th>"Topic"</th><th>"Offset"</th><th>"Event"</th><th>"Error"</th><th>"Attempts"</th><th>"Status"</th><th>"Last failure"</th></tr></thead>
                        <tbody>
                            {list.into_iter().map(|record| {
                                let chosen = record.clone();
                                view! {
                                    <tr class="dead-letter" data-id=record.dead_letter_id.clone() on:click=move |_| selected.set(Some(chosen.clone()))>
                                        <td class="mono">{record.source_topic.clone()}</td>
                                        <td>{format!("{}/{}", record.partition, record.offset)}</td>
                                        <td>{record.event_type.clone()}</td>
                                        <td class="reason">{record.error.clone()}</td>
                                        <td>{record.attempt_count}</td>
                                        <td>{status_name(record.status)}</td>
                                        <td>{format::time(record.last_failure_time.as_ref())}</td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                    </div>
                }.into_any())}
            {move || selected.get().map(|record| {
                let envelope = EventEnvelope::decode(record.payload.as_slice())
                    .map(|envelope| format!("{envelope:#?}"))
                    .unwrap_or_else(|error| format!("not an event envelope ({error}): {}", String::from_utf8_lossy(&record.payload)));
                let headers = record.headers.iter().map(|header| view! {
                    <li><span class="mono">{header.key.clone()}</span>" = "{String::from_utf8_lossy(&header.value).into_owned()}</li>
                }).collect_view();
                let act_replay = act_replay.clone();
                let act_dismiss = act.clone();
                let pending = record.status == pb::DeadLetterStatus::Pending as i32;
                view! {
                    <div class="inspect">
                        <h3>"Record "<span class="mono">{record.dead_letter_id.clone()}</span></h3>
                        <dl class="facts">
                            <dt>"Consumer group"</dt><dd class="mono">{record.consumer_group.clone()}</dd>
                            <dt>"Key"</dt><dd class="mono">{String::from_utf8_lossy(&record.key).into_owned()}</dd>
                            <dt>"Error"</dt><dd class="reason">{record.error.clone()}</dd>
                            <dt>"Attempts"</dt><dd>{record.attempt_count}</dd>
                            <dt>"First failure"</dt><dd>{format::time(record.first_failure_time.as_ref())}</dd>
                        </dl>
                        {if record.redacted {
                            view! { <p class="hint redacted">"Headers and payload may carry customer data: they need the operator role."</p> }.into_any()
                        } else {
                            view! {
                                <h4>"Headers"</h4><ul class="headers">{headers}</ul>
                                <h4>"Payload"</h4><pre class="payload">{envelope}</pre>
                            }.into_any()
                        }}
                        <div class="actions">
                            <button name="replay" disabled=!operator || !pending on:click=move |_| act_replay(true)>"Replay"</button>
                            <button name="dismiss" class="quiet" disabled=!operator || !pending on:click=move |_| act_dismiss(false)>"Dismiss"</button>
                            {(!operator).then(|| view! { <span class="hint">"Replay and dismiss need the operator role."</span> })}
                        </div>
                    </div>
                }
            })}
        </section>
    }
}
