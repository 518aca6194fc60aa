//! Crashes, concurrency and lost or poisoned messages: every saga still ends, and every effect
//! (reservation, authorization, capture, shipment) happens exactly once.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use futures::{StreamExt as _, stream};
use zentra_proto::{
    fulfillment::v1::ShipmentStatus,
    order::v1::{self as order, OrderStatus},
    payment::v1::PaymentStatus,
    saga::v1::{self as pb, dead_letter_service_client::DeadLetterServiceClient},
};
use zentra_runtime::events::{self, EventMeta};
use zentra_test_support::eventually;

use crate::helpers::{
    Stack, StackOptions, by_order, free_address, start_saga, state_name, step_names,
};

const SAGAS: usize = 200;

/// The orchestrator binary as a child process, so it can be killed with SIGKILL.
struct SagaProcess {
    child: Child,
    _config_file: tempfile_path::TempPath,
}

mod tempfile_path {
    /// A file removed on drop.
    pub struct TempPath(pub std::path::PathBuf);

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl SagaProcess {
    fn start(config: &zentra_saga::Config) -> Self {
        let path = std::env::temp_dir().join(format!(
            "zentra-saga-{}.toml",
            zentra_test_support::unique_suffix()
        ));
        std::fs::write(&path, zentra_runtime::config::to_toml(config)).expect("config written");
        let mut child = Command::new(env!("CARGO_BIN_EXE_zentra-saga"))
            .arg("--config")
            .arg(&path)
            .env("ZENTRA_DATABASE__URL", config.common.database.url.expose())
            .env(
                "ZENTRA_TELEMETRY__LOG_FILTER",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "error".to_owned()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("orchestrator process starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("orchestrator prints its address");
        assert!(line.starts_with("listening on"), "{line}");
        // Keep reading, so the process never writes into a closed pipe.
        std::thread::spawn(move || for _ in stdout.lines() {});
        Self {
            child,
            _config_file: tempfile_path::TempPath(path),
        }
    }

    fn kill_9(mut self) {
        // Child::kill sends SIGKILL: no shutdown code runs, leases stay taken.
        self.child.kill().expect("killed");
        self.child.wait().expect("reaped");
    }
}

/// Places `count` orders of one unit each, 16 at a time.
async fn place_orders(stack: &Stack, sku: &str, count: usize) -> Vec<String> {
    stream::iter(0..count)
        .map(|_| stack.place_order(sku, 1, "tok_approve", "US"))
        .buffer_unordered(16)
        .collect()
        .await
}

/// Every saga ended (COMPLETED or COMPENSATED, never stuck or parked), and every effect happened
/// exactly once: a completed order holds one confirmed reservation, one authorization captured
/// once and one dispatched shipment; a compensated one holds nothing (released, voided,
/// cancelled). Stock adds up to exactly the completed orders.
async fn assert_each_effect_once(stack: &Stack, sku: &str, initial: i64, orders: &[String]) {
    let mut completed = 0;
    for order_id in orders {
        let saga = stack
            .finished_saga(order_id, Duration::from_secs(180))
            .await;
        let ledger = stack.ledger_of(order_id).await;
        let payments = stack.payments_of(order_id).await;
        let shipments = stack.shipments_of(order_id).await;
        let order = stack.order(order_id).await;
        assert!(payments.len() <= 1, "at most one authorization: {order_id}");
        assert!(shipments.len() <= 1, "at most one shipment: {order_id}");
        match state_name(&saga) {
            "SAGA_STATE_COMPLETED" => {
                completed += 1;
                assert_eq!(payments[0].status, PaymentStatus::Captured as i32);
                assert_eq!(
                    ledger,
                    [
                        "LEDGER_ENTRY_TYPE_AUTHORIZATION",
                        "LEDGER_ENTRY_TYPE_CAPTURE"
                    ],
                    "authorized and captured once: {order_id}"
                );
                assert_eq!(shipments[0].status, ShipmentStatus::Dispatched as i32);
                assert_eq!(order.status, OrderStatus::Confirmed as i32);
            }
            "SAGA_STATE_COMPENSATED" => {
                assert_eq!(order.status, OrderStatus::Rejected as i32, "{saga:#?}");
                if let Some(payment) = payments.first() {
                    assert_eq!(payment.status, PaymentStatus::Voided as i32, "{saga:#?}");
                    assert_eq!(
                        ledger,
                        [
                            "LEDGER_ENTRY_TYPE_AUTHORIZATION",
                            "LEDGER_ENTRY_TYPE_RELEASE"
                        ]
                    );
                }
                if let Some(shipment) = shipments.first() {
                    assert_eq!(shipment.status, ShipmentStatus::Cancelled as i32);
                }
            }
            other => panic!("saga of {order_id} is {other}: {saga:#?}"),
        }
        let reservations = stack
            .inventory
            .clone()
            .list_reservations(zentra_proto::inventory::v1::ListReservationsRequest {
                order_id: order_id.clone(),
                ..Default::default()
            })
            .await
            .expect("reservations")
            .into_inner()
            .reservations;
        assert!(
            reservations.len() <= 1,
            "at most one reservation: {order_id}"
        );
    }
    let product = stack.product(sku).await;
    assert_eq!(
        (product.available, product.reserved, product.sold),
        (initial - completed, 0, completed),
        "stock moved exactly once per completed order, and back for every compensated one"
    );
    eprintln!(
        "{completed} of {} sagas completed, the rest compensated",
        orders.len()
    );
    assert!(completed > 0, "the platform made progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_orchestrator_with_sagas_in_flight_loses_and_repeats_nothing() {
    let options = StackOptions {
        in_process_saga: false,
        // Two hundred shipments take fulfillment a while; none may time out.
        shipment_timeout: Duration::from_secs(600),
        ..StackOptions::default()
    };
    let stack = Stack::start("saga-crash", options).await;
    stack.create_product("CRASH-1", 1000).await;
    let orchestrator = SagaProcess::start(stack.saga_config());

    let orders = place_orders(&stack, "CRASH-1", SAGAS).await;
    // Wait until the sagas are under way but far from done, then pull the plug.
    let sagas = stack.sagas.clone();
    eventually(Duration::from_secs(60), || {
        let mut sagas = sagas.clone();
        async move {
            let running = sagas
                .list_sagas(pb::ListSagasRequest {
                    page: Some(zentra_proto::common::v1::PageRequest {
                        page_size: 500,
                        page_token: String::new(),
                    }),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .sagas;
            let active = running
                .iter()
                .filter(|saga| saga.end_time.is_none())
                .count();
            (running.len() >= SAGAS / 2 && active >= SAGAS / 4).then_some(())
        }
    })
    .await
    .expect("sagas in flight");
    orchestrator.kill_9();

    // A new process (another instance id) takes the sagas over when the leases expire.
    let orchestrator = SagaProcess::start(stack.saga_config());
    assert_each_effect_once(&stack, "CRASH-1", 1000, &orders).await;
    orchestrator.kill_9();
    stack.stop().await;
}

/// Who holds each partition of the orchestrators' consumer group (live leases only).
async fn saga_partition_owners(stack: &Stack) -> Vec<Option<String>> {
    use sea_orm::ConnectionTrait as _;
    let db = stack.database("saga").await;
    db.query_all_raw(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT CASE WHEN lease_until > now() THEN owner END AS owner FROM consumer_partitions \
         WHERE consumer_group LIKE '%saga' ORDER BY topic, partition",
    ))
    .await
    .expect("partition owners")
    .iter()
    .map(|row| row.try_get::<Option<String>>("", "owner").expect("owner"))
    .collect()
}

/// An orchestrator process as `just up` runs it: a fixed instance id, and no reconciliation to
/// hide a consumer that stopped consuming.
fn process_config(stack: &Stack, instance: &str) -> zentra_saga::Config {
    let mut config = stack.saga_config().clone();
    config.domain.saga.instance_id = instance.to_owned();
    config.domain.saga.reconcile_after = Duration::from_secs(3600);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_killed_and_restarted_with_its_instance_id_consumes_again_at_once() {
    let options = StackOptions {
        in_process_saga: false,
        shipment_timeout: Duration::from_secs(600),
        ..StackOptions::default()
    };
    let stack = Stack::start("saga-restart", options).await;
    stack.create_product("RESTART-1", 1000).await;
    let config = process_config(&stack, "stack-1");
    let orchestrator = SagaProcess::start(&config);
    let mut orders = place_orders(&stack, "RESTART-1", 40).await;
    for order_id in &orders[..10] {
        stack
            .await_saga(by_order(order_id), Duration::from_secs(30), |_| true)
            .await
            .expect("sagas started before the kill");
    }
    orchestrator.kill_9();

    // The same instance id, as the stack's supervisor restarts it: its partition leases and its
    // sagas are its own, taken back without waiting for them to expire.
    let restarted = Instant::now();
    let orchestrator = SagaProcess::start(&config);
    let later = place_orders(&stack, "RESTART-1", 20).await;
    for order_id in &later {
        stack
            .await_saga(by_order(order_id), Duration::from_secs(20), |_| true)
            .await
            .expect("orders placed after the restart get their saga from Kafka, not a sweep");
    }
    eprintln!(
        "every order placed after the restart had its saga {:?} after the restart",
        restarted.elapsed()
    );
    orders.extend(later);
    assert_each_effect_once(&stack, "RESTART-1", 1000, &orders).await;
    orchestrator.kill_9();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orchestrators_split_intake_and_the_survivor_of_a_kill_takes_its_partitions_over() {
    let options = StackOptions {
        in_process_saga: false,
        shipment_timeout: Duration::from_secs(600),
        ..StackOptions::default()
    };
    let stack = Stack::start("saga-split", options).await;
    stack.create_product("SPLIT-1", 1000).await;
    // The stack's clients talk to "two"; "one" listens elsewhere and is the one killed.
    let two_config = process_config(&stack, "two");
    let mut one_config = process_config(&stack, "one");
    one_config.common.grpc.listen_addr = free_address();
    let one = SagaProcess::start(&one_config);
    let two = SagaProcess::start(&two_config);

    let owners = eventually(Duration::from_secs(30), || async {
        let owners = saga_partition_owners(&stack).await;
        let held_by = |name: &str| owners.iter().filter(|o| o.as_deref() == Some(name)).count();
        (owners.iter().all(Option::is_some) && held_by("one") > 0 && held_by("two") > 0)
            .then_some(owners)
    })
    .await
    .expect("each orchestrator holds a share of the partitions");
    eprintln!("partition owners with two orchestrators: {owners:?}");

    let mut orders = place_orders(&stack, "SPLIT-1", 40).await;
    one.kill_9();
    let killed = Instant::now();
    eventually(Duration::from_secs(30), || async {
        let owners = saga_partition_owners(&stack).await;
        owners
            .iter()
            .all(|owner| owner.as_deref() == Some("two"))
            .then_some(())
    })
    .await
    .expect("the survivor takes every partition once the leases expire");
    eprintln!(
        "the survivor held every partition {:?} after the kill",
        killed.elapsed()
    );
    orders.extend(place_orders(&stack, "SPLIT-1", 20).await);
    assert_each_effect_once(&stack, "SPLIT-1", 1000, &orders).await;
    two.kill_9();
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orchestrators_share_the_sagas_and_apply_each_effect_once() {
    let options = StackOptions {
        shipment_timeout: Duration::from_secs(600),
        ..StackOptions::default()
    };
    let stack = Stack::start("saga-twins", options).await;
    stack.create_product("TWIN-1", 1000).await;
    let mut second_config = stack.saga_config().clone();
    second_config.common.grpc.listen_addr = "127.0.0.1:0".parse().expect("address");
    second_config.domain.saga.instance_id = "second".to_owned();
    let second = start_saga(&second_config).await;

    let orders = place_orders(&stack, "TWIN-1", SAGAS).await;
    assert_each_effect_once(&stack, "TWIN-1", 1000, &orders).await;

    let db = stack.database("saga").await;
    let leased = zentra_test_support::count(
        &db,
        "SELECT count(*) FROM sagas WHERE lease_owner IS NOT NULL",
    )
    .await;
    assert_eq!(leased, 0, "every lease given back once the sagas ended");
    second.shutdown().await.expect("second stops");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_whose_target_is_down_is_delivered_when_it_comes_back() {
    let options = StackOptions {
        shipment_step_delay: Duration::from_secs(2),
        ..StackOptions::default()
    };
    let mut stack = Stack::start("saga-down", options).await;
    stack.create_product("DOWN-1", 10).await;

    // Shipping to Antarctica fails, which needs the payment voided.
    let order_id = stack.place_order("DOWN-1", 1, "tok_approve", "AQ").await;
    let awaiting = pb::SagaState::AwaitingShipment as i32;
    stack
        .await_saga(by_order(&order_id), Duration::from_secs(20), |saga| {
            saga.state == awaiting
        })
        .await
        .expect("payment authorized, shipment created");
    stack.kill_payment();

    // The void is sent and sent again, unanswered, while payment is down.
    let resent = stack
        .await_saga(by_order(&order_id), Duration::from_secs(30), |saga| {
            saga.steps.iter().any(|step| {
                step.step == pb::SagaStepType::VoidPayment as i32 && step.attempts.len() >= 2
            })
        })
        .await
        .expect("the void command was resent while payment was down");
    assert_eq!(state_name(&resent), "SAGA_STATE_COMPENSATING");

    stack.restart_payment().await;
    let saga = stack
        .finished_saga(&order_id, Duration::from_secs(40))
        .await;
    assert_eq!(state_name(&saga), "SAGA_STATE_COMPENSATED", "{saga:#?}");
    let payments = stack.payments_of(&order_id).await;
    assert_eq!(payments[0].status, PaymentStatus::Voided as i32);
    assert_eq!(
        stack.ledger_of(&order_id).await,
        [
            "LEDGER_ENTRY_TYPE_AUTHORIZATION",
            "LEDGER_ENTRY_TYPE_RELEASE"
        ],
        "voided once however often the command arrived"
    );
    let product = stack.product("DOWN-1").await;
    assert_eq!((product.available, product.reserved), (10, 0));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_without_blocking_and_a_replay_after_the_fix_applies_once()
{
    // The order service's events never reach the saga, as if the broker lost them; shipments
    // are slow, so the sagas are still open when the test acts.
    let options = StackOptions {
        lose_order_events: true,
        shipment_step_delay: Duration::from_secs(60),
        shipment_timeout: Duration::from_secs(90),
        ..StackOptions::default()
    };
    let stack = Stack::start("saga-poison", options).await;
    stack.create_product("POISON-1", 10).await;
    let lost = stack.place_order("POISON-1", 1, "tok_approve", "US").await;
    let behind = stack.place_order("POISON-1", 1, "tok_approve", "US").await;

    // A cancellation of the first order reaches the saga before any saga of it exists: it
    // cannot be applied. Behind it on the same partition: the second order's OrderPlaced.
    let cancelled = order::OrderCancellationRequested {
        order_id: lost.clone(),
        customer_id: "customer-7".to_owned(),
        reason: "found it cheaper".to_owned(),
    };
    let poison = events::envelope(&cancelled, meta(&lost));
    stack.publish("order.events", &poison).await;
    let second = stack.order(&behind).await;
    let placed = zentra_saga::grpc::placed(second);
    stack
        .publish("order.events", &events::envelope(&placed, meta(&behind)))
        .await;

    let saga_port = stack.saga_config().common.grpc.listen_addr;
    let mut letters = DeadLetterServiceClient::connect(format!("http://{saga_port}"))
        .await
        .expect("dead letter api");
    let parked = eventually(Duration::from_secs(20), || {
        let mut letters = letters.clone();
        async move {
            let parked = letters
                .list_dead_letters(pb::ListDeadLettersRequest {
                    status: pb::DeadLetterStatus::Pending as i32,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .dead_letters;
            (parked.len() == 1).then(|| parked[0].clone())
        }
    })
    .await
    .expect("the poison event is parked");
    assert_eq!(parked.attempt_count, 3);
    assert!(parked.source_topic.ends_with("order.events"), "{parked:?}");
    assert_eq!(parked.event_id, poison.event_id);
    assert_eq!(
        parked.event_type,
        "zentra.order.v1.OrderCancellationRequested"
    );
    assert!(parked.error.contains("has no saga"), "{}", parked.error);
    assert!(parked.consumer_group.contains("saga-"), "{parked:?}");
    assert!(parked.headers.iter().any(|header| header.key == "event_id"));
    // Operators see it on /metrics, by consumer group and topic.
    let series = format!(
        "zentra_dead_letters_pending{{group=\"{}\",topic=\"{}\"}} 1",
        parked.consumer_group, parked.source_topic
    );
    let exported = eventually(Duration::from_secs(10), || {
        let series = series.clone();
        async move {
            let (_, body) = zentra_test_support::http_get(saga_port, "/metrics").await;
            body.lines().any(|line| line == series).then_some(())
        }
    })
    .await;
    assert!(exported.is_some(), "{series} is not on /metrics");

    // The event behind it was not held up: the second order has its saga.
    stack.saga_of(&behind).await;

    // The fix: reconciliation finds the first order PENDING without a saga and starts one.
    let awaiting = pb::ListSagasRequest {
        state: pb::SagaState::AwaitingShipment as i32,
        ..by_order(&lost)
    };
    let reconciled = stack
        .await_saga(awaiting, Duration::from_secs(30), |_| true)
        .await
        .expect("reconciliation started the lost order's saga");
    // The customer's cancellation, as the order service recorded it.
    stack
        .orders
        .clone()
        .cancel_order(order::CancelOrderRequest {
            order_id: lost.clone(),
            reason: "found it cheaper".to_owned(),
            expected_version: 0,
            idempotency_key: "cancel-lost".to_owned(),
        })
        .await
        .expect("cancellation requested");

    // Replayed (the operator's click arrives twice, under one key), and delivered once more
    // by the broker: applied once.
    for _ in 0..2 {
        letters
            .replay_dead_letter(pb::ReplayDeadLetterRequest {
                dead_letter_id: parked.dead_letter_id.clone(),
                idempotency_key: "replay-1".to_owned(),
                reason: "the consumer is fixed".to_owned(),
            })
            .await
            .expect("replayed");
    }
    stack.publish("order.events", &poison).await;
    let saga = stack.finished_saga(&lost, Duration::from_secs(40)).await;
    assert_eq!(saga.saga_id, reconciled.saga_id);
    assert_eq!(state_name(&saga), "SAGA_STATE_COMPENSATED", "{saga:#?}");
    assert_eq!(
        saga.compensation_cause,
        pb::SagaCompensationCause::CustomerCancelled as i32
    );
    assert_eq!(
        &step_names(&saga)[4..],
        [
            "CANCEL_SHIPMENT",
            "VOID_PAYMENT",
            "RELEASE_STOCK",
            "COMPLETE_CANCELLATION"
        ]
    );
    assert_eq!(
        stack.order(&lost).await.status,
        OrderStatus::Cancelled as i32
    );
    let db = stack.database("saga").await;
    let applied = zentra_test_support::count(
        &db,
        &format!(
            "SELECT count(*) FROM inbox WHERE event_id = '{}'",
            poison.event_id
        ),
    )
    .await;
    assert_eq!(applied, 1, "the replayed event was applied once");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_cancellation_lost_with_the_broker_reaches_its_saga_by_reconciliation() {
    // Every order event is lost: the saga is started by reconciliation, and the customer's
    // cancellation can only reach it the same way.
    let options = StackOptions {
        lose_order_events: true,
        shipment_step_delay: Duration::from_secs(60),
        shipment_timeout: Duration::from_secs(90),
        ..StackOptions::default()
    };
    let stack = Stack::start("saga-lostcancel", options).await;
    stack.create_product("LOSTC-1", 5).await;
    let order_id = stack.place_order("LOSTC-1", 2, "tok_approve", "US").await;
    let awaiting = pb::ListSagasRequest {
        state: pb::SagaState::AwaitingShipment as i32,
        ..by_order(&order_id)
    };
    stack
        .await_saga(awaiting, Duration::from_secs(30), |_| true)
        .await
        .expect("reconciliation started the saga");
    stack
        .orders
        .clone()
        .cancel_order(order::CancelOrderRequest {
            order_id: order_id.clone(),
            reason: "changed my mind".to_owned(),
            expected_version: 0,
            idempotency_key: "cancel-unheard".to_owned(),
        })
        .await
        .expect("cancellation requested");

    let saga = stack
        .finished_saga(&order_id, Duration::from_secs(40))
        .await;
    assert_eq!(state_name(&saga), "SAGA_STATE_COMPENSATED", "{saga:#?}");
    assert_eq!(
        saga.compensation_cause,
        pb::SagaCompensationCause::CustomerCancelled as i32
    );
    assert_eq!(
        stack.order(&order_id).await.status,
        OrderStatus::Cancelled as i32
    );
    let shipments = stack.shipments_of(&order_id).await;
    assert_eq!(shipments[0].status, ShipmentStatus::Cancelled as i32);
    let product = stack.product("LOSTC-1").await;
    assert_eq!((product.available, product.reserved), (5, 0));
    stack.stop().await;
}

fn meta(order_id: &str) -> EventMeta<'static> {
    EventMeta {
        producer: "order",
        aggregate_type: "order",
        aggregate_id: order_id.to_owned(),
        correlation_id: order_id.to_owned(),
        causation_id: String::new(),
    }
}

/// A bulk operation outlives its orchestrator: killed with SIGKILL mid-way and restarted with the
/// same instance id, it takes the operation back and finishes it, acting on each saga once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_operation_killed_mid_way_finishes_after_the_restart_and_acts_on_each_saga_once() {
    let options = StackOptions {
        in_process_saga: false,
        // The shipments never leave in time: every saga waits, cancellable.
        shipment_step_delay: Duration::from_secs(120),
        shipment_timeout: Duration::from_secs(600),
        ..StackOptions::default()
    };
    let stack = Stack::start("saga-bulk-kill", options).await;
    stack.create_product("BULKKILL-1", 100).await;
    let config = process_config(&stack, "bulk-1");
    let orchestrator = SagaProcess::start(&config);
    let orders = place_orders(&stack, "BULKKILL-1", 8).await;
    stack.await_shipments_waiting(&orders).await;
    let awaiting = pb::SagaState::AwaitingShipment as i32;
    let mut sagas = stack.sagas.clone();
    let operation = sagas
        .create_bulk_operation(pb::CreateBulkOperationRequest {
            action: pb::BulkAction::Cancel as i32,
            filter: Some(pb::SagaFilter {
                state: awaiting,
                order_ids: orders.clone(),
                ..Default::default()
            }),
            sagas_per_second: 2,
            reason: "warehouse flooded".to_owned(),
            idempotency_key: "flood-1".to_owned(),
            ..Default::default()
        })
        .await
        .expect("created")
        .into_inner()
        .operation
        .expect("operation");
    let id = operation.operation_id;
    let get = || {
        let mut sagas = stack.sagas.clone();
        let id = id.clone();
        async move {
            sagas
                .get_bulk_operation(pb::GetBulkOperationRequest { operation_id: id })
                .await
                .ok()
                .and_then(|response| response.into_inner().operation)
        }
    };
    eventually(Duration::from_secs(30), || async {
        get().await.filter(|operation| operation.applied_count >= 2)
    })
    .await
    .expect("two sagas acted on before the kill");
    orchestrator.kill_9();

    let orchestrator = SagaProcess::start(&config);
    let done = eventually(Duration::from_secs(60), || async {
        get().await.filter(|operation| operation.done)
    })
    .await
    .expect("the operation finishes after the restart");
    assert_eq!(done.state, pb::BulkOperationState::Succeeded as i32);
    assert_eq!(
        (done.applied_count, done.refused_count, done.cancelled_count),
        (8, 0, 0),
        "{done:?}"
    );

    for order_id in &orders {
        let saga = stack.finished_saga(order_id, Duration::from_secs(60)).await;
        assert_eq!(state_name(&saga), "SAGA_STATE_COMPENSATED", "{saga:#?}");
        assert_eq!(
            stack.ledger_of(order_id).await,
            [
                "LEDGER_ENTRY_TYPE_AUTHORIZATION",
                "LEDGER_ENTRY_TYPE_RELEASE"
            ],
            "authorized once, voided once"
        );
    }
    // One audit record per saga: none acted on twice, none forgotten.
    let db = stack.database("saga").await;
    let records = zentra_test_support::count(
        &db,
        &format!("SELECT count(*) FROM audit_records WHERE reason LIKE 'bulk operation {id}:%'"),
    )
    .await;
    let targets = zentra_test_support::count(
        &db,
        &format!(
            "SELECT count(DISTINCT target) FROM audit_records \
             WHERE reason LIKE 'bulk operation {id}:%'"
        ),
    )
    .await;
    assert_eq!((records, targets), (8, 8));
    orchestrator.kill_9();
    stack.stop().await;
}
