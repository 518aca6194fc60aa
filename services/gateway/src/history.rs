//! `GetServiceHistory`: a process's request rate and p99 latency over a past window, read from
//! the deployment's Prometheus with fixed queries. The browser never talks to Prometheus: it
//! keeps the gateway's origin and authentication, and cannot send a query of its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tonic::Status;
// The processes a history can be asked for are Prometheus's job names, as the stack writes them.
use zentra_proto::{PROCESSES as SERVICES, gateway::v1::GetServiceHistoryResponse};

/// Points a history has at most, whatever its window (one more for the window's end).
const POINTS: u64 = 120;
/// Shortest and longest windows.
const WINDOW: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(24 * 3600));
/// Without a window: the last half hour.
const DEFAULT_WINDOW: Duration = Duration::from_secs(30 * 60);
/// How long Prometheus may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The RPCs a service's history counts, as its live numbers do: not health, reflection or ops.
const DOMAIN_ONLY: &str = r#"service!~"grpc\\..+|zentra\\.ops\\..+""#;
/// The gateway's live numbers count the ops calls it forwards too: only health and reflection
/// are left out.
const GATEWAY_ONLY: &str = r#"service!~"grpc\\..+""#;

/// A Prometheus to ask.
#[derive(Clone)]
pub struct Prometheus {
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("base", &self.base)
            .finish()
    }
}

