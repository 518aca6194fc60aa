//! Group commit against real PostgreSQL: work that comes together shares a transaction, a
//! failing piece leaves nothing of its own and keeps the others, nobody hears of work that did
//! not commit, and a caller that leaves does not cut its work in half.

use std::time::Duration;

use sea_orm::{
    ConnectionTrait as _, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Statement,
};
use tokio::task::JoinHandle;
use zentra_proto::{common::v1::Money, payment::v1::VoidRequest};
use zentra_runtime::{
    CancellationToken,
    group_commit::{Committed, GroupCommit, Work},
    idempotency::IdempotencyError,
};
use zentra_test_support::{TestDatabase, count};

#[derive(Debug, thiserror::Error)]
enum TestError {
    #[error("refused by the work itself")]
    Refused,
    #[error(transparent)]
    Database(#[from] DbErr),
    #[error(transparent)]
    Key(#[from] IdempotencyError),
}

struct Fixture {
    database: TestDatabase,
    db: DatabaseConnection,
    group: GroupCommit,
    shutdown: CancellationToken,
}

impl Fixture {
    async fn new(label: &str, max_batch: usize) -> Self {
        let database = TestDatabase::create(label).await.expect("database");
        let db = database.connect().await.expect("connect");
        zentra_runtime::db::migrate(&db, &[])
            .await
            .expect("migrations");
        // `pair` can only be broken at commit: its uniqueness is checked then.
        db.execute_unprepared(
            "CREATE TABLE items (id INT PRIMARY KEY);
             CREATE TABLE pairs (value INT, UNIQUE (value) DEFERRABLE INITIALLY DEFERRED);",
        )
        .await
        .expect("tables");
        let shutdown = CancellationToken::new();
        let group = GroupCommit::start(db.clone(), max_batch, shutdown.clone());
        Self {
            database,
            db,
            group,
            shutdown,
        }
    }

    /// Holds the runner for `pause` with item 1, so the work that comes next queues behind it.
    async fn hold_runner(&self, pause: Duration) -> JoinHandle<Result<Committed<i64>, TestError>> {
        let group = self.group.clone();
        let held = tokio::spawn(async move { group.run(insert(1, pause, false)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        held
    }

    async fn items(&self) -> Vec<i32> {
        self.db
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT id FROM items ORDER BY id",
            ))
            .await
            .expect("items")
            .iter()
            .map(|row| row.try_get::<i32>("", "id").expect("id"))
            .collect()
    }

    async fn finish(self) {
        self.shutdown.cancel();
        self.database.drop_database().await.expect("drop");
    }
}

/// The id of the transaction the work runs in.
async fn transaction_id(tx: &DatabaseTransaction) -> Result<i64, DbErr> {
    let row = tx
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT txid_current()::bigint AS id",
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("txid".to_owned()))?;
    row.try_get("", "id")
}

/// Inserts item `id` (after `pause`, while holding the transaction), answering with the
/// transaction's id; refuses after writing when `refuse`.
fn insert(
    id: i32,
    pause: Duration,
    refuse: bool,
) -> impl for<'t> FnOnce(&'t DatabaseTransaction) -> Work<'t, i64, TestError> + Send + 'static {
    move |tx| {
        Box::pin(async move {
            tx.execute_unprepared(&format!("INSERT INTO items (id) VALUES ({id})"))
                .await?;
            tokio::time::sleep(pause).await;
            if refuse {
                return Err(TestError::Refused);
            }
            Ok(transaction_id(tx).await?)
        })
    }
}

/// Inserts `value` into `pairs`, whose uniqueness is checked only at commit.
fn pair(
    value: i32,
) -> impl for<'t> FnOnce(&'t DatabaseTransaction) -> Work<'t, (), TestError> + Send + 'static {
    move |tx| {
        Box::pin(async move {
            tx.execute_unprepared(&format!("INSERT INTO pairs (value) VALUES ({value})"))
                .await?;
            Ok(())
        })
    }
}

/// Inserts item `id` and answers with it as an amount.
fn answered(
    id: i32,
) -> impl for<'t> FnOnce(&'t DatabaseTransaction) -> Work<'t, Money, TestError> + Send + 'static {
    move |tx| {
        Box::pin(async move {
            tx.execute_unprepared(&format!("INSERT INTO items (id) VALUES ({id})"))
                .await?;
            Ok(Money {
                currency_code: "USD".to_owned(),
                amount_minor: i64::from(id),
            })
        })
    }
}

