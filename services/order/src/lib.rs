//! Zentra's order service: places orders idempotently, prices them from the catalogue in integer
//! minor units, and records every status change the saga or the customer drives, with optimistic
//! concurrency.

use std::net::SocketAddr;

use zentra_proto::order::v1::order_service_server::OrderServiceServer;
use zentra_runtime::{
    config::ConfigSources,
    platform::{Platform, RunningService, ServiceInfo},
    server::BoundServer,
    telemetry::Telemetry,
};

pub mod catalogue;
pub mod config;
pub mod convert;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod orders;
pub mod store;

pub use config::Config;

/// Base name of the topic the order service publishes to.
pub const EVENTS_TOPIC: &str = "order.events";

/// What the service declares to the runtime.
pub const INFO: ServiceInfo = ServiceInfo {
    name: orders::SERVICE,
    version: env!("CARGO_PKG_VERSION"),
    migrations: store::migrations::MIGRATIONS,
    topics: &[EVENTS_TOPIC],
};

/// A started order service whose port is bound.
pub struct OrderService {
    platform: Platform,
    server: BoundServer,
}

impl OrderService {
    /// Connects, migrates, starts the outbox relay and binds the port.
    pub async fn start(
        config: Config,
        sources: ConfigSources,
        telemetry: Telemetry,
    ) -> anyhow::Result<Self> {
        let platform = Platform::start(INFO, &config, &sources, telemetry).await?;
        let orders = orders::Orders::new(
            platform.db.clone(),
            platform.event_topic(EVENTS_TOPIC),
            platform.relay.waker(),
            platform.group_commit(),
        );
        let catalogue =
            catalogue::Catalogue::new(&config.domain.order, config.common.client_tls.as_ref())?;
        platform.spawn_relay();
        let server = platform
            .server()
            .add_service(OrderServiceServer::new(grpc::OrderApi::new(
                orders, catalogue,
            )))
            .bind()
            .await?;
        Ok(Self { platform, server })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown`, then stops background work and waits for it.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        self.platform.run(self.server, shutdown).await
    }

    /// Runs on tasks; the handle stops it.
    pub fn spawn(self) -> RunningService {
        self.platform.run_in_background(self.server)
    }
}
