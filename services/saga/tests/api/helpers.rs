//! The whole platform per test: every service on port 0, each on its own fresh database, all on
//! one topic prefix of the shared broker, plus an SMTP server for notifications.

use std::time::Duration;

use tonic::transport::Channel;
use zentra_proto::{
    common::v1::{Address, Money},
    fulfillment::v1::{self as fulfillment, fulfillment_service_client::FulfillmentServiceClient},
    inventory::v1::{self as inventory, inventory_service_client::InventoryServiceClient},
    notification::v1::{
        self as notification, notification_service_client::NotificationServiceClient,
    },
    order::v1::{self as order, order_service_client::OrderServiceClient},
    payment::v1::{self as payment, payment_service_client::PaymentServiceClient},
    saga::v1::{self as saga, saga_service_client::SagaServiceClient},
};
use zentra_runtime::{config::SecretUrl, platform::RunningService};
use zentra_saga::config::{Endpoints, SagaConfig};
use zentra_test_support::{TestDatabase, TestEnv, eventually, smtp::SmtpServer};

/// What a test changes about the stack.
#[derive(Clone)]
pub struct StackOptions {
    /// Fulfillment's delay between shipment steps.
    pub shipment_step_delay: Duration,
    /// How long the saga waits for the shipment's outcome.
    pub shipment_timeout: Duration,
    /// Start the saga orchestrator in this process (else the test runs it, for example as a
    /// child process it can kill -9).
    pub in_process_saga: bool,
    /// The order service publishes under another prefix, so the saga never hears its events,
    /// as if the broker lost them.
    pub lose_order_events: bool,
    /// The saga's first retry delay.
    pub initial_backoff: Duration,
    /// Watch streams the orchestrator serves at once.
    pub watch_max_streams: usize,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            shipment_step_delay: Duration::from_millis(50),
            shipment_timeout: Duration::from_secs(30),
            in_process_saga: true,
            lose_order_events: false,
            initial_backoff: Duration::from_millis(100),
            watch_max_streams: 2000,
        }
    }
}

pub struct Stack {
    pub env: TestEnv,
    databases: Vec<TestDatabase>,
    services: Vec<RunningService>,
    payment: Option<RunningService>,
    payment_config: zentra_payment::Config,
    saga: Option<RunningService>,
    saga_config: zentra_saga::Config,
    lost_prefix: Option<String>,
    _smtp: SmtpServer,
    pub inventory: InventoryServiceClient<Channel>,
    pub orders: OrderServiceClient<Channel>,
    pub payments: PaymentServiceClient<Channel>,
    pub shipments: FulfillmentServiceClient<Channel>,
    pub notifications: NotificationServiceClient<Channel>,
    pub sagas: SagaServiceClient<Channel>,
}

/// A fresh database for one service of the stack, and its config on the stack's prefix.
async fn service_database(
    env: &TestEnv,
    label: &str,
    service: &str,
) -> (TestDatabase, zentra_runtime::config::CommonConfig) {
    let database = TestDatabase::create(&format!("{label}-{service}"))
        .await
        .expect("database");
    let mut config = env.common_config();
    config.database.url = SecretUrl::new(database.url());
    // Six services per test and several tests at once share one PostgreSQL server.
    config.database.max_connections = 5;
    (database, config)
}

fn url(service: &RunningService) -> String {
    format!("http://{}", service.local_addr())
}

