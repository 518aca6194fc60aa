//! A rolling window of RPC outcomes, one slot per second for the last five minutes: request and
//! error rates and latency percentiles per RPC, for the ops snapshot the control center shows.
//! Latencies go into logarithmic buckets 20 % wide, so a percentile is exact to within 20 %.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Seconds kept.
pub const MAX_WINDOW: Duration = Duration::from_secs(300);
const BUCKETS: usize = 100;
const FIRST_BOUND_MICROS: f64 = 50.0;
const GROWTH: f64 = 1.2;

/// Counts and latencies of one RPC in one second (or merged over several).
#[derive(Debug, Clone)]
struct Tally {
    count: u64,
    errors: u64,
    max: Duration,
    buckets: [u32; BUCKETS],
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            count: 0,
            errors: 0,
            max: Duration::ZERO,
            buckets: [0; BUCKETS],
        }
    }
}

fn bucket_of(latency: Duration) -> usize {
    let micros = latency.as_secs_f64() * 1e6;
    if micros <= FIRST_BOUND_MICROS {
        return 0;
    }
    let index = ((micros / FIRST_BOUND_MICROS).ln() / GROWTH.ln()).ceil() as usize;
    index.min(BUCKETS - 1)
}

fn upper_bound(bucket: usize) -> Duration {
    Duration::from_secs_f64(FIRST_BOUND_MICROS * GROWTH.powi(bucket as i32) / 1e6)
}

impl Tally {
    fn add(&mut self, ok: bool, latency: Duration) {
        self.count += 1;
        if !ok {
            self.errors += 1;
        }
        self.max = self.max.max(latency);
        self.buckets[bucket_of(latency)] += 1;
    }

    fn merge(&mut self, other: &Tally) {
        self.count += other.count;
        self.errors += other.errors;
        self.max = self.max.max(other.max);
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine += theirs;
        }
    }

    fn percentile(&self, quantile: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((quantile * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0_u64;
        for (bucket, count) in self.buckets.iter().enumerate() {
            seen += u64::from(*count);
            if seen >= rank {
                return upper_bound(bucket).min(self.max);
            }
        }
        self.max
    }
}

/// Rates and latencies over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowStats {
    /// `package.Service/Method`, or empty for all together.
    pub method: String,
    /// Calls in the window.
    pub count: u64,
    /// Calls per second.
    pub requests_per_second: f64,
    /// Failed calls per second.
    pub errors_per_second: f64,
    /// Share of failed calls.
    pub error_ratio: f64,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

fn stats(method: String, tally: &Tally, window: Duration) -> WindowStats {
    let seconds = window.as_secs_f64().max(1.0);
    WindowStats {
        method,
        count: tally.count,
        requests_per_second: tally.count as f64 / seconds,
        errors_per_second: tally.errors as f64 / seconds,
        error_ratio: if tally.count == 0 {
            0.0
        } else {
            tally.errors as f64 / tally.count as f64
        },
        p50: tally.percentile(0.50),
        p90: tally.percentile(0.90),
        p99: tally.percentile(0.99),
        max: tally.max,
    }
}

/// A snapshot of the window.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The window actually covered.
    pub window: Duration,
    /// All RPCs together.
    pub overall: WindowStats,
    /// Each RPC, busiest first.
    pub rpcs: Vec<WindowStats>,
    /// Calls since start.
    pub requests_total: u64,
    /// Failed calls since start.
    pub errors_total: u64,
}

struct Second {
    at: u64,
    methods: HashMap<Arc<str>, Tally>,
}

struct Inner {
    started: Instant,
    seconds: VecDeque<Second>,
    requests_total: u64,
    errors_total: u64,
}

/// The window; cheap to clone, shared by the server's observe layer and the ops service.
#[derive(Clone)]
pub struct RpcStats {
    inner: Arc<Mutex<Inner>>,
}

impl Default for RpcStats {
    fn default() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                started: Instant::now(),
                seconds: VecDeque::new(),
                requests_total: 0,
                errors_total: 0,
            })),
        }
    }
}

