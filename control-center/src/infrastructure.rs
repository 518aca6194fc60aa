//! Infrastructure: each service's view of its dependencies (PostgreSQL, Kafka, Redis) with probe
//! latency, the broker's topics with their partitions and offsets, the consumer groups with their
//! lag, and links to the operator tools this deployment configured.

use gloo_timers::future::TimeoutFuture;
use leptos::{prelude::*, task::spawn_local};
use zentra_proto::ops::v1 as ops;

use crate::{
    api::{SERVICES, describe},
    format,
    session::{Role, use_session},
    widgets::{page_alive, shown},
};

#[derive(Debug, Clone, PartialEq)]
struct ServiceView {
    service: &'static str,
    dependencies: Result<Vec<ops::DependencyHealth>, String>,
    lag: Vec<ops::ConsumerLag>,
}

/// The broker's topics, as the first service with a broker connection that answered saw them.
#[derive(Debug, Clone, PartialEq)]
struct TopicsView {
    service: &'static str,
    listing: ops::ListBrokerTopicsResponse,
}

/// Asks each service with a Kafka client in turn; the gateway has none.
async fn broker_topics(api: &crate::api::Api) -> Result<TopicsView, String> {
    let mut last_error = String::from("no service answered");
    for service in SERVICES.into_iter().filter(|service| *service != "gateway") {
        match api
            .ops()
            .list_broker_topics(
                api.request(ops::ListBrokerTopicsRequest { name_prefix: None }, service),
            )
            .await
        {
            Ok(response) => {
                return Ok(TopicsView {
                    service,
                    listing: response.into_inner(),
                });
            }
            Err(status) => last_error = format!("{service}: {}", describe(&status)),
        }
    }
    Err(last_error)
}

/// The infrastructure page.
#[component]
pub fn Infrastructure() -> impl IntoView {
    let session = use_session();
    let links = session.links.clone();
    // Describing the broker costs a round of broker requests: operators only.
    let operator = session.can(Role::Operator);
    let api = session.api();
    let views = RwSignal::new(Vec::<ServiceView>::new());
    let topics = RwSignal::new(None::<Result<TopicsView, String>>);
    let alive = page_alive();
    spawn_local(async move {
        while shown(&alive) {
            if operator {
                let listed = broker_topics(&api).await;
                if topics.try_set(Some(listed)).is_some() {
                    break;
                }
            }
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
            <h2>"Broker: topics"</h2>
            {move || match topics.get() {
                None if !operator => view! { <p class="hint topics-summary">"The broker's topics need the operator role."</p> }.into_any(),
                None => view! { <p class="hint">"loading…"</p> }.into_any(),
                Some(Err(error)) => view! { <p class="error" role="alert">{error}</p> }.into_any(),
                Some(Ok(TopicsView { service, listing })) => view! {
                    <p class="hint topics-summary">
                        {format!(
                            "{} topics under \"{}\" of {} on the broker ({} broker{}), as {service}'s Kafka client sees them{}.",
                            listing.topics.len(),
                            listing.name_prefix,
                            listing.broker_topic_count,
                            listing.broker_count,
                            if listing.broker_count == 1 { "" } else { "s" },
                            if listing.truncated { "; more matched than are shown" } else { "" },
                        )}
                    </p>
                    <div class="scroll">
                    <table class="list topics">
                        <thead><tr><th>"Topic"</th><th>"Partitions"</th><th>"Records held"</th><th>"Offsets (low–high) by partition"</th></tr></thead>
                        <tbody>
                            {listing.topics.into_iter().map(|topic| {
                                let offsets = topic.partitions.iter().map(|partition| {
                                    if partition.error.is_empty() {
                                        format!("p{} {}–{} (leader {})", partition.id, partition.low_watermark, partition.high_watermark, partition.leader)
                                    } else {
                                        format!("p{} {}", partition.id, partition.error)
                                    }
                                }).collect::<Vec<_>>().join(" · ");
                                view! {
                                    <tr class="topic-row" data-topic=topic.name.clone()>
                                        <td class="mono">{topic.name.clone()}</td>
                                        <td class="partitions">{topic.partitions.len()}</td>
                                        <td class="records">{topic.records}</td>
                                        <td class="reason">{offsets}{(!topic.error.is_empty()).then(|| format!(" · {}", topic.error))}</td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                    </div>
                }.into_any(),
            }}
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
