//! The inbox: a consumer records each event id it applied, in the same transaction as the effect,
//! so a redelivered event (after a crash, or an outbox republish) is recognised and skipped.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
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
    let event_id = Uuid::parse_str(event_id)
        .map_err(|_| DbErr::Custom(format!("event id {event_id} is not a UUID")))?;
    let result = transaction
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO inbox (consumer, event_id, topic) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            [consumer.into(), event_id.into(), topic.into()],
        ))
        .await?;
    let first = result.rows_affected() == 1;
    if !first {
        metrics::counter!(names::INBOX_DUPLICATES, "consumer" => consumer.to_owned()).increment(1);
        tracing::debug!(consumer, %event_id, "duplicate event skipped");
    }
    Ok(first)
}
