//! Zentra's payment service: authorizations through a processor adapter (a simulated processor
//! is built in), captures, voids and refunds that are idempotent and can never capture twice or
//! refund beyond the capture, and a ledger of every movement.

use std::{net::SocketAddr, sync::Arc};

use zentra_proto::payment::v1::payment_service_server::PaymentServiceServer;
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
pub mod payments;
pub mod processor;
pub mod store;

pub use config::Config;

/// Base name of the topic the payment service publishes to.
pub const EVENTS_TOPIC: &str = "payment.events";

/// What the service declares to the runtime.
pub const INFO: ServiceInfo = ServiceInfo {
    name: payments::SERVICE,
    version: env!("CARGO_PKG_VERSION"),
    migrations: store::migrations::MIGRATIONS,
    // The command topics are created too, so the saga can send before this service first runs.
    topics: &[
        EVENTS_TOPIC,
        commands::COMMANDS_TOPIC,
        zentra_runtime::commands::ACKS_TOPIC,
    ],
};

/// A started payment service whose port is bound.
pub struct PaymentService {
    platform: Platform,
    server: BoundServer,
}

impl PaymentService {
    /// Connects, migrates, starts the outbox relay and binds the port, with the simulated
    /// processor.
    pub async fn start(
        config: Config,
        sources: ConfigSources,
        telemetry: Telemetry,
    ) -> anyhow::Result<Self> {
        let settings = config.domain.payment.clone();
        let platform = Platform::start(INFO, &config, &sources, telemetry).await?;
        let processor = Arc::new(processor::SimulatedProcessor::new(settings.simulated_delay));
        let payments = payments::Payments::new(
            platform.db.clone(),
            processor,
            platform.event_topic(EVENTS_TOPIC),
            platform.relay.waker(),
            settings.authorization_validity,
            platform.group_commit(),
        );
        platform.spawn_relay();
        let api = Arc::new(grpc::PaymentApi::new(payments));
        platform.spawn_command_consumer(
            commands::COMMANDS_TOPIC,
            commands::PaymentCommands::new(api.clone()),
        )?;
        let server = platform
            .server()
            .add_service(PaymentServiceServer::from_arc(api))
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
