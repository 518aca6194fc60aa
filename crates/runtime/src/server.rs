//! The gRPC server every service runs: its domain services plus health, reflection, ops and
//! `/metrics`, reachable over gRPC and grpc-web on one port, with graceful shutdown.

use std::{convert::Infallible, future::Future, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use http::{HeaderName, HeaderValue, Method};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{
    server::NamedService,
    service::{Routes, RoutesBuilder},
    transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::Layer as _;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{config::GrpcConfig, ops::OpsContext};

mod inject_faults;
mod malformed;
mod observe;

pub use inject_faults::InjectFaultsLayer;
pub use malformed::MalformedLayer;
pub use observe::ObserveLayer;

/// Wraps the service's own routes in a router that sees every request first (the gateway's
/// authentication, rate limiting and forwarding).
pub type FrontFn = Box<dyn FnOnce(axum::Router) -> axum::Router + Send>;

/// Collects a service's gRPC services before binding.
pub struct GrpcServerBuilder {
    config: GrpcConfig,
    ops: OpsContext,
    routes: RoutesBuilder,
    domain_services: Vec<String>,
    front: Option<FrontFn>,
    /// Services whose RPCs count in the metrics snapshot besides the domain's.
    also_recorded: Vec<String>,
    /// Cancelled when the server stops taking calls.
    draining: CancellationToken,
}

impl GrpcServerBuilder {
    /// Starts a server description for the service that `ops` describes.
    pub fn new(config: GrpcConfig, ops: OpsContext) -> Self {
        Self {
            config,
            ops,
            routes: RoutesBuilder::default(),
            domain_services: Vec::new(),
            front: None,
            also_recorded: Vec::new(),
            draining: CancellationToken::new(),
        }
    }

    /// Cancels `token` when the server stops taking calls, before it waits for the open ones,
    /// so that streams watching it can end.
    pub fn draining(mut self, token: CancellationToken) -> Self {
        self.draining = token;
        self
    }

    /// Counts the RPCs of `services` in the metrics snapshot too (the gateway counts the ops
    /// calls it forwards as the traffic they are).
    pub fn also_record(mut self, services: impl IntoIterator<Item = String>) -> Self {
        self.also_recorded.extend(services);
        self
    }

    /// Puts `front` before the service's own routes: it receives them (health, reflection, ops,
    /// `/metrics` and the domain services) and returns the router that is served. The services
    /// it routes elsewhere are named in `routed_services`, so reflection lists them and
    /// observation and fault injection cover them.
    pub fn front(
        mut self,
        routed_services: impl IntoIterator<Item = String>,
        front: impl FnOnce(axum::Router) -> axum::Router + Send + 'static,
    ) -> Self {
        self.domain_services.extend(routed_services);
        self.front = Some(Box::new(front));
        self
    }

    /// Adds a domain service (reachable over gRPC and grpc-web, subject to injected faults).
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.domain_services.push(S::NAME.to_owned());
        self.routes
            .add_service(tonic_web::GrpcWebLayer::new().layer(service));
        self
    }

    /// Binds the listener (port 0 picks a free port) and returns the server ready to run.
    pub async fn bind(self) -> anyhow::Result<BoundServer> {
        // A certificate that cannot serve stops the start, not the first handshake.
        let mut server = Server::builder();
        if let Some(tls) = &self.config.tls {
            server = server
                .tls_config(server_tls(tls)?)
                .context("invalid grpc.tls certificate or key")?;
        }
        let listener = TcpListener::bind(self.config.listen_addr)
            .await
            .with_context(|| format!("cannot listen on {}", self.config.listen_addr))?;
        let local_addr = listener.local_addr()?;
        Ok(BoundServer {
            builder: self,
            server,
            listener,
            local_addr,
        })
    }
}

/// A server whose port is bound; [`BoundServer::serve`] runs it.
pub struct BoundServer {
    builder: GrpcServerBuilder,
    /// The transport, its TLS (if any) already checked and set.
    server: Server,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl BoundServer {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then reports NOT_SERVING and drains open calls.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let BoundServer {
            builder,
            server,
            listener,
            local_addr,
        } = self;
        let GrpcServerBuilder {
            config,
            ops,
            mut routes,
            domain_services,
            front,
            also_recorded,
            draining,
        } = builder;

        let (health, health_service) = tonic_health::server::health_reporter();
        let mut all_services = domain_services.clone();
        all_services.push(<zentra_proto::ops::v1::ops_service_server::OpsServiceServer<
            crate::ops::OpsApi,
        > as NamedService>::NAME
            .to_owned());

        // grpcurl and Python's grpcio-reflection still speak v1alpha; newer tools speak v1.
        let reflection = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(zentra_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // The error details statuses carry (BadRequest, RetryInfo, ...), so grpcurl and
                // buf decode them.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health");
            for name in &all_services {
                builder = builder.with_service_name(name.clone());
            }
            builder
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        routes
            .add_service(tonic_web::GrpcWebLayer::new().layer(health_service))
            .add_service(tonic_web::GrpcWebLayer::new().layer(reflection_v1))
            .add_service(tonic_web::GrpcWebLayer::new().layer(reflection_v1alpha))
            .add_service(tonic_web::GrpcWebLayer::new().layer(
                zentra_proto::ops::v1::ops_service_server::OpsServiceServer::new(
                    crate::ops::OpsApi::new(ops.clone()),
                ),
            ));

        let telemetry = ops.telemetry.clone();
        let router = with_cors(
            routes.routes().into_axum_router(),
            &config.cors_allowed_origins,
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let telemetry = telemetry.clone();
                async move { telemetry.render_metrics() }
            }),
        );
        let router = match front {
            Some(front) => front(router),
            None => router,
        };

        let (mut observed, mut streaming) = method_paths(&all_services);
        observed.extend([
            "grpc.health.v1.Health/Check".to_owned(),
            "grpc.health.v1.Health/Watch".to_owned(),
        ]);
        streaming.push("grpc.health.v1.Health/Watch".to_owned());
        // The tower stack, outermost first:
        let stack = tower::ServiceBuilder::new()
            // 1. Span and metrics: outermost, so latency and status include everything below,
            //    injected faults too, as a caller sees them.
            .layer(ObserveLayer::new(observed).streaming(streaming).recording(
                ops.rpc_stats.clone(),
                domain_services.iter().chain(&also_recorded).cloned(),
            ))
            // 2. Requests tonic could not read are INVALID_ARGUMENT, not INTERNAL; inside
            //    observation, so metrics count them as the caller's errors.
            .layer(MalformedLayer)
            // 3. Faults: only domain RPCs, so ops, health and reflection always answer.
            .layer(InjectFaultsLayer::new(
                ops.faults.clone(),
                domain_services.clone(),
            ))
            .into_inner();

        let health_task = tokio::spawn(report_health(
            health.clone(),
            ops.clone(),
            all_services.clone(),
        ));
        tracing::info!(service = ops.service, address = %local_addr, "serving gRPC and grpc-web");

        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let result = server
            // grpc-web arrives over HTTP/1.1.
            .accept_http1(true)
            .max_concurrent_streams(Some(config.max_concurrent_streams))
            .timeout(config.request_timeout)
            .layer(stack)
            .add_routes(Routes::from(router))
            .serve_with_incoming_shutdown(incoming, async {
                shutdown.await;
                draining.cancel();
                tracing::info!(service = ops.service, "shutting down: draining open calls");
            })
            .await;
        health_task.abort();
        for name in &all_services {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        result.context("gRPC server failed")
    }

    /// Runs the server on a task; returns its address and a handle that stops it.
    pub fn spawn(self) -> RunningServer {
        let local_addr = self.local_addr;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(async {
            let _ = stopped.await;
        }));
        RunningServer {
            local_addr,
            stop: Some(stop),
            task,
        }
    }
}