impl Prometheus {
    /// At `url`: `http://host:port`, optionally with a path prefix.
    pub fn new(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|error| format!("{url:?} is not a URL: {error}"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(format!(
                "{url:?}: expected http://host:port (the gateway reaches Prometheus without TLS)"
            ));
        }
        if uri.query().is_some() {
            return Err(format!("{url:?}: no query string"));
        }
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// The history of `service` over the `window` before now.
    pub async fn history(
        &self,
        service: &str,
        window: Option<prost_types::Duration>,
    ) -> Result<GetServiceHistoryResponse, Status> {
        if !SERVICES.contains(&service) {
            return Err(Status::invalid_argument(format!(
                "service: {service:?} is not one of {}",
                SERVICES.join(", ")
            )));
        }
        let window = match window {
            None => DEFAULT_WINDOW,
            Some(window) => Duration::try_from(window)
                .ok()
                .filter(|window| (WINDOW.0..=WINDOW.1).contains(window))
                .ok_or_else(|| Status::invalid_argument("window: between 1 minute and 24 hours"))?,
        };
        let step = window.as_secs().div_ceil(POINTS).max(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // Aligned to the step, so two pages asking alike get the same points.
        let end = now - now % step;
        let start = end.saturating_sub(window.as_secs().div_ceil(step) * step);
        let range = (2 * step).max(60);
        let counted = if service == "gateway" {
            GATEWAY_ONLY
        } else {
            DOMAIN_ONLY
        };
        let selector = format!("{{job=\"{service}\",{counted}}}");
        let rate = format!("sum(rate(zentra_grpc_server_requests_total{selector}[{range}s]))");
        let p99 = format!(
            "histogram_quantile(0.99, sum by (le) \
             (rate(zentra_grpc_server_request_duration_seconds_bucket{selector}[{range}s]))) * 1000"
        );
        let points = ((end - start) / step + 1) as usize;
        let (requests_per_second, latency_p99_ms) = tokio::try_join!(
            self.series(&rate, start, end, step, points),
            self.series(&p99, start, end, step, points),
        )?;
        Ok(GetServiceHistoryResponse {
            start: Some(prost_types::Timestamp {
                seconds: start as i64,
                nanos: 0,
            }),
            step: Some(prost_types::Duration {
                seconds: step as i64,
                nanos: 0,
            }),
            requests_per_second,
            latency_p99_ms,
        })
    }

    /// `query` from `start` to `end` every `step` seconds, `points` values with NaN where
    /// Prometheus has none.
    async fn series(
        &self,
        query: &str,
        start: u64,
        end: u64,
        step: u64,
        points: usize,
    ) -> Result<Vec<f64>, Status> {
        let url = format!(
            "{}/api/v1/query_range?query={}&start={start}&end={end}&step={step}",
            self.base,
            encode(query)
        );
        let unavailable = |what: String| {
            // The details name an internal address and its answer: the log has them, callers
            // (viewers) do not.
            tracing::warn!(prometheus = %self.base, "history not read: {what}");
            Status::unavailable(
                "Prometheus did not answer as expected (the gateway's log says why)",
            )
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|error| unavailable(format!("{error}")))?;
        let answer = tokio::time::timeout(TIMEOUT, async {
            let response = self.client.get(uri).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
        })
        .await
        .map_err(|_| unavailable(format!("no answer within {TIMEOUT:?}")))?
        .map_err(|error| unavailable(format!("{error}")))?;
        let (status, body) = answer;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(unavailable(format!(
                "answered {status}: {}",
                text.chars().take(200).collect::<String>()
            )));
        }
        parse_matrix(&body, start, step, points)
            .map_err(|error| unavailable(format!("unexpected answer: {error}")))
    }
}

/// The one series of a `query_range` answer as `points` values from `start`, every `step`.
fn parse_matrix(body: &[u8], start: u64, step: u64, points: usize) -> Result<Vec<f64>, String> {
    let answer: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if answer["status"] != "success" {
        return Err(format!("status {}", answer["status"]));
    }
    let mut values = vec![f64::NAN; points];
    let result = answer["data"]["result"]
        .as_array()
        .ok_or("no data.result")?;
    // A sum has one series, or none when nothing was scraped yet.
    for series in result {
        for pair in series["values"].as_array().ok_or("no values")? {
            let (Some(time), Some(value)) = (pair[0].as_f64(), pair[1].as_str()) else {
                return Err(format!("a point is not [time, \"value\"]: {pair}"));
            };
            let index = ((time - start as f64) / step as f64).round();
            if index >= 0.0 && (index as usize) < points {
                values[index as usize] = value.parse().unwrap_or(f64::NAN);
            }
        }
    }
    Ok(values)
}

/// `text` percent-encoded for a query string.
fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len() * 2);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                encoded.push(byte as char);
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_are_accepted() {
        assert!(Prometheus::new("http://127.0.0.1:9090").is_ok());
        assert!(Prometheus::new("http://prometheus.monitoring:9090/prom/").is_ok());
        for bad in [
            "127.0.0.1:9090",
            "https://prometheus:9090",
            "ftp://x",
            "http://x:9090/?q=1",
            "not a url",
        ] {
            assert!(Prometheus::new(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn points_land_on_their_step_and_gaps_stay_nan() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{},"values":[[1000,"1.5"],[1030,"2"],[1045,"NaN"],[5000,"9"]]}]}}"#;
        let values = parse_matrix(body, 1000, 15, 5).expect("parsed");
        assert_eq!(values[0], 1.5);
        assert!(values[1].is_nan());
        assert_eq!(values[2], 2.0);
        assert!(values[3].is_nan() && values[4].is_nan());
        let empty = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(
            parse_matrix(empty, 0, 1, 3)
                .expect("parsed")
                .iter()
                .all(|v| v.is_nan())
        );
        let error = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(parse_matrix(error, 0, 1, 3).is_err());
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_prometheus_is_asked() {
        // Nothing listens there: a request that reached it would be UNAVAILABLE.
        let prometheus = Prometheus::new("http://127.0.0.1:9").expect("url");
        let unknown = prometheus
            .history("billing", None)
            .await
            .expect_err("unknown");
        assert_eq!(unknown.code(), tonic::Code::InvalidArgument, "{unknown:?}");
        for (seconds, nanos) in [(59, 0), (24 * 3600 + 1, 0), (-60, 0), (0, 0)] {
            let refused = prometheus
                .history("order", Some(prost_types::Duration { seconds, nanos }))
                .await
                .expect_err("out of range");
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        }
        let down = prometheus.history("order", None).await.expect_err("down");
        assert_eq!(down.code(), tonic::Code::Unavailable, "{down:?}");
    }
}
