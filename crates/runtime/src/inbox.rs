//! The inbox: a consumer records each event id it applied, in the same transaction as the effect,
//! so a redelivered event (after a crash, or an outbox republish) is recognised and skipped.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};
use uuid::Uuid;

use crate::telemetry::names;

/// Claims `event_id` for `consumer` inside the caller's transaction. `Ok(true)`: first delivery,
/// apply the effect in the same transaction. `Ok(false)`: already applied, skip it.
pub async fn claim<C: ConnectionTrait>(
    transaction: &C,
    consumer: &str,
    event_id: &str,
    topic: &str,
) -> Result<bool, DbErr> {
    let entry = Entry::new(consumer, event_id, topic)?;
    let result = transaction
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            Entry::claim_part(1),
            entry.values(),
        ))
        .await?;
    Ok(entry.claimed(result.rows_affected() == 1))
}

/// An inbox entry written by another statement of the caller's, as a part of it: one round trip
/// for the claim and the effect. [`Entry::claim_part`] is a data-modifying `WITH` part that
/// returns a row only on the first delivery; the effect's parts are conditioned on it.
#[derive(Debug, Clone)]
pub struct Entry {
    consumer: String,
    event_id: Uuid,
    topic: String,
}

impl Entry {
    /// The entry of `event_id` on `topic` for `consumer`; refused when the id is not a UUID.
    pub fn new(consumer: &str, event_id: &str, topic: &str) -> Result<Self, DbErr> {
        let event_id = Uuid::parse_str(event_id)
            .map_err(|_| DbErr::Custom(format!("event id {event_id} is not a UUID")))?;
        Ok(Self {
            consumer: consumer.to_owned(),
            event_id,
            topic: topic.to_owned(),
        })
    }

    /// An `INSERT … RETURNING 1` of the entry whose values are the parameters `$first` to
    /// `$first + 2`: one row on the first delivery, none on a redelivery.
    pub fn claim_part(first: usize) -> String {
        format!(
            "INSERT INTO inbox (consumer, event_id, topic) VALUES (${}, ${}, ${}) \
             ON CONFLICT DO NOTHING RETURNING 1",
            first,
            first + 1,
            first + 2
        )
    }

    /// The parameters of [`Entry::claim_part`], in order.
    pub fn values(&self) -> [Value; 3] {
        [
            self.consumer.clone().into(),
            self.event_id.into(),
            self.topic.clone().into(),
        ]
    }

    /// Records what the claim found (`first`: it inserted the entry) and returns it; a
    /// redelivery is counted and logged.
    pub fn claimed(&self, first: bool) -> bool {
        if !first {
            metrics::counter!(names::INBOX_DUPLICATES, "consumer" => self.consumer.clone())
                .increment(1);
            tracing::debug!(consumer = %self.consumer, event_id = %self.event_id, "duplicate event skipped");
        }
        first
    }
}
