//! A running payment service per test.

use std::time::Duration;
use zentra_runtime::platform::RunningService;

use tonic::transport::Channel;
use zentra_payment::{Config, EVENTS_TOPIC, PaymentService, config::PaymentConfig};
use zentra_proto::{
    common::v1::Money,
    payment::v1::{self as pb, payment_service_client::PaymentServiceClient},
};
use zentra_test_support::TestEnv;

pub struct TestApp {
    pub env: TestEnv,
    pub service: RunningService,
    pub client: PaymentServiceClient<Channel>,
    pub events_topic: String,
}

impl TestApp {
    pub async fn spawn(label: &str) -> Self {
        let telemetry = zentra_test_support::telemetry();
        let env = TestEnv::new(label).await.expect("test environment");
        let mut domain = PaymentConfig::default();
        domain.payment.simulated_delay = Duration::from_secs(2);
        let config = Config {
            common: env.common_config(),
            domain,
        };
        let events_topic = format!("{}{EVENTS_TOPIC}", env.prefix);
        let service = PaymentService::start(config, Default::default(), telemetry)
            .await
            .expect("payment service starts")
            .spawn();
        let client = PaymentServiceClient::connect(format!("http://{}", service.local_addr()))
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

    pub async fn authorize(
        &self,
        token: &str,
        amount: i64,
        key: &str,
    ) -> Result<pb::Payment, tonic::Status> {
        self.client
            .clone()
            .authorize(authorize_request(token, amount, key))
            .await
            .map(|response| response.into_inner().payment.expect("payment returned"))
    }

    pub async fn count(&self, table: &str) -> i64 {
        zentra_test_support::count(self.service.db(), &format!("SELECT count(*) FROM {table}"))
            .await
    }
}

pub fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "USD".to_owned(),
        amount_minor,
    })
}

pub fn authorize_request(token: &str, amount: i64, key: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        order_id: uuid::Uuid::now_v7().to_string(),
        amount: usd(amount),
        payment_method_token: token.to_owned(),
        idempotency_key: key.to_owned(),
    }
}
