//! A running notification service per test, an SMTP server that stores what it receives, and a
//! producer standing in for the order service.

use std::time::Duration;
use zentra_runtime::platform::RunningService;

use prost::Message as _;
use tonic::transport::Channel;
use zentra_notification::{Config, NotificationService, config::NotificationConfig};
use zentra_proto::{
    events::v1::EventEnvelope,
    notification::v1::{self as pb, notification_service_client::NotificationServiceClient},
};
use zentra_runtime::kafka::EventProducer;
use zentra_test_support::TestEnv;

pub use zentra_test_support::smtp::SmtpServer;

pub struct TestApp {
    pub env: TestEnv,
    pub service: RunningService,
    pub client: NotificationServiceClient<Channel>,
    pub producer: EventProducer,
}

impl TestApp {
    pub async fn spawn(label: &str, smtp_port: u16, max_attempts: u32) -> Self {
        let env = TestEnv::new(label).await.expect("test environment");
        let mut domain = NotificationConfig::default();
        domain.notification.smtp_port = smtp_port;
        domain.notification.smtp_timeout = Duration::from_secs(2);
        domain.notification.max_attempts = max_attempts;
        domain.notification.initial_backoff = Duration::from_millis(50);
        domain.notification.poll_interval = Duration::from_millis(50);
        let config = Config {
            common: env.common_config(),
            domain,
        };
        let producer =
            EventProducer::new(&config.common.kafka, "test-order-service").expect("producer");
        let service = NotificationService::start(
            config,
            Default::default(),
            zentra_test_support::telemetry(),
        )
        .await
        .expect("notification service starts")
        .spawn();
        let client = NotificationServiceClient::connect(format!("http://{}", service.local_addr()))
            .await
            .expect("client connects");
        Self {
            env,
            service,
            client,
            producer,
        }
    }

    /// Publishes an event on `<prefix><topic>` as its producer's outbox relay would.
    pub async fn publish(&self, topic: &str, event: &EventEnvelope) {
        self.producer
            .send(
                &format!("{}{topic}", self.env.prefix),
                &event.aggregate_id,
                &event.encode_to_vec(),
                &[("event_id", event.event_id.as_bytes())],
            )
            .await
            .expect("acknowledged");
    }

    pub async fn notifications(&self, customer_id: &str) -> Vec<pb::Notification> {
        self.client
            .clone()
            .list_notifications(pb::ListNotificationsRequest {
                page: None,
                order_id: String::new(),
                customer_id: customer_id.to_owned(),
                status: 0,
            })
            .await
            .expect("listed")
            .into_inner()
            .notifications
    }

    pub async fn stop(self) {
        self.service.shutdown().await.expect("clean shutdown");
        let topics: Vec<String> = zentra_notification::INFO
            .topics
            .iter()
            .map(|topic| format!("{}{topic}", self.env.prefix))
            .collect();
        self.env.cleanup(&topics).await.expect("cleanup");
    }
}