const NONE: Duration = Duration::ZERO;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_that_comes_together_commits_together_and_a_failure_keeps_only_itself_out() {
    let fixture = Fixture::new("group_together", 64).await;
    // The first piece holds the runner, so the others queue and go in one batch after it.
    let first = fixture.hold_runner(Duration::from_millis(300)).await;
    let group = &fixture.group;
    let (two, refused, duplicate, four, five) = tokio::join!(
        group.run(insert(2, NONE, false)),
        group.run(insert(3, NONE, true)),
        group.run(insert(2, NONE, false)),
        group.run(insert(4, NONE, false)),
        group.run(insert(5, NONE, false)),
    );
    let first = first.await.expect("task").expect("first committed");

    assert!(matches!(refused, Err(TestError::Refused)), "{refused:?}");
    assert!(
        matches!(duplicate, Err(TestError::Database(_))),
        "{duplicate:?}"
    );
    let (two, four, five) = (
        two.expect("2 committed"),
        four.expect("4 committed"),
        five.expect("5 committed"),
    );
    assert_eq!(
        (two.value, four.value),
        (five.value, five.value),
        "the pieces that queued together shared one transaction"
    );
    assert_ne!(first.value, five.value, "the first went alone");
    assert!(!two.emitted, "no outbox event was written");
    assert_eq!(
        fixture.items().await,
        [1, 2, 4, 5],
        "the refused piece and the failed duplicate left nothing; the rest is there"
    );
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_hears_of_work_whose_shared_commit_failed() {
    let fixture = Fixture::new("group_lost", 64).await;
    let blocker = fixture.hold_runner(Duration::from_millis(300)).await;
    // Two pieces that are each fine alone, but clash at commit, and one bystander.
    let group = &fixture.group;
    let (one, other, bystander) = tokio::join!(
        group.run(pair(7)),
        group.run(pair(7)),
        group.run(insert(2, NONE, false)),
    );
    blocker.await.expect("task").expect("the blocker committed");
    for result in [one.map(|_| ()), other.map(|_| ())] {
        assert!(matches!(result, Err(TestError::Database(DbErr::Conn(_)))));
    }
    assert!(
        matches!(bystander, Err(TestError::Database(DbErr::Conn(_)))),
        "the bystander's work was lost with the batch, and it is told so: {bystander:?}"
    );
    assert_eq!(
        fixture.items().await,
        [1],
        "nothing of the lost batch is kept"
    );
    assert_eq!(count(&fixture.db, "SELECT count(*) FROM pairs").await, 0);
    // Each retried alone, they commit (one of the pair, once).
    let retried = fixture.group.run(insert(2, NONE, false)).await;
    assert!(retried.is_ok(), "{retried:?}");
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_either_never_starts_its_work_or_lets_it_finish() {
    let fixture = Fixture::new("group_leave", 64).await;
    let blocker = fixture.hold_runner(Duration::from_millis(400)).await;
    // Gives up while its work still waits in the queue: the work never runs.
    let gone = tokio::time::timeout(
        Duration::from_millis(50),
        fixture.group.run(insert(2, NONE, false)),
    )
    .await;
    assert!(gone.is_err(), "the caller gave up first");
    blocker.await.expect("task").expect("the blocker committed");
    // Gives up while its work runs: the work is not cut in half, it commits.
    let left = tokio::time::timeout(
        Duration::from_millis(50),
        fixture
            .group
            .run(insert(3, Duration::from_millis(300), false)),
    )
    .await;
    assert!(left.is_err(), "the caller gave up first");
    let done = zentra_test_support::eventually(Duration::from_secs(5), || async {
        (fixture.items().await.contains(&3)).then_some(())
    })
    .await;
    assert!(done.is_some(), "the started work committed");
    assert_eq!(fixture.items().await, [1, 3]);
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_claimed_in_one_batch_replay_and_refuse_as_they_would_alone() {
    let fixture = Fixture::new("group_keys", 64).await;
    let blocker = fixture.hold_runner(Duration::from_millis(300)).await;
    let call = |reason: &'static str, item: i32| {
        let group = fixture.group.clone();
        async move {
            group
                .idempotent("Test", &void(reason), answered(item))
                .await
        }
    };
    let (first, again, reused) = tokio::join!(call("a", 2), call("a", 3), call("b", 4));
    blocker.await.expect("task").expect("blocker");
    let (first, again) = (first.expect("first"), again.expect("replay"));
    assert_eq!(first.value.amount_minor, 2);
    assert_eq!(
        again.value, first.value,
        "the same request in the same batch got the first answer back"
    );
    assert!(
        matches!(
            reused,
            Err(TestError::Key(IdempotencyError::KeyReused { .. }))
        ),
        "{reused:?}"
    );
    assert_eq!(
        fixture.items().await,
        [1, 2],
        "the replay's and the refused call's writes were rolled back"
    );
    fixture.finish().await;
}

/// The same void request each time, under key "k", with `reason` as what tells two apart.
fn void(reason: &str) -> VoidRequest {
    VoidRequest {
        payment_id: "p".to_owned(),
        idempotency_key: "k".to_owned(),
        reason: reason.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_whose_rerun_fails_gets_the_answer_its_first_run_committed() {
    // The retries run first in a transaction of their own (no savepoint), or behind a piece that
    // succeeds in a shared one (each under a savepoint).
    for (label, behind) in [("group_rerun_alone", false), ("group_rerun_batched", true)] {
        let fixture = Fixture::new(label, 64).await;
        let group = &fixture.group;
        let first = group
            .idempotent("Test", &void("a"), answered(2))
            .await
            .expect("first");
        let blocker = if behind {
            Some(fixture.hold_runner(Duration::from_millis(300)).await)
        } else {
            None
        };
        let ahead = async {
            if behind {
                Some(group.run(insert(3, NONE, false)).await)
            } else {
                None
            }
        };
        // Each retry's work inserts item 2 again, which fails: the first answer stands.
        let (same, other) = (void("a"), void("b"));
        let (ahead, again, reused) = tokio::join!(
            ahead,
            group.idempotent("Test", &same, answered(2)),
            group.idempotent("Test", &other, answered(2)),
        );
        if let Some(blocker) = blocker {
            blocker.await.expect("task").expect("blocker");
        }
        let again = again.expect("the stored answer");
        assert_eq!(again.value, first.value, "{label}");
        assert!(
            matches!(
                reused,
                Err(TestError::Key(IdempotencyError::KeyReused { .. }))
            ),
            "another request under the key is refused, not given its work's failure: {reused:?}"
        );
        let expected: &[i32] = if let Some(ahead) = ahead {
            ahead.expect("the piece ahead committed");
            &[1, 2, 3]
        } else {
            &[2]
        };
        assert_eq!(fixture.items().await, expected, "{label}");
        fixture.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_work_in_a_lost_batch_is_lost_too() {
    let fixture = Fixture::new("group_replay_lost", 64).await;
    let blocker = fixture.hold_runner(Duration::from_millis(300)).await;
    let group = &fixture.group;
    // The retry finds the key its first run claimed earlier in the same transaction; the pair
    // breaks that transaction at commit, so neither run happened.
    let request = void("a");
    let (first, again, one, other) = tokio::join!(
        group.idempotent("Test", &request, answered(2)),
        group.idempotent("Test", &request, answered(3)),
        group.run(pair(7)),
        group.run(pair(7)),
    );
    blocker.await.expect("task").expect("blocker");
    let outcomes = [
        first.map(|_| ()),
        again.map(|_| ()),
        one.map(|_| ()),
        other.map(|_| ()),
    ];
    for result in outcomes {
        assert!(
            matches!(result, Err(TestError::Database(DbErr::Conn(_)))),
            "{result:?}"
        );
    }
    assert_eq!(fixture.items().await, [1]);
    let retried = group
        .idempotent("Test", &void("a"), answered(2))
        .await
        .expect("the retry runs afresh");
    assert_eq!(retried.value.amount_minor, 2);
    fixture.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_batch_of_one_each_caller_commits_alone() {
    let fixture = Fixture::new("group_alone", 1).await;
    let group = &fixture.group;
    let (one, two, refused) = tokio::join!(
        group.run(insert(1, Duration::from_millis(100), false)),
        group.run(insert(2, Duration::from_millis(100), false)),
        group.run(insert(3, NONE, true)),
    );
    let (one, two) = (one.expect("1"), two.expect("2"));
    assert_ne!(one.value, two.value, "each in a transaction of its own");
    assert!(matches!(refused, Err(TestError::Refused)));
    assert_eq!(fixture.items().await, [1, 2]);
    fixture.finish().await;
}
