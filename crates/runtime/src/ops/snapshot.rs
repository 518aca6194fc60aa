//! The metrics snapshot: the RPC window and the consumers' lag, as the control center reads them.

use std::time::{Duration, SystemTime};

use tonic::Status;
use zentra_proto::ops::v1::{
    ConsumerLag, GetMetricsSnapshotRequest, GetMetricsSnapshotResponse, RpcStats,
};

use crate::{
    ops::OpsContext,
    rpc_stats::{MAX_WINDOW, WindowStats},
    status::invalid_field,
    time::{to_proto_duration, to_timestamp},
};

const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Answers GetMetricsSnapshot.
pub(super) fn metrics_snapshot(
    context: &OpsContext,
    request: &GetMetricsSnapshotRequest,
) -> Result<GetMetricsSnapshotResponse, Status> {
    let window = match &request.window {
        None => DEFAULT_WINDOW,
        Some(window) => {
            let valid = window.nanos >= 0
                && window.seconds >= 1
                && u64::try_from(window.seconds)
                    .is_ok_and(|seconds| seconds <= MAX_WINDOW.as_secs());
            if !valid {
                return Err(invalid_field("window", "must be between 1s and 300s"));
            }
            Duration::new(window.seconds.unsigned_abs(), window.nanos.unsigned_abs())
        }
    };
    let snapshot = context.rpc_stats.snapshot(window);
    Ok(GetMetricsSnapshotResponse {
        service: context.service.to_owned(),
        window: Some(to_proto_duration(snapshot.window)),
        overall: Some(to_proto(&snapshot.overall)),
        rpcs: snapshot.rpcs.iter().map(to_proto).collect(),
        consumer_lag: context
            .consumer_lag
            .snapshot()
            .into_iter()
            .map(|lag| ConsumerLag {
                group: lag.group,
                topic: lag.topic,
                partition: lag.partition,
                lag: lag.lag,
                report_time: Some(to_timestamp(lag.reported)),
                owner: lag.owner,
                next_offset: lag.next_offset,
                high_watermark: lag.high_watermark,
            })
            .collect(),
        requests_total: snapshot.requests_total,
        errors_total: snapshot.errors_total,
        snapshot_time: Some(to_timestamp(SystemTime::now())),
    })
}

fn to_proto(stats: &WindowStats) -> RpcStats {
    RpcStats {
        method: stats.method.clone(),
        requests_per_second: stats.requests_per_second,
        errors_per_second: stats.errors_per_second,
        error_ratio: stats.error_ratio,
        latency_p50: Some(to_proto_duration(stats.p50)),
        latency_p90: Some(to_proto_duration(stats.p90)),
        latency_p99: Some(to_proto_duration(stats.p99)),
        latency_max: Some(to_proto_duration(stats.max)),
        count: stats.count,
    }
}
