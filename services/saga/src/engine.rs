//! The engine: claims due sagas under a lease in PostgreSQL, walks each with the
//! [machine](crate::machine), makes the calls it asks for, and stores every transition together
//! with its events in one transaction.
//!
//! Ownership never depends on Kafka: a saga is driven only by the instance holding its lease,
//! claimed with `FOR UPDATE SKIP LOCKED` and checked on every write, so two instances never run a
//! step of one saga at once, and a dead instance's sagas are taken over when its leases expire.
//! A call that was cut by a crash is made again under the same idempotency key, so the
//! downstream applies it once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, DbErr, TransactionTrait as _};
use tokio::sync::{Notify, Semaphore, broadcast, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument as _;
use uuid::Uuid;
use zentra_proto::order::v1::OrderPlaced;
use zentra_runtime::{
    events,
    inbox::Claimed,
    kafka::Fence,
    outbox::{self, OutboxWaker},
    telemetry,
};

use crate::{
    domain::{Saga, StepType},
    downstream::Downstreams,
    machine::{self, CallResult, Next, Outgoing, RetryPolicy},
    metric_names,
    store::{self, Lease},
};

/// Changes a watcher may fall behind by before it must read the table to catch up.
const CHANGE_BUFFER: usize = 4096;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// This instance's lease name.
    pub owner: String,
    /// Lease length.
    pub lease: Duration,
    /// Poll interval when nothing wakes the engine.
    pub poll_interval: Duration,
    /// Sagas driven at once.
    pub concurrency: usize,
    /// Most transitions per commit.
    pub commit_batch: usize,
    /// Retries and timeouts.
    pub policy: RetryPolicy,
}

/// The saga engine of one orchestrator instance; shared by the API, the intake and the loop.
pub struct Engine {
    db: DatabaseConnection,
    downstreams: Downstreams,
    settings: EngineSettings,
    topic_prefix: String,
    outbox: OutboxWaker,
    wake: Notify,
    /// The last claim round filled every free slot, so due sagas may have been left behind: a
    /// slot that frees up should claim again at once.
    saturated: AtomicBool,
    /// The earliest time a saga this instance put to sleep is due again: the loop wakes for it,
    /// so timers fire on time while the poll, for other instances' work, can be slow.
    next_timer: std::sync::Mutex<Option<DateTime<Utc>>>,
    /// An earlier timer was set: the loop recomputes how long it sleeps.
    timer_set: Notify,
    changes: broadcast::Sender<Arc<Saga>>,
    /// Transitions waiting to be written (see [`Engine::commit`]).
    queue: std::sync::Mutex<Vec<Transition>>,
    /// The turn to write the queue.
    writer: tokio::sync::Mutex<()>,
    /// Sagas leased by this instance outside a claim (started, or signalled while nobody held
    /// them), with whether signals wait: the loop drives them without a claim.
    handed: tokio::sync::mpsc::UnboundedSender<(Saga, bool)>,
    /// Their receiving end, taken by [`Engine::run`].
    handed_rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(Saga, bool)>>>,
}

/// A transition waiting for its commit.
struct Transition {
    saga: Saga,
    out: Vec<Outgoing>,
    lease: Lease,
    applied: Vec<i64>,
    reply: oneshot::Sender<Result<Option<store::Saved>, DbErr>>,
}

impl Engine {
    /// An engine over `db`, calling `downstreams`, publishing to topics with `topic_prefix`.
    pub fn new(
        db: DatabaseConnection,
        downstreams: Downstreams,
        settings: EngineSettings,
        topic_prefix: String,
        outbox: OutboxWaker,
    ) -> Arc<Self> {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let (handed, handed_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Self {
            db,
            downstreams,
            settings,
            topic_prefix,
            outbox,
            wake: Notify::new(),
            saturated: AtomicBool::new(false),
            next_timer: std::sync::Mutex::new(None),
            timer_set: Notify::new(),
            changes,
            queue: std::sync::Mutex::new(Vec::new()),
            writer: tokio::sync::Mutex::new(()),
            handed,
            handed_rx: std::sync::Mutex::new(Some(handed_rx)),
        })
    }

