//! Waiting until processes are healthy: the broker and the mail sink when their port answers,
//! services and the gateway when gRPC health says SERVING (their database, broker and Redis
//! probes pass).

use std::time::Duration;

use tokio::net::TcpStream;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use zentra_runtime::config::ClientTlsConfig;

use crate::settings::{Component, Settings};

/// Whether `component` answers as healthy right now.
pub async fn is_healthy(settings: &Settings, component: Component) -> bool {
    let port = settings.port(component);
    match component {
        Component::Broker | Component::Mail | Component::Prometheus => {
            TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        }
        Component::Service(name, _) => {
            serving(&settings.url(name), Some(&settings.client_tls())).await
        }
        Component::Gateway => serving(&format!("http://127.0.0.1:{port}"), None).await,
    }
}

/// gRPC health of the whole server at `url`; an `https://` one is called with `tls`.
pub async fn serving(url: &str, tls: Option<&ClientTlsConfig>) -> bool {
    let Ok(endpoint) = zentra_runtime::client::endpoint(url, tls) else {
        return false;
    };
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2));
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok_and(|response| response.into_inner().status == ServingStatus::Serving as i32)
}

/// Waits until every one of `components` is healthy or `timeout` passes; the names of those
/// still unhealthy.
pub async fn wait_until_healthy(
    settings: &Settings,
    components: &[Component],
    timeout: Duration,
) -> Vec<&'static str> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pending: Vec<Component> = components.to_vec();
    loop {
        let mut still = Vec::new();
        for component in pending {
            if !is_healthy(settings, component).await {
                still.push(component);
            }
        }
        pending = still;
        if pending.is_empty() || tokio::time::Instant::now() >= deadline {
            return pending.iter().map(|component| component.name()).collect();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
