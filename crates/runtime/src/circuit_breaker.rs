//! A circuit breaker per downstream service. After `failure_threshold` consecutive failures it
//! opens and refuses calls for `open_for`; then it lets up to `half_open_probes` calls through,
//! and one success closes it again while one failure reopens it. Its state is readable, so the
//! orchestrator can wait or fail fast, and operators can see (and reset) it.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before probing.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// Calls let through at once while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
        }
    }
}

/// Sets the state gauge of the breaker guarding `name`: 0 closed, 1 half-open, 2 open.
fn publish(name: &str, state: BreakerState) {
    let value = match state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    };
    metrics::gauge!(crate::telemetry::names::BREAKER_STATE, "downstream" => name.to_owned())
        .set(value);
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused.
    Open,
    /// A few probe calls are let through.
    HalfOpen,
}

/// What a breaker reports about itself.
#[derive(Debug, Clone)]
pub struct BreakerSnapshot {
    /// The downstream it guards.
    pub name: String,
    /// Its state now.
    pub state: BreakerState,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Failures since start.
    pub total_failures: u64,
    /// Successes since start.
    pub total_successes: u64,
    /// When it last opened.
    pub opened_at: Option<SystemTime>,
    /// When an open breaker will let a probe through.
    pub next_probe_at: Option<SystemTime>,
    /// The last failure's message.
    pub last_error: String,
}

/// The breaker refused a call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("circuit to {name} is open; retry in {retry_after:?}")]
pub struct BreakerOpen {
    /// The downstream.
    pub name: String,
    /// Time until the next probe is allowed.
    pub retry_after: Duration,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    total_failures: u64,
    total_successes: u64,
    opened: Option<(Instant, SystemTime)>,
    probes_in_flight: u32,
    last_error: String,
}

/// A circuit breaker; cheap to clone (clones share state).
#[derive(Clone)]
pub struct CircuitBreaker {
    name: Arc<str>,
    settings: BreakerSettings,
    inner: Arc<Mutex<Inner>>,
}

