//! Calling another Zentra service: one lazily connected channel per peer, and requests that carry
//! a deadline and the caller's trace context.

use std::time::Duration;

use tonic::{Request, metadata::MetadataValue, transport::Channel};

use crate::events::current_trace_context;

/// A channel to `url` that connects on first use and reconnects by itself, so a service starts
/// while its peer is down; every call is multiplexed over one HTTP/2 connection.
pub fn lazy_channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(url.to_owned())
        .map_err(|error| anyhow::anyhow!("invalid endpoint {url}: {error}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
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