impl Stack {
    pub async fn start(label: &str, options: StackOptions) -> Self {
        let env = TestEnv::new(label).await.expect("test environment");
        let smtp = SmtpServer::start().await;
        let mut databases = Vec::new();
        let telemetry = zentra_test_support::telemetry;

        let (database, common_config) = service_database(&env, label, "inv").await;
        databases.push(database);
        let inventory = zentra_inventory::Inventory::start(
            zentra_inventory::Config {
                common: common_config,
                domain: Default::default(),
            },
            Default::default(),
            telemetry(),
        )
        .await
        .expect("inventory starts")
        .spawn();

        let (database, mut common_config) = service_database(&env, label, "ord").await;
        databases.push(database);
        let lost_prefix = options
            .lose_order_events
            .then(|| format!("{}lost.", env.prefix));
        if let Some(prefix) = &lost_prefix {
            common_config.kafka.topic_prefix = prefix.clone();
        }
        let mut order_domain = zentra_order::config::OrderConfig::default();
        order_domain.order.catalogue_url = url(&inventory);
        let orders = zentra_order::OrderService::start(
            zentra_order::Config {
                common: common_config,
                domain: order_domain,
            },
            Default::default(),
            telemetry(),
        )
        .await
        .expect("order service starts")
        .spawn();

        let (database, common_config) = service_database(&env, label, "pay").await;
        databases.push(database);
        let mut payment_domain = zentra_payment::config::PaymentConfig::default();
        payment_domain.payment.simulated_delay = Duration::from_secs(5);
        let payment_config = zentra_payment::Config {
            common: common_config,
            domain: payment_domain,
        };
        let payments = start_payment(&payment_config).await;

        let (database, common_config) = service_database(&env, label, "ful").await;
        databases.push(database);
        let mut fulfillment_domain = zentra_fulfillment::config::FulfillmentConfig::default();
        fulfillment_domain.fulfillment.step_delay = options.shipment_step_delay;
        fulfillment_domain.fulfillment.poll_interval = Duration::from_millis(20);
        let shipments = zentra_fulfillment::FulfillmentService::start(
            zentra_fulfillment::Config {
                common: common_config,
                domain: fulfillment_domain,
            },
            Default::default(),
            telemetry(),
        )
        .await
        .expect("fulfillment starts")
        .spawn();

        let (database, common_config) = service_database(&env, label, "ntf").await;
        databases.push(database);
        let mut notification_domain = zentra_notification::config::NotificationConfig::default();
        notification_domain.notification.smtp_port = smtp.port;
        notification_domain.notification.poll_interval = Duration::from_millis(50);
        let notifications = zentra_notification::NotificationService::start(
            zentra_notification::Config {
                common: common_config,
                domain: notification_domain,
            },
            Default::default(),
            telemetry(),
        )
        .await
        .expect("notification starts")
        .spawn();

        let (database, mut common_config) = service_database(&env, label, "saga").await;
        databases.push(database);
        // A fixed port, so a restarted orchestrator (in or out of process) is found again.
        common_config.grpc.listen_addr = free_address();
        let mut saga_domain = SagaConfig::default();
        let settings = &mut saga_domain.saga;
        settings.endpoints = Endpoints {
            inventory: url(&inventory),
            payment: url(&payments),
            fulfillment: url(&shipments),
            order: url(&orders),
        };
        settings.call_timeout = Duration::from_secs(3);
        // Two cores run six services and PostgreSQL: fewer sagas at once, fewer timeouts.
        settings.concurrency = 16;
        settings.lease = Duration::from_secs(8);
        settings.poll_interval = Duration::from_millis(50);
        settings.reconcile_interval = Duration::from_millis(500);
        settings.reconcile_after = Duration::from_secs(3);
        settings.retry.initial_backoff = options.initial_backoff;
        settings.retry.max_backoff = options.initial_backoff.max(Duration::from_secs(1));
        settings.retry.step_timeout = Duration::from_secs(20);
        settings.retry.ack_timeout = Duration::from_secs(3);
        settings.retry.shipment_timeout = options.shipment_timeout;
        settings.watch.max_streams = options.watch_max_streams;
        let saga_config = zentra_saga::Config {
            common: common_config,
            domain: saga_domain,
        };
        let saga = if options.in_process_saga {
            Some(start_saga(&saga_config).await)
        } else {
            None
        };

        let inventory_client = InventoryServiceClient::connect(url(&inventory))
            .await
            .expect("connect");
        let order_client = OrderServiceClient::connect(url(&orders))
            .await
            .expect("connect");
        let payment_client = PaymentServiceClient::connect(url(&payments))
            .await
            .expect("connect");
        let fulfillment_client = FulfillmentServiceClient::connect(url(&shipments))
            .await
            .expect("connect");
        let notification_client = NotificationServiceClient::connect(url(&notifications))
            .await
            .expect("connect");
        let saga_client = SagaServiceClient::new(
            Channel::from_shared(format!("http://{}", saga_config.common.grpc.listen_addr))
                .expect("saga url")
                .connect_lazy(),
        );
        Self {
            env,
            databases,
            services: vec![inventory, orders, shipments, notifications],
            payment: Some(payments),
            payment_config,
            saga,
            saga_config,
            lost_prefix,
            _smtp: smtp,
            inventory: inventory_client,
            orders: order_client,
            payments: payment_client,
            shipments: fulfillment_client,
            notifications: notification_client,
            sagas: saga_client,
        }
    }

