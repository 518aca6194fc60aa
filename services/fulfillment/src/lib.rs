//! Zentra's fulfillment service: accepts shipments for confirmed orders and completes them
//! asynchronously (PICKING → PACKED → DISPATCHED) with a worker that resumes from the database
//! after a restart; an unshippable destination or SKU fails the shipment so the saga has a real
//! asynchronous failure to compensate.

use std::net::SocketAddr;

use zentra_proto::fulfillment::v1::fulfillment_service_server::FulfillmentServiceServer;
use zentra_runtime::{
    config::ConfigSources,
    platform::{Platform, RunningService, ServiceInfo},
    server::BoundServer,
    telemetry::Telemetry,
};

pub mod commands;
pub mod config;
pub mod convert;
pub mod error;
pub mod grpc;
pub mod shipments;
pub mod store;

pub use config::Config;

/// Base name of the topic the fulfillment service publishes to.
pub const EVENTS_TOPIC: &str = "fulfillment.events";

/// What the service declares to the runtime.
pub const INFO: ServiceInfo = ServiceInfo {
    name: shipments::SERVICE,
    version: env!("CARGO_PKG_VERSION"),
    migrations: store::migrations::MIGRATIONS,
    // The command topics are created too, so the saga can send before this service first runs.
    topics: &[
        EVENTS_TOPIC,
        commands::COMMANDS_TOPIC,
        zentra_runtime::commands::ACKS_TOPIC,
    ],
};

/// A started fulfillment service whose port is bound.
pub struct FulfillmentService {
    platform: Platform,
    server: BoundServer,
}

impl FulfillmentService {
    /// Connects, migrates, starts the relay and the shipment worker, binds the port.
    pub async fn start(
        config: Config,
        sources: ConfigSources,
        telemetry: Telemetry,
    ) -> anyhow::Result<Self> {
        let settings = config.domain.fulfillment.clone();
        let platform = Platform::start(INFO, &config, &sources, telemetry).await?;
        let shipments = shipments::Shipments::new(
            platform.db.clone(),
            platform.event_topic(EVENTS_TOPIC),
            platform.relay.waker(),
            settings,
            platform.group_commit(),
        );
        platform.spawn_relay();
        platform.spawn(shipments::run_worker(
            shipments.clone(),
            platform.shutdown.clone(),
        ));
        let api = std::sync::Arc::new(grpc::FulfillmentApi::new(shipments));
        platform.spawn_command_consumer(
            commands::COMMANDS_TOPIC,
            commands::FulfillmentCommands::new(api.clone()),
        )?;
        let server = platform
            .server()
            .add_service(FulfillmentServiceServer::from_arc(api))
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