    /// The database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The downstream clients and their breakers.
    pub fn downstreams(&self) -> &Downstreams {
        &self.downstreams
    }

    /// This instance's lease name.
    pub fn owner(&self) -> &str {
        &self.settings.owner
    }

    /// Every version of a saga this instance writes, as it commits (watchers read the other
    /// instances' changes from the table).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Saga>> {
        self.changes.subscribe()
    }

    fn announce(&self, saga: &Saga) {
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(Arc::new(saga.clone()));
        }
    }

    /// Makes the loop look for due sagas now (a saga was started or signalled here).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Starts the saga of `order` unless it has one; returns the order's saga and whether it
    /// was created now. `cancel_request` is
    /// the reason of a cancellation the customer asked for before the saga existed.
    pub async fn start_saga(
        &self,
        order: OrderPlaced,
        cancel_request: Option<String>,
    ) -> Result<(Saga, bool), DbErr> {
        let order_id = Uuid::parse_str(&order.order_id)
            .map_err(|_| DbErr::Custom(format!("order id {} is not a UUID", order.order_id)))?;
        // One statement: no transaction.
        let saga = match self
            .start_saga_in(&self.db, order, cancel_request, None)
            .await?
        {
            Claimed::First(saga) => saga,
            Claimed::Duplicate | Claimed::Fenced => {
                let existing = store::by_order(&self.db, order_id)
                    .await?
                    .ok_or_else(|| DbErr::RecordNotFound(format!("saga of order {order_id}")))?;
                return Ok((existing, false));
            }
        };
        self.started(&saga);
        Ok((saga, true))
    }

    /// Inserts the saga of `order` on `db` (one statement; the caller's transaction, or none),
    /// unless the order has one (`Duplicate`). A `fence` moves a consumer's offset in the same
    /// statement (`Fenced`: nothing written). After the commit, hand a new saga to
    /// [`Engine::started`].
    pub async fn start_saga_in<C: sea_orm::ConnectionTrait>(
        &self,
        db: &C,
        order: OrderPlaced,
        cancel_request: Option<String>,
        fence: Option<&Fence>,
    ) -> Result<Claimed<Saga>, DbErr> {
        let order_id = Uuid::parse_str(&order.order_id)
            .map_err(|_| DbErr::Custom(format!("order id {} is not a UUID", order.order_id)))?;
        let mut saga = Saga::new(order_id, order, cancel_request, Utc::now());
        // The order's trace: the span handling OrderPlaced (or the StartSaga call), which
        // every later step continues, on whichever instance drives it.
        saga.traceparent = events::current_trace_context().traceparent;
        // Born under this instance's lease: once committed, the loop drives it at once, without
        // a claim. Should this instance die first, the lease expires (or its restart gives it
        // back) and any instance claims the saga.
        saga.lease = Some(store::lease_token(self.owner()));
        Ok(
            match store::insert_moving(db, &saga, self.owner(), self.settings.lease, fence).await? {
                Claimed::First(()) => Claimed::First(saga),
                Claimed::Duplicate => Claimed::Duplicate,
                Claimed::Fenced => Claimed::Fenced,
            },
        )
    }

    /// What follows the commit of a saga started by [`Engine::start_saga_in`]: counted,
    /// announced to watchers and handed to the loop, which drives it under the lease it was
    /// born with.
    pub fn started(&self, saga: &Saga) {
        metrics::counter!(metric_names::SAGAS_STARTED).increment(1);
        tracing::info!(saga_id = %saga.id, order_id = %saga.order_id, "saga started");
        self.announce(saga);
        // Without a running loop (it stopped, or never ran) the saga keeps its lease until it
        // expires, and is claimed then.
        let _ = self.handed.send((saga.clone(), false));
    }

    /// Hands the loop a saga whose lease a committed signal took (see
    /// [`store::add_signal_once`]): it is driven at once, its signals read first.
    pub fn take_over(&self, saga: Saga) {
        let _ = self.handed.send((saga, true));
    }

    /// How long a lease of this instance lasts.
    pub fn lease(&self) -> Duration {
        self.settings.lease
    }

    /// Adds a signal for a saga and wakes the loop.
    pub async fn signal(&self, saga_id: Uuid, signal: &machine::Signal) -> Result<(), DbErr> {
        store::add_signal(&self.db, saga_id, signal).await?;
        self.wake();
        Ok(())
    }

    /// The outbox rows of a transition's records.
    fn records(&self, outgoing: &[Outgoing]) -> Result<outbox::Rows, DbErr> {
        let mut rows = outbox::Rows::default();
        for record in outgoing {
            rows.push(
                &format!("{}{}", self.topic_prefix, record.topic),
                &record.envelope,
            )?;
        }
        Ok(rows)
    }

    /// Claims and drives due sagas until `shutdown`; then lets running steps finish, gives the
    /// leases back and returns.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        match store::release_leases(&self.db, self.owner()).await {
            Ok(0) => {}
            Ok(count) => {
                tracing::info!(count, owner = %self.owner(), "took back the sagas of this instance's previous run");
            }
            Err(error) => tracing::warn!(%error, "cannot release old leases"),
        }
        let tasks = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let mut handed = self.handed_rx.lock().ok().and_then(|mut rx| rx.take());
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some((saga, has_signals)) = async {
                    match handed.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // A slot for it, as for a claimed saga: under load this waits, and the
                    // started sagas queue here rather than in the table.
                    let Ok(permit) = permits.clone().acquire_owned().await else { break };
                    self.spawn_drive(&tasks, permit, saga, has_signals, &shutdown);
                    continue;
                }
                () = self.wake.notified() => {}
                () = self.timer_set.notified() => continue,
                () = tokio::time::sleep(self.sleep_for()) => {}
            }
            self.claim_round(&tasks, &permits, &shutdown).await;
        }
        tasks.close();
        tasks.wait().await;
        if let Err(error) = store::release_leases(&self.db, self.owner()).await {
            tracing::warn!(%error, "cannot release leases at shutdown");
        }
    }

    /// Until the earliest timer of this instance, at most the poll interval; a timer that is
    /// due now is consumed by the claim round that follows.
    fn sleep_for(&self) -> Duration {
        let poll = self.settings.poll_interval;
        let Ok(mut next) = self.next_timer.lock() else {
            return poll;
        };
        let Some(at) = *next else {
            return poll;
        };
        let until = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        if until.is_zero() {
            *next = None;
        }
        until.min(poll)
    }

    /// Remembers that a saga is due again at `at`, waking the loop if that is the earliest.
    fn set_timer(&self, at: DateTime<Utc>) {
        let Ok(mut next) = self.next_timer.lock() else {
            return;
        };
        if next.is_none_or(|current| at < current) {
            *next = Some(at);
            self.timer_set.notify_one();
        }
    }

    async fn claim_round(
        self: &Arc<Self>,
        tasks: &TaskTracker,
        permits: &Arc<Semaphore>,
        shutdown: &CancellationToken,
    ) {
        loop {
            let free = permits.available_permits();
            if free == 0 {
                // Every slot is busy: whatever woke the loop is claimed when one frees up.
                self.saturated.store(true, Ordering::Relaxed);
                return;
            }
            let claimed =
                match store::claim_due(&self.db, self.owner(), self.settings.lease, free).await {
                    Ok(claimed) => claimed,
                    Err(error) => {
                        tracing::warn!(%error, "claiming due sagas failed");
                        return;
                    }
                };
            let count = claimed.len();
            self.saturated.store(count == free, Ordering::Relaxed);
            for (saga, has_signals) in claimed {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                self.spawn_drive(tasks, permit, saga, has_signals, shutdown);
            }
            if count < free {
                return;
            }
        }
    }

    /// Drives `saga`, held under this instance's lease, in a task of its own holding `permit`.
    fn spawn_drive(
        self: &Arc<Self>,
        tasks: &TaskTracker,
        permit: tokio::sync::OwnedSemaphorePermit,
        saga: Saga,
        has_signals: bool,
        shutdown: &CancellationToken,
    ) {
        let engine = Arc::clone(self);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            engine.drive(saga, has_signals, &shutdown).await;
            drop(permit);
            // A slot is free: claim again if the last round left due sagas behind.
            // Otherwise new work brings its own wake (a signal) or the poll finds it, and an
            // empty claim costs the database a transaction.
            if engine.saturated.load(Ordering::Relaxed) {
                engine.wake();
            }
        });
    }

    /// Walks one claimed saga until it waits, ends or the lease is lost, in a span of the
    /// order's trace (a claim is one span; the time between two is what the saga waited for).
    async fn drive(&self, saga: Saga, has_signals: bool, shutdown: &CancellationToken) {
        let span = tracing::info_span!(
            "saga",
            otel.name = %format_args!("saga {}", saga.state),
            zentra.saga_id = %saga.id,
            zentra.order_id = %saga.order_id,
            zentra.saga.state = %saga.state,
            zentra.saga.end_state = tracing::field::Empty,
        );
        events::continue_trace(&span, &saga.traceparent, "");
        self.drive_claimed(saga, has_signals, shutdown)
            .instrument(span)
            .await;
    }

    /// [`Engine::drive`]'s walk. Signals are read only when the claim or the last transition
    /// said some wait.
    async fn drive_claimed(
        &self,
        mut saga: Saga,
        mut has_signals: bool,
        shutdown: &CancellationToken,
    ) {
        loop {
            let signals = if has_signals {
                match store::signals(&self.db, saga.id).await {
                    Ok(signals) => signals,
                    Err(error) => {
                        tracing::warn!(saga_id = %saga.id, %error, "reading signals failed");
                        self.give_up(&saga).await;
                        return;
                    }
                }
            } else {
                Vec::new()
            };
            let applied: Vec<i64> = signals.iter().map(|(id, _)| *id).collect();
            let now = Utc::now();
            let mut out = Vec::new();
            for (_, signal) in &signals {
                machine::apply_signal(&mut saga, signal, now, &self.settings.policy, &mut out);
            }
            let before = saga.state;
            let next = machine::advance(&mut saga, now, &self.settings.policy, &mut out);
            let lease = match next {
                Next::Wait(until) => {
                    saga.next_run_at = until;
                    Lease::Release
                }
                _ if shutdown.is_cancelled() => {
                    // Stop between steps: keep what is decided, hand the saga back, due now.
                    saga.next_run_at = Some(now);
                    Lease::Release
                }
                Next::Call(step)
                    if machine::writes_ahead(step) && !machine::has_intent(&saga, step) =>
                {
                    // Written ahead: the attempt commits before the call is made.
                    machine::record_intent(&mut saga, step, now);
                    saga.next_run_at = Some(now);
                    Lease::Extend(self.settings.lease)
                }
                Next::Call(first) => {
                    // Calls follow one another until one must be written ahead, the saga waits
                    // or it moves otherwise; their results commit together, with the next
                    // call's intent or the wait. Only calls nothing would undo are chained (a
                    // crash repeats them under their keys), and never for longer than half a
                    // lease.
                    let chain_started = std::time::Instant::now();
                    let mut step = first;
                    loop {
                        let span =
                            call_span(&saga, step, "", Some(machine::attempt_number(&saga, step)));
                        let start = Utc::now();
                        let result = self
                            .downstreams
                            .call(&saga, step)
                            .instrument(span.clone())
                            .await;
                        let end = Utc::now();
                        metrics::histogram!(metric_names::STEP_SECONDS, "step" => step.as_str())
                            .record((end - start).as_seconds_f64());
                        let policy = &self.settings.policy;
                        span.in_scope(|| log_result(&saga, step, &result));
                        machine::record_call(&mut saga, step, start, end, result, policy, &mut out);
                        span.in_scope(|| {
                            let retry = saga.step(step).and_then(crate::domain::Step::last_attempt);
                            if let Some(at) = retry.and_then(|attempt| attempt.next_retry) {
                                tracing::info!(
                                    retry_at = %at,
                                    backoff_ms = (at - end).num_milliseconds(),
                                    "retry scheduled"
                                );
                            }
                        });
                        saga.next_run_at = Some(end);
                        match machine::advance(&mut saga, end, policy, &mut out) {
                            Next::Call(next)
                                if !machine::writes_ahead(next)
                                    && !shutdown.is_cancelled()
                                    && chain_started.elapsed() < self.settings.lease / 2 =>
                            {
                                step = next;
                            }
                            Next::Call(next) => {
                                machine::record_intent(&mut saga, next, end);
                                break Lease::Extend(self.settings.lease);
                            }
                            Next::Wait(until) => {
                                saga.next_run_at = until;
                                break Lease::Release;
                            }
                            _ => break Lease::Extend(self.settings.lease),
                        }
                    }
                }
                Next::Settle(step) => {
                    let start = Utc::now();
                    let result = self
                        .downstreams
                        .settle(&saga, step)
                        .instrument(call_span(&saga, step, "settle ", None))
                        .await;
                    tracing::info!(saga_id = %saga.id, step = %step, ?result, "looked up a step of unknown outcome");
                    let end = Utc::now();
                    machine::record_settle(
                        &mut saga,
                        step,
                        start,
                        end,
                        result,
                        &self.settings.policy,
                    );
                    saga.next_run_at = Some(end);
                    Lease::Extend(self.settings.lease)
                }
                Next::CheckShipment => {
                    let lookup = self
                        .downstreams
                        .check_shipment(&saga)
                        .instrument(call_span(&saga, StepType::CreateShipment, "check ", None))
                        .await;
                    tracing::info!(saga_id = %saga.id, ?lookup, "asked fulfillment how the shipment stands");
                    let end = Utc::now();
                    machine::record_shipment_check(&mut saga, end, lookup, &self.settings.policy);
                    saga.next_run_at = Some(end);
                    Lease::Extend(self.settings.lease)
                }
                Next::Verify(step) => {
                    let lookup = self
                        .downstreams
                        .verify_command(&saga, step)
                        .instrument(call_span(&saga, step, "verify ", None))
                        .await;
                    tracing::info!(saga_id = %saga.id, step = %step, ?lookup, "acknowledgement overdue; asked the participant");
                    let end = Utc::now();
                    machine::record_verify(
                        &mut saga,
                        step,
                        end,
                        lookup,
                        self.settings.policy.ack_timeout,
                    );
                    saga.next_run_at = Some(end);
                    Lease::Extend(self.settings.lease)
                }
                Next::Send(step) => {
                    // The command's envelope carries this span: the participant's handling of
                    // it is its child.
                    let send = send_span(&saga, step);
                    match send.in_scope(|| machine::command(&saga, step)) {
                        Some(command) => {
                            send.record(
                                "messaging.destination.name",
                                format!("{}{}", self.topic_prefix, command.topic),
                            );
                            machine::record_send(
                                &mut saga,
                                step,
                                command.envelope.event_id.clone(),
                                now,
                                self.settings.policy.ack_timeout,
                            );
                            tracing::info!(saga_id = %saga.id, step = %step, "compensation command sent");
                            out.push(command);
                        }
                        None => {
                            let message = format!("{step} has no target id recorded");
                            telemetry::span_failed(&send, &message);
                            machine::record_call(
                                &mut saga,
                                step,
                                now,
                                now,
                                CallResult::Permanent {
                                    code: "INTERNAL".to_owned(),
                                    message,
                                },
                                &self.settings.policy,
                                &mut out,
                            );
                        }
                    }
                    saga.next_run_at = Some(now);
                    Lease::Extend(self.settings.lease)
                }
            };
            tracing::Span::current().record("zentra.saga.end_state", saga.state.as_str());
            if saga.state != before && saga.state.is_terminal() {
                metrics::counter!(metric_names::SAGAS_ENDED, "state" => saga.state.as_str())
                    .increment(1);
                tracing::info!(saga_id = %saga.id, state = %saga.state, reason = %saga.failure_reason, "saga ended");
            }
            match self.commit(&saga, out, lease, applied).await {
                Ok(Some(saved)) => {
                    saga.version += 1;
                    saga.updated_at = saved.updated_at;
                    has_signals = saved.has_signals;
                    self.announce(&saga);
                    if lease == Lease::Release
                        && let Some(at) = saga.next_run_at
                    {
                        self.set_timer(at);
                    }
                }
                Ok(None) => {
                    tracing::warn!(saga_id = %saga.id, "lease lost; another instance drives the saga");
                    return;
                }
                Err(error) => {
                    tracing::warn!(saga_id = %saga.id, %error, "storing a transition failed");
                    self.give_up(&saga).await;
                    return;
                }
            }
            if lease == Lease::Release {
                return;
            }
        }
    }

    /// Stores a transition with its records. Transitions that arrive while another batch is
    /// being written wait for it and are then written together, in one transaction: under
    /// load the saga database pays one commit for many sagas' steps, and alone a transition
    /// is written at once.
    async fn commit(
        &self,
        saga: &Saga,
        out: Vec<Outgoing>,
        lease: Lease,
        applied: Vec<i64>,
    ) -> Result<Option<store::Saved>, DbErr> {
        let (reply, mut answer) = oneshot::channel();
        let transition = Transition {
            saga: saga.clone(),
            out,
            lease,
            applied,
            reply,
        };
        self.queue
            .lock()
            .map_err(|_| DbErr::Custom("commit queue poisoned".to_owned()))?
            .push(transition);
        loop {
            {
                // One writer at a time; whoever holds the turn writes what is queued, up to a
                // batch, which includes this transition unless an earlier writer took it.
                let _turn = self.writer.lock().await;
                let batch: Vec<Transition> = match self.queue.lock() {
                    Ok(mut queue) => {
                        let take = queue.len().min(self.settings.commit_batch);
                        queue.drain(..take).collect()
                    }
                    Err(_) => Vec::new(),
                };
                if !batch.is_empty() {
                    self.write_batch(batch).await;
                }
            }
            // Answered while a writer held the turn, or still queued behind a full batch.
            match answer.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(DbErr::Custom("the transition's writer stopped".to_owned()));
                }
            }
        }
    }

    /// Writes `batch` in one transaction and answers each transition. When the transaction
    /// fails, each is written alone, so one bad transition fails nobody else.
    async fn write_batch(&self, batch: Vec<Transition>) {
        let any_records = batch.iter().any(|transition| !transition.out.is_empty());
        match self.write(&batch).await {
            Ok(saved) => {
                for (transition, saved) in batch.into_iter().zip(saved) {
                    let _ = transition.reply.send(Ok(saved));
                }
            }
            Err(error) if batch.len() == 1 => {
                if let Some(transition) = batch.into_iter().next() {
                    let _ = transition.reply.send(Err(error));
                }
            }
            Err(error) => {
                tracing::warn!(%error, count = batch.len(), "storing a batch of transitions failed; storing each alone");
                for transition in batch {
                    let result = self
                        .write(std::slice::from_ref(&transition))
                        .await
                        .map(|mut saved| saved.pop().flatten());
                    let _ = transition.reply.send(result);
                }
            }
        }
        if any_records {
            self.outbox.wake();
        }
    }

    /// One transaction storing every transition of `batch` whose lease still holds, with its
    /// records; `None` for a transition whose lease was lost (nothing of it is written). A
    /// transition alone is one statement and needs no transaction of its own.
    async fn write(&self, batch: &[Transition]) -> Result<Vec<Option<store::Saved>>, DbErr> {
        let results = if let [transition] = batch {
            vec![self.save(&self.db, transition).await?]
        } else {
            let tx = self.db.begin().await?;
            let mut results = Vec::with_capacity(batch.len());
            for transition in batch {
                results.push(self.save(&tx, transition).await?);
            }
            tx.commit().await?;
            results
        };
        metrics::counter!(metric_names::TRANSITION_COMMITS).increment(1);
        metrics::counter!(metric_names::TRANSITIONS_WRITTEN).increment(batch.len() as u64);
        Ok(results)
    }

    /// Stores one transition with its records, if its lease still holds.
    async fn save<C: sea_orm::ConnectionTrait>(
        &self,
        db: &C,
        transition: &Transition,
    ) -> Result<Option<store::Saved>, DbErr> {
        let saga = &transition.saga;
        store::save(
            db,
            saga,
            (saga.lease.as_deref().unwrap_or_default(), self.owner()),
            transition.lease,
            &transition.applied,
            self.records(&transition.out)?,
        )
        .await
    }

    /// After a database failure: hand the saga back so it is retried, by any instance, later.
    async fn give_up(&self, saga: &Saga) {
        let result = sea_orm::ConnectionTrait::execute_raw(
            &self.db,
            sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "UPDATE sagas SET lease_owner = NULL, lease_until = NULL, \
                   next_run_at = now() + interval '1 second' \
                 WHERE id = $1 AND lease_owner = $2",
                [
                    saga.id.into(),
                    saga.lease.clone().unwrap_or_default().into(),
                ],
            ),
        )
        .await;
        if let Err(error) = result {
            tracing::warn!(saga_id = %saga.id, %error, "cannot hand the saga back; its lease will expire");
        }
    }
}

