//! The ops service every Zentra service serves: health summary, build info, effective config,
//! runtime log levels, fault injection and a snapshot of the key metrics.

mod snapshot;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::future::BoxFuture;
use tonic::{Request, Response, Status};
use zentra_proto::ops::v1::{
    self as pb, ClearFaultsRequest, ClearFaultsResponse, DependencyHealth, FaultKind,
    GetBuildInfoRequest, GetBuildInfoResponse, GetEffectiveConfigRequest,
    GetEffectiveConfigResponse, GetHealthSummaryRequest, GetHealthSummaryResponse,
    GetLogLevelRequest, GetLogLevelResponse, GetMetricsSnapshotRequest, GetMetricsSnapshotResponse,
    HealthStatus, InjectFaultRequest, InjectFaultResponse, ListAuditRecordsRequest,
    ListAuditRecordsResponse, ListBrokerTopicsRequest, ListBrokerTopicsResponse, ListFaultsRequest,
    ListFaultsResponse, SetLogLevelRequest, SetLogLevelResponse, ops_service_server::OpsService,
};

use crate::{
    audit::{Action, Actor, AuditTrail, Role, check_reason},
    config::ConfigSources,
    faults::{ActiveFault, FaultSpec, Faults},
    kafka::{BrokerTopics, ConsumerLag, EventProducer},
    rpc_stats::RpcStats,
    status::{Violations, check_idempotency_key, invalid_field},
    telemetry::Telemetry,
    time::{from_proto_duration, to_proto_duration, to_timestamp},
};

/// A dependency the service needs (database, broker, cache), probed for health.
pub trait DependencyProbe: Send + Sync {
    /// Name shown in the health summary: "postgres", "kafka", "redis".
    fn name(&self) -> &'static str;
    /// Succeeds when the dependency answers.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// Result of probing one dependency.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// Dependency name.
    pub name: &'static str,
    /// Round-trip time.
    pub latency: Duration,
    /// The error, if it failed.
    pub error: Option<String>,
}

/// Everything the ops service reports about one service; cheap to clone.
#[derive(Clone)]
pub struct OpsContext {
    /// Service name, for example "inventory".
    pub service: &'static str,
    /// Crate version of the service.
    pub version: &'static str,
    /// Process telemetry (log filter).
    pub telemetry: Telemetry,
    /// The effective config, rendered and redacted.
    pub config_toml: Arc<str>,
    /// Where the config came from.
    pub config_sources: Arc<[String]>,
    /// When the process started.
    pub started_at: SystemTime,
    /// Dependencies to probe.
    pub probes: Arc<[Arc<dyn DependencyProbe>]>,
    /// Injected faults.
    pub faults: Faults,
    /// Recent RPC outcomes, for the metrics snapshot.
    pub rpc_stats: RpcStats,
    /// The lag of the service's consumers.
    pub consumer_lag: ConsumerLag,
    /// The service's broker connection and topic prefix, for `ListBrokerTopics`.
    pub broker: Option<(EventProducer, Arc<str>)>,
    /// Where operator and admin actions are recorded; none in a process without a database
    /// (the gateway), whose actions are only logged.
    pub audit: Option<AuditTrail>,
    /// Recent answers of `ListBrokerTopics` by prefix; the lock makes describing single-flight.
    broker_topics: Arc<tokio::sync::Mutex<BrokerTopicsCache>>,
}

type BrokerTopicsCache = std::collections::HashMap<String, (Instant, ListBrokerTopicsResponse)>;

impl OpsContext {
    /// The context of a service starting now, with no faults and empty statistics.
    pub fn new(
        service: &'static str,
        version: &'static str,
        telemetry: Telemetry,
        config_toml: String,
        sources: &ConfigSources,
        probes: Vec<Arc<dyn DependencyProbe>>,
    ) -> Self {
        Self {
            service,
            version,
            telemetry,
            config_toml: config_toml.into(),
            config_sources: sources.0.clone().into(),
            started_at: SystemTime::now(),
            probes: probes.into(),
            faults: Faults::default(),
            rpc_stats: RpcStats::default(),
            consumer_lag: ConsumerLag::default(),
            broker: None,
            audit: None,
            broker_topics: Arc::default(),
        }
    }

