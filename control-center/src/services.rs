//! Services: build information, the log filter (changed at runtime, no restart) and the
//! effective configuration with secrets redacted.

use leptos::{prelude::*, task::spawn_local};
use zentra_proto::ops::v1 as ops;

use crate::{
    api::{Api, SERVICES, describe, new_key},
    format,
    session::{Role, use_session},
    widgets::outcome_view,
};

/// The services page.
#[component]
pub fn Services() -> impl IntoView {
    let session = use_session();
    let admin = session.can(Role::Admin);
    let api = session.api();
    view! {
        <section class="services">
            <h2>"Services"</h2>
            <p class="hint">"Log filters use tracing's syntax, e.g. info,zentra_runtime=debug. Configuration needs the admin role."</p>
            <div class="cards wide">
                {SERVICES.iter().map(|service| view! { <ServiceCard service=*service api=api.clone() admin /> }).collect_view()}
            </div>
        </section>
    }
}

#[component]
fn ServiceCard(service: &'static str, api: Api, admin: bool) -> impl IntoView {
    let build = RwSignal::new(None::<Result<ops::GetBuildInfoResponse, String>>);
    let filter = RwSignal::new(String::new());
    let config = RwSignal::new(None::<Result<String, String>>);
    let outcome = RwSignal::new(None::<Result<String, String>>);
    {
        let api = api.clone();
        spawn_local(async move {
            let mut client = api.ops();
            let info = client
                .get_build_info(api.request(ops::GetBuildInfoRequest {}, service))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| describe(&status));
            let _ = build.try_set(Some(info));
            if let Ok(level) = client
                .get_log_level(api.request(ops::GetLogLevelRequest {}, service))
                .await
            {
                let _ = filter.try_set(level.into_inner().filter);
            }
            if admin {
                let shown = client
                    .get_effective_config(api.request(ops::GetEffectiveConfigRequest {}, service))
                    .await
                    .map(|response| response.into_inner().config_toml)
                    .map_err(|status| describe(&status));
                let _ = config.try_set(Some(shown));
            }
        });
    }
    let apply = move |_| {
        let api = api.clone();
        let wanted = filter.get_untracked();
        spawn_local(async move {
            let result = api
                .ops()
                .set_log_level(api.request(
                    ops::SetLogLevelRequest {
                        filter: wanted,
                        idempotency_key: new_key("log"),
                        reason: "set from the control center".to_owned(),
                    },
                    service,
                ))
                .await
                .map(|response| {
                    let response = response.into_inner();
                    format!(
                        "log filter now {} (was {})",
                        response.filter, response.previous_filter
                    )
                })
                .map_err(|status| describe(&status));
            let _ = outcome.try_set(Some(result));
        });
    };
    view! {
        <article class="card service-card" data-service=service>
            <header><h3>{service}</h3></header>
            {move || match build.get() {
                None => view! { <p class="hint">"…"</p> }.into_any(),
                Some(Err(error)) => view! { <p class="error">{error}</p> }.into_any(),
                Some(Ok(info)) => view! {
                    <dl class="facts">
                        <dt>"Version"</dt><dd class="version">{info.version.clone()}</dd>
                        <dt>"Commit"</dt><dd class="mono">{info.git_commit.clone()}</dd>
                        <dt>"rustc"</dt><dd>{info.rustc_version.clone()}</dd>
                        <dt>"pid"</dt><dd>{info.pid}</dd>
                        <dt>"Started"</dt><dd>{format::time(info.start_time.as_ref())}</dd>
                    </dl>
                }.into_any(),
            }}
            <div class="log-level">
                <input name="log-filter" prop:value=move || filter.get() on:input=move |event| filter.set(event_target_value(&event)) disabled=!admin />
                <button name="set-log-level" disabled=!admin on:click=apply>"Set log level"</button>
            </div>
            {outcome_view(outcome)}
            {move || config.get().map(|config| match config {
                Ok(text) => view! { <details><summary>"Effective configuration"</summary><pre class="config">{text}</pre></details> }.into_any(),
                Err(error) => view! { <p class="error">{error}</p> }.into_any(),
            })}
        </article>
    }
}
