//! The shared start-up of a service: database with migrations, Kafka topics and producer, the
//! outbox relay, the ops context, and a shutdown token for background tasks. A service builds
//! its domain on top and hands its gRPC services to [`Platform::server`].

use std::sync::Arc;

use anyhow::Context as _;
use sea_orm::DatabaseConnection;
use serde::Serialize;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use zentra_proto::saga::v1::dead_letter_service_server::DeadLetterServiceServer;

use crate::{
    audit::AuditTrail,
    commands::{self, CommandConsumer, CommandHandler},
    config::{CommonConfig, ConfigSources, ServiceConfig, to_toml},
    db::{self, PostgresProbe, SqlMigration},
    dead_letters::{DeadLetterApi, DeadLetterSink},
    kafka::{self, ConsumerSettings, EventConsumer, EventHandler, EventProducer, KafkaProbe},
    ops::{DependencyProbe, OpsContext},
    outbox::OutboxRelay,
    server::{BoundServer, GrpcServerBuilder, RunningServer},
    telemetry::Telemetry,
};

/// What a service declares about itself.
#[derive(Debug, Clone, Copy)]
pub struct ServiceInfo {
    /// Short name: "inventory".
    pub name: &'static str,
    /// Crate version.
    pub version: &'static str,
    /// Its migrations, after the runtime's.
    pub migrations: &'static [SqlMigration],
    /// Base names of the topics it produces to (the prefix is added).
    pub topics: &'static [&'static str],
}

/// The shared parts of a running service.
pub struct Platform {
    /// The service.
    pub info: ServiceInfo,
    /// Shared configuration.
    pub config: CommonConfig,
    /// PostgreSQL pool, migrated.
    pub db: DatabaseConnection,
    /// Idempotent producer.
    pub producer: EventProducer,
    /// Outbox relay over `db` (not yet running).
    pub relay: OutboxRelay,
    /// What the ops service reports.
    pub ops: OpsContext,
    /// Where operator and admin actions are recorded.
    pub audit: AuditTrail,
    /// Cancelled at shutdown; background tasks stop on it.
    pub shutdown: CancellationToken,
    /// Cancelled when the server stops taking calls, before it waits for open ones: long
    /// streams (Watch) end on it, so the server can drain.
    pub draining: CancellationToken,
    /// Background tasks, awaited at shutdown so none is cut mid-transaction or mid-commit.
    tasks: TaskTracker,
}

