//! Group commit: the writes of concurrent mutating RPCs share one transaction, so a burst of N
//! calls costs PostgreSQL one commit instead of N.
//!
//! A caller hands its work to the service's [`GroupCommit`] and waits. One runner task takes
//! what is queued (up to `database.max_batch` pieces of work), runs each piece in turn inside one
//! transaction, each under its own savepoint, and commits once. Work that fails rolls back to its
//! savepoint, so it leaves nothing behind and the others are kept. Savepoints are not released:
//! the commit ends them all, and a release would only be one more round trip. Every caller hears its result
//! only after the commit: a value is never returned for work that could still be rolled back.
//!
//! Nothing waits for company: the runner takes what is queued when it is free, so a lone call
//! runs at once and in a transaction of its own (without a savepoint), exactly as if there were
//! no group. Batches grow only while the runner is busy, which is when fewer commits matter.
//! There is one runner, so batched work never waits on locks another batch holds, and two
//! batches can never deadlock each other.
//!
//! Work is queued and run by the runner, not by the caller's task: a caller that goes away (a
//! cancelled RPC) does not cut its work in half. Work whose caller left before it started is
//! skipped.

use std::{future::Future, pin::Pin};

use sea_orm::{
    ConnectionTrait as _, DatabaseConnection, DatabaseTransaction, DbErr, RuntimeErr,
    TransactionTrait as _,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::idempotency::{self, IdempotencyError, IdempotentRequest, Recorded};

/// What a piece of work returns: a future borrowing the transaction it runs in.
pub type Work<'t, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 't>>;

/// The result of work that committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed<T> {
    /// What the work returned.
    pub value: T,
    /// Whether the work wrote an event to the outbox (so the relay is worth waking).
    pub emitted: bool,
}

/// Queued work, type-erased for the runner.
trait Job: Send {
    /// Whether the caller stopped waiting before the work started.
    fn abandoned(&self) -> bool;
    /// Runs the work in `transaction`.
    fn run<'t>(
        self: Box<Self>,
        transaction: &'t DatabaseTransaction,
    ) -> Pin<Box<dyn Future<Output = Box<dyn Ran>> + Send + 't>>;
    /// Tells the caller the work could not run.
    fn refuse(self: Box<Self>, error: &DbErr);
}

/// Work that ran, waiting for the fate of its transaction.
trait Ran: Send {
    /// Whether the work itself succeeded (and its writes are to be kept).
    fn succeeded(&self) -> bool;
    /// Answers the caller: its own failure, or its value once `lost` says the commit held.
    fn finish(self: Box<Self>, lost: Option<&DbErr>);
}

struct Pending<T, E, F> {
    work: F,
    reply: oneshot::Sender<Result<Committed<T>, E>>,
    /// The caller's span: the work's spans, logs and events' trace context continue it.
    span: tracing::Span,
}

impl<T, E, F> Job for Pending<T, E, F>
where
    T: Send + 'static,
    E: From<DbErr> + Send + 'static,
    F: for<'t> FnOnce(&'t DatabaseTransaction) -> Work<'t, T, E> + Send + 'static,
{
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    fn run<'t>(
        self: Box<Self>,
        transaction: &'t DatabaseTransaction,
    ) -> Pin<Box<dyn Future<Output = Box<dyn Ran>> + Send + 't>> {
        let Pending { work, reply, span } = *self;
        Box::pin(async move {
            let work = work(transaction).instrument(span);
            let (result, emitted) = crate::events::tracked(work).await;
            let result = result.map(|value| Committed { value, emitted });
            Box::new(Outcome { result, reply }) as Box<dyn Ran>
        })
    }

    fn refuse(self: Box<Self>, error: &DbErr) {
        let _ = self.reply.send(Err(lost(error)));
    }
}

struct Outcome<T, E> {
    result: Result<Committed<T>, E>,
    reply: oneshot::Sender<Result<Committed<T>, E>>,
}

impl<T: Send, E: From<DbErr> + Send> Ran for Outcome<T, E> {
    fn succeeded(&self) -> bool {
        self.result.is_ok()
    }

    fn finish(self: Box<Self>, lost_with: Option<&DbErr>) {
        // A failure in a lost batch is lost too: it may rest on what the batch's earlier pieces
        // wrote (stock they took, a key they claimed), which no longer exists.
        let result = match (self.result, lost_with) {
            (_, Some(error)) => Err(lost(error)),
            (result, None) => result,
        };
        let _ = self.reply.send(result);
    }
}