/// The client span of a call the saga makes for `step` (`prefix` names a lookup rather than the
/// step itself); the participant's server span is its child.
fn call_span(saga: &Saga, step: StepType, prefix: &str, attempt: Option<u32>) -> tracing::Span {
    tracing::info_span!(
        "step",
        otel.name = %format_args!("{prefix}{step}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
        rpc.system = "grpc",
        zentra.saga_id = %saga.id,
        zentra.order_id = %saga.order_id,
        zentra.step = %step,
        zentra.attempt = attempt,
    )
}

/// The producer span of a compensation command sent over Kafka.
fn send_span(saga: &Saga, step: StepType) -> tracing::Span {
    tracing::info_span!(
        "send",
        otel.name = %format_args!("send {step}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
        messaging.system = "kafka",
        messaging.destination.name = tracing::field::Empty,
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        zentra.saga_id = %saga.id,
        zentra.order_id = %saga.order_id,
        zentra.step = %step,
    )
}

/// Logs a call's result, and marks the current (the call's) span failed unless it succeeded.
fn log_result(saga: &Saga, step: StepType, result: &CallResult) {
    let failed = |why: &str| telemetry::span_failed(&tracing::Span::current(), why);
    match result {
        CallResult::Done(_) => {}
        CallResult::Permanent { message, .. }
        | CallResult::Retryable { message, .. }
        | CallResult::TimedOut { message }
        | CallResult::CircuitOpen { message, .. } => failed(message),
    }
    match result {
        CallResult::Done(_) => {
            tracing::debug!(saga_id = %saga.id, step = %step, "step succeeded");
        }
        CallResult::Permanent { code, message } => {
            tracing::info!(saga_id = %saga.id, step = %step, code, message, "step failed for good");
        }
        CallResult::Retryable { code, message } => {
            tracing::info!(saga_id = %saga.id, step = %step, code, message, "step failed; will retry");
        }
        CallResult::TimedOut { message } => {
            tracing::info!(saga_id = %saga.id, step = %step, message, "step timed out");
        }
        CallResult::CircuitOpen { message, .. } => {
            tracing::info!(saga_id = %saga.id, step = %step, message, "step held back by an open circuit");
        }
    }
}