    /// Records admin actions (log level, faults, kill) in `audit`.
    #[must_use]
    pub fn with_audit(mut self, audit: AuditTrail) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Lets `ListBrokerTopics` describe the broker through `producer`, by default under the
    /// service's `topic_prefix`.
    #[must_use]
    pub fn with_broker(mut self, producer: EventProducer, topic_prefix: &str) -> Self {
        self.broker = Some((producer, topic_prefix.into()));
        self
    }
}

impl OpsContext {
    /// Probes every dependency concurrently, each bounded by `timeout`.
    pub async fn probe_all(&self, timeout: Duration) -> Vec<ProbeResult> {
        let probes = self.probes.iter().map(|probe| async move {
            let started = Instant::now();
            let outcome = tokio::time::timeout(timeout, probe.probe()).await;
            let error = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error),
                Err(_) => Some(format!("no answer within {timeout:?}")),
            };
            ProbeResult {
                name: probe.name(),
                latency: started.elapsed(),
                error,
            }
        });
        futures::future::join_all(probes).await
    }
}

/// The gRPC implementation of `zentra.ops.v1.OpsService`.
pub struct OpsApi {
    context: OpsContext,
}

impl OpsApi {
    /// Serves the given context.
    pub fn new(context: OpsContext) -> Self {
        Self { context }
    }

    /// Runs an admin action through the audit trail, when the process has one.
    async fn audited<T>(
        &self,
        actor: &Actor,
        action: Action,
        work: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        match &self.context.audit {
            Some(audit) => audit.run(actor, action, work).await,
            None => {
                let result = work.await;
                tracing::info!(
                    rpc = action.rpc,
                    target = %action.target,
                    caller = %actor.caller,
                    role = %actor.role,
                    ok = result.is_ok(),
                    "admin action (this process keeps no audit trail)"
                );
                result
            }
        }
    }

    async fn change_log_filter(
        &self,
        request: SetLogLevelRequest,
    ) -> Result<SetLogLevelResponse, Status> {
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        check_reason(&request.reason, &mut violations);
        violations.into_result()?;
        let previous = self
            .context
            .telemetry
            .log_filter()
            .set(&request.filter)
            .map_err(|error| crate::status::invalid_field("filter", &error.reason))?;
        tracing::info!(filter = %request.filter, previous = %previous, "log filter changed");
        Ok(SetLogLevelResponse {
            previous_filter: previous,
            filter: request.filter,
        })
    }

    async fn inject(&self, request: InjectFaultRequest) -> Result<InjectFaultResponse, Status> {
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        check_reason(&request.reason, &mut violations);
        let fault = request.fault.unwrap_or_default();
        let spec = fault_from_proto(&fault, &mut violations);
        let duration = match fault.duration {
            Some(duration) => from_proto_duration(&duration, "fault.duration", &mut violations),
            None => None,
        };
        if duration.is_some_and(|duration| duration > MAX_FAULT_DURATION) {
            violations.add("fault.duration", "must be at most 24h");
        }
        violations.into_result()?;
        let Some(spec) = spec else {
            return Err(crate::status::invalid_field("fault.kind", "is required"));
        };
        let kill = spec == FaultSpec::Kill;
        let active = self.context.faults.inject(spec, duration);
        tracing::warn!(kind = active.spec.kind(), "fault injected");
        if kill {
            // Answer (and finish the audit record) first, then die the way a crash does: no
            // graceful shutdown, no flush.
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                std::process::exit(137);
            });
        }
        Ok(InjectFaultResponse {
            fault: Some(fault_to_proto(&active)),
        })
    }

    async fn clear(&self, request: ClearFaultsRequest) -> Result<ClearFaultsResponse, Status> {
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        check_reason(&request.reason, &mut violations);
        violations.into_result()?;
        let kind = match FaultKind::try_from(request.kind) {
            Ok(FaultKind::Unspecified) => None,
            Ok(FaultKind::Latency) => Some("latency"),
            Ok(FaultKind::ErrorRate) => Some("error_rate"),
            Ok(FaultKind::TpsLimit) => Some("tps_limit"),
            Ok(FaultKind::Kill) => Some("kill"),
            Err(_) => return Err(crate::status::invalid_field("kind", "unknown fault kind")),
        };
        let cleared = self.context.faults.clear(kind);
        tracing::info!(kind = kind.unwrap_or("all"), cleared, "faults cleared");
        Ok(ClearFaultsResponse {
            cleared: i32::try_from(cleared).unwrap_or(i32::MAX),
        })
    }
}