/// The error of work whose transaction did not commit, for every caller that shared it. A
/// connection error: the caller may retry (its work was not done, or is idempotent).
fn lost<E: From<DbErr>>(error: &DbErr) -> E {
    DbErr::Conn(RuntimeErr::Internal(format!(
        "the shared transaction did not commit: {error}"
    )))
    .into()
}

/// How many pieces of work the runner may hold queued before callers wait to queue more.
const QUEUE: usize = 1024;

/// A service's shared-transaction writer. Cheap to clone; all clones feed one runner.
#[derive(Clone)]
pub struct GroupCommit {
    db: DatabaseConnection,
    queue: Option<mpsc::Sender<Box<dyn Job>>>,
}

impl GroupCommit {
    /// Starts the runner over `db`, committing up to `max_batch` pieces of work together, and
    /// stopping (after the batch in hand) at `shutdown`. With `max_batch` 1 there is no runner:
    /// each caller runs its work in a transaction of its own, on its own task.
    pub fn start(db: DatabaseConnection, max_batch: usize, shutdown: CancellationToken) -> Self {
        let (group, runner) = Self::new(db, max_batch);
        if let Some(runner) = runner {
            tokio::spawn(runner.run(shutdown));
        }
        group
    }

    /// The group and, unless `max_batch` is 1, the runner the caller must spawn.
    pub fn new(db: DatabaseConnection, max_batch: usize) -> (Self, Option<Runner>) {
        if max_batch <= 1 {
            return (Self { db, queue: None }, None);
        }
        let (sender, receiver) = mpsc::channel(QUEUE);
        let runner = Runner {
            db: db.clone(),
            receiver,
            max_batch,
        };
        (
            Self {
                db,
                queue: Some(sender),
            },
            Some(runner),
        )
    }

    /// The database the work runs in.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Runs `work` in a transaction (shared with other callers' work when they come together)
    /// and answers once that transaction committed. The work's error rolls back only its own
    /// writes.
    pub async fn run<T, E, F>(&self, work: F) -> Result<Committed<T>, E>
    where
        T: Send + 'static,
        E: From<DbErr> + Send + 'static,
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> Work<'t, T, E> + Send + 'static,
    {
        let Some(queue) = &self.queue else {
            return alone(&self.db, work).await;
        };
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Pending {
            work,
            reply,
            span: tracing::Span::current(),
        });
        if queue.send(job).await.is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// [`GroupCommit::run`] for a mutating RPC under an idempotency key: an earlier identical
    /// call gets its stored response back, a reuse of the key for another request is refused,
    /// and the response of `work` is stored with its writes.
    ///
    /// The work runs first and the key is claimed with its response in one statement after it
    /// ([`idempotency::record`]). A replay (rare: the saga's retries) finds the key taken, and its
    /// writes are rolled back. Work that fails may be a retry whose re-run no longer fits the
    /// state its first run left (an order's version moved on, a shipment exists): when the same
    /// request committed before, its stored response is the answer, not the failure.
    pub async fn idempotent<Q, R, E, F>(
        &self,
        scope: &'static str,
        request: &Q,
        work: F,
    ) -> Result<Committed<R>, E>
    where
        Q: IdempotentRequest,
        R: prost::Message + Default + 'static,
        E: From<DbErr> + From<IdempotencyError> + Send + 'static,
        F: for<'t> FnOnce(&'t DatabaseTransaction) -> Work<'t, R, E> + Send + 'static,
    {
        let fingerprint = idempotency::fingerprint(&request.without_key());
        let key = request.idempotency_key().to_owned();
        let claim = (key.clone(), fingerprint.clone());
        let result = self
            .run(move |transaction| {
                Box::pin(async move {
                    let (key, fingerprint) = claim;
                    let response = work(transaction).await.map_err(Keyed::Failed)?;
                    let recorded = idempotency::record(
                        transaction,
                        scope,
                        &key,
                        &fingerprint,
                        &response.encode_to_vec(),
                    )
                    .await
                    .map_err(|error| Keyed::Failed(error.into()))?;
                    match recorded {
                        Recorded::Stored => Ok(response),
                        // An error, so that the runner rolls this run's writes back.
                        Recorded::Replay(bytes) => Err(Keyed::Replay(bytes)),
                    }
                })
            })
            .await;
        let earlier = match result {
            Ok(committed) => return Ok(committed),
            Err(Keyed::Replay(bytes)) => bytes,
            Err(Keyed::Failed(error)) => {
                match idempotency::lookup(&self.db, scope, &key, &fingerprint).await {
                    Ok(Some(bytes)) => bytes,
                    Err(reused @ IdempotencyError::KeyReused { .. }) => return Err(reused.into()),
                    Ok(None) | Err(IdempotencyError::Database(_)) => return Err(error),
                }
            }
        };
        Ok(Committed {
            value: idempotency::stored(&earlier)?,
            emitted: false,
        })
    }
}

