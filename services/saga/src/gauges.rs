//! The saga's state gauges: sagas not yet ended by state (COMPENSATION_FAILED ones wait for an
//! operator) and the age of the oldest of each: since it started, or for a parked one since it
//! parked (its last change: nothing changes a parked saga but an operator), sampled with the
//! runtime's gauges.

use sea_orm::DatabaseConnection;
use zentra_runtime::gauges::{LabelledGauge, Sampler, Sampling, labelled_rows};

use crate::metric_names::{SAGA_OLDEST_SECONDS, SAGAS_BY_STATE};

/// The states a saga waits in; each is always reported, 0 when none is in it.
const WAITING_STATES: [&str; 4] = [
    "RUNNING",
    "AWAITING_SHIPMENT",
    "COMPENSATING",
    "COMPENSATION_FAILED",
];

/// Samples [`SAGAS_BY_STATE`] and [`SAGA_OLDEST_SECONDS`].
pub struct SagaStates {
    count: LabelledGauge,
    oldest: LabelledGauge,
}

impl Default for SagaStates {
    fn default() -> Self {
        Self {
            count: LabelledGauge::new(SAGAS_BY_STATE, &["state"]),
            oldest: LabelledGauge::new(SAGA_OLDEST_SECONDS, &["state"]),
        }
    }
}

impl Sampler for SagaStates {
    fn sample<'a>(&'a mut self, db: &'a DatabaseConnection) -> Sampling<'a> {
        Box::pin(async move {
            // Ended sagas are counted by zentra_saga_ended_total; these are the ones still open,
            // found through the state index.
            let counts = labelled_rows(
                db,
                "SELECT state, count(*)::float8 FROM sagas \
                 WHERE state IN ('RUNNING', 'AWAITING_SHIPMENT', 'COMPENSATING', 'COMPENSATION_FAILED') \
                 GROUP BY state",
                1,
            )
            .await?;
            let oldest = labelled_rows(
                db,
                "SELECT state, extract(epoch FROM now() - min(CASE WHEN state = 'COMPENSATION_FAILED' \
                 THEN updated_at ELSE created_at END))::float8 FROM sagas \
                 WHERE state IN ('RUNNING', 'AWAITING_SHIPMENT', 'COMPENSATING', 'COMPENSATION_FAILED') \
                 GROUP BY state",
                1,
            )
            .await?;
            let every_state = |rows: Vec<(Vec<String>, f64)>| {
                WAITING_STATES.map(|state| {
                    let value = rows
                        .iter()
                        .find(|(labels, _)| labels.first().map(String::as_str) == Some(state))
                        .map_or(0.0, |(_, value)| *value);
                    (vec![state.to_owned()], value)
                })
            };
            self.count.set_all(every_state(counts));
            self.oldest.set_all(every_state(oldest));
            Ok(())
        })
    }
}
