//! Zentra's notification service: consumes order, payment and shipment events (deduplicated by
//! the inbox), renders a message per event and customer, delivers it by SMTP, records every
//! attempt, retries with exponential backoff and dead-letters what keeps failing.

use std::{net::SocketAddr, sync::Arc};

use zentra_proto::notification::v1::notification_service_server::NotificationServiceServer;
use zentra_runtime::{
    config::ConfigSources,
    platform::{Platform, RunningService, ServiceInfo},
    server::BoundServer,
    telemetry::Telemetry,
};

pub mod config;
pub mod delivery;
pub mod error;
pub mod grpc;
pub mod intake;
pub mod render;
pub mod store;

pub use config::Config;

/// Name of the service, as producer of its events.
pub const SERVICE: &str = "notification";
/// Base name of the topic the notification service publishes to.
pub const EVENTS_TOPIC: &str = "notification.events";
/// Base names of the topics it consumes.
pub const CONSUMED_TOPICS: &[&str] = &["order.events", "payment.events", "fulfillment.events"];

/// What the service declares to the runtime.
pub const INFO: ServiceInfo = ServiceInfo {
    name: SERVICE,
    version: env!("CARGO_PKG_VERSION"),
    migrations: store::migrations::MIGRATIONS,
    // The consumed topics are created too, so the service can start before their producers.
    topics: &[
        EVENTS_TOPIC,
        "order.events",
        "payment.events",
        "fulfillment.events",
    ],
};

/// A started notification service whose port is bound.
pub struct NotificationService {
    platform: Platform,
    server: BoundServer,
}

impl NotificationService {
    /// Connects, migrates, subscribes, starts delivery and binds the port.
    pub async fn start(
        config: Config,
        sources: ConfigSources,
        telemetry: Telemetry,
    ) -> anyhow::Result<Self> {
        let settings = config.domain.notification.clone();
        // Each worker holds a pooled connection while the SMTP server answers.
        if !(1..=8).contains(&settings.concurrency) {
            anyhow::bail!(
                "notification.concurrency ({}) must be between 1 and 8",
                settings.concurrency
            );
        }
        let platform = Platform::start(INFO, &config, &sources, telemetry).await?;
        platform.spawn_relay();
        let delivery_wake = Arc::new(tokio::sync::Notify::new());
        let intake = intake::Intake::new(Arc::clone(&delivery_wake));
        platform.spawn_consumer(
            "notification",
            CONSUMED_TOPICS
                .iter()
                .map(|topic| platform.topic(topic))
                .collect(),
            intake,
        )?;
        // One SMTP conversation at a time sent about 40 mails a second, fewer than two per saga
        // at the benchmark's peak: workers share the due notifications with SKIP LOCKED.
        let workers = settings.concurrency;
        let delivery = delivery::Delivery::new(
            platform.db.clone(),
            settings,
            platform.event_topic(EVENTS_TOPIC),
            platform.relay.waker(),
        );
        for worker in 0..workers {
            platform.spawn(delivery::run(
                delivery.clone(),
                Arc::clone(&delivery_wake),
                worker == 0,
                platform.shutdown.clone(),
            ));
        }
        let server = platform
            .server()
            .add_service(NotificationServiceServer::new(grpc::NotificationApi::new(
                platform.db.clone(),
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
