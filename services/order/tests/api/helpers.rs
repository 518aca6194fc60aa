//! A running order service per test, pricing from a real catalogue (an inventory service on its
//! own database), and a valid order to vary.

use std::time::Duration;

use tonic::transport::Channel;
use zentra_order::{Config, EVENTS_TOPIC, OrderService};
use zentra_proto::{
    common::v1::{Address, Money},
    inventory::v1::{self as inventory, inventory_service_client::InventoryServiceClient},
    order::v1::{self as pb, order_service_client::OrderServiceClient},
};
use zentra_runtime::{config::SecretUrl, platform::RunningService};
use zentra_test_support::{TestDatabase, TestEnv};

pub struct TestApp {
    pub env: TestEnv,
    pub service: RunningService,
    pub client: OrderServiceClient<Channel>,
    pub events_topic: String,
    /// The catalogue the order service prices from: a real inventory service on its own database.
    pub catalogue: Option<RunningService>,
    pub catalogue_client: InventoryServiceClient<Channel>,
    catalogue_database: TestDatabase,
}

/// The catalogue every test starts with: (SKU, price, currency).
pub const PRODUCTS: &[(&str, i64, &str)] = &[
    ("MUG-1", 1299, "USD"),
    ("TEA-7", 550, "USD"),
    ("KETTLE-EU", 4500, "EUR"),
];

impl TestApp {
    pub async fn spawn(label: &str) -> Self {
        let telemetry = zentra_test_support::telemetry;
        let env = TestEnv::new(label).await.expect("test environment");
        let catalogue_database = TestDatabase::create(&format!("{label}-cat"))
            .await
            .expect("catalogue database");
        let mut common = env.common_config();
        common.database.url = SecretUrl::new(catalogue_database.url());
        let catalogue = zentra_inventory::Inventory::start(
            zentra_inventory::Config {
                common,
                domain: Default::default(),
            },
            Default::default(),
            telemetry(),
        )
        .await
        .expect("catalogue starts")
        .spawn();
        let catalogue_client =
            InventoryServiceClient::connect(format!("http://{}", catalogue.local_addr()))
                .await
                .expect("catalogue client connects");
        for (sku, amount_minor, currency) in PRODUCTS {
            catalogue_client
                .clone()
                .create_product(inventory::CreateProductRequest {
                    sku: (*sku).to_owned(),
                    name: format!("product {sku}"),
                    initial_stock: 100,
                    low_stock_threshold: 0,
                    unit_price: Some(Money {
                        currency_code: (*currency).to_owned(),
                        amount_minor: *amount_minor,
                    }),
                    idempotency_key: format!("create-{sku}"),
                })
                .await
                .expect("product created");
        }
        let mut config = Config {
            common: env.common_config(),
            domain: Default::default(),
        };
        config.domain.order.catalogue_url = format!("http://{}", catalogue.local_addr());
        config.domain.order.catalogue_timeout = Duration::from_secs(2);
        let events_topic = format!("{}{EVENTS_TOPIC}", env.prefix);
        let service = OrderService::start(config, Default::default(), telemetry())
            .await
            .expect("order service starts")
            .spawn();
        let client = OrderServiceClient::connect(format!("http://{}", service.local_addr()))
            .await
            .expect("client connects");
        Self {
            env,
            service,
            client,
            events_topic,
            catalogue: Some(catalogue),
            catalogue_client,
            catalogue_database,
        }
    }

    /// Stops the catalogue, as an outage would.
    pub async fn stop_catalogue(&mut self) {
        if let Some(catalogue) = self.catalogue.take() {
            catalogue.shutdown().await.expect("catalogue stops");
        }
    }

    /// Sets a product's price in the catalogue.
    pub async fn set_price(&self, sku: &str, amount_minor: i64) {
        self.catalogue_client
            .clone()
            .set_product_price(inventory::SetProductPriceRequest {
                sku: sku.to_owned(),
                unit_price: usd(amount_minor),
                idempotency_key: format!("price-{sku}-{amount_minor}"),
            })
            .await
            .expect("price set");
    }

    pub async fn stop(mut self) {
        self.stop_catalogue().await;
        self.service.shutdown().await.expect("clean shutdown");
        let topics: Vec<String> = [EVENTS_TOPIC]
            .iter()
            .chain(zentra_inventory::INFO.topics)
            .map(|base| format!("{}{base}", self.env.prefix))
            .collect();
        self.catalogue_database
            .drop_database()
            .await
            .expect("drop catalogue database");
        self.env.cleanup(&topics).await.expect("cleanup");
    }

    pub async fn place(&self, request: pb::PlaceOrderRequest) -> Result<pb::Order, tonic::Status> {
        self.client
            .clone()
            .place_order(request)
            .await
            .map(|response| response.into_inner().order.expect("order returned"))
    }

    pub async fn count(&self, sql: &str) -> i64 {
        zentra_test_support::count(self.service.db(), sql).await
    }
}

pub fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".to_owned(),
        amount_minor,
    })
}

pub fn order_request(key: &str) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        customer_id: "customer-42".to_owned(),
        shipping_address: Some(Address {
            recipient: "Ada Lovelace".to_owned(),
            lines: vec!["12 Analytical Row".to_owned()],
            city: "London".to_owned(),
            region: String::new(),
            postal_code: "N1 9GU".to_owned(),
            country_code: "GB".to_owned(),
        }),
        lines: vec![
            pb::OrderLine {
                sku: "MUG-1".to_owned(),
                quantity: 2,
                unit_price: usd(1299),
                line_total: None,
            },
            pb::OrderLine {
                sku: "TEA-7".to_owned(),
                quantity: 1,
                unit_price: usd(550),
                line_total: None,
            },
        ],
        currency_code: "USD".to_owned(),
        payment_method_token: "tok_approve".to_owned(),
        idempotency_key: key.to_owned(),
        customer_email: "ada@example.com".to_owned(),
    }
}
