//! A gateway (or two) per test in front of real order and inventory services, each service on
//! its own fresh database, with its own Redis key prefix and API keys.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use sea_orm::ConnectionTrait as _;
use tonic::{Request, metadata::MetadataValue, transport::Channel};
use zentra_gateway::{
    Gateway,
    auth::{Role, hash_key},
    config::{ApiKeyEntry, GatewayConfig, JwtSettings, Limit, UnavailablePolicy},
};
use zentra_proto::{
    common::v1::{Address, Money},
    inventory::v1::{self as inventory, inventory_service_client::InventoryServiceClient},
    order::v1 as order,
};
use zentra_runtime::{
    config::{Secret, SecretUrl},
    dead_letters::{DeadLetterSink, FailedRecord},
    kafka::EventProducer,
    platform::RunningService,
    server::RunningServer,
};
use zentra_test_support::{TestDatabase, TestEnv, redis_url, unique_suffix};

/// What a test changes about its gateway.
#[derive(Clone)]
pub struct GatewayOptions {
    /// Every caller's limit on every route.
    pub limit: Limit,
    /// Where the limiter's Redis is.
    pub redis_url: String,
    /// What happens to reads when it is unreachable.
    pub when_unavailable: UnavailablePolicy,
    /// What happens to operator and admin actions when it is unreachable.
    pub when_unavailable_for_actions: UnavailablePolicy,
    /// Every caller's budget across routes.
    pub per_caller: Limit,
    /// Every client address's budget.
    pub per_address: Limit,
    /// Largest request accepted.
    pub max_request_bytes: usize,
    /// Deadline of calls that set none.
    pub default_deadline: Duration,
    /// The control center's files.
    pub static_dir: Option<std::path::PathBuf>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            limit: Limit {
                per_second: 10_000.0,
                burst: 10_000,
            },
            redis_url: redis_url(),
            when_unavailable: UnavailablePolicy::FailClosed,
            when_unavailable_for_actions: UnavailablePolicy::FailClosed,
            per_caller: Limit {
                per_second: 10_000.0,
                burst: 10_000,
            },
            per_address: Limit {
                per_second: 10_000.0,
                burst: 10_000,
            },
            max_request_bytes: 64 * 1024,
            default_deadline: Duration::from_secs(10),
            static_dir: None,
        }
    }
}

/// One API key per role, fresh per test.
#[derive(Clone)]
pub struct Keys {
    pub viewer: String,
    pub operator: String,
    pub admin: String,
}

/// The HS256 secret gateways of these tests accept.
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret";

pub struct Platform {
    env: TestEnv,
    inventory_database: TestDatabase,
    order: RunningService,
    inventory: RunningService,
    gateways: Vec<RunningServer>,
    assertion_key: Secret,
    pub keys: Keys,
    pub redis_prefix: String,
}

impl Platform {
    /// Order and inventory services, no gateway yet.
    pub async fn start(label: &str) -> Self {
        let env = TestEnv::new(label).await.expect("test environment");
        let telemetry = zentra_test_support::telemetry;
        let inventory_database = TestDatabase::create(&format!("{label}-inv"))
            .await
            .expect("database");
        // The gateway signs its callers with this; the services believe nothing unsigned.
        let assertion_key = Secret::new(format!("assertion-{}", unique_suffix()));
        let mut common = env.common_config();
        common.database.url = SecretUrl::new(inventory_database.url());
        common.caller_assertion_key = Some(assertion_key.clone());
        let inventory = zentra_inventory::Inventory::start(
            zentra_inventory::Config {
                common,
                domain: Default::default(),
            },
            Default::default(),
            telemetry(),
        )
        .await
        .expect("inventory starts")
        .spawn();
        // The product `order_request` orders, created behind the gateway's back.
        InventoryServiceClient::connect(format!("http://{}", inventory.local_addr()))
            .await
            .expect("inventory client")
            .create_product(product_request(CATALOGUE_SKU, "seed-product"))
            .await
            .expect("catalogue product created");
        let mut order_domain = zentra_order::config::OrderConfig::default();
        order_domain.order.catalogue_url = format!("http://{}", inventory.local_addr());
        let mut order_common = env.common_config();
        order_common.caller_assertion_key = Some(assertion_key.clone());
        let order = zentra_order::OrderService::start(
            zentra_order::Config {
                common: order_common,
                domain: order_domain,
            },
            Default::default(),
            telemetry(),
        )
        .await
        .expect("order starts")
        .spawn();
        let suffix = unique_suffix();
        Self {
            redis_prefix: env.prefix.clone(),
            env,
            inventory_database,
            order,
            inventory,
            gateways: Vec::new(),
            assertion_key,
            keys: Keys {
                viewer: format!("zk_viewer_{suffix}"),
                operator: format!("zk_operator_{suffix}"),
                admin: format!("zk_admin_{suffix}"),
            },
        }
    }

