//! Which instance reads which partition, decided in PostgreSQL rather than by the broker's group
//! membership: one row per (group, topic, partition) holds the owner, a lease, a fencing epoch
//! and the next offset to process. An instance renews its leases, takes over expired ones, and
//! takes only its fair share (partitions ÷ live members), so instances split the work and a
//! killed one's partitions move within one lease. The offset advances in the transaction that
//! applies the message's effect, guarded by owner and epoch, so a superseded owner cannot commit.

use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, FromQueryResult, Statement,
    TransactionTrait as _, Value,
};

/// A partition this member holds.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct Lease {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Fencing token: raised on every takeover, checked on every offset advance.
    pub epoch: i64,
    /// Where processing resumes; `None` when nothing was ever processed (start at the earliest).
    pub next_offset: Option<i64>,
    /// The fingerprint of the record at `next_offset - 1`, the last one processed: reading resumes
    /// one record early and checks it, so a log the broker rebuilt is recognised.
    pub last_record: Option<i64>,
}

/// One partition's offset advance: processing of `topic[partition]` under `epoch` moved to
/// `next`, the record before it having the fingerprint `last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The epoch the partition is held under.
    pub epoch: i64,
    /// The next offset to process.
    pub next: i64,
    /// Fingerprint of the record at `next - 1`.
    pub last: i64,
}

/// What one round of lease keeping found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Every partition this member holds after the round.
    pub held: Vec<Lease>,
    /// Partitions of the group, whoever holds them.
    pub total: usize,
    /// Members whose heartbeat has not expired, this one included.
    pub live_members: usize,
}

/// The lease table of one consumer group, as seen by one member.
#[derive(Clone)]
pub struct PartitionLeases {
    db: DatabaseConnection,
    group: String,
    member: String,
    lease: Duration,
}

impl PartitionLeases {
    /// Leases of `group` for `member`, each lasting `lease` from its last renewal.
    pub fn new(db: DatabaseConnection, group: String, member: String, lease: Duration) -> Self {
        Self {
            db,
            group,
            member,
            lease,
        }
    }