/// "KILL" for `FAULT_KIND_KILL`.
fn kind_name(kind: FaultKind) -> &'static str {
    kind.as_str_name().trim_start_matches("FAULT_KIND_")
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for the metadata and watermark requests of one `ListBrokerTopics`.
const DESCRIBE_BUDGET: Duration = Duration::from_secs(5);
/// How long one description of the broker's topics answers `ListBrokerTopics`.
const BROKER_TOPICS_TTL: Duration = Duration::from_secs(5);
/// Prefixes whose description is kept at once; callers choose prefixes, so the cache is bounded.
const MAX_CACHED_PREFIXES: usize = 16;
/// Kafka's own limit on a topic name's length.
const MAX_TOPIC_NAME: usize = 249;

#[tonic::async_trait]
impl OpsService for OpsApi {
    async fn get_health_summary(
        &self,
        _request: Request<GetHealthSummaryRequest>,
    ) -> Result<Response<GetHealthSummaryResponse>, Status> {
        let results = self.context.probe_all(PROBE_TIMEOUT).await;
        let mut dependencies: Vec<DependencyHealth> = results
            .into_iter()
            .map(|result| DependencyHealth {
                name: result.name.to_owned(),
                status: if result.error.is_none() {
                    HealthStatus::Serving
                } else {
                    HealthStatus::NotServing
                } as i32,
                latency: Some(to_proto_duration(result.latency)),
                detail: result.error.unwrap_or_default(),
            })
            .collect();
        // Each consumer group is a dependency of its own: one that owns no partition when it
        // should, or stalls with records waiting, takes the service out of SERVING.
        dependencies.extend(self.context.consumer_lag.health().into_iter().map(
            |(group, problem)| DependencyHealth {
                name: format!("consumer {group}"),
                status: if problem.is_none() {
                    HealthStatus::Serving
                } else {
                    HealthStatus::NotServing
                } as i32,
                latency: None,
                detail: problem.unwrap_or_default(),
            },
        ));
        let all_serving = dependencies
            .iter()
            .all(|dependency| dependency.status == HealthStatus::Serving as i32);
        let uptime = SystemTime::now()
            .duration_since(self.context.started_at)
            .unwrap_or_default();
        Ok(Response::new(GetHealthSummaryResponse {
            service: self.context.service.to_owned(),
            status: if all_serving {
                HealthStatus::Serving
            } else {
                HealthStatus::NotServing
            } as i32,
            dependencies,
            start_time: Some(to_timestamp(self.context.started_at)),
            uptime: Some(to_proto_duration(uptime)),
        }))
    }

    async fn get_build_info(
        &self,
        _request: Request<GetBuildInfoRequest>,
    ) -> Result<Response<GetBuildInfoResponse>, Status> {
        Ok(Response::new(GetBuildInfoResponse {
            service: self.context.service.to_owned(),
            version: self.context.version.to_owned(),
            git_commit: option_env!("ZENTRA_GIT_COMMIT")
                .unwrap_or_default()
                .to_owned(),
            rustc_version: option_env!("ZENTRA_RUSTC_VERSION")
                .unwrap_or_default()
                .to_owned(),
            pid: std::process::id(),
            start_time: Some(to_timestamp(self.context.started_at)),
        }))
    }

    async fn get_effective_config(
        &self,
        _request: Request<GetEffectiveConfigRequest>,
    ) -> Result<Response<GetEffectiveConfigResponse>, Status> {
        Ok(Response::new(GetEffectiveConfigResponse {
            config_toml: self.context.config_toml.to_string(),
            sources: self.context.config_sources.to_vec(),
        }))
    }

    async fn get_log_level(
        &self,
        _request: Request<GetLogLevelRequest>,
    ) -> Result<Response<GetLogLevelResponse>, Status> {
        Ok(Response::new(GetLogLevelResponse {
            filter: self.context.telemetry.log_filter().current(),
        }))
    }