impl RpcStats {
    /// Records one answered call.
    pub fn record(&self, method: &str, ok: bool, latency: Duration) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let now = inner.started.elapsed().as_secs();
        inner.requests_total += 1;
        if !ok {
            inner.errors_total += 1;
        }
        if inner.seconds.back().is_none_or(|second| second.at != now) {
            inner.seconds.push_back(Second {
                at: now,
                methods: HashMap::new(),
            });
        }
        while inner
            .seconds
            .front()
            .is_some_and(|second| second.at + MAX_WINDOW.as_secs() <= now)
        {
            inner.seconds.pop_front();
        }
        if let Some(second) = inner.seconds.back_mut() {
            match second.methods.get_mut(method) {
                Some(tally) => tally.add(ok, latency),
                None => {
                    let mut tally = Tally::default();
                    tally.add(ok, latency);
                    second.methods.insert(Arc::from(method), tally);
                }
            }
        }
    }

    /// Summarises the last `window` (at most [`MAX_WINDOW`]).
    pub fn snapshot(&self, window: Duration) -> Snapshot {
        let window = window.min(MAX_WINDOW);
        let Ok(inner) = self.inner.lock() else {
            return Snapshot {
                window,
                overall: stats(String::new(), &Tally::default(), window),
                rpcs: Vec::new(),
                requests_total: 0,
                errors_total: 0,
            };
        };
        let elapsed = inner.started.elapsed();
        let covered = window.min(elapsed.max(Duration::from_secs(1)));
        let now = elapsed.as_secs();
        // The slots of the last `window` seconds, the current one included; every slot since the
        // start while the window reaches back further than that.
        let oldest = (now + 1).saturating_sub(window.as_secs().max(1));
        let mut overall = Tally::default();
        let mut per_method: HashMap<Arc<str>, Tally> = HashMap::new();
        for second in inner.seconds.iter().filter(|second| second.at >= oldest) {
            for (method, tally) in &second.methods {
                overall.merge(tally);
                per_method.entry(method.clone()).or_default().merge(tally);
            }
        }
        let mut rpcs: Vec<WindowStats> = per_method
            .iter()
            .map(|(method, tally)| stats(method.to_string(), tally, covered))
            .collect();
        rpcs.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.method.cmp(&b.method)));
        Snapshot {
            window: covered,
            overall: stats(String::new(), &overall, covered),
            rpcs,
            requests_total: inner.requests_total,
            errors_total: inner.errors_total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_of_the_first_second_count_while_the_window_reaches_back_to_the_start() {
        // Started 0.9 s ago: a call now lands in second 0, the snapshot below in second 1.
        let stats = RpcStats::default();
        if let Ok(mut inner) = stats.inner.lock()
            && let Some(started) = Instant::now().checked_sub(Duration::from_millis(900))
        {
            inner.started = started;
        }
        stats.record("svc/A", true, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(200));
        let snapshot = stats.snapshot(Duration::from_secs(60));
        assert_eq!(snapshot.overall.count, 1, "{snapshot:?}");
        assert!(snapshot.window >= Duration::from_secs(1));
    }

    #[test]
    fn percentiles_are_within_a_bucket_of_the_truth() {
        let stats = RpcStats::default();
        for millis in 1..=100 {
            stats.record("svc/A", true, Duration::from_millis(millis));
        }
        let snapshot = stats.snapshot(Duration::from_secs(60));
        let overall = snapshot.overall;
        assert_eq!(overall.count, 100);
        for (got, truth) in [
            (overall.p50, 50.0),
            (overall.p90, 90.0),
            (overall.p99, 99.0),
        ] {
            let got = got.as_secs_f64() * 1e3;
            assert!(got >= truth && got <= truth * GROWTH, "{got} vs {truth}");
        }
        assert_eq!(overall.max, Duration::from_millis(100));
    }

    #[test]
    fn errors_and_methods_are_counted_apart() {
        let stats = RpcStats::default();
        for _ in 0..3 {
            stats.record("svc/A", true, Duration::from_millis(1));
        }
        stats.record("svc/B", false, Duration::from_millis(2));
        let snapshot = stats.snapshot(Duration::from_secs(60));
        assert_eq!((snapshot.requests_total, snapshot.errors_total), (4, 1));
        assert_eq!(snapshot.overall.error_ratio, 0.25);
        let methods: Vec<_> = snapshot
            .rpcs
            .iter()
            .map(|rpc| (rpc.method.as_str(), rpc.count, rpc.error_ratio))
            .collect();
        assert_eq!(methods, [("svc/A", 3, 0.0), ("svc/B", 1, 1.0)]);
    }

    #[test]
    fn an_empty_window_has_zero_rates() {
        let snapshot = RpcStats::default().snapshot(Duration::from_secs(10));
        assert_eq!(snapshot.overall.count, 0);
        assert_eq!(snapshot.overall.p99, Duration::ZERO);
        assert!(snapshot.window >= Duration::from_secs(1));
    }
}
