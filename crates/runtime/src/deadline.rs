//! The `grpc-timeout` header: how long the caller will wait. The gateway passes it on (cut to its
//! maximum) so every service down the line works to the caller's deadline, and sets one when the
//! caller did not; a stream ends at it.

use std::time::Duration;

/// Parses a `grpc-timeout` value (`100m`, `5S`, at most 8 digits and a unit).
pub fn parse(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(amount * 3600),
        'M' => Duration::from_secs(amount * 60),
        'S' => Duration::from_secs(amount),
        'm' => Duration::from_millis(amount),
        'u' => Duration::from_micros(amount),
        'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The caller's deadline in `metadata`, if it set a readable one.
pub fn of_request(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse)
}

/// Formats a deadline as a `grpc-timeout` value, in milliseconds while they fit in 8 digits.
pub fn format(deadline: Duration) -> String {
    let millis = deadline.as_millis().max(1);
    if millis <= 99_999_999 {
        format!("{millis}m")
    } else {
        format!("{}S", deadline.as_secs().min(99_999_999))
    }
}

/// The deadline a forwarded call gets: the caller's, cut to `max`, or `default` when it set none
/// or an unreadable one.
pub fn effective(header: Option<&str>, default: Duration, max: Duration) -> Duration {
    header.and_then(parse).unwrap_or(default).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses_and_garbage_does_not() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "S", "123456789S", "-1S", "1.5S", "10x", "1é"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn deadlines_round_trip_and_are_capped() {
        assert_eq!(
            parse(&format(Duration::from_millis(1500))),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(format(Duration::from_secs(200_000)), "200000S");
        let max = Duration::from_secs(60);
        assert_eq!(effective(Some("10M"), Duration::from_secs(10), max), max);
        assert_eq!(
            effective(Some("2S"), Duration::from_secs(10), max),
            Duration::from_secs(2)
        );
        assert_eq!(
            effective(None, Duration::from_secs(10), max),
            Duration::from_secs(10)
        );
        assert_eq!(
            effective(Some("junk"), Duration::from_secs(10), max),
            Duration::from_secs(10)
        );
    }
}