    /// The group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// This member.
    pub fn member(&self) -> &str {
        &self.member
    }

    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Records that `topic` has `partitions` partitions (rows are added, never removed).
    pub async fn declare(&self, topic: &str, partitions: i32) -> Result<(), DbErr> {
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO consumer_partitions (consumer_group, topic, partition) \
                 SELECT $1, $2, generate_series(0, $3 - 1) ON CONFLICT DO NOTHING",
                [self.group.clone().into(), topic.into(), partitions.into()],
            ))
            .await
            .map(drop)
    }

    /// One round: heartbeat, renew what is `held`, take over expired or unowned partitions up
    /// to the fair share, give back what exceeds it. Partitions this member held in an earlier
    /// life (same member id, not in `held`) are taken back at once, under a new epoch.
    pub async fn round(&self, held: &[Lease]) -> Result<Round, DbErr> {
        let tx = self.db.begin().await?;
        let lease_ms = self.lease_ms();
        tx.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO consumer_members (consumer_group, member, alive_until) \
             VALUES ($1, $2, now() + $3 * interval '1 millisecond') \
             ON CONFLICT (consumer_group, member) DO UPDATE SET alive_until = EXCLUDED.alive_until",
            [
                self.group.clone().into(),
                self.member.clone().into(),
                lease_ms.into(),
            ],
        ))
        .await?;
        if held.is_empty() {
            // Joining (or starting over): members gone for an hour, fresh ids of past runs, are
            // forgotten. Not every round: a renewal stays three statements.
            tx.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "DELETE FROM consumer_members WHERE consumer_group = $1 AND alive_until < now() - interval '1 hour'",
                [self.group.clone().into()],
            ))
            .await?;
        }
        let counts = tx
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT (SELECT count(*) FROM consumer_members \
                          WHERE consumer_group = $1 AND alive_until > now()) AS live, \
                        (SELECT count(*) FROM consumer_partitions WHERE consumer_group = $1) AS total",
                [self.group.clone().into()],
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("member counts".to_owned()))?;
        let live: i64 = counts.try_get("", "live")?;
        let total: i64 = counts.try_get("", "total")?;
        let live = usize::try_from(live).unwrap_or(1).max(1);
        let total = usize::try_from(total).unwrap_or(0);
        let fair = total.div_ceil(live);

        let (topics, partitions, epochs) = columns(held);
        // Rows are locked in (topic, partition) order, as offset advances lock them, so the two
        // never deadlock.
        let mut kept = Lease::find_by_statement(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE consumer_partitions p \
             SET lease_until = now() + $3 * interval '1 millisecond' \
             FROM (SELECT c.topic, c.partition FROM consumer_partitions c \
                   JOIN unnest($4::text[], $5::int[], $6::bigint[]) AS h(topic, partition, epoch) \
                     ON h.topic = c.topic AND h.partition = c.partition AND h.epoch = c.epoch \
                   WHERE c.consumer_group = $1 AND c.owner = $2 \
                   ORDER BY c.topic, c.partition FOR UPDATE OF c) s \
             WHERE p.consumer_group = $1 AND p.topic = s.topic AND p.partition = s.partition \
             RETURNING p.topic, p.partition, p.epoch, p.next_offset, p.last_record",
            [
                self.group.clone().into(),
                self.member.clone().into(),
                lease_ms.into(),
                topics.into(),
                partitions.into(),
                epochs.into(),
            ],
        ))
        .all(&tx)
        .await?;

        if kept.len() < fair {
            let wanted = i64::try_from(fair - kept.len()).unwrap_or(0);
            let (topics, partitions, _) = columns(&kept);
            let taken = Lease::find_by_statement(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE consumer_partitions p \
                 SET owner = $2, epoch = p.epoch + 1, updated_at = now(), \
                     lease_until = now() + $3 * interval '1 millisecond' \
                 FROM (SELECT c.topic, c.partition FROM consumer_partitions c \
                       WHERE c.consumer_group = $1 \
                         AND (c.owner IS NULL OR c.owner = $2 OR c.lease_until < now()) \
                         AND NOT EXISTS (SELECT 1 FROM unnest($4::text[], $5::int[]) AS k(topic, partition) \
                                         WHERE k.topic = c.topic AND k.partition = c.partition) \
                       ORDER BY (c.owner = $2) IS TRUE DESC, c.topic, c.partition \
                       LIMIT $6 FOR UPDATE OF c SKIP LOCKED) s \
                 WHERE p.consumer_group = $1 AND p.topic = s.topic AND p.partition = s.partition \
                 RETURNING p.topic, p.partition, p.epoch, p.next_offset, p.last_record",
                [
                    self.group.clone().into(),
                    self.member.clone().into(),
                    lease_ms.into(),
                    topics.into(),
                    partitions.into(),
                    wanted.into(),
                ],
            ))
            .all(&tx)
            .await?;
            kept.extend(taken);
        } else if kept.len() > fair {
            // Give back the surplus so a member that joined gets its share on its next round.
            kept.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
            let surplus = kept.split_off(fair);
            let (topics, partitions, epochs) = columns(&surplus);
            tx.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE consumer_partitions p SET owner = NULL, lease_until = '-infinity', updated_at = now() \
                 FROM unnest($3::text[], $4::int[], $5::bigint[]) AS h(topic, partition, epoch) \
                 WHERE p.consumer_group = $1 AND p.owner = $2 AND p.topic = h.topic \
                   AND p.partition = h.partition AND p.epoch = h.epoch",
                [
                    self.group.clone().into(),
                    self.member.clone().into(),
                    topics.into(),
                    partitions.into(),
                    epochs.into(),
                ],
            ))
            .await?;
        }
        tx.commit().await?;
        kept.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(Round {
            held: kept,
            total,
            live_members: live,
        })
    }

    /// Gives back every partition this member holds and ends its membership (a clean stop, so
    /// others need not wait for the leases to expire).
    pub async fn leave(&self) -> Result<(), DbErr> {
        let tx = self.db.begin().await?;
        tx.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE consumer_partitions SET owner = NULL, lease_until = '-infinity', updated_at = now() \
             WHERE consumer_group = $1 AND owner = $2",
            [self.group.clone().into(), self.member.clone().into()],
        ))
        .await?;
        tx.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM consumer_members WHERE consumer_group = $1 AND member = $2",
            [self.group.clone().into(), self.member.clone().into()],
        ))
        .await?;
        tx.commit().await
    }
}

