//! A running fulfillment service per test, restartable on the same database.

use std::time::Duration;
use zentra_runtime::platform::RunningService;

use tonic::transport::Channel;
use zentra_fulfillment::{Config, EVENTS_TOPIC, FulfillmentService, config::FulfillmentConfig};
use zentra_proto::{
    common::v1::Address,
    fulfillment::v1::{self as pb, fulfillment_service_client::FulfillmentServiceClient},
};
use zentra_test_support::TestEnv;

pub struct TestApp {
    pub env: TestEnv,
    step_delay: Duration,
    pub service: RunningService,
    pub client: FulfillmentServiceClient<Channel>,
    pub events_topic: String,
}

async fn start(
    env: &TestEnv,
    step_delay: Duration,
) -> (RunningService, FulfillmentServiceClient<Channel>) {
    let mut domain = FulfillmentConfig::default();
    domain.fulfillment.step_delay = step_delay;
    domain.fulfillment.poll_interval = Duration::from_millis(50);
    let config = Config {
        common: env.common_config(),
        domain,
    };
    let service =
        FulfillmentService::start(config, Default::default(), zentra_test_support::telemetry())
            .await
            .expect("fulfillment service starts")
            .spawn();
    let client = FulfillmentServiceClient::connect(format!("http://{}", service.local_addr()))
        .await
        .expect("client connects");
    (service, client)
}

impl TestApp {
    /// A service whose shipment steps take 300 ms each.
    pub async fn spawn(label: &str) -> Self {
        Self::spawn_with_step_delay(label, Duration::from_millis(300)).await
    }

    pub async fn spawn_with_step_delay(label: &str, step_delay: Duration) -> Self {
        let env = TestEnv::new(label).await.expect("test environment");
        let (service, client) = start(&env, step_delay).await;
        let events_topic = format!("{}{EVENTS_TOPIC}", env.prefix);
        Self {
            env,
            step_delay,
            service,
            client,
            events_topic,
        }
    }

    /// Kills the service as a crash would and starts a new one on the same database.
    pub async fn crash_and_restart(self) -> Self {
        self.service.kill();
        let (service, client) = start(&self.env, self.step_delay).await;
        Self {
            service,
            client,
            ..self
        }
    }

    pub async fn stop(self) {
        self.service.shutdown().await.expect("clean shutdown");
        self.env
            .cleanup(&[self.events_topic])
            .await
            .expect("cleanup");
    }

    pub async fn shipment(&self, id: &str) -> pb::Shipment {
        self.client
            .clone()
            .get_shipment(pb::GetShipmentRequest {
                shipment_id: id.to_owned(),
            })
            .await
            .expect("read")
            .into_inner()
            .shipment
            .expect("shipment")
    }

    pub async fn wait_for(&self, id: &str, status: pb::ShipmentStatus) -> pb::Shipment {
        zentra_test_support::eventually(Duration::from_secs(15), || async {
            let shipment = self.shipment(id).await;
            (shipment.status == status as i32).then_some(shipment)
        })
        .await
        .unwrap_or_else(|| panic!("shipment {id} never became {status:?}"))
    }

    pub async fn count(&self, sql: &str) -> i64 {
        zentra_test_support::count(self.service.db(), sql).await
    }
}

pub fn shipment_request(key: &str, country: &str, sku: &str) -> pb::CreateShipmentRequest {
    pb::CreateShipmentRequest {
        order_id: uuid::Uuid::now_v7().to_string(),
        shipping_address: Some(Address {
            recipient: "Grace Hopper".to_owned(),
            lines: vec!["1 Compiler Way".to_owned()],
            city: "Arlington".to_owned(),
            region: "VA".to_owned(),
            postal_code: "22201".to_owned(),
            country_code: country.to_owned(),
        }),
        lines: vec![pb::ShipmentLine {
            sku: sku.to_owned(),
            quantity: 2,
        }],
        idempotency_key: key.to_owned(),
    }
}
