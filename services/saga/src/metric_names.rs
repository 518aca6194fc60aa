//! The saga orchestrator's metric names, declared once.

/// Sagas started (counter).
pub const SAGAS_STARTED: &str = "zentra_saga_started_total";
/// Sagas that reached COMPLETED or COMPENSATED, by `state` (counter).
pub const SAGAS_ENDED: &str = "zentra_saga_ended_total";
/// Downstream calls of steps, by `step` and `result` (counter).
pub const STEP_CALLS: &str = "zentra_saga_step_calls_total";
/// Duration of step calls in seconds, by `step` (histogram).
pub const STEP_SECONDS: &str = "zentra_saga_step_seconds";
/// Sagas started by reconciliation for orders whose OrderPlaced was lost (counter).
pub const SAGAS_RECONCILED: &str = "zentra_saga_reconciled_total";
/// Customer cancellations handed to their saga by reconciliation, because their event was lost
/// (counter).
pub const CANCELLATIONS_RECONCILED: &str = "zentra_saga_cancellations_reconciled_total";
/// Transactions that stored transitions (counter); with [`TRANSITIONS_WRITTEN`], how many
/// transitions a commit carries.
pub const TRANSITION_COMMITS: &str = "zentra_saga_transition_commits_total";
/// Transitions stored (counter).
pub const TRANSITIONS_WRITTEN: &str = "zentra_saga_transitions_written_total";
/// Saga database reads made for Watch streams, by `by`: `feed` (the one change feed of the
/// process) or `stream` (a stream's first read, snapshot or catch-up) (counter).
pub const WATCH_READS: &str = "zentra_saga_watch_reads_total";
/// Watch streams open in this process (gauge).
pub const WATCH_STREAMS: &str = "zentra_saga_watch_streams";

/// Sagas given a result by bulk operations, by `outcome`: APPLIED, REFUSED (moved on since the
/// operation started) or CANCELLED (counter).
pub const BULK_RESULTS: &str = "zentra_saga_bulk_results_total";

/// Gauge: sagas not yet ended, by state (COMPENSATION_FAILED: parked, waiting for an operator).
pub const SAGAS_BY_STATE: &str = "zentra_sagas";
/// Gauge: age of the oldest saga in each state not yet ended, by state (0 when none is): since it
/// started, or for COMPENSATION_FAILED since it parked.
pub const SAGA_OLDEST_SECONDS: &str = "zentra_saga_oldest_seconds";

/// Describes every metric for the Prometheus exposition.
pub fn describe() {
    metrics::describe_counter!(SAGAS_STARTED, "sagas started");
    metrics::describe_counter!(
        BULK_RESULTS,
        "sagas given a result by bulk operations, by outcome"
    );
    metrics::describe_counter!(
        WATCH_READS,
        "saga database reads made for watch streams, by the shared feed or by a stream"
    );
    metrics::describe_gauge!(WATCH_STREAMS, "watch streams open in this process");
    metrics::describe_counter!(SAGAS_ENDED, "sagas that reached a terminal state, by state");
    metrics::describe_counter!(
        STEP_CALLS,
        "downstream calls made by saga steps, by step and result"
    );
    metrics::describe_histogram!(
        STEP_SECONDS,
        metrics::Unit::Seconds,
        "duration of saga step calls"
    );
    metrics::describe_counter!(
        TRANSITION_COMMITS,
        "transactions that stored saga transitions (several under load)"
    );
    metrics::describe_counter!(TRANSITIONS_WRITTEN, "saga transitions stored");
    metrics::describe_counter!(SAGAS_RECONCILED, "sagas started by reconciliation");
    metrics::describe_gauge!(
        SAGAS_BY_STATE,
        "sagas not yet ended, by state; COMPENSATION_FAILED ones wait for an operator"
    );
    metrics::describe_gauge!(
        SAGA_OLDEST_SECONDS,
        metrics::Unit::Seconds,
        "age of the oldest saga in each state not yet ended: since it started, or since it parked"
    );
    metrics::describe_counter!(
        CANCELLATIONS_RECONCILED,
        "customer cancellations whose event was lost, signalled by reconciliation"
    );
}
