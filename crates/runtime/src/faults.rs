//! Fault injection that really happens: latency, error rate, a TPS limit and kill. Faults apply to
//! a service's domain RPCs (never to ops, health or reflection, so an operator can always clear
//! them) and clear themselves when their duration runs out.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use rand::RngExt as _;
use tonic::Status;

/// A fault's parameters, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultSpec {
    /// Delay each call by a duration drawn uniformly from `min..=max`.
    Latency {
        /// Lower bound.
        min: Duration,
        /// Upper bound.
        max: Duration,
    },
    /// Fail this fraction of calls with UNAVAILABLE.
    ErrorRate(f64),
    /// Allow at most this many calls per second; the rest get RESOURCE_EXHAUSTED.
    TpsLimit(u32),
    /// Stop the process as a crash would.
    Kill,
}

impl FaultSpec {
    /// Stable name of the fault's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            FaultSpec::Latency { .. } => "latency",
            FaultSpec::ErrorRate(_) => "error_rate",
            FaultSpec::TpsLimit(_) => "tps_limit",
            FaultSpec::Kill => "kill",
        }
    }
}

/// A fault in force.
#[derive(Debug, Clone)]
pub struct ActiveFault {
    /// What it does.
    pub spec: FaultSpec,
    /// When it was injected.
    pub injected_at: SystemTime,
    /// When it clears itself, if ever.
    pub expires_at: Option<SystemTime>,
    expires: Option<Instant>,
}

/// What the fault layer decided for one call.
#[derive(Debug, Default)]
pub struct FaultDecision {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer with this status instead of calling the service.
    pub reject: Option<Status>,
}

#[derive(Debug, Default)]
struct State {
    faults: Vec<ActiveFault>,
    window_start: Option<Instant>,
    window_calls: u32,
}

/// The faults of one service; cheap to clone.
#[derive(Clone, Default)]
pub struct Faults {
    state: Arc<Mutex<State>>,
}

impl Faults {
    /// Injects a fault, replacing one of the same kind.
    pub fn inject(&self, spec: FaultSpec, duration: Option<Duration>) -> ActiveFault {
        let now = SystemTime::now();
        let fault = ActiveFault {
            injected_at: now,
            expires_at: duration.map(|duration| now + duration),
            expires: duration.map(|duration| Instant::now() + duration),
            spec,
        };
        if let Ok(mut state) = self.state.lock() {
            state.faults.retain(|f| f.spec.kind() != fault.spec.kind());
            state.faults.push(fault.clone());
        }
        fault
    }

    /// Clears faults of one kind, or all with `None`; returns how many were cleared.
    pub fn clear(&self, kind: Option<&str>) -> usize {
        let Ok(mut state) = self.state.lock() else {
            return 0;
        };
        let before = state.faults.len();
        state
            .faults
            .retain(|f| kind.is_some_and(|kind| f.spec.kind() != kind));
        before - state.faults.len()
    }

    /// Faults in force now.
    pub fn active(&self) -> Vec<ActiveFault> {
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        drop_expired(&mut state);
        state.faults.clone()
    }

    /// Decides what happens to one call.
    pub fn decide(&self) -> FaultDecision {
        let Ok(mut state) = self.state.lock() else {
            return FaultDecision::default();
        };
        drop_expired(&mut state);
        if state.faults.is_empty() {
            return FaultDecision::default();
        }
        let mut decision = FaultDecision::default();
        let mut rng = rand::rng();
        let faults = state.faults.clone();
        for fault in faults {
            match fault.spec {
                FaultSpec::Latency { min, max } => {
                    let delay = if max > min {
                        rng.random_range(min..=max)
                    } else {
                        min
                    };
                    decision.delay = Some(delay);
                }
                FaultSpec::ErrorRate(rate) => {
                    if decision.reject.is_none() && rng.random_bool(rate.clamp(0.0, 1.0)) {
                        decision.reject = Some(Status::unavailable("injected fault: error rate"));
                    }
                }
                FaultSpec::TpsLimit(limit) => {
                    if decision.reject.is_none() && !admit(&mut state, limit) {
                        decision.reject = Some(Status::resource_exhausted(format!(
                            "injected fault: limited to {limit} calls per second"
                        )));
                    }
                }
                FaultSpec::Kill => {}
            }
        }
        if let Some(reject) = &decision.reject {
            let kind = match reject.code() {
                tonic::Code::ResourceExhausted => "tps_limit",
                _ => "error_rate",
            };
            metrics::counter!(crate::telemetry::names::FAULTS_APPLIED, "kind" => kind).increment(1);
        } else if decision.delay.is_some() {
            metrics::counter!(crate::telemetry::names::FAULTS_APPLIED, "kind" => "latency")
                .increment(1);
        }
        decision
    }
}

/// A fixed one-second window: simple, and exact about the number admitted per window.
fn admit(state: &mut State, limit: u32) -> bool {
    let now = Instant::now();
    match state.window_start {
        Some(start) if now.duration_since(start) < Duration::from_secs(1) => {}
        _ => {
            state.window_start = Some(now);
            state.window_calls = 0;
        }
    }
    if state.window_calls < limit {
        state.window_calls += 1;
        true
    } else {
        false
    }
}

fn drop_expired(state: &mut State) {
    let now = Instant::now();
    state
        .faults
        .retain(|fault| fault.expires.is_none_or(|expires| expires > now));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tps_limit_admits_exactly_the_limit_per_window() {
        let faults = Faults::default();
        faults.inject(FaultSpec::TpsLimit(5), None);
        let rejected = (0..20).filter(|_| faults.decide().reject.is_some()).count();
        assert_eq!(rejected, 15);
    }

    #[test]
    fn error_rate_one_rejects_every_call_with_unavailable() {
        let faults = Faults::default();
        faults.inject(FaultSpec::ErrorRate(1.0), None);
        for _ in 0..10 {
            let status = faults.decide().reject.map(|status| status.code());
            assert_eq!(status, Some(tonic::Code::Unavailable));
        }
    }

    #[test]
    fn a_fault_with_a_duration_clears_itself() {
        let faults = Faults::default();
        faults.inject(FaultSpec::ErrorRate(1.0), Some(Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(faults.active().is_empty());
        assert!(faults.decide().reject.is_none());
    }

    #[test]
    fn injecting_the_same_kind_replaces_and_clear_removes() {
        let faults = Faults::default();
        faults.inject(FaultSpec::TpsLimit(1), None);
        faults.inject(FaultSpec::TpsLimit(2), None);
        faults.inject(FaultSpec::ErrorRate(0.5), None);
        assert_eq!(faults.active().len(), 2);
        assert_eq!(faults.clear(Some("tps_limit")), 1);
        assert_eq!(faults.clear(None), 1);
        assert!(faults.active().is_empty());
    }
}