    async fn set_log_level(
        &self,
        request: Request<SetLogLevelRequest>,
    ) -> Result<Response<SetLogLevelResponse>, Status> {
        let actor = Actor::of(&request);
        let request = request.into_inner();
        let action = Action::new(
            "zentra.ops.v1.OpsService/SetLogLevel",
            Role::Admin,
            "log-filter",
            &request.reason,
        );
        self.audited(&actor, action, self.change_log_filter(request))
            .await
            .map(Response::new)
    }

    async fn list_faults(
        &self,
        _request: Request<ListFaultsRequest>,
    ) -> Result<Response<ListFaultsResponse>, Status> {
        let faults = self
            .context
            .faults
            .active()
            .iter()
            .map(fault_to_proto)
            .collect();
        Ok(Response::new(ListFaultsResponse { faults }))
    }

    async fn inject_fault(
        &self,
        request: Request<InjectFaultRequest>,
    ) -> Result<Response<InjectFaultResponse>, Status> {
        let actor = Actor::of(&request);
        let request = request.into_inner();
        let kind = request
            .fault
            .as_ref()
            .and_then(|fault| FaultKind::try_from(fault.kind).ok())
            .map_or("UNKNOWN", |kind| kind_name(kind));
        let action = Action::new(
            "zentra.ops.v1.OpsService/InjectFault",
            Role::Admin,
            format!("faults/{kind}"),
            &request.reason,
        );
        self.audited(&actor, action, self.inject(request))
            .await
            .map(Response::new)
    }

    async fn clear_faults(
        &self,
        request: Request<ClearFaultsRequest>,
    ) -> Result<Response<ClearFaultsResponse>, Status> {
        let actor = Actor::of(&request);
        let request = request.into_inner();
        let target = match FaultKind::try_from(request.kind) {
            Ok(FaultKind::Unspecified) => "faults".to_owned(),
            Ok(kind) => format!("faults/{}", kind_name(kind)),
            Err(_) => "faults/UNKNOWN".to_owned(),
        };
        let action = Action::new(
            "zentra.ops.v1.OpsService/ClearFaults",
            Role::Admin,
            target,
            &request.reason,
        );
        self.audited(&actor, action, self.clear(request))
            .await
            .map(Response::new)
    }

    async fn list_audit_records(
        &self,
        request: Request<ListAuditRecordsRequest>,
    ) -> Result<Response<ListAuditRecordsResponse>, Status> {
        let Some(audit) = &self.context.audit else {
            return Err(Status::failed_precondition(format!(
                "{} keeps no audit trail (it has no database); its admin actions are logged. \
                 Ask a service by name",
                self.context.service
            )));
        };
        audit.list(request.get_ref()).await.map(Response::new)
    }

    async fn get_metrics_snapshot(
        &self,
        request: Request<GetMetricsSnapshotRequest>,
    ) -> Result<Response<GetMetricsSnapshotResponse>, Status> {
        snapshot::metrics_snapshot(&self.context, &request.into_inner()).map(Response::new)
    }

    async fn list_broker_topics(
        &self,
        request: Request<ListBrokerTopicsRequest>,
    ) -> Result<Response<ListBrokerTopicsResponse>, Status> {
        let Some((producer, topic_prefix)) = &self.context.broker else {
            return Err(Status::failed_precondition(format!(
                "{} has no broker connection; ask a service that uses Kafka",
                self.context.service
            )));
        };
        let request = request.into_inner();
        let prefix = request
            .name_prefix
            .unwrap_or_else(|| topic_prefix.to_string());
        if prefix.chars().count() > MAX_TOPIC_NAME {
            return Err(invalid_field(
                "name_prefix",
                &format!("must be at most {MAX_TOPIC_NAME} characters"),
            ));
        }
        if prefix.chars().any(char::is_control) {
            return Err(invalid_field(
                "name_prefix",
                "must not contain control characters",
            ));
        }
        // One description at a time per process, and one per prefix every few seconds: however
        // many screens ask, the broker answers a bounded number of requests.
        let mut cache = self.context.broker_topics.lock().await;
        cache.retain(|_, (at, _)| at.elapsed() < BROKER_TOPICS_TTL);
        if let Some((_, answer)) = cache.get(&prefix) {
            return Ok(Response::new(answer.clone()));
        }
        let described = producer
            .describe_topics(prefix.clone(), DESCRIBE_BUDGET)
            .await
            .map_err(|error| Status::unavailable(format!("the broker did not answer: {error}")))?;
        let answer = broker_topics_to_proto(described, prefix.clone());
        if cache.len() < MAX_CACHED_PREFIXES {
            cache.insert(prefix, (Instant::now(), answer.clone()));
        }
        Ok(Response::new(answer))
    }
}

