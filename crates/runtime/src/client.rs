//! Calling another Zentra service: one lazily connected channel per peer, and requests that carry
//! a deadline and the caller's trace context.

use std::time::Duration;

use anyhow::Context as _;
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Certificate, Channel, Endpoint, Identity},
};

use crate::{config::ClientTlsConfig, events::current_trace_context};

/// A channel to `url` that connects on first use and reconnects by itself, so a service starts
/// while its peer is down; every call is multiplexed over one HTTP/2 connection. An `https://`
/// peer is verified against `tls`'s CA and shown `tls`'s certificate (mutual TLS).
pub fn lazy_channel(url: &str, tls: Option<&ClientTlsConfig>) -> anyhow::Result<Channel> {
    Ok(endpoint(url, tls)?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// The endpoint of `url`, with TLS from `tls` for an `https://` one (which then needs it).
pub fn endpoint(url: &str, tls: Option<&ClientTlsConfig>) -> anyhow::Result<Endpoint> {
    let endpoint = Channel::from_shared(url.to_owned())
        .map_err(|error| anyhow::anyhow!("invalid endpoint {url}: {error}"))?;
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let Some(tls) = tls else {
        anyhow::bail!("{url} is https: set client_tls (ca_path, cert_path, key_path)");
    };
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .with_context(|| format!("cannot read client_tls.{what} {}", path.display()))
    };
    let config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&tls.ca_path, "ca_path")?))
        .identity(Identity::from_pem(
            read(&tls.cert_path, "cert_path")?,
            read(&tls.key_path, "key_path")?,
        ));
    endpoint
        .tls_config(config)
        .with_context(|| format!("invalid client_tls for {url}"))
}

/// A request carrying `deadline` (as `grpc-timeout`) and the current trace context.
pub fn request<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    let trace = current_trace_context();
    if let Ok(value) = MetadataValue::try_from(trace.traceparent.as_str())
        && !trace.traceparent.is_empty()
    {
        request.metadata_mut().insert("traceparent", value);
    }
    request
}