    /// The order service's database.
    pub fn order_db(&self) -> &sea_orm::DatabaseConnection {
        self.order.db()
    }

    /// A gateway config in front of this platform's services.
    pub fn gateway_config(&self, options: &GatewayOptions) -> zentra_gateway::Config {
        let mut domain = GatewayConfig::default();
        let gateway = &mut domain.gateway;
        gateway.upstreams.order = format!("http://{}", self.order.local_addr());
        gateway.upstreams.inventory = format!("http://{}", self.inventory.local_addr());
        // Nothing listens on port 1: these services are "down".
        for url in [
            &mut gateway.upstreams.payment,
            &mut gateway.upstreams.fulfillment,
            &mut gateway.upstreams.notification,
            &mut gateway.upstreams.saga,
        ] {
            *url = "http://127.0.0.1:1".to_owned();
        }
        gateway.limits.max_request_bytes = options.max_request_bytes;
        gateway.limits.default_deadline = options.default_deadline;
        gateway.static_dir = options.static_dir.clone();
        gateway.auth.api_keys = [
            ("viewer", Role::Viewer, &self.keys.viewer),
            ("operator", Role::Operator, &self.keys.operator),
            ("admin", Role::Admin, &self.keys.admin),
        ]
        .into_iter()
        .map(|(name, role, key)| ApiKeyEntry {
            name: name.to_owned(),
            role,
            sha256: hash_key(key),
        })
        .collect();
        gateway.auth.jwt = Some(JwtSettings {
            hs256_secret: Some(Secret::new(JWT_SECRET)),
            ..JwtSettings::default()
        });
        let rate = &mut gateway.rate_limit;
        rate.redis_url = SecretUrl::new(options.redis_url.clone());
        rate.key_prefix = self.redis_prefix.clone();
        rate.default = options.limit;
        rate.routes = BTreeMap::new();
        rate.when_unavailable = options.when_unavailable;
        rate.when_unavailable_for_actions = options.when_unavailable_for_actions;
        rate.per_caller = options.per_caller;
        rate.per_address = options.per_address;
        rate.timeout = Duration::from_millis(500);
        let mut common = self.env.common_config();
        common.grpc.listen_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        common.caller_assertion_key = Some(self.assertion_key.clone());
        zentra_gateway::Config { common, domain }
    }

    /// Starts a gateway and returns a channel to it.
    pub async fn gateway(&mut self, options: &GatewayOptions) -> (SocketAddr, Channel) {
        let gateway = Gateway::start(
            self.gateway_config(options),
            Default::default(),
            zentra_test_support::telemetry(),
        )
        .await
        .expect("gateway starts")
        .spawn();
        let address = gateway.local_addr();
        self.gateways.push(gateway);
        let channel = Channel::from_shared(format!("http://{address}"))
            .expect("url")
            .connect()
            .await
            .expect("connects");
        (address, channel)
    }

