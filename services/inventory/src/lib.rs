//! Zentra's inventory service: products with stock, and reservations that reserve, confirm and
//! release stock idempotently, expire on their own, and never take stock below zero.

use std::net::SocketAddr;

use zentra_proto::inventory::v1::inventory_service_server::InventoryServiceServer;
use zentra_runtime::{
    config::ConfigSources,
    platform::{Platform, RunningService, ServiceInfo},
    server::BoundServer,
    telemetry::Telemetry,
};

pub mod commands;
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
    // The command topics are created too, so the saga can send before this service first runs.
    topics: &[
        EVENTS_TOPIC,
        commands::COMMANDS_TOPIC,
        zentra_runtime::commands::ACKS_TOPIC,
    ],
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
            events: platform.event_topic(EVENTS_TOPIC),
        };
        let waker = settings.run_outbox_relay.then(|| platform.relay.waker());
        let stock = stock::Stock::new(platform.db.clone(), topics, waker, platform.group_commit());
        if settings.run_outbox_relay {
            platform.spawn_relay();
        }
        platform.spawn(stock::run_expiry(
            stock.clone(),
            settings.expiry_sweep_interval,
            platform.shutdown.clone(),
        ));
        let api = std::sync::Arc::new(grpc::InventoryApi::new(stock, settings));
        platform.spawn_command_consumer(
            commands::COMMANDS_TOPIC,
            commands::InventoryCommands::new(api.clone()),
        )?;
        let server = platform
            .server()
            .add_service(InventoryServiceServer::from_arc(api))
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
