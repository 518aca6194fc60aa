//! Infrastructure: each service's view of its dependencies (PostgreSQL, Kafka, Redis) with probe
//! latency, the consumer groups with their topics, partitions and lag, and links to the operator
//! tools this deployment configured.

use gloo_timers::future::TimeoutFuture;
use leptos::{prelude::*, task::spawn_local};
use zentra_proto::ops::v1 as ops;

use crate::{
    api::{SERVICES, describe},
    format,
    session::use_session,
    widgets::{page_alive, shown},
};

#[derive(Debug, Clone, PartialEq)]
struct ServiceView {
    service: &'static str,
    dependencies: Result<Vec<ops::DependencyHealth>, String>,
    lag: Vec<ops::ConsumerLag>,
}

/// The infrastructure page.
#[component]
pub fn Infrastructure() -> impl IntoView {
    let session = use_session();
    let links = session.links.clone();
    let api = session.api();
    let views = RwSignal::new(Vec::<ServiceView>::new());
    let alive = page_alive();
    spawn_local(async move {
        while shown(&alive) {
            let fetched = futures::future::join_all(SERVICES.iter().map(|service| {
                let api = api.clone();
                async move {
                    let mut client = api.ops();
                    let dependencies = client
                        .get_health_summary(api.request(ops::GetHealthSummaryRequest {}, service))
                        .await
                        .map(|response| response.into_inner().dependencies)
                        .map_err(|status| describe(&status));
                    let lag = client
                        .get_metrics_snapshot(
                            api.request(ops::GetMetricsSnapshotRequest { window: None }, service),
                        )
                        .await
                        .map(|response| response.into_inner().consumer_lag)
                        .unwrap_or_default();
                    ServiceView {
                        service,
                        dependencies,
                        lag,
                    }
                }
            }))
            .await;
            if views.try_set(fetched).is_some() {
                break;
            }
            TimeoutFuture::new(3_000).await;
        }
    });
    view! {
        <section class="infrastructure">
            <h2>"Dependencies"</h2>
            <p class="hint">"As each service probes them, every five seconds at most."</p>
            <div class="scroll">
            <table class="list dependencies">
                <thead><tr><th>"Service"</th><th>"Dependency"</th><th>"Status"</th><th>"Probe"</th><th>"Detail"</th></tr></thead>
                <tbody>
                    {move || views.get().into_iter().flat_map(|view| {
                        match view.dependencies {
                            Err(error) => vec![view! { <tr><td>{view.service}</td><td></td><td class="error">"DOWN"</td><td></td><td class="reason">{error}</td></tr> }.into_any()],
                            Ok(dependencies) => dependencies.into_iter().map(|dependency| {
                                let serving = dependency.status == ops::HealthStatus::Serving as i32;
                                view! {
                                    <tr data-service=view.service data-dependency=dependency.name.clone()>
                                        <td>{view.service}</td>
                                        <td>{dependency.name.clone()}</td>
                                        <td class=if serving { "ok" } else { "error" }>{if serving { "SERVING" } else { "NOT SERVING" }}</td>
                                        <td>{format::latency(format::duration(dependency.latency.as_ref()))}</td>
                                        <td class="reason">{dependency.detail.clone()}</td>
                                    </tr>
                                }.into_any()
                            }).collect::<Vec<_>>(),
                        }
                    }).collect_view()}
                </tbody>
            </table>
            </div>
            <h2>"Broker: consumer groups"</h2>
            <p class="hint">"Topics and partitions each service consumes, and how far behind it is (from the Kafka client's own statistics)."</p>
            <div class="scroll">
            <table class="list lag">
                <thead><tr><th>"Service"</th><th>"Group"</th><th>"Topic"</th><th>"Partition"</th><th>"Lag"</th><th>"Reported"</th></tr></thead>
                <tbody>
                    {move || views.get().into_iter().flat_map(|view| {
                        view.lag.into_iter().map(move |lag| view! {
                            <tr class="lag-row">
                                <td>{view.service}</td>
                                <td class="mono">{lag.group.clone()}</td>
                                <td class="mono">{lag.topic.clone()}</td>
                                <td>{lag.partition}</td>
                                <td class="lag-value">{lag.lag}</td>
                                <td>{format::time(lag.report_time.as_ref())}</td>
                            </tr>
                        })
                    }).collect_view()}
                </tbody>
            </table>
            </div>
            {(!links.is_empty()).then(|| view! {
                <h2>"Tools"</h2>
                <ul class="links">
                    {links.into_iter().map(|(name, url)| view! { <li><a href=url.clone() target="_blank" rel="noopener">{name}</a></li> }).collect_view()}
                </ul>
            })}
        </section>
    }
}