/// The fenced offset update, its parameters from `$first`: group, topic, partition, member,
/// epoch, next offset, last record. It changes one row only while `member` holds the partition
/// under `epoch`.
fn advance_sql(first: usize) -> String {
    let p = |n: usize| format!("${}", first + n);
    format!(
        "UPDATE consumer_partitions SET next_offset = {}::bigint, last_record = {}::bigint, \
         updated_at = now() \
         WHERE consumer_group = {}::text AND topic = {}::text AND partition = {}::int \
           AND owner = {}::text AND epoch = {}::bigint",
        p(5),
        p(6),
        p(0),
        p(1),
        p(2),
        p(3),
        p(4)
    )
}

/// Advances the offsets of `advances` inside the transaction that applied their messages.
/// `Ok(false)`: this member no longer holds one of the partitions under that epoch; the caller
/// must roll back.
pub async fn advance<C: ConnectionTrait>(
    tx: &C,
    group: &str,
    member: &str,
    advances: &[Advance],
) -> Result<bool, DbErr> {
    let mut sorted: Vec<&Advance> = advances.iter().collect();
    sorted.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let sql = advance_sql(1);
    for advance in sorted {
        let fence = Fence {
            group: group.to_owned(),
            member: member.to_owned(),
            advance: advance.clone(),
        };
        let result = tx
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                &sql,
                fence.values(),
            ))
            .await?;
        if result.rows_affected() != 1 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One message's offset advance, fenced by the partition's lease, carried by the statement that
/// applies the message's effect: a handler of one statement then needs no transaction
/// ([`crate::kafka::EventHandler::handle_alone`]). The statement writes its effect only when the
/// advance changed the row, so the effect and the offset commit together or not at all, and a
/// member that lost the partition writes neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The consumer group (prefix included).
    pub group: String,
    /// The member that must hold the partition.
    pub member: String,
    /// The advance, with the epoch the partition must still be held under.
    pub advance: Advance,
}

impl Fence {
    /// A data-modifying `WITH` part named `advance`, its parameters `$first` to `$first + 6`
    /// ([`Fence::values`]): one row when the offset moved, none when `condition` (an SQL boolean
    /// over earlier parts) is false or the member no longer holds the partition under its epoch.
    pub fn part(first: usize, condition: &str) -> String {
        format!(
            "advance AS ({} AND ({condition}) RETURNING 1)",
            advance_sql(first)
        )
    }

    /// The parameters of [`Fence::part`], in order.
    pub fn values(&self) -> Vec<Value> {
        vec![
            self.group.clone().into(),
            self.advance.topic.clone().into(),
            self.advance.partition.into(),
            self.member.clone().into(),
            self.advance.epoch.into(),
            self.advance.next.into(),
            self.advance.last.into(),
        ]
    }
}

fn columns(leases: &[Lease]) -> (Vec<String>, Vec<i32>, Vec<i64>) {
    (
        leases.iter().map(|lease| lease.topic.clone()).collect(),
        leases.iter().map(|lease| lease.partition).collect(),
        leases.iter().map(|lease| lease.epoch).collect(),
    )
}

/// Adds each partition's last record fingerprint (NULL until a record is processed with it).
pub const LAST_RECORD_MIGRATION: &str = r#"
-- The fingerprint of the record at next_offset - 1: reading resumes there and checks it, so a log
-- the broker rebuilt under the same offsets is not mistaken for the one read before.
ALTER TABLE consumer_partitions ADD COLUMN last_record BIGINT;
"#;

/// The runtime's migration that creates the lease tables.
pub const MIGRATION: &str = r#"
CREATE TABLE consumer_partitions (
    consumer_group TEXT        NOT NULL,
    topic          TEXT        NOT NULL,
    partition      INT         NOT NULL,
    -- NULL: nothing processed yet; start at the earliest record.
    next_offset    BIGINT,
    owner          TEXT,
    -- Raised on every takeover; an offset advance must name the epoch it was leased under.
    epoch          BIGINT      NOT NULL DEFAULT 0,
    lease_until    TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

CREATE TABLE consumer_members (
    consumer_group TEXT        NOT NULL,
    member         TEXT        NOT NULL,
    alive_until    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer_group, member)
);
"#;
