//! Zentra's saga orchestrator. The order saga (reserve stock, authorize payment, create the
//! shipment and wait for it, capture, confirm) is a persistent state machine in PostgreSQL:
//! instances lease due sagas, make each step's call with a deadline and an idempotency key
//! derived from saga and step, and store every transition with its events in one transaction.
//! Compensations travel as Kafka commands and complete on their acknowledgements.

use std::net::SocketAddr;

use zentra_proto::saga::v1::{
    circuit_breaker_service_server::CircuitBreakerServiceServer,
    saga_service_server::SagaServiceServer,
};
use zentra_runtime::{
    config::ConfigSources,
    platform::{Platform, RunningService, ServiceInfo},
    server::BoundServer,
    telemetry::Telemetry,
};

pub mod breakers;
pub mod bulk;
pub mod config;
pub mod convert;
pub mod domain;
pub mod downstream;
pub mod engine;
pub mod error;
pub mod gauges;
pub mod grpc;
pub mod intake;
pub mod machine;
pub mod metric_names;
pub mod reconcile;
pub mod store;
pub mod watch;

pub use config::Config;

/// Name of the service, as producer of its events.
pub const SERVICE: &str = "saga";

/// What the service declares to the runtime.
pub const INFO: ServiceInfo = ServiceInfo {
    name: SERVICE,
    version: env!("CARGO_PKG_VERSION"),
    migrations: store::migrations::MIGRATIONS,
    // What it produces, and what it consumes, so it can start before the other services.
    topics: &[
        machine::EVENTS_TOPIC,
        "inventory.commands",
        "payment.commands",
        "fulfillment.commands",
        "saga.command-acks",
        "order.events",
        "fulfillment.events",
    ],
};

/// A started saga orchestrator whose port is bound.
pub struct SagaOrchestrator {
    platform: Platform,
    server: BoundServer,
}

impl SagaOrchestrator {
    /// Connects, migrates, starts the engine, the intake and reconciliation, binds the port.
    pub async fn start(
        mut config: Config,
        sources: ConfigSources,
        telemetry: Telemetry,
    ) -> anyhow::Result<Self> {
        metric_names::describe();
        let settings = config.domain.saga.clone();
        if settings.step_key_horizon >= config.common.retention.idempotency_keys {
            anyhow::bail!(
                "invalid config: saga.step_key_horizon must be shorter than \
                 retention.idempotency_keys, or a resumed step could reach a participant that \
                 forgot its key"
            );
        }
        // A fixed instance id names this instance in the partition leases too, so a restart
        // takes its partitions back at once.
        if config.common.kafka.member_id.is_empty() {
            config
                .common
                .kafka
                .member_id
                .clone_from(&settings.instance_id);
        }
        // A claim must outlive the calls made under it, or another claim could run the same step.
        let minimum_lease = settings.call_timeout * 2 + std::time::Duration::from_secs(1);
        if settings.lease < minimum_lease {
            anyhow::bail!(
                "saga.lease ({:?}) must be at least twice saga.call_timeout plus 1s ({:?})",
                settings.lease,
                minimum_lease
            );
        }
        let platform = Platform::start(INFO, &config, &sources, telemetry).await?;
        platform.spawn_relay();
        platform.spawn_gauges(vec![Box::new(gauges::SagaStates::default())]);
        let downstreams = downstream::Downstreams::new(
            &settings.endpoints,
            config.common.client_tls.as_ref(),
            &settings.circuit_breaker,
            settings.call_timeout,
            settings.reservation_hold,
        )?;
        let owner = if settings.instance_id.is_empty() {
            format!("saga-{}", uuid::Uuid::new_v4().simple())
        } else {
            settings.instance_id.clone()
        };
        let engine = engine::Engine::new(
            platform.db.clone(),
            downstreams,
            engine::EngineSettings {
                owner,
                lease: settings.lease,
                poll_interval: settings.poll_interval,
                concurrency: settings.concurrency,
                commit_batch: settings.commit_batch.max(1),
                policy: settings.retry.clone(),
            },
            platform.config.kafka.topic_prefix.clone(),
            platform.relay.waker(),
        );
        // Every instance is a member of one group: the partitions are leased in the saga's
        // database and split between the instances (not left to the broker's group protocol).
        platform.spawn_consumer(
            intake::GROUP,
            intake::CONSUMED_TOPICS
                .iter()
                .map(|topic| platform.topic(topic))
                .collect(),
            intake::Intake::new(engine.clone()),
        )?;
        platform.spawn(engine.clone().run(platform.shutdown.clone()));
        platform.spawn(reconcile::run(
            engine.clone(),
            settings.reconcile_interval,
            settings.reconcile_after,
            platform.shutdown.clone(),
        ));
        let bulk = bulk::BulkRunner::new(engine.clone(), settings.step_key_horizon);
        platform.spawn(bulk.clone().run(platform.shutdown.clone()));
        let server = platform
            .server()
            .add_service(SagaServiceServer::new(
                grpc::SagaApi::new(
                    engine.clone(),
                    watch::ChangeFeed::new(
                        engine.clone(),
                        &settings.watch,
                        platform.draining.clone(),
                    ),
                    platform.audit.clone(),
                )
                .with_step_key_horizon(settings.step_key_horizon)
                .with_bulk_runner(bulk),
            ))
            .add_service(CircuitBreakerServiceServer::new(breakers::BreakerApi::new(
                engine,
                settings.circuit_breaker.clone(),
                platform.audit.clone(),
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
