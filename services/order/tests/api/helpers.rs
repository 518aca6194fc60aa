//! A running order service per test, and a valid order to vary.

use tonic::transport::Channel;
use zentra_order::{Config, EVENTS_TOPIC, OrderService};
use zentra_proto::{
    common::v1::{Address, Money},
    order::v1::{self as pb, order_service_client::OrderServiceClient},
};
use zentra_runtime::platform::RunningService;
use zentra_test_support::TestEnv;

pub struct TestApp {
    pub env: TestEnv,
    pub service: RunningService,
    pub client: OrderServiceClient<Channel>,
    pub events_topic: String,
}

impl TestApp {
    pub async fn spawn(label: &str) -> Self {
        let telemetry = zentra_test_support::telemetry();
        let env = TestEnv::new(label).await.expect("test environment");
        let config = Config {
            common: env.common_config(),
            domain: Default::default(),
        };
        let events_topic = format!("{}{EVENTS_TOPIC}", env.prefix);
        let service = OrderService::start(config, Default::default(), telemetry)
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
        }
    }

    pub async fn stop(self) {
        self.service.shutdown().await.expect("clean shutdown");
        self.env
            .cleanup(&[self.events_topic])
            .await
            .expect("cleanup");
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
    }
}
