//! Numbers as people read them.

use std::time::Duration;

/// A protobuf duration as a `Duration` (zero when unset or negative).
pub fn duration(value: Option<&prost_types::Duration>) -> Duration {
    value
        .and_then(|value| Duration::try_from(*value).ok())
        .unwrap_or_default()
}

/// "850 µs", "12.3 ms", "1.20 s".
pub fn latency(value: Duration) -> String {
    let micros = value.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.0} µs")
    } else if micros < 1_000_000.0 {
        format!("{:.1} ms", micros / 1000.0)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

/// "3d 4h", "2h 5m", "4m 10s", "12s".
pub fn uptime(value: Duration) -> String {
    let seconds = value.as_secs();
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {}s", seconds % 60)
    } else {
        format!("{seconds}s")
    }
}

/// "0", "3.4", "1250".
pub fn rate(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value > 0.0 {
        format!("{value:.1}")
    } else {
        "0".to_owned()
    }
}

/// Now, as a protobuf timestamp, `minutes` ago.
pub fn timestamp_minutes_ago(minutes: i64) -> prost_types::Timestamp {
    let millis = js_sys::Date::now() as i64 - minutes * 60_000;
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn millis(timestamp: &prost_types::Timestamp) -> f64 {
    timestamp.seconds as f64 * 1000.0 + f64::from(timestamp.nanos) / 1e6
}

/// "14:03:52.333" in the browser's time zone; "—" when unset.
pub fn time(timestamp: Option<&prost_types::Timestamp>) -> String {
    let Some(timestamp) = timestamp else {
        return "—".to_owned();
    };
    let date = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(millis(timestamp)));
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        date.get_hours(),
        date.get_minutes(),
        date.get_seconds(),
        date.get_milliseconds()
    )
}

/// "2026-12-06 14:03:52" in the browser's time zone; "—" when unset.
pub fn date_time(timestamp: Option<&prost_types::Timestamp>) -> String {
    let Some(timestamp) = timestamp else {
        return "—".to_owned();
    };
    let date = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(millis(timestamp)));
    format!(
        "{}-{:02}-{:02} {:02}:{:02}:{:02}",
        date.get_full_year(),
        date.get_month() + 1,
        date.get_date(),
        date.get_hours(),
        date.get_minutes(),
        date.get_seconds()
    )
}

/// How long from `start` to `end` ("running" without an end).
pub fn between(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
) -> String {
    match (start, end) {
        (Some(start), Some(end)) => latency(Duration::from_secs_f64(
            ((millis(end) - millis(start)) / 1000.0).max(0.0),
        )),
        (Some(_), None) => "running".to_owned(),
        _ => "—".to_owned(),
    }
}

/// The part of an id that tells it apart: its last 8 characters after "…" (the whole id goes in
/// the title). A UUIDv7 begins with its creation time, so ids made in the same second share their
/// first characters and differ at the end.
pub fn short_id(id: &str) -> String {
    let count = id.chars().count();
    if count <= 9 {
        return id.to_owned();
    }
    let tail: String = id.chars().skip(count - 8).collect();
    format!("…{tail}")
}
