//! Calls to the platform: the tonic-generated clients over grpc-web, to the gateway that served
//! this page, with the signed-in key and, for RPCs every service serves, the service's name.

use tonic::{Code, Status, metadata::MetadataValue};
use tonic_web_wasm_client::Client;
use zentra_proto::{
    gateway::v1::gateway_service_client::GatewayServiceClient,
    inventory::v1::inventory_service_client::InventoryServiceClient,
    ops::v1::ops_service_client::OpsServiceClient,
    order::v1::order_service_client::OrderServiceClient,
    saga::v1::{
        circuit_breaker_service_client::CircuitBreakerServiceClient,
        dead_letter_service_client::DeadLetterServiceClient,
        saga_service_client::SagaServiceClient,
    },
};

/// Every process behind the gateway, the gateway first.
pub use zentra_proto::PROCESSES as SERVICES;

/// The services with Kafka consumers and so with dead letters.
pub const CONSUMING_SERVICES: [&str; 5] = [
    "inventory",
    "payment",
    "fulfillment",
    "notification",
    "saga",
];

/// A signed-in connection to the gateway.
#[derive(Clone)]
pub struct Api {
    client: Client,
    key: String,
}

impl Api {
    /// Talks to the gateway this page came from.
    pub fn new(key: &str) -> Self {
        Self {
            client: Client::new(origin()),
            key: key.to_owned(),
        }
    }

    /// `message` with the key, addressed to `service` (the gateway itself for "gateway").
    pub fn request<T>(&self, message: T, service: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(key) = MetadataValue::try_from(self.key.as_str()) {
            request.metadata_mut().insert("x-api-key", key);
        }
        if service != "gateway"
            && let Ok(service) = MetadataValue::try_from(service)
        {
            request.metadata_mut().insert("x-zentra-service", service);
        }
        request
    }

    /// `message` with the key, for an RPC with one home.
    pub fn call<T>(&self, message: T) -> tonic::Request<T> {
        self.request(message, "gateway")
    }

    /// Ops of any service.
    pub fn ops(&self) -> OpsServiceClient<Client> {
        OpsServiceClient::new(self.client.clone())
    }

    /// The gateway's session API.
    pub fn gateway(&self) -> GatewayServiceClient<Client> {
        GatewayServiceClient::new(self.client.clone())
    }

    /// Sagas.
    pub fn sagas(&self) -> SagaServiceClient<Client> {
        SagaServiceClient::new(self.client.clone())
    }

    /// The saga's circuit breakers.
    pub fn breakers(&self) -> CircuitBreakerServiceClient<Client> {
        CircuitBreakerServiceClient::new(self.client.clone())
    }

    /// Dead letters of any service.
    pub fn dead_letters(&self) -> DeadLetterServiceClient<Client> {
        DeadLetterServiceClient::new(self.client.clone())
    }

    /// Orders.
    pub fn orders(&self) -> OrderServiceClient<Client> {
        OrderServiceClient::new(self.client.clone())
    }

    /// Products and stock.
    pub fn inventory(&self) -> InventoryServiceClient<Client> {
        InventoryServiceClient::new(self.client.clone())
    }
}

/// `scheme://host:port` of this page.
pub fn origin() -> String {
    web_sys::window()
        .and_then(|window| window.location().origin().ok())
        .unwrap_or_default()
}

/// A fresh idempotency key for one action of this page.
pub fn new_key(action: &str) -> String {
    format!(
        "cc-{action}-{}-{}",
        js_sys::Date::now() as u64,
        (js_sys::Math::random() * 1e12) as u64
    )
}

/// Asks the person to confirm an action.
pub fn confirm(question: &str) -> bool {
    web_sys::window()
        .and_then(|window| window.confirm_with_message(question).ok())
        .unwrap_or(false)
}

/// A platform error in words for the person at the screen.
pub fn describe(status: &Status) -> String {
    let what = match status.code() {
        Code::Unauthenticated => "not signed in",
        Code::PermissionDenied => "not allowed for your role",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "no answer in time",
        Code::ResourceExhausted => "rate limited",
        Code::InvalidArgument => "refused",
        Code::NotFound => "not found",
        Code::FailedPrecondition => "not possible now",
        Code::AlreadyExists => "already exists",
        _ => "failed",
    };
    if status.message().is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {}", status.message())
    }
}
