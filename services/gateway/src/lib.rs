//! Zentra's gateway: the one public entry point. It serves every public API over gRPC and
//! grpc-web on one port, authenticates callers (API keys, JWTs) and checks their role, limits
//! their rate in Redis (shared by every gateway instance), passes deadlines and trace context on
//! to the services over reused connections, and serves the control center's files.

use std::{net::SocketAddr, sync::Arc};

use zentra_runtime::{
    config::{ConfigSources, to_toml},
    ops::{DependencyProbe, OpsContext},
    server::{BoundServer, GrpcServerBuilder, RunningServer},
    telemetry::Telemetry,
};

pub mod auth;
pub mod config;
pub mod forward;
pub mod front;
pub mod history;
pub mod metric_names;
pub mod rate_limit;
pub mod routes;
pub mod session;
pub mod streams;

pub use config::Config;

use zentra_proto::gateway::v1::gateway_service_server::GatewayServiceServer;

use crate::{
    auth::Authenticator,
    forward::Forwarder,
    front::{Front, Gatekeeper},
    rate_limit::RateLimiter,
    routes::RouteTable,
    session::SessionApi,
};

/// The gateway's name in logs, metrics and ops.
pub const SERVICE: &str = "gateway";

/// A gateway whose port is bound.
pub struct Gateway {
    server: BoundServer,
}

impl Gateway {
    /// Checks the config, prepares connections to the services and Redis, and binds the port.
    pub async fn start(
        config: Config,
        sources: ConfigSources,
        telemetry: Telemetry,
    ) -> anyhow::Result<Self> {
        let settings = &config.domain.gateway;
        config::validate(settings).map_err(anyhow::Error::msg)?;
        let grpc = &config.common.grpc;
        // Keys and tokens cross this port: in the clear only where nobody else can listen.
        if grpc.tls.is_none() && !grpc.listen_addr.ip().is_loopback() {
            anyhow::bail!(
                "invalid config: the gateway listens on {} without TLS; set grpc.tls.cert_path and \
                 grpc.tls.key_path, or listen on a loopback address behind a TLS-terminating proxy \
                 on the same host (docs/GATEWAY.md, \"TLS\")",
                grpc.listen_addr
            );
        }
        metric_names::describe();
        let auth = Authenticator::new(&settings.auth)
            .map_err(|error| anyhow::anyhow!("invalid config: gateway.auth: {error}"))?;
        let limiter = RateLimiter::new(settings.rate_limit.clone())?;
        let forwarder = Forwarder::new(
            &settings.upstreams,
            config.common.client_tls.as_ref(),
            settings.limits.max_request_bytes,
        )?;
        let table = RouteTable::from_contracts();
        let routed = table.routed_services();
        let prometheus = settings
            .prometheus_url
            .as_deref()
            .map(history::Prometheus::new)
            .transpose()
            .map_err(|error| anyhow::anyhow!("invalid config: gateway.prometheus_url: {error}"))?;

        let mut probes: Vec<Arc<dyn DependencyProbe>> = Vec::new();
        if settings.rate_limit.enabled {
            probes.push(Arc::new(limiter.probe()));
        }
        let ops = OpsContext::new(
            SERVICE,
            env!("CARGO_PKG_VERSION"),
            telemetry,
            to_toml(&config),
            &sources,
            probes,
        );
        let draining = zentra_runtime::CancellationToken::new();
        let gatekeeper = Arc::new(Gatekeeper {
            table,
            auth,
            limiter,
            forwarder,
            limits: settings.limits.clone(),
            streams: streams::StreamSlots::new(
                settings.limits.max_streams_per_caller,
                settings.limits.max_streams,
            ),
            draining: draining.clone(),
            assertion_key: config.common.caller_assertion_key.clone(),
        });
        let static_dir = settings.static_dir.clone();
        let origins = config.common.grpc.cors_allowed_origins.clone();
        let server = GrpcServerBuilder::new(config.common.grpc.clone(), ops)
            .draining(draining)
            .also_record(["zentra.ops.v1.OpsService".to_owned()])
            .add_service(GatewayServiceServer::new(SessionApi::new(
                settings.links.clone(),
                prometheus,
            )))
            .front(routed, move |local| {
                let front = Front::new(gatekeeper, local, static_dir.as_deref());
                // CORS outside the front: a browser's preflight carries no credentials.
                zentra_runtime::server::with_cors(
                    axum::Router::new().fallback_service(front),
                    &origins,
                )
            })
            .bind()
            .await?;
        Ok(Self { server })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown`.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        self.server.serve(shutdown).await
    }

    /// Serves on a task; the handle stops it.
    pub fn spawn(self) -> RunningServer {
        self.server.spawn()
    }
}
