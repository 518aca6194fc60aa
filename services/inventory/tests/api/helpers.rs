//! A running inventory service per test, and shortcuts to call it.

use std::time::Duration;
use zentra_runtime::platform::RunningService;

use tonic::transport::Channel;
use uuid::Uuid;
use zentra_inventory::{Config, EVENTS_TOPIC, Inventory, config::InventoryConfig};
use zentra_proto::{
    common::v1::Money,
    inventory::v1::{self as pb, inventory_service_client::InventoryServiceClient},
};
use zentra_test_support::TestEnv;

pub struct TestApp {
    pub env: TestEnv,
    pub service: RunningService,
    pub client: InventoryServiceClient<Channel>,
    pub events_topic: String,
}

#[derive(Clone, Copy)]
pub struct Options {
    pub run_outbox_relay: bool,
    pub sweep: Duration,
    /// Publish every inventory event (`outbox.publish`), as an outside subscriber would ask;
    /// by default the platform reads none of them, so none is published.
    pub publish_events: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            run_outbox_relay: true,
            sweep: Duration::from_millis(100),
            publish_events: true,
        }
    }
}

impl TestApp {
    pub async fn spawn(label: &str) -> Self {
        Self::spawn_with(label, Options::default()).await
    }

    pub async fn spawn_with(label: &str, options: Options) -> Self {
        let telemetry = zentra_test_support::telemetry();
        let env = TestEnv::new(label).await.expect("test environment");
        let mut domain = InventoryConfig::default();
        domain.inventory.run_outbox_relay = options.run_outbox_relay;
        domain.inventory.expiry_sweep_interval = options.sweep;
        let mut common = env.common_config();
        if options.publish_events {
            common.outbox.publish = vec![EVENTS_TOPIC.to_owned()];
        }
        let config = Config { common, domain };
        let events_topic = format!("{}{EVENTS_TOPIC}", env.prefix);
        let service = Inventory::start(config, Default::default(), telemetry)
            .await
            .expect("inventory starts")
            .spawn();
        let client = InventoryServiceClient::connect(format!("http://{}", service.local_addr()))
            .await
            .expect("client connects");
        Self {
            env,
            service,
            client,
            events_topic,
        }
    }

    pub fn addr(&self) -> String {
        self.service.local_addr().to_string()
    }

    pub async fn stop(self) {
        self.service.shutdown().await.expect("clean shutdown");
        self.env
            .cleanup(&[self.events_topic])
            .await
            .expect("cleanup");
    }

    pub async fn create_product(&self, sku: &str, stock: i64) -> pb::Product {
        self.client
            .clone()
            .create_product(pb::CreateProductRequest {
                sku: sku.to_owned(),
                name: format!("product {sku}"),
                initial_stock: stock,
                low_stock_threshold: 0,
                unit_price: Some(Money {
                    currency_code: "USD".to_owned(),
                    amount_minor: 1999,
                }),
                idempotency_key: format!("create-{sku}"),
            })
            .await
            .expect("product created")
            .into_inner()
            .product
            .expect("product returned")
    }

    pub async fn product(&self, sku: &str) -> pb::Product {
        self.client
            .clone()
            .get_product(pb::GetProductRequest {
                sku: sku.to_owned(),
            })
            .await
            .expect("product read")
            .into_inner()
            .product
            .expect("product returned")
    }

    pub async fn reserve(
        &self,
        sku: &str,
        quantity: i64,
        key: &str,
    ) -> Result<pb::Reservation, tonic::Status> {
        self.client
            .clone()
            .reserve_stock(reserve_request(sku, quantity, key))
            .await
            .map(|response| {
                response
                    .into_inner()
                    .reservation
                    .expect("reservation returned")
            })
    }

    pub async fn confirm(
        &self,
        reservation_id: &str,
        key: &str,
    ) -> Result<pb::Reservation, tonic::Status> {
        self.client
            .clone()
            .confirm_reservation(pb::ConfirmReservationRequest {
                reservation_id: reservation_id.to_owned(),
                idempotency_key: key.to_owned(),
            })
            .await
            .map(|response| {
                response
                    .into_inner()
                    .reservation
                    .expect("reservation returned")
            })
    }

    /// Counts rows of a table in the service's database.
    pub async fn count(&self, table: &str) -> i64 {
        zentra_test_support::count(self.service.db(), &format!("SELECT count(*) FROM {table}"))
            .await
    }
}

pub fn reserve_request(sku: &str, quantity: i64, key: &str) -> pb::ReserveStockRequest {
    pb::ReserveStockRequest {
        order_id: Uuid::now_v7().to_string(),
        lines: vec![pb::ReservationLine {
            sku: sku.to_owned(),
            quantity,
        }],
        hold_duration: None,
        idempotency_key: key.to_owned(),
    }
}