    /// The orchestrator's address.
    pub fn saga_addr(&self) -> std::net::SocketAddr {
        self.saga_config.common.grpc.listen_addr
    }

    /// Stops everything and drops every database and topic.
    pub async fn stop(mut self) {
        if let Some(saga) = self.saga.take() {
            saga.shutdown().await.expect("saga stops cleanly");
        }
        if let Some(payment) = self.payment.take() {
            payment.shutdown().await.expect("payment stops cleanly");
        }
        for service in self.services.drain(..) {
            service.shutdown().await.expect("service stops cleanly");
        }
        let mut topics: Vec<String> = Vec::new();
        for info in [
            zentra_saga::INFO,
            zentra_inventory::INFO,
            zentra_order::INFO,
            zentra_payment::INFO,
            zentra_fulfillment::INFO,
            zentra_notification::INFO,
        ] {
            topics.extend(
                info.topics
                    .iter()
                    .map(|topic| format!("{}{topic}", self.env.prefix)),
            );
        }
        if let Some(prefix) = &self.lost_prefix {
            topics.extend(
                zentra_order::INFO
                    .topics
                    .iter()
                    .map(|topic| format!("{prefix}{topic}")),
            );
        }
        topics.sort();
        topics.dedup();
        for database in self.databases.drain(..) {
            database.drop_database().await.expect("drop database");
        }
        self.env.cleanup(&topics).await.expect("cleanup");
    }

    /// The saga orchestrator's configuration (to start another instance on it).
    pub fn saga_config(&self) -> &zentra_saga::Config {
        &self.saga_config
    }

    /// A connection to the database of one service: "inv", "ord", "pay", "ful", "ntf", "saga".
    pub async fn database(&self, service: &str) -> sea_orm::DatabaseConnection {
        let suffix = format!("-{service}_");
        self.databases
            .iter()
            .find(|database| database.name().contains(&suffix))
            .unwrap_or_else(|| panic!("no database for {service}"))
            .connect()
            .await
            .expect("database connection")
    }

    /// Stops the payment service as a crash would.
    pub fn kill_payment(&mut self) {
        self.payment.take().expect("payment running").kill();
    }

    /// Starts the payment service again on its database (a new port; the saga reaches payment
    /// through Kafka for compensations).
    pub async fn restart_payment(&mut self) {
        let service = start_payment(&self.payment_config).await;
        self.payments = PaymentServiceClient::connect(url(&service))
            .await
            .expect("connect");
        self.payment = Some(service);
    }

    /// Publishes an event to `<prefix><topic>` as a service's outbox relay would.
    pub async fn publish(&self, topic: &str, envelope: &zentra_proto::events::v1::EventEnvelope) {
        use prost::Message as _;
        let producer = zentra_runtime::kafka::EventProducer::new(
            &self.saga_config.common.kafka,
            "test-publisher",
        )
        .expect("producer");
        producer
            .send(
                &format!("{}{topic}", self.env.prefix),
                &envelope.aggregate_id,
                &envelope.encode_to_vec(),
                &[
                    ("event_id", envelope.event_id.as_bytes()),
                    ("event_type", envelope.event_type.as_bytes()),
                ],
            )
            .await
            .expect("published");
    }

    pub async fn create_product(&self, sku: &str, stock: i64) {
        self.inventory
            .clone()
            .create_product(inventory::CreateProductRequest {
                sku: sku.to_owned(),
                name: format!("product {sku}"),
                initial_stock: stock,
                low_stock_threshold: 0,
                unit_price: Some(usd(1250)),
                idempotency_key: format!("create-{sku}"),
            })
            .await
            .expect("product created");
    }