impl CircuitBreaker {
    /// A closed breaker guarding `name`.
    pub fn new(name: impl Into<Arc<str>>, settings: BreakerSettings) -> Self {
        let name: Arc<str> = name.into();
        publish(&name, BreakerState::Closed);
        Self {
            name,
            settings,
            inner: Arc::new(Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                total_failures: 0,
                total_successes: 0,
                opened: None,
                probes_in_flight: 0,
                last_error: String::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned breaker still holds consistent counters: every update is a few assignments.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks to make a call. Report its outcome on the permit.
    pub fn try_acquire(&self) -> Result<Permit, BreakerOpen> {
        let mut inner = self.lock();
        if inner.state == BreakerState::Open {
            let opened = inner.opened.map(|(at, _)| at).unwrap_or_else(Instant::now);
            let elapsed = opened.elapsed();
            if elapsed < self.settings.open_for {
                return Err(BreakerOpen {
                    name: self.name.to_string(),
                    retry_after: self.settings.open_for - elapsed,
                });
            }
            inner.state = BreakerState::HalfOpen;
            inner.probes_in_flight = 0;
            publish(&self.name, inner.state);
        }
        let probe = inner.state == BreakerState::HalfOpen;
        if probe {
            if inner.probes_in_flight >= self.settings.half_open_probes.max(1) {
                return Err(BreakerOpen {
                    name: self.name.to_string(),
                    retry_after: Duration::from_millis(100),
                });
            }
            inner.probes_in_flight += 1;
        }
        Ok(Permit {
            breaker: self.clone(),
            probe,
            reported: false,
        })
    }

    /// The breaker's state now.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let inner = self.lock();
        let open_state = inner.state == BreakerState::Open;
        BreakerSnapshot {
            name: self.name.to_string(),
            state: inner.state,
            consecutive_failures: inner.consecutive_failures,
            total_failures: inner.total_failures,
            total_successes: inner.total_successes,
            opened_at: inner.opened.map(|(_, at)| at),
            next_probe_at: inner
                .opened
                .filter(|_| open_state)
                .map(|(_, at)| at + self.settings.open_for),
            last_error: inner.last_error.clone(),
        }
    }

    /// Closes the breaker (an operator's reset).
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.state = BreakerState::Closed;
        inner.consecutive_failures = 0;
        inner.probes_in_flight = 0;
        publish(&self.name, inner.state);
    }

    fn record(&self, probe: bool, outcome: Result<(), &str>) {
        let mut inner = self.lock();
        if probe {
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
        match outcome {
            Ok(()) => {
                inner.total_successes += 1;
                inner.consecutive_failures = 0;
                if inner.state == BreakerState::HalfOpen {
                    inner.state = BreakerState::Closed;
                    publish(&self.name, inner.state);
                    tracing::info!(breaker = %self.name, "circuit closed");
                }
            }
            Err(error) => {
                inner.total_failures += 1;
                inner.consecutive_failures += 1;
                inner.last_error = error.to_owned();
                let trips = inner.state == BreakerState::HalfOpen
                    || (inner.state == BreakerState::Closed
                        && inner.consecutive_failures >= self.settings.failure_threshold);
                if trips {
                    inner.state = BreakerState::Open;
                    inner.opened = Some((Instant::now(), SystemTime::now()));
                    publish(&self.name, inner.state);
                    tracing::warn!(breaker = %self.name, failures = inner.consecutive_failures, error, "circuit opened");
                }
            }
        }
    }
}

/// Permission for one call; report how it went.
pub struct Permit {
    breaker: CircuitBreaker,
    probe: bool,
    reported: bool,
}

impl Permit {
    /// The call succeeded.
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.record(self.probe, Ok(()));
    }

    /// The call failed in a way that counts against the downstream (unavailable, timeout).
    pub fn failure(mut self, error: &str) {
        self.reported = true;
        self.breaker.record(self.probe, Err(error));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // A call abandoned without an outcome (cancelled) frees its probe slot and counts as
        // neither success nor failure.
        if !self.reported && self.probe {
            let mut inner = self.breaker.lock();
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(
            "payment",
            BreakerSettings {
                failure_threshold: 3,
                open_for: Duration::from_millis(50),
                half_open_probes: 1,
            },
        )
    }

    fn fail(breaker: &CircuitBreaker, times: u32) {
        for _ in 0..times {
            if let Ok(permit) = breaker.try_acquire() {
                permit.failure("unavailable");
            }
        }
    }

    #[test]
    fn it_opens_after_consecutive_failures_and_refuses_calls() {
        let breaker = breaker();
        fail(&breaker, 2);
        assert_eq!(breaker.snapshot().state, BreakerState::Closed);
        fail(&breaker, 1);
        let snapshot = breaker.snapshot();
        assert_eq!(snapshot.state, BreakerState::Open);
        assert!(snapshot.next_probe_at.is_some());
        assert_eq!(snapshot.last_error, "unavailable");
        let refused = breaker.try_acquire().err().map(|e| e.retry_after);
        assert!(refused.is_some_and(|after| after <= Duration::from_millis(50)));
    }

    #[test]
    fn the_state_gauge_follows_every_change() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let gauge = || {
            handle
                .render()
                .lines()
                .find_map(|line| {
                    line.strip_prefix("zentra_circuit_breaker_state{downstream=\"payment\"} ")
                })
                .and_then(|value| value.parse::<f64>().ok())
        };
        metrics::with_local_recorder(&recorder, || {
            let breaker = breaker();
            assert_eq!(gauge(), Some(0.0), "closed from the start");
            fail(&breaker, 3);
            assert_eq!(gauge(), Some(2.0), "open");
            std::thread::sleep(Duration::from_millis(60));
            let probe = breaker
                .try_acquire()
                .expect("a probe after the open period");
            assert_eq!(gauge(), Some(1.0), "half-open");
            probe.success();
            assert_eq!(gauge(), Some(0.0), "closed again");
            fail(&breaker, 3);
            breaker.reset();
            assert_eq!(gauge(), Some(0.0), "reset");
        });
    }

    #[test]
    fn a_success_in_between_resets_the_count() {
        let breaker = breaker();
        fail(&breaker, 2);
        breaker.try_acquire().map(Permit::success).ok();
        fail(&breaker, 2);
        assert_eq!(breaker.snapshot().state, BreakerState::Closed);
    }

    #[test]
    fn after_the_open_period_one_probe_decides() {
        let breaker = breaker();
        fail(&breaker, 3);
        std::thread::sleep(Duration::from_millis(60));
        let probe = breaker.try_acquire().ok();
        assert_eq!(breaker.snapshot().state, BreakerState::HalfOpen);
        assert!(breaker.try_acquire().is_err(), "only one probe at a time");
        if let Some(probe) = probe {
            probe.failure("still down");
        }
        assert_eq!(
            breaker.snapshot().state,
            BreakerState::Open,
            "a failed probe reopens"
        );

        std::thread::sleep(Duration::from_millis(60));
        breaker.try_acquire().map(Permit::success).ok();
        assert_eq!(
            breaker.snapshot().state,
            BreakerState::Closed,
            "a good probe closes"
        );
    }

    #[test]
    fn an_abandoned_probe_frees_its_slot_and_reset_closes() {
        let breaker = breaker();
        fail(&breaker, 3);
        std::thread::sleep(Duration::from_millis(60));
        drop(breaker.try_acquire());
        assert!(breaker.try_acquire().is_ok(), "slot freed");
        fail(&breaker, 1);
        breaker.reset();
        assert_eq!(breaker.snapshot().state, BreakerState::Closed);
        assert!(breaker.try_acquire().is_ok());
    }
}
