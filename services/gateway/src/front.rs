//! The gateway's front: every request passes here first. gRPC and grpc-web calls are
//! authenticated, authorised, rate limited, given a deadline and then answered by the gateway
//! itself (its health, reflection, ops) or forwarded; anything else is a static file of the
//! control center (or `/metrics`).

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response, header::CONTENT_TYPE};
use tonic::{Code, Status, body::Body};
use tonic_types::{ErrorDetails, StatusExt as _};
use tower::{Layer as _, Service, ServiceExt as _};
use tower_http::services::{ServeDir, ServeFile};
use zentra_runtime::deadline;

use crate::{
    auth::{Authenticator, Caller},
    config::Limits,
    forward::Forwarder,
    metric_names,
    rate_limit::{Budget, Call, Decision, Limited, RateLimiter},
    routes::{Access, Route, RouteTable, Target, Upstream},
    streams::{Held, StreamSlots},
};

/// Header naming the service a shared RPC (ops, dead letters, health) is for.
pub const SERVICE_HEADER: &str = "x-zentra-service";
/// Header telling a service which caller the gateway authenticated.
pub const CALLER_HEADER: &str = "x-zentra-caller";
/// Header telling the gateway's own services the caller's role.
pub const ROLE_HEADER: &str = "x-zentra-role";

/// What the front needs; shared by every request.
pub struct Gatekeeper {
    /// Routes and access rules.
    pub table: RouteTable,
    /// Credentials.
    pub auth: Authenticator,
    /// Rate limits.
    pub limiter: RateLimiter,
    /// Connections to the services.
    pub forwarder: Forwarder,
    /// Size and deadline limits.
    pub limits: Limits,
    /// Open streams, per caller and in all.
    pub streams: Arc<StreamSlots>,
    /// Cancelled when the gateway stops taking calls; open streams end on it.
    pub draining: zentra_runtime::CancellationToken,
    /// The key callers' identity and role are signed with for the services.
    pub assertion_key: Option<zentra_runtime::config::Secret>,
}

/// The front service (the router's fallback: it sees every request).
#[derive(Clone)]
pub struct Front {
    gatekeeper: Arc<Gatekeeper>,
    /// The gateway's own routes: health, reflection, ops, `/metrics`.
    local: axum::Router,
    /// The control center's files, and the directory they are read from on every request (a
    /// control center built after the gateway started is served at once).
    files: Option<(Arc<std::path::Path>, ServeDir<ServeFile>)>,
}

impl Front {
    /// A front over the gateway's own routes, serving the control center from `static_dir`
    /// once it holds an `index.html` (it may be built after the gateway started).
    pub fn new(
        gatekeeper: Arc<Gatekeeper>,
        local: axum::Router,
        static_dir: Option<&std::path::Path>,
    ) -> Self {
        let files = static_dir.map(|dir| {
            // Unknown paths get index.html: the app routes on the client.
            let served = ServeDir::new(dir).fallback(ServeFile::new(dir.join("index.html")));
            (Arc::from(dir), served)
        });
        Self {
            gatekeeper,
            local,
            files,
        }
    }
}

impl Service<Request<axum::body::Body>> for Front {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<axum::body::Body>) -> Self::Future {
        let is_grpc = request
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        if is_grpc {
            // grpc-web becomes gRPC here, so everything after speaks one protocol.
            let gate = tonic_web::GrpcWebLayer::new().layer(Gate {
                gatekeeper: self.gatekeeper.clone(),
                local: self.local.clone(),
            });
            return Box::pin(async move {
                let response = gate
                    .oneshot(request.map(Body::new))
                    .await
                    .unwrap_or_else(|never| match never {});
                Ok(response.map(axum::body::Body::new))
            });
        }
        if request.uri().path() == "/metrics" {
            // The public port: what the platform carries is not for anyone who finds it. Any
            // caller's key or token will do (Prometheus sends one as a bearer token).
            if let Err(error) = self.gatekeeper.auth.authenticate(request.headers()) {
                metrics::counter!(metric_names::AUTH_FAILURES, "reason" => error.label())
                    .increment(1);
                let mut refused = plain(
                    http::StatusCode::UNAUTHORIZED,
                    &format!("/metrics needs a key (x-api-key or Authorization: Bearer): {error}"),
                );
                refused.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
                return Box::pin(async move { Ok(refused) });
            }
            return Box::pin(self.local.clone().oneshot(request));
        }
        let files = self.files.clone();
        Box::pin(async move {
            let built = match &files {
                Some((dir, _)) => tokio::fs::try_exists(dir.join("index.html"))
                    .await
                    .unwrap_or(false),
                None => false,
            };
            let Some((_, files)) = files.filter(|_| built) else {
                return Ok(plain(
                    http::StatusCode::NOT_FOUND,
                    "the control center is not built: run `just control-center` (it is served as soon as it is built)",
                ));
            };
            Ok(match files.oneshot(request).await {
                Ok(response) => response.map(axum::body::Body::new),
                Err(error) => plain(http::StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
            })
        })
    }
}