    /// Sets a product's price in the catalogue.
    pub async fn set_price(&self, sku: &str, amount_minor: i64) {
        self.inventory
            .clone()
            .set_product_price(inventory::SetProductPriceRequest {
                sku: sku.to_owned(),
                unit_price: Some(usd(amount_minor)),
                idempotency_key: format!("price-{sku}-{amount_minor}"),
            })
            .await
            .expect("price set");
    }

    pub async fn product(&self, sku: &str) -> inventory::Product {
        self.inventory
            .clone()
            .get_product(inventory::GetProductRequest {
                sku: sku.to_owned(),
            })
            .await
            .expect("product")
            .into_inner()
            .product
            .expect("product")
    }

    /// Places an order of `quantity` × `sku` paid with `token`, shipped to `country`.
    pub async fn place_order(
        &self,
        sku: &str,
        quantity: i64,
        token: &str,
        country: &str,
    ) -> String {
        self.orders
            .clone()
            .place_order(order::PlaceOrderRequest {
                customer_id: "customer-7".to_owned(),
                customer_email: "ada@example.com".to_owned(),
                shipping_address: Some(Address {
                    recipient: "Grace Hopper".to_owned(),
                    lines: vec!["1 Harbor Way".to_owned()],
                    city: "Arlington".to_owned(),
                    region: String::new(),
                    postal_code: "22201".to_owned(),
                    country_code: country.to_owned(),
                }),
                // No price: the order service prices it from the catalogue.
                lines: vec![order::OrderLine {
                    sku: sku.to_owned(),
                    quantity,
                    unit_price: None,
                    line_total: None,
                }],
                currency_code: "USD".to_owned(),
                payment_method_token: token.to_owned(),
                idempotency_key: format!("place-{}", zentra_test_support::unique_suffix()),
            })
            .await
            .expect("order placed")
            .into_inner()
            .order
            .expect("order")
            .order_id
    }

    pub async fn order(&self, order_id: &str) -> order::Order {
        self.orders
            .clone()
            .get_order(order::GetOrderRequest {
                order_id: order_id.to_owned(),
            })
            .await
            .expect("order")
            .into_inner()
            .order
            .expect("order")
    }

    /// The first saga `ListSagas` returns for `filter` that satisfies `wanted`, waiting up to
    /// `within`; `None` if none does by then.
    pub async fn await_saga(
        &self,
        filter: saga::ListSagasRequest,
        within: Duration,
        wanted: impl Fn(&saga::Saga) -> bool,
    ) -> Option<saga::Saga> {
        let wanted = &wanted;
        eventually(within, || {
            let mut sagas = self.sagas.clone();
            let filter = filter.clone();
            async move {
                sagas
                    .list_sagas(filter)
                    .await
                    .ok()?
                    .into_inner()
                    .sagas
                    .into_iter()
                    .find(|saga| wanted(saga))
            }
        })
        .await
    }

    /// Waits until every order's saga waits for its shipment (AWAITING_SHIPMENT).
    pub async fn await_shipments_waiting(&self, orders: &[String]) {
        let awaiting = saga::SagaState::AwaitingShipment as i32;
        for order_id in orders {
            self.await_saga(by_order(order_id), Duration::from_secs(30), |found| {
                found.state == awaiting
            })
            .await
            .unwrap_or_else(|| panic!("the saga of {order_id} does not wait for its shipment"));
        }
    }

    /// The order's saga once it exists.
    pub async fn saga_of(&self, order_id: &str) -> saga::Saga {
        self.await_saga(by_order(order_id), Duration::from_secs(20), |_| true)
            .await
            .unwrap_or_else(|| panic!("the order {order_id} has no saga"))
    }