impl Platform {
    /// Connects, migrates and creates topics.
    pub async fn start<D: Serialize>(
        info: ServiceInfo,
        config: &ServiceConfig<D>,
        sources: &ConfigSources,
        telemetry: Telemetry,
    ) -> anyhow::Result<Self> {
        let common = config.common.clone();
        let db = db::connect(&common.database)
            .await
            .with_context(|| format!("cannot connect to {}", common.database.url.redacted()))?;
        db::migrate(&db, info.migrations)
            .await
            .context("database migration failed")?;
        let topics: Vec<String> = info
            .topics
            .iter()
            .map(|base| kafka::topic_name(&common.kafka, base))
            .collect();
        kafka::ensure_topics(&common.kafka, &topics)
            .await
            .with_context(|| {
                format!("cannot set up topics on {}", common.kafka.bootstrap_servers)
            })?;
        let producer = EventProducer::new(&common.kafka, info.name)?;
        let relay = OutboxRelay::new(db.clone(), producer.clone(), common.outbox.clone());
        let probes: Vec<Arc<dyn DependencyProbe>> = vec![
            Arc::new(PostgresProbe(db.clone())),
            Arc::new(KafkaProbe(producer.clone())),
        ];
        let ops = OpsContext::new(
            info.name,
            info.version,
            telemetry,
            to_toml(config),
            sources,
            probes,
        )
        .with_broker(producer.clone(), &common.kafka.topic_prefix);
        let audit = AuditTrail::new(db.clone(), info.name)
            .with_assertion_key(common.caller_assertion_key.clone());
        let ops = ops.with_audit(audit.clone());
        tracing::info!(
            service = info.name,
            "platform ready: database migrated, topics present"
        );
        let platform = Self {
            info,
            config: common,
            db,
            producer,
            relay,
            ops,
            audit,
            shutdown: CancellationToken::new(),
            draining: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        metrics::gauge!(
            crate::telemetry::names::BUILD_INFO,
            "service" => info.name,
            "version" => info.version
        )
        .set(1.0);
        platform.spawn_gauges(vec![
            Box::new(crate::gauges::RuntimeTables::default()),
            Box::new(crate::gauges::Process),
        ]);
        Ok(platform)
    }

    /// A full topic name for a base name.
    pub fn topic(&self, base: &str) -> String {
        kafka::topic_name(&self.config.kafka, base)
    }

    /// A service's event topic of base name `base`, publishing what the config asks for.
    pub fn event_topic(&self, base: &str) -> crate::events::EventTopic {
        crate::events::EventTopic::new(base, self.topic(base), &self.config.outbox.publish)
    }

    /// Runs background work that must stop when [`Platform::shutdown`] is cancelled; shutdown
    /// waits for it.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Starts the outbox relay, and the retention task that prunes what the relay and the
    /// consumers leave behind, on tasks; they stop at shutdown.
    pub fn spawn_relay(&self) {
        self.spawn(self.relay.clone().run(self.shutdown.clone()));
        self.spawn(crate::retention::run(
            self.db.clone(),
            self.config.retention.clone(),
            self.shutdown.clone(),
        ));
    }

    /// This service's group commit over its database, its runner stopping at shutdown.
    pub fn group_commit(&self) -> crate::group_commit::GroupCommit {
        let (group, runner) =
            crate::group_commit::GroupCommit::new(self.db.clone(), self.config.database.max_batch);
        if let Some(runner) = runner {
            self.spawn(runner.run(self.shutdown.clone()));
        }
        group
    }

    /// Samples `samplers` every `telemetry.gauge_interval` until shutdown (the runtime's own
    /// start with the platform; a service adds its domain's).
    pub fn spawn_gauges(&self, samplers: Vec<Box<dyn crate::gauges::Sampler>>) {
        self.spawn(crate::gauges::run(
            self.db.clone(),
            self.config.telemetry.gauge_interval,
            samplers,
            self.shutdown.clone(),
        ));
    }

    /// Serves `server` until `signal`, then stops background work and waits for it.
    pub async fn run(
        self,
        server: BoundServer,
        signal: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let result = server.serve(signal).await;
        self.stop_background().await;
        result
    }

    /// Serves `server` on a task; the handle stops everything.
    pub fn run_in_background(self, server: BoundServer) -> RunningService {
        RunningService {
            server: server.spawn(),
            platform: self,
        }
    }

    async fn stop_background(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Consumes `topics` (full names) in `group` with `handler` until shutdown. The group's
    /// partitions are leased in this service's database and split between its instances; the
    /// offsets advance there with each message's effect.
    pub fn spawn_consumer<H: EventHandler>(
        &self,
        group: impl Into<String>,
        topics: Vec<String>,
        handler: H,
    ) -> anyhow::Result<()> {
        let consumer = EventConsumer::new(
            &self.config.kafka,
            self.consumer_settings(group, topics),
            self.db.clone(),
        )?;
        self.spawn(consumer.run(handler, self.shutdown.clone()));
        Ok(())
    }

    /// Consumes saga commands from `commands_topic` (base name) with `handler`, dead-lettering
    /// what cannot be read, and acknowledges each on `saga.command-acks`; stops at shutdown.
    pub fn spawn_command_consumer<H: CommandHandler>(
        &self,
        commands_topic: &str,
        handler: H,
    ) -> anyhow::Result<()> {
        let handler = CommandConsumer::new(
            handler,
            self.producer.clone(),
            self.topic(commands::ACKS_TOPIC),
            self.info.name,
        );
        self.spawn_consumer(
            format!("{}-commands", self.info.name),
            vec![self.topic(commands_topic)],
            handler,
        )
    }

    /// Settings for a consumer of this service: its dead letters go to the service's table, its
    /// ownership and lag to the ops snapshot and the health summary.
    pub fn consumer_settings(
        &self,
        group: impl Into<String>,
        topics: Vec<String>,
    ) -> ConsumerSettings {
        ConsumerSettings {
            dead_letters: Some(self.dead_letter_sink()),
            lag: Some(self.ops.consumer_lag.clone()),
            ..ConsumerSettings::new(group, topics)
        }
    }

    /// Where this service's consumers park messages that keep failing.
    pub fn dead_letter_sink(&self) -> DeadLetterSink {
        DeadLetterSink::new(
            self.db.clone(),
            self.producer.clone(),
            self.config.kafka.clone(),
        )
    }

    /// A server builder for this service, already serving its dead-letter API.
    pub fn server(&self) -> GrpcServerBuilder {
        GrpcServerBuilder::new(self.config.grpc.clone(), self.ops.clone())
            .draining(self.draining.clone())
            .add_service(DeadLetterServiceServer::new(DeadLetterApi::new(
                self.db.clone(),
                self.producer.clone(),
                self.audit.clone(),
            )))
    }
}

/// A service running on tasks (tests and embedded use).
pub struct RunningService {
    server: RunningServer,
    platform: Platform,
}

impl RunningService {
    /// The address it serves on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// Its database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.platform.db
    }

    /// Its outbox relay.
    pub fn relay(&self) -> &OutboxRelay {
        &self.platform.relay
    }

    /// Stops serving, then stops background work and waits for it.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let result = self.server.shutdown().await;
        self.platform.stop_background().await;
        result
    }

    /// Stops at once, as a crash would: open calls and background work are cut.
    pub fn kill(self) {
        self.platform.shutdown.cancel();
        self.server.abort();
    }
}
