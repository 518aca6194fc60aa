//! The inbox: a consumer records each event id it applied, in the same transaction as the effect,
//! so a redelivered event (after a crash, or an outbox republish) is recognised and skipped.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, Statement, Value};
use uuid::Uuid;

use crate::{kafka::leases::Fence, telemetry::names};

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
/// for the claim and the effect. [`Entry::parts`] are data-modifying `WITH` parts; `claim` returns
/// a row only on the first delivery, and the effect's parts are conditioned on it.
///
/// An entry [`Entry::fenced`] by the consumer also moves the partition's offset past the event,
/// in a part named `advance` that the claim is conditioned on: a statement carrying it needs no
/// transaction, and writes nothing once the consumer lost the partition.
#[derive(Debug, Clone)]
pub struct Entry {
    consumer: String,
    event_id: Uuid,
    topic: String,
    fence: Option<Fence>,
}

/// What a statement carrying an [`Entry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed<T> {
    /// The event's first delivery: the effect was written, and this is what it gave.
    First(T),
    /// A redelivery: nothing was written (the offset, when fenced, moved past it).
    Duplicate,
    /// The entry's fence held it back: the consumer no longer holds the partition (or the
    /// statement's condition was false), and nothing at all was written.
    Fenced,
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
            fence: None,
        })
    }

    /// The entry carrying `fence` (if any): the statement also moves the consumer's offset.
    pub fn fenced(mut self, fence: Option<Fence>) -> Self {
        self.fence = fence;
        self
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

    /// The `WITH` parts of the entry: `claim`, its values the parameters `$first` to
    /// `$first + 2` ([`Entry::values`]), preceded when the entry is fenced by `advance`, its
    /// values from `$fence_first` ([`Entry::fence_values`]). `condition`, an SQL boolean over
    /// earlier parts, must hold for anything to be written: a fenced entry whose condition is
    /// false moves no offset, so the event is read again.
    pub fn parts(&self, first: usize, fence_first: usize, condition: &str) -> String {
        let claim = |guard: &str| {
            format!(
                "claim AS (INSERT INTO inbox (consumer, event_id, topic) \
                 SELECT ${}::text, ${}::uuid, ${}::text WHERE {guard} \
                 ON CONFLICT DO NOTHING RETURNING 1)",
                first,
                first + 1,
                first + 2
            )
        };
        match self.fence {
            Some(_) => format!(
                "{}, {}",
                Fence::part(fence_first, condition),
                claim("EXISTS (SELECT 1 FROM advance)")
            ),
            None => claim(&format!("({condition})")),
        }
    }

    /// The parameters of the claim, in order.
    pub fn values(&self) -> [Value; 3] {
        [
            self.consumer.clone().into(),
            self.event_id.into(),
            self.topic.clone().into(),
        ]
    }

    /// The parameters of the fence (none when the entry is not fenced), in order.
    pub fn fence_values(&self) -> Vec<Value> {
        self.fence.as_ref().map(Fence::values).unwrap_or_default()
    }

    /// Select-list items that [`Entry::outcome`] reads: `first` and `advanced`.
    pub fn columns(&self) -> &'static str {
        match self.fence {
            Some(_) => {
                "EXISTS (SELECT 1 FROM claim) AS first, EXISTS (SELECT 1 FROM advance) AS advanced"
            }
            None => "EXISTS (SELECT 1 FROM claim) AS first, true AS advanced",
        }
    }

    /// What the statement did, read from the [`Entry::columns`] of its row; `effect` gives the
    /// first delivery's result. A redelivery is counted and logged.
    pub fn outcome<T>(
        &self,
        row: &QueryResult,
        effect: impl FnOnce() -> Result<T, DbErr>,
    ) -> Result<Claimed<T>, DbErr> {
        if !row.try_get::<bool>("", "advanced")? {
            return Ok(Claimed::Fenced);
        }
        if self.claimed(row.try_get::<bool>("", "first")?) {
            Ok(Claimed::First(effect()?))
        } else {
            Ok(Claimed::Duplicate)
        }
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
