//! Forwarding a gRPC call to its service: one reused HTTP/2 connection per service, the request
//! buffered within the size limit, the deadline and the trace context passed on.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt as _, Full, Limited};
use tonic::{Status, body::Body, transport::Channel};
use tower::ServiceExt as _;

use crate::{config::Upstreams, metric_names, routes::Upstream};

/// Connections to every service behind the gateway.
#[derive(Clone)]
pub struct Forwarder {
    channels: HashMap<Upstream, Channel>,
    max_request_bytes: usize,
}

impl Forwarder {
    /// Prepares a lazily connected channel per service; a service that is down is UNAVAILABLE
    /// per call, not a start-up failure.
    pub fn new(
        upstreams: &Upstreams,
        tls: Option<&zentra_runtime::config::ClientTlsConfig>,
        max_request_bytes: usize,
    ) -> anyhow::Result<Self> {
        let mut channels = HashMap::new();
        for upstream in Upstream::ALL {
            let url = match upstream {
                Upstream::Inventory => &upstreams.inventory,
                Upstream::Order => &upstreams.order,
                Upstream::Payment => &upstreams.payment,
                Upstream::Fulfillment => &upstreams.fulfillment,
                Upstream::Notification => &upstreams.notification,
                Upstream::Saga => &upstreams.saga,
            };
            let channel = zentra_runtime::client::endpoint(url, tls)
                .map_err(|error| {
                    anyhow::anyhow!(
                        "invalid config: gateway.upstreams.{}: {error:#}",
                        upstream.name()
                    )
                })?
                .connect_timeout(upstreams.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .connect_lazy();
            channels.insert(upstream, channel);
        }
        Ok(Self {
            channels,
            max_request_bytes,
        })
    }

    /// Sends `request` to `upstream` and returns its response, streaming. `deadline` bounds the
    /// wait for the response to begin; the service itself enforces it on the whole call.
    pub async fn forward(
        &self,
        upstream: Upstream,
        request: Request<Body>,
        deadline: Duration,
    ) -> Result<Response<Body>, Status> {
        let (parts, body) = request.into_parts();
        // Every public RPC takes one request message, so buffering it costs nothing extra and
        // lets the size limit hold before anything reaches a service.
        let body = match Limited::new(body, self.max_request_bytes).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error)
                if error
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(Status::resource_exhausted(format!(
                    "request larger than {} bytes",
                    self.max_request_bytes
                )));
            }
            // grpc-web that does not decode (tonic-web reports it as a status): the caller's
            // mistake, like every request that cannot be read.
            Err(error) if error.downcast_ref::<Status>().is_some() => {
                return Err(Status::invalid_argument(format!(
                    "malformed request: the grpc-web body cannot be read ({error})"
                )));
            }
            // The caller went away mid-request.
            Err(error) => {
                return Err(Status::cancelled(format!(
                    "reading the request failed: {error}"
                )));
            }
        };
        let mut request = Request::from_parts(parts, Body::new(Full::<Bytes>::new(body)));
        pass_trace_context(request.headers_mut());

        let channel = self
            .channels
            .get(&upstream)
            .cloned()
            .ok_or_else(|| Status::internal("no channel"))?;
        let unreachable = |error: &dyn std::fmt::Display| {
            metrics::counter!(metric_names::UPSTREAM_ERRORS, "upstream" => upstream.name())
                .increment(1);
            tracing::warn!(upstream = upstream.name(), %error, "service unreachable");
            Status::unavailable(format!("the {} service is unreachable", upstream.name()))
        };
        // A little grace so the service's own DEADLINE_EXCEEDED arrives before ours.
        match tokio::time::timeout(
            deadline + Duration::from_millis(250),
            channel.oneshot(request),
        )
        .await
        {
            Ok(Ok(response)) => Ok(response),
            // The channel enforces the forwarded grpc-timeout itself.
            Ok(Err(error)) if timed_out(&error) => Err(Status::deadline_exceeded(format!(
                "the {} service did not answer within {deadline:?}",
                upstream.name()
            ))),
            Ok(Err(error)) => Err(unreachable(&error)),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the {} service did not answer within {deadline:?}",
                upstream.name()
            ))),
        }
    }
}

/// Whether a channel error is the call's deadline passing.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// Continues the trace: the service's span becomes a child of the gateway's.
fn pass_trace_context(headers: &mut http::HeaderMap) {
    let trace = zentra_runtime::events::current_trace_context();
    headers.remove("traceparent");
    headers.remove("tracestate");
    if let Ok(value) = HeaderValue::from_str(&trace.traceparent)
        && !trace.traceparent.is_empty()
    {
        headers.insert("traceparent", value);
        if let Ok(value) = HeaderValue::from_str(&trace.tracestate)
            && !trace.tracestate.is_empty()
        {
            headers.insert("tracestate", value);
        }
    }
}
