//! Zentra's inventory service: products with stock, and reservations that reserve, confirm and
//! release stock idempotently, expire on their own, and never take stock below zero.

use std::net::SocketAddr;

use zentra_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use zentra_runtime::{
    config::ConfigSources,
    outbox::OutboxRelay,
    platform::{Platform, ServiceInfo},
    server::{BoundServer, RunningServer},
    telemetry::Telemetry,
};

pub mod config;
pub mod convert;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod stock;
pub mod store;

pub use config::Config;

/// What the service declares to the runtime.
pub const INFO: ServiceInfo = ServiceInfo {
    name: stock::SERVICE,
    version: env!("CARGO_PKG_VERSION"),
    migrations: store::migrations::MIGRATIONS,
    topics: &[EVENTS_TOPIC],
};

/// Base name of the topic inventory publishes its events to.
pub const EVENTS_TOPIC: &str = "inventory.events";

/// A started inventory service whose port is bound.
pub struct Inventory {
    platform: Platform,
    server: BoundServer,
}

impl Inventory {
    /// Connects, migrates, starts background work (relay, expiry) and binds the port.
    pub async fn start(
        config: Config,
        sources: ConfigSources,
        telemetry: Telemetry,
    ) -> anyhow::Result<Self> {
        let platform = Platform::start(INFO, &config, &sources, telemetry).await?;
        let settings = config.domain.inventory.clone();
        let topics = stock::Topics {
            events: platform.topic(EVENTS_TOPIC),
        };
        let waker = settings.run_outbox_relay.then(|| platform.relay.waker());
        let stock = stock::Stock::new(platform.db.clone(), topics, waker);
        if settings.run_outbox_relay {
            platform.spawn_relay();
        }
        tokio::spawn(stock::run_expiry(
            stock.clone(),
            settings.expiry_sweep_interval,
            platform.shutdown.clone(),
        ));
        let api = grpc::InventoryApi::new(stock, settings);
        let server = platform
            .server()
            .add_service(InventoryServiceServer::new(api))
            .bind()
            .await?;
        Ok(Self { platform, server })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown`, then stops background work.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let token = self.platform.shutdown.clone();
        let result = self.server.serve(shutdown).await;
        token.cancel();
        result
    }

    /// Runs on tasks; the handle stops it.
    pub fn spawn(self) -> RunningInventory {
        let relay = self.platform.relay.clone();
        let token = self.platform.shutdown.clone();
        let db = self.platform.db.clone();
        RunningInventory {
            server: self.server.spawn(),
            relay,
            token,
            db,
        }
    }
}

/// An inventory service running on tasks.
pub struct RunningInventory {
    server: RunningServer,
    relay: OutboxRelay,
    token: zentra_runtime::CancellationToken,
    db: sea_orm::DatabaseConnection,
}

impl RunningInventory {
    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Its outbox relay (for driving rounds by hand when `run_outbox_relay` is off).
    pub fn relay(&self) -> &OutboxRelay {
        &self.relay
    }

    /// Its database.
    pub fn db(&self) -> &sea_orm::DatabaseConnection {
        &self.db
    }

    /// Stops serving and background work.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.token.cancel();
        self.server.shutdown().await
    }
}