    /// The order's saga once it ended (COMPLETED, COMPENSATED or COMPENSATION_FAILED).
    pub async fn finished_saga(&self, order_id: &str, within: Duration) -> saga::Saga {
        let ended = |found: &saga::Saga| {
            [
                saga::SagaState::Completed,
                saga::SagaState::Compensated,
                saga::SagaState::CompensationFailed,
            ]
            .iter()
            .any(|state| *state as i32 == found.state)
        };
        if let Some(found) = self.await_saga(by_order(order_id), within, ended).await {
            return found;
        }
        let listed = self
            .sagas
            .clone()
            .list_sagas(by_order(order_id))
            .await
            .map(|response| response.into_inner().sagas);
        panic!("the saga of {order_id} did not end within {within:?}: {listed:#?}");
    }

    pub async fn payments_of(&self, order_id: &str) -> Vec<payment::Payment> {
        self.payments
            .clone()
            .list_payments(payment::ListPaymentsRequest {
                order_id: order_id.to_owned(),
                ..Default::default()
            })
            .await
            .expect("payments")
            .into_inner()
            .payments
    }

    /// Ledger entry types of the order's payments, oldest first.
    pub async fn ledger_of(&self, order_id: &str) -> Vec<String> {
        let entries = self
            .payments
            .clone()
            .get_payment_ledger(payment::GetPaymentLedgerRequest {
                order_id: order_id.to_owned(),
                ..Default::default()
            })
            .await
            .expect("ledger")
            .into_inner()
            .entries;
        entries
            .into_iter()
            .map(|entry| {
                payment::LedgerEntryType::try_from(entry.entry_type)
                    .map(|kind| kind.as_str_name().to_owned())
                    .unwrap_or_default()
            })
            .collect()
    }

    pub async fn shipments_of(&self, order_id: &str) -> Vec<fulfillment::Shipment> {
        self.shipments
            .clone()
            .list_shipments(fulfillment::ListShipmentsRequest {
                order_id: order_id.to_owned(),
                ..Default::default()
            })
            .await
            .expect("shipments")
            .into_inner()
            .shipments
    }

    /// Notifications about the order, once one triggered by `event_type` exists.
    pub async fn notifications_of(
        &self,
        order_id: &str,
        event_type: &str,
    ) -> Vec<notification::Notification> {
        let client = self.notifications.clone();
        eventually(Duration::from_secs(20), || {
            let mut client = client.clone();
            async move {
                let found = client
                    .list_notifications(notification::ListNotificationsRequest {
                        order_id: order_id.to_owned(),
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .notifications;
                found
                    .iter()
                    .any(|notification| notification.trigger_event_type == event_type)
                    .then_some(found)
            }
        })
        .await
        .unwrap_or_else(|| panic!("a notification of {event_type} about {order_id}"))
    }
}

async fn start_payment(config: &zentra_payment::Config) -> RunningService {
    zentra_payment::PaymentService::start(
        config.clone(),
        Default::default(),
        zentra_test_support::telemetry(),
    )
    .await
    .expect("payment service starts")
    .spawn()
}

pub fn free_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

pub async fn start_saga(config: &zentra_saga::Config) -> RunningService {
    zentra_saga::SagaOrchestrator::start(
        config.clone(),
        Default::default(),
        zentra_test_support::telemetry(),
    )
    .await
    .expect("saga orchestrator starts")
    .spawn()
}

/// A ListSagas request for one order's saga.
pub fn by_order(order_id: &str) -> saga::ListSagasRequest {
    saga::ListSagasRequest {
        order_id: order_id.to_owned(),
        ..Default::default()
    }
}

pub fn usd(amount_minor: i64) -> Money {
    Money {
        currency_code: "USD".to_owned(),
        amount_minor,
    }
}

/// Step names of a saga's timeline, in execution order.
pub fn step_names(saga: &saga::Saga) -> Vec<&'static str> {
    saga.steps
        .iter()
        .map(|step| {
            saga::SagaStepType::try_from(step.step)
                .map(|step| step.as_str_name())
                .unwrap_or("?")
                .trim_start_matches("SAGA_STEP_TYPE_")
        })
        .collect()
}

pub fn state_name(saga: &saga::Saga) -> &'static str {
    saga::SagaState::try_from(saga.state)
        .map(|state| state.as_str_name())
        .unwrap_or("?")
}