fn broker_topics_to_proto(described: BrokerTopics, prefix: String) -> ListBrokerTopicsResponse {
    let count = |value: usize| i32::try_from(value).unwrap_or(i32::MAX);
    ListBrokerTopicsResponse {
        topics: described
            .topics
            .into_iter()
            .map(|topic| pb::BrokerTopic {
                records: topic.records(),
                partitions: topic
                    .partitions
                    .into_iter()
                    .map(|partition| {
                        let (low, high, error) = match partition.watermarks {
                            Ok((low, high)) => (low, high, String::new()),
                            Err(error) => (0, 0, error),
                        };
                        pb::BrokerPartition {
                            id: partition.id,
                            leader: partition.leader,
                            low_watermark: low,
                            high_watermark: high,
                            error,
                        }
                    })
                    .collect(),
                name: topic.name,
                error: topic.error.unwrap_or_default(),
            })
            .collect(),
        name_prefix: prefix,
        broker_topic_count: count(described.broker_topic_count),
        broker_count: count(described.broker_count),
        truncated: described.truncated,
    }
}

const MAX_INJECTED_LATENCY: Duration = Duration::from_secs(60);
const MAX_FAULT_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

fn fault_from_proto(fault: &pb::Fault, violations: &mut Violations) -> Option<FaultSpec> {
    match FaultKind::try_from(fault.kind) {
        Ok(FaultKind::Latency) => {
            let min = fault
                .latency_min
                .as_ref()
                .and_then(|d| from_proto_duration(d, "fault.latency_min", violations));
            let max = fault
                .latency_max
                .as_ref()
                .and_then(|d| from_proto_duration(d, "fault.latency_max", violations));
            let Some(min) = min else {
                violations.add("fault.latency_min", "is required for LATENCY");
                return None;
            };
            let max = max.unwrap_or(min);
            if max < min {
                violations.add("fault.latency_max", "must not be below latency_min");
            }
            if max > MAX_INJECTED_LATENCY {
                violations.add("fault.latency_max", "must be at most 60s");
            }
            Some(FaultSpec::Latency { min, max })
        }
        Ok(FaultKind::ErrorRate) => {
            if !(0.0..=1.0).contains(&fault.error_rate) {
                violations.add("fault.error_rate", "must be between 0.0 and 1.0");
            }
            Some(FaultSpec::ErrorRate(fault.error_rate))
        }
        Ok(FaultKind::TpsLimit) => {
            if fault.tps_limit == 0 {
                violations.add("fault.tps_limit", "must be at least 1");
            }
            Some(FaultSpec::TpsLimit(fault.tps_limit))
        }
        Ok(FaultKind::Kill) => Some(FaultSpec::Kill),
        Ok(FaultKind::Unspecified) | Err(_) => {
            violations.add(
                "fault.kind",
                "must be LATENCY, ERROR_RATE, TPS_LIMIT or KILL",
            );
            None
        }
    }
}

fn fault_to_proto(fault: &ActiveFault) -> pb::Fault {
    let mut proto = pb::Fault {
        inject_time: Some(to_timestamp(fault.injected_at)),
        expire_time: fault.expires_at.map(to_timestamp),
        duration: fault
            .expires_at
            .and_then(|expires| expires.duration_since(fault.injected_at).ok())
            .map(to_proto_duration),
        ..Default::default()
    };
    match &fault.spec {
        FaultSpec::Latency { min, max } => {
            proto.kind = FaultKind::Latency as i32;
            proto.latency_min = Some(to_proto_duration(*min));
            proto.latency_max = Some(to_proto_duration(*max));
        }
        FaultSpec::ErrorRate(rate) => {
            proto.kind = FaultKind::ErrorRate as i32;
            proto.error_rate = *rate;
        }
        FaultSpec::TpsLimit(limit) => {
            proto.kind = FaultKind::TpsLimit as i32;
            proto.tps_limit = *limit;
        }
        FaultSpec::Kill => proto.kind = FaultKind::Kill as i32,
    }
    proto
}
