//! The audit trail: every operator and admin action of every service (faults, kill, log levels,
//! dead-letter replay and dismissal, saga retry, cancel, resume and skip, breaker resets), newest
//! first, with who did it, why and what came of it. Operators and admins only.

use leptos::{prelude::*, task::spawn_local};
use zentra_proto::ops::v1 as ops;

use crate::{
    api::{Api, SERVICES, describe},
    format,
    session::{Role, use_session},
    widgets::{listing, page_alive, shown, wait_or_refresh},
};

/// Records fetched per service each round.
const PER_SERVICE: i32 = 100;

/// The services that keep an audit trail (each in its own database; the gateway has none).
fn audited_services() -> impl Iterator<Item = &'static str> {
    SERVICES.into_iter().filter(|service| *service != "gateway")
}

fn outcome_name(outcome: i32) -> &'static str {
    match ops::AuditOutcome::try_from(outcome) {
        Ok(ops::AuditOutcome::Succeeded) => "succeeded",
        Ok(ops::AuditOutcome::Failed) => "failed",
        Ok(ops::AuditOutcome::Pending) => "pending",
        _ => "unknown",
    }
}

/// The method of `package.Service/Method`.
fn method(action: &str) -> &str {
    action.rsplit('/').next().unwrap_or(action)
}

/// The newest records of every service (or one), merged newest first.
async fn fetch(api: &Api, only: &str, caller: &str) -> Result<Vec<ops::AuditRecord>, String> {
    let calls = audited_services()
        .filter(|service| only.is_empty() || *service == only)
        .map(|service| {
            let request = ops::ListAuditRecordsRequest {
                page: Some(zentra_proto::common::v1::PageRequest {
                    page_size: PER_SERVICE,
                    page_token: String::new(),
                }),
                caller: caller.to_owned(),
                ..Default::default()
            };
            let api = api.clone();
            async move {
                api.ops()
                    .list_audit_records(api.request(request, service))
                    .await
                    .map(|response| response.into_inner().audit_records)
                    .map_err(|status| format!("{service}: {}", describe(&status)))
            }
        });
    let mut records = Vec::new();
    for answer in futures::future::join_all(calls).await {
        records.extend(answer?);
    }
    // UUIDv7 ids sort by time across services too.
    records.sort_by(|a, b| b.audit_record_id.cmp(&a.audit_record_id));
    Ok(records)
}

/// The audit page.
#[component]
pub fn Audit() -> impl IntoView {
    let session = use_session();
    if !session.can(Role::Operator) {
        return view! {
            <section class="audit">
                <h2>"Audit trail"</h2>
                <p class="hint">"The audit trail needs the operator role."</p>
            </section>
        }
        .into_any();
    }
    let api = session.api();
    let service = RwSignal::new(String::new());
    let caller = RwSignal::new(String::new());
    let records = RwSignal::new(None::<Result<Vec<ops::AuditRecord>, String>>);
    let refresh = RwSignal::new(0_u32);
    let alive = page_alive();
    spawn_local(async move {
        while shown(&alive) {
            let result = fetch(
                &api,
                &service.get_untracked(),
                caller.get_untracked().trim(),
            )
            .await;
            if records.try_set(Some(result)).is_some() {
                break;
            }
            // Every five seconds, or at once after a change of filter.
            wait_or_refresh(refresh, 20).await;
        }
    });
    let bump = move || refresh.update(|count| *count += 1);
    view! {
        <section class="audit">
            <h2>"Audit trail"</h2>
            <p class="hint">"Every operator and admin action, stored by the service that took it. Newest first; the latest 100 per service."</p>
            <div class="filters">
                <label>"Service"
                    <select name="service" on:change=move |event| { service.set(event_target_value(&event)); bump(); }>
                        <option value="">"all"</option>
                        {audited_services().map(|name| view! { <option value=name>{name}</option> }).collect_view()}
                    </select>
                </label>
                <label>"Caller"
                    <input name="caller" placeholder="key:…" prop:value=move || caller.get()
                        on:change=move |event| { caller.set(event_target_value(&event)); bump(); } />
                </label>
            </div>
            {move || listing(records.get(), "No operator or admin action yet.", |list| view! {
                <div class="scroll">
                <table class="list">
                    <thead><tr><th>"When"</th><th>"Service"</th><th>"Action"</th><th>"Target"</th><th>"Caller"</th><th>"Role"</th><th>"Reason"</th><th>"Outcome"</th></tr></thead>
                    <tbody>
                        {list.into_iter().map(|record| {
                            let outcome = if record.status_code.is_empty() || record.status_code == "OK" {
                                outcome_name(record.outcome).to_owned()
                            } else {
                                format!("{} ({})", outcome_name(record.outcome), record.status_code)
                            };
                            view! {
                                <tr class="audit-record" data-id=record.audit_record_id.clone() title=record.status_message.clone()>
                                    <td>{format::date_time(record.request_time.as_ref())}</td>
                                    <td>{record.service.clone()}</td>
                                    <td class="mono" title=record.action.clone()>{method(&record.action).to_owned()}</td>
                                    <td class="mono">{record.target.clone()}</td>
                                    <td class="mono" title=record.peer.clone()>{record.caller.clone()}</td>
                                    <td>{record.role.clone()}</td>
                                    <td class="reason">{record.reason.clone()}</td>
                                    <td class=format!("outcome {}", outcome_name(record.outcome))>{outcome}</td>
                                </tr>
                            }
                        }).collect_view()}
                    </tbody>
                </table>
                </div>
            }.into_any())}
        </section>
    }
    .into_any()
}
