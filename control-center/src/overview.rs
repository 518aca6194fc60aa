//! Overview: every service's health, request rate, error rate, p50/p99 latency and consumer lag,
//! polled every two seconds, with small charts: the last half hour from Prometheus when the
//! deployment runs one (read through the gateway's `GetServiceHistory`), else the last two
//! minutes this page saw.

use std::time::Duration;

use gloo_timers::future::TimeoutFuture;
use leptos::{prelude::*, task::spawn_local};
use zentra_proto::{gateway::v1 as gateway, ops::v1 as ops};

use crate::{
    api::{Api, SERVICES, describe},
    chart::sparkline,
    format,
    session::use_session,
    widgets::{page_alive, shown},
};

const POLL_MS: u32 = 2_000;
/// Samples kept for the charts when the page keeps them (two minutes).
const HISTORY: usize = 60;
/// The charts' window when Prometheus keeps the history.
const PROMETHEUS_WINDOW: Duration = Duration::from_secs(30 * 60);
/// How often that history is read again (Prometheus scrapes every 15 s by default).
const PROMETHEUS_POLL_MS: u32 = 15_000;
/// The window the rates and percentiles summarise.
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
struct Dependency {
    name: String,
    serving: bool,
    detail: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Health {
    serving: bool,
    uptime: Duration,
    dependencies: Vec<Dependency>,
    requests_per_second: f64,
    error_ratio: f64,
    p50: Duration,
    p99: Duration,
    lag: i64,
}

#[derive(Debug, Clone, PartialEq)]
struct Row {
    name: &'static str,
    health: Option<Result<Health, String>>,
    rate_history: Vec<f64>,
    p99_history: Vec<f64>,
    /// Where the charts come from: Ok(true) Prometheus, Ok(false) this page's samples,
    /// Err(why) this page's samples because Prometheus could not be read.
    from_prometheus: Result<bool, String>,
}

impl Row {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            health: None,
            rate_history: Vec::new(),
            p99_history: Vec::new(),
            from_prometheus: Ok(false),
        }
    }

    /// The charts from Prometheus's history, or this page's samples when it failed.
    fn apply_history(&mut self, result: Result<gateway::GetServiceHistoryResponse, String>) {
        match result {
            Ok(history) => {
                self.rate_history = history.requests_per_second;
                self.p99_history = history.latency_p99_ms;
                self.from_prometheus = Ok(true);
            }
            Err(error) => {
                if self.from_prometheus == Ok(true) {
                    self.rate_history.clear();
                    self.p99_history.clear();
                }
                self.from_prometheus = Err(error);
            }
        }
    }

    fn apply(&mut self, result: Result<Health, String>) {
        let (rate, p99) = match &result {
            Ok(health) => (
                health.requests_per_second,
                health.p99.as_secs_f64() * 1000.0,
            ),
            Err(_) => (0.0, 0.0),
        };
        if self.from_prometheus == Ok(true) {
            self.health = Some(result);
            return;
        }
        for (history, value) in [(&mut self.rate_history, rate), (&mut self.p99_history, p99)] {
            history.push(value);
            if history.len() > HISTORY {
                history.remove(0);
            }
        }
        self.health = Some(result);
    }
}

async fn fetch(api: &Api, service: &'static str) -> Result<Health, String> {
    let mut client = api.ops();
    let summary = client
        .get_health_summary(api.request(ops::GetHealthSummaryRequest {}, service))
        .await
        .map_err(|status| describe(&status))?
        .into_inner();
    let snapshot = client
        .get_metrics_snapshot(api.request(
            ops::GetMetricsSnapshotRequest {
                window: prost_types::Duration::try_from(WINDOW).ok(),
            },
            service,
        ))
        .await
        .map_err(|status| describe(&status))?
        .into_inner();
    let overall = snapshot.overall.unwrap_or_default();
    Ok(Health {
        serving: summary.status == ops::HealthStatus::Serving as i32,
        uptime: format::duration(summary.uptime.as_ref()),
        dependencies: summary
            .dependencies
            .into_iter()
            .map(|dependency| Dependency {
                serving: dependency.status == ops::HealthStatus::Serving as i32,
                name: dependency.name,
                detail: dependency.detail,
            })
            .collect(),
        requests_per_second: overall.requests_per_second,
        error_ratio: overall.error_ratio,
        p50: format::duration(overall.latency_p50.as_ref()),
        p99: format::duration(overall.latency_p99.as_ref()),
        lag: snapshot.consumer_lag.iter().map(|lag| lag.lag).sum(),
    })
}