fn plain(status: http::StatusCode, text: &str) -> axum::response::Response {
    let mut response = Response::new(axum::body::Body::from(text.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Checks and routes one gRPC call.
#[derive(Clone)]
struct Gate {
    gatekeeper: Arc<Gatekeeper>,
    local: axum::Router,
}

impl Service<Request<Body>> for Gate {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let gate = self.clone();
        Box::pin(async move {
            Ok(gate
                .handle(request)
                .await
                .unwrap_or_else(|status| status.into_http()))
        })
    }
}

impl Gate {
    async fn handle(self, mut request: Request<Body>) -> Result<Response<Body>, Status> {
        let gatekeeper = &self.gatekeeper;
        let path = request.uri().path().trim_start_matches('/').to_owned();
        let route = *gatekeeper
            .table
            .get(&path)
            // gRPC's answer to a method the server does not have.
            .ok_or_else(|| {
                Status::new(
                    Code::Unimplemented,
                    format!("no RPC {path} in Zentra's public contracts"),
                )
            })?;

        let address = request
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|info| info.remote_addr())
            .map(|addr| addr.ip());
        let caller = admit(gatekeeper, &path, &route, request.headers(), address).await?;
        let upstream = target(&route, request.headers())?;
        // A stream keeps its slot until its response body is dropped.
        let slot = route
            .server_streaming
            .then(|| {
                gatekeeper
                    .streams
                    .take(caller.as_ref().map(|caller| caller.id.as_str()))
            })
            .transpose()?;

        let headers = request.headers_mut();
        // Credentials stop here: services trust the gateway, not the caller's secret.
        for name in [
            "authorization",
            "x-api-key",
            SERVICE_HEADER,
            CALLER_HEADER,
            ROLE_HEADER,
            zentra_runtime::assertion::ASSERTION_METADATA,
        ] {
            headers.remove(name);
        }
        if let Some(caller) = &caller
            && let Ok(value) = HeaderValue::from_str(&caller.id)
        {
            let role = crate::session::role_header(caller.role);
            headers.insert(CALLER_HEADER, value);
            headers.insert(ROLE_HEADER, HeaderValue::from_static(role));
            // Signed, so the service can tell the gateway's word from a peer's claim.
            if let Some(key) = &gatekeeper.assertion_key
                && let Ok(value) = HeaderValue::from_str(&zentra_runtime::assertion::sign(
                    key,
                    &caller.id,
                    role,
                    &path,
                    std::time::SystemTime::now(),
                ))
            {
                headers.insert(zentra_runtime::assertion::ASSERTION_METADATA, value);
            }
        }
        let default = if route.server_streaming {
            gatekeeper.limits.stream_deadline
        } else {
            gatekeeper.limits.default_deadline
        };
        let max = gatekeeper.limits.max_deadline.max(default);
        let deadline = deadline::effective(
            headers
                .get("grpc-timeout")
                .and_then(|value| value.to_str().ok()),
            default,
            max,
        );
        if let Ok(value) = HeaderValue::from_str(&deadline::format(deadline)) {
            headers.insert("grpc-timeout", value);
        }

        let response = match upstream {
            Some(upstream) => {
                gatekeeper
                    .forwarder
                    .forward(upstream, request, deadline)
                    .await?
            }
            None => {
                // Translated from grpc-web it may still say HTTP/1.1; the gateway's own services
                // take gRPC as HTTP/2 only.
                *request.version_mut() = http::Version::HTTP_2;
                let response = self
                    .local
                    .oneshot(request.map(axum::body::Body::new))
                    .await
                    .unwrap_or_else(|never| match never {});
                response.map(Body::new)
            }
        };
        Ok(match slot {
            Some(slot) => {
                response.map(|body| Body::new(Held::new(body, slot, gatekeeper.draining.clone())))
            }
            None => response,
        })
    }
}

/// Authenticates, authorises and rate-limits; the caller when credentials were needed.
async fn admit(
    gatekeeper: &Gatekeeper,
    path: &str,
    route: &Route,
    headers: &HeaderMap,
    address: Option<std::net::IpAddr>,
) -> Result<Option<Caller>, Status> {
    let required = match route.access {
        Access::Open => return Ok(None),
        Access::Internal => {
            metrics::counter!(metric_names::PERMISSION_DENIED, "route" => path.to_owned())
                .increment(1);
            return Err(Status::permission_denied(format!(
                "{path} is a step of the order saga and is not served through the gateway"
            )));
        }
        Access::Role(role) => role,
    };
    // Checking credentials is local and cheap; the one limiter round trip comes after, and a
    // caller whose credentials are wrong still spends its address's budget.
    let authenticated = gatekeeper.auth.authenticate(headers);
    let call = Call {
        address,
        caller: authenticated.as_ref().ok().map(|caller| caller.id.as_str()),
        route: path,
        action: route.action,
    };
    let decision = gatekeeper.limiter.check(call).await;
    let caller = authenticated.map_err(|error| {
        metrics::counter!(metric_names::AUTH_FAILURES, "reason" => error.label()).increment(1);
        match &decision {
            Decision::Limited(over) => limited(over, path),
            _ => Status::unauthenticated(error.to_string()),
        }
    })?;
    if caller.role < required {
        metrics::counter!(metric_names::PERMISSION_DENIED, "route" => path.to_owned()).increment(1);
        tracing::info!(caller = %caller.id, role = %caller.role, route = path, "permission denied");
        return Err(Status::permission_denied(format!(
            "{path} needs the {required} role; this caller is {}",
            caller.role
        )));
    }
    match decision {
        Decision::Allowed => Ok(Some(caller)),
        Decision::Limited(over) => Err(limited(&over, path)),
        Decision::Refused => Err(Status::unavailable(
            "the rate limiter is unavailable and this gateway fails closed; retry shortly",
        )),
    }
}

/// RESOURCE_EXHAUSTED naming the spent budget, with `RetryInfo` and `retry-after-ms`.
fn limited(over: &Limited, path: &str) -> Status {
    let Limited {
        retry_after,
        budget,
        limit,
    } = over;
    let whose = match budget {
        Budget::Address => "for this client address".to_owned(),
        Budget::Caller => "for this caller across every route".to_owned(),
        Budget::Route => format!("on {path}"),
    };
    let mut status = Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "rate limit of {} calls/s (burst {}) {whose} reached; retry in {} ms",
            limit.per_second,
            limit.burst,
            retry_after.as_millis()
        ),
        ErrorDetails::with_retry_info(Some(*retry_after)),
    );
    if let Ok(value) = tonic::metadata::MetadataValue::try_from(retry_after.as_millis().to_string())
    {
        status.metadata_mut().insert("retry-after-ms", value);
    }
    status
}

/// The service the call goes to; `None` when the gateway answers it.
fn target(route: &Route, headers: &HeaderMap) -> Result<Option<Upstream>, Status> {
    match route.target {
        Target::Service(upstream) => Ok(Some(upstream)),
        Target::Gateway => Ok(None),
        Target::Chosen { gateway_serves } => {
            let named = headers
                .get(SERVICE_HEADER)
                .map(|value| value.to_str().unwrap_or_default().trim());
            match named {
                Some("gateway") if gateway_serves => Ok(None),
                Some(name) => Upstream::parse(name).map(Some).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "{SERVICE_HEADER} names no service: expected one of {}",
                        service_names()
                    ))
                }),
                None if gateway_serves => Ok(None),
                None => Err(Status::invalid_argument(format!(
                    "every service serves this RPC: name one in the {SERVICE_HEADER} header ({})",
                    service_names()
                ))),
            }
        }
    }
}

fn service_names() -> String {
    Upstream::ALL
        .iter()
        .map(|upstream| upstream.name())
        .collect::<Vec<_>>()
        .join(", ")
}