/// How idempotent work ended, when it did not commit its own response.
enum Keyed<E> {
    /// The work, or claiming its key, failed.
    Failed(E),
    /// The same request committed before: its stored response.
    Replay(Vec<u8>),
}

impl<E: From<DbErr>> From<DbErr> for Keyed<E> {
    fn from(error: DbErr) -> Self {
        Self::Failed(error.into())
    }
}

/// The error of work queued after the runner stopped (the service is shutting down).
fn stopped<E: From<DbErr>>() -> E {
    DbErr::Conn(RuntimeErr::Internal("the service is stopping".to_owned())).into()
}

/// Work in a transaction of its own, on the caller's task.
async fn alone<T, E, F>(db: &DatabaseConnection, work: F) -> Result<Committed<T>, E>
where
    E: From<DbErr>,
    F: for<'t> FnOnce(&'t DatabaseTransaction) -> Work<'t, T, E>,
{
    let transaction = db.begin().await?;
    let (result, emitted) = crate::events::tracked(work(&transaction)).await;
    match result {
        Ok(value) => {
            transaction.commit().await?;
            Ok(Committed { value, emitted })
        }
        Err(error) => {
            let _ = transaction.rollback().await;
            Err(error)
        }
    }
}

/// The task that runs queued work in shared transactions.
pub struct Runner {
    db: DatabaseConnection,
    receiver: mpsc::Receiver<Box<dyn Job>>,
    max_batch: usize,
}

impl Runner {
    /// Runs batches until `shutdown` (finishing the batch in hand) or until every
    /// [`GroupCommit`] is dropped.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                job = self.receiver.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
            };
            let mut jobs = vec![first];
            while jobs.len() < self.max_batch {
                match self.receiver.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            jobs.retain(|job| !job.abandoned());
            if !jobs.is_empty() {
                metrics::histogram!(crate::telemetry::names::DB_BATCH_SIZE)
                    .record(jobs.len() as f64);
                batch(&self.db, jobs).await;
            }
        }
    }
}

/// Runs `jobs` in one transaction and answers each.
///
/// The first piece runs with no savepoint: if it fails, the transaction holds nothing else, so it
/// is rolled back whole and the rest start over in a new one. Each later piece runs under a
/// savepoint of its own, which is never released: releasing costs a round trip and gains
/// nothing, since the commit ends them all. A failed piece rolls back to its savepoint (the
/// newest of that name), which leaves the pieces before it in place.
///
/// Work must return the database errors it meets: one it swallowed would leave the transaction
/// aborted, and PostgreSQL answers COMMIT on an aborted transaction by rolling back, without an
/// error (the next piece's SAVEPOINT would fail, but the last piece has none after it).
async fn batch(db: &DatabaseConnection, jobs: Vec<Box<dyn Job>>) {
    let mut jobs = jobs.into_iter();
    let (transaction, first) = loop {
        let Some(first) = jobs.next() else { return };
        let transaction = match db.begin().await {
            Ok(transaction) => transaction,
            Err(error) => {
                first.refuse(&error);
                for job in jobs {
                    job.refuse(&error);
                }
                return;
            }
        };
        let ran = first.run(&transaction).await;
        if ran.succeeded() {
            break (transaction, ran);
        }
        let _ = transaction.rollback().await;
        ran.finish(None);
    };
    let mut done: Vec<Box<dyn Ran>> = Vec::with_capacity(jobs.len() + 1);
    done.push(first);
    let mut broken = None;
    for job in jobs.by_ref() {
        if let Err(error) = transaction.execute_unprepared("SAVEPOINT piece").await {
            job.refuse(&error);
            broken = Some(error);
            break;
        }
        let ran = job.run(&transaction).await;
        let kept = if ran.succeeded() {
            Ok(())
        } else {
            transaction
                .execute_unprepared("ROLLBACK TO SAVEPOINT piece")
                .await
                .map(|_| ())
        };
        done.push(ran);
        if let Err(error) = kept {
            broken = Some(error);
            break;
        }
    }
    let lost = match broken {
        // The transaction is unusable: nothing of it is kept.
        Some(error) => {
            for job in jobs {
                job.refuse(&error);
            }
            let _ = transaction.rollback().await;
            Some(error)
        }
        None => transaction.commit().await.err(),
    };
    for ran in done {
        ran.finish(lost.as_ref());
    }
}