async fn fetch_history(
    api: &Api,
    service: &'static str,
) -> Result<gateway::GetServiceHistoryResponse, String> {
    api.gateway()
        .get_service_history(api.call(gateway::GetServiceHistoryRequest {
            service: service.to_owned(),
            window: prost_types::Duration::try_from(PROMETHEUS_WINDOW).ok(),
        }))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| describe(&status))
}

/// The overview page.
#[component]
pub fn Overview() -> impl IntoView {
    let session = use_session();
    let api = session.api();
    let prometheus = session.service_history;
    let rows = RwSignal::new(
        SERVICES
            .iter()
            .map(|name| Row::new(name))
            .collect::<Vec<_>>(),
    );
    let alive = page_alive();
    if prometheus {
        let api = api.clone();
        let alive = alive.clone();
        spawn_local(async move {
            while shown(&alive) {
                let results = futures::future::join_all(
                    SERVICES.iter().map(|service| fetch_history(&api, service)),
                )
                .await;
                let updated = rows.try_update(|rows| {
                    for (row, result) in rows.iter_mut().zip(results) {
                        row.apply_history(result);
                    }
                });
                if updated.is_none() {
                    break;
                }
                TimeoutFuture::new(PROMETHEUS_POLL_MS).await;
            }
        });
    }
    spawn_local(async move {
        while shown(&alive) {
            let results =
                futures::future::join_all(SERVICES.iter().map(|service| fetch(&api, service)))
                    .await;
            let updated = rows.try_update(|rows| {
                for (row, result) in rows.iter_mut().zip(results) {
                    row.apply(result);
                }
            });
            if updated.is_none() {
                break;
            }
            TimeoutFuture::new(POLL_MS).await;
        }
    });
    view! {
        <section class="overview">
            <h2>"Services"</h2>
            <p class="hint">
                "Live: every two seconds; rates and latencies over the last 10 s; "
                {if prometheus {
                    "charts show the last 30 minutes from Prometheus."
                } else {
                    "charts show the two minutes this page saw."
                }}
            </p>
            <div class="cards">{move || rows.get().into_iter().map(card).collect_view()}</div>
        </section>
    }
}

fn card(row: Row) -> impl IntoView {
    let (history, note) = match &row.from_prometheus {
        Ok(true) => (
            "prometheus",
            "the last 30 minutes, from Prometheus".to_owned(),
        ),
        Ok(false) => ("page", "the last two minutes this page saw".to_owned()),
        Err(error) => (
            "page",
            format!("the last two minutes this page saw (Prometheus: {error})"),
        ),
    };
    let (class, label) = match &row.health {
        None => ("badge wait", "…"),
        Some(Ok(health)) if health.serving => ("badge ok", "SERVING"),
        Some(Ok(_)) => ("badge warn", "NOT SERVING"),
        Some(Err(_)) => ("badge down", "DOWN"),
    };
    let body = match row.health {
        None => view! { <p class="hint">"asking…"</p> }.into_any(),
        Some(Err(error)) => view! { <p class="error">{error}</p> }.into_any(),
        Some(Ok(health)) => {
            let dependencies = health
                .dependencies
                .into_iter()
                .map(|dependency| {
                    let class = if dependency.serving {
                        "dep ok"
                    } else {
                        "dep down"
                    };
                    view! { <span class=class title=dependency.detail>{dependency.name}</span> }
                })
                .collect_view();
            view! {
                <dl>
                    <dt>"req/s"</dt><dd class="rps">{format::rate(health.requests_per_second)}</dd>
                    <dt>"errors"</dt><dd class="errors">{format!("{:.1} %", health.error_ratio * 100.0)}</dd>
                    <dt>"p50"</dt><dd class="p50">{format::latency(health.p50)}</dd>
                    <dt>"p99"</dt><dd class="p99">{format::latency(health.p99)}</dd>
                    <dt>"lag"</dt><dd class="lag">{health.lag}</dd>
                    <dt>"uptime"</dt><dd>{format::uptime(health.uptime)}</dd>
                </dl>
                <div class="deps">{dependencies}</div>
            }
            .into_any()
        }
    };
    view! {
        <article class="card" data-service=row.name>
            <header><h3>{row.name}</h3><span class=class>{label}</span></header>
            {body}
            <div class="charts" data-history=history title=note>
                <figure><figcaption>"req/s"</figcaption>{sparkline(&row.rate_history, 120.0, 28.0)}</figure>
                <figure><figcaption>"p99 ms"</figcaption>{sparkline(&row.p99_history, 120.0, 28.0)}</figure>
            </div>
        </article>
    }
}
