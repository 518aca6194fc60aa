//! Conversions between protobuf time types and std / chrono.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

use crate::status::Violations;

/// A `SystemTime` as a protobuf `Timestamp`.
pub fn to_timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

/// A chrono UTC time as a protobuf `Timestamp`.
pub fn chrono_to_timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf `Timestamp` as chrono UTC time; records a violation when out of range.
pub fn timestamp_to_chrono(
    timestamp: &prost_types::Timestamp,
    field: &str,
    violations: &mut Violations,
) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(timestamp.nanos).ok();
    match nanos.and_then(|nanos| DateTime::from_timestamp(timestamp.seconds, nanos)) {
        Some(time) => Some(time),
        None => {
            violations.add(field, "is not a valid timestamp");
            None
        }
    }
}

/// A `Duration` as a protobuf `Duration`.
pub fn to_proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// A protobuf `Duration` as a non-negative `Duration`; records a violation otherwise.
pub fn from_proto_duration(
    duration: &prost_types::Duration,
    field: &str,
    violations: &mut Violations,
) -> Option<Duration> {
    match Duration::try_from(*duration) {
        Ok(duration) => Some(duration),
        Err(_) => {
            violations.add(field, "must be a non-negative duration");
            None
        }
    }
}