/// A server running on a task.
pub struct RunningServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops it gracefully and waits until it has.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.context("server task panicked")?
    }

    /// Stops it at once, as a crash would (open calls are cut).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Health follows the dependencies: SERVING while every probe passes and every consumer group
/// consumes as it should.
async fn report_health(health: HealthReporter, ops: OpsContext, services: Vec<String>) {
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    let mut last: Option<ServingStatus> = None;
    loop {
        interval.tick().await;
        let results = ops.probe_all(Duration::from_secs(2)).await;
        let consumers = ops.consumer_lag.problems();
        let status = if results.iter().all(|result| result.error.is_none()) && consumers.is_empty()
        {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            for failed in results.iter().filter(|result| result.error.is_some()) {
                tracing::warn!(dependency = failed.name, error = ?failed.error, "dependency unhealthy");
            }
            for problem in &consumers {
                tracing::warn!(group = %problem.group, reason = %problem.reason, "consumer unhealthy");
            }
            health.set_service_status("", status).await;
            for name in &services {
                health.set_service_status(name, status).await;
            }
            last = Some(status);
        }
    }
}

/// Every `service/method` path of the given services, from the contracts' descriptor set, and
/// those of them that stream (either way).
fn method_paths(services: &[String]) -> (Vec<String>, Vec<String>) {
    use prost::Message as _;
    let Ok(descriptors) = prost_types::FileDescriptorSet::decode(zentra_proto::FILE_DESCRIPTOR_SET)
    else {
        return (Vec::new(), Vec::new());
    };
    let (mut paths, mut streaming) = (Vec::new(), Vec::new());
    for file in &descriptors.file {
        for service in &file.service {
            let name = format!("{}.{}", file.package(), service.name());
            if services.contains(&name) {
                for method in &service.method {
                    let path = format!("{name}/{}", method.name());
                    if method.client_streaming() || method.server_streaming() {
                        streaming.push(path.clone());
                    }
                    paths.push(path);
                }
            }
        }
    }
    (paths, streaming)
}

/// The rustls configuration of `tls`: its certificate chain and key, HTTP/2 by ALPN, and the CA
/// clients must present a certificate of, if any.
fn server_tls(tls: &crate::config::TlsConfig) -> anyhow::Result<ServerTlsConfig> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path)
            .with_context(|| format!("cannot read grpc.tls.{what} {}", path.display()))
    };
    let identity = Identity::from_pem(
        read(&tls.cert_path, "cert_path")?,
        read(&tls.key_path, "key_path")?,
    );
    let config = ServerTlsConfig::new().identity(identity);
    Ok(match &tls.client_ca_path {
        // Client certificates required: a connection without one never reaches a handler.
        Some(ca) => config.client_ca_root(Certificate::from_pem(read(ca, "client_ca_path")?)),
        None => config,
    })
}

/// `router` answering browsers of `allowed_origins` cross-origin; no CORS at all (no headers, no
/// preflight answers) when there are none, the default.
pub fn with_cors(router: axum::Router, allowed_origins: &[String]) -> axum::Router {
    if allowed_origins.is_empty() {
        router
    } else {
        router.layer(cors_layer(allowed_origins))
    }
}

/// CORS for grpc-web callers in browsers: the headers they send and the status headers they
/// must be allowed to read.
pub fn cors_layer(allowed_origins: &[String]) -> CorsLayer {
    let origin = if allowed_origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            allowed_origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            HeaderName::from_static("content-type"),
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
            HeaderName::from_static("authorization"),
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-zentra-service"),
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("tracestate"),
        ])
        // Without these the browser hides the status of a failed call.
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(600))
}