    /// Parks a record of inventory's command topic as its consumer would after giving up on it,
    /// and returns the dead letter's id.
    pub async fn park_dead_letter(&self, payload: &[u8]) -> String {
        let kafka = self.env.common_config().kafka;
        let producer = EventProducer::new(&kafka, "test").expect("producer");
        let topic = format!("{}inventory.commands", self.env.prefix);
        DeadLetterSink::new(self.inventory.db().clone(), producer, kafka)
            .park(
                &format!("{}inventory", self.env.prefix),
                &FailedRecord {
                    topic: topic.clone(),
                    partition: 0,
                    offset: 7,
                    key: b"order-1".to_vec(),
                    headers: Vec::new(),
                    payload: payload.to_vec(),
                    event: None,
                    first_failure: std::time::SystemTime::now(),
                },
                "cannot decode the command",
                5,
            )
            .await
            .expect("parked");
        let row = self
            .inventory
            .db()
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT id::text AS id FROM dead_letters ORDER BY id DESC LIMIT 1",
            ))
            .await
            .expect("query")
            .expect("a dead letter");
        row.try_get::<String>("", "id").expect("id")
    }

    /// Address of the inventory service itself (to check what reached it).
    pub fn inventory_addr(&self) -> SocketAddr {
        self.inventory.local_addr()
    }

    pub async fn stop(self) {
        for gateway in self.gateways {
            gateway.shutdown().await.expect("gateway stops");
        }
        self.order.shutdown().await.expect("order stops");
        self.inventory.shutdown().await.expect("inventory stops");
        delete_redis_keys(&self.redis_prefix).await;
        let topics: Vec<String> = zentra_order::INFO
            .topics
            .iter()
            .chain(zentra_inventory::INFO.topics)
            .chain(&["inventory.commands.dlq"])
            .map(|base| format!("{}{base}", self.env.prefix))
            .collect();
        self.inventory_database
            .drop_database()
            .await
            .expect("drop inventory database");
        self.env.cleanup(&topics).await.expect("cleanup");
    }
}

/// Deletes every key under `prefix`.
pub async fn delete_redis_keys(prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url()) else {
        return;
    };
    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut connection)
            .await;
    }
}

/// `message` with an API key.
pub fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "x-api-key",
        MetadataValue::try_from(key).expect("ascii key"),
    );
    request
}

/// `message` with a header naming the service it is for.
pub fn for_service<T>(mut request: Request<T>, service: &str) -> Request<T> {
    request.metadata_mut().insert(
        "x-zentra-service",
        MetadataValue::try_from(service).expect("ascii"),
    );
    request
}

/// The product every platform's catalogue starts with, at 12.99 USD.
pub const CATALOGUE_SKU: &str = "SEED-MUG";

/// A valid order for customer `customer`: two of [`CATALOGUE_SKU`] at its price.
pub fn order_request(customer: &str, key: &str) -> order::PlaceOrderRequest {
    order::PlaceOrderRequest {
        customer_id: customer.to_owned(),
        customer_email: "ada@example.com".to_owned(),
        shipping_address: Some(Address {
            recipient: "Ada".to_owned(),
            lines: vec!["1 Main St".to_owned()],
            city: "Springfield".to_owned(),
            region: "IL".to_owned(),
            postal_code: "12345".to_owned(),
            country_code: "US".to_owned(),
        }),
        lines: vec![order::OrderLine {
            sku: CATALOGUE_SKU.to_owned(),
            quantity: 2,
            unit_price: Some(Money {
                currency_code: "USD".to_owned(),
                amount_minor: 1299,
            }),
            line_total: None,
        }],
        currency_code: "USD".to_owned(),
        payment_method_token: "tok_approve".to_owned(),
        idempotency_key: key.to_owned(),
    }
}

/// A product for the inventory tests.
pub fn product_request(sku: &str, key: &str) -> inventory::CreateProductRequest {
    inventory::CreateProductRequest {
        sku: sku.to_owned(),
        name: "Mug".to_owned(),
        initial_stock: 10,
        unit_price: Some(Money {
            currency_code: "USD".to_owned(),
            amount_minor: 1299,
        }),
        low_stock_threshold: 2,
        idempotency_key: key.to_owned(),
    }
}
