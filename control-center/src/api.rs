//! Calls to the platform: the tonic-generated clients over grpc-web, to the gateway that served
//! this page, with the signed-in key and, for RPCs every service serves, the service's name.

use tonic::{Code, Status, metadata::MetadataValue};
use tonic_web_wasm_client::Client;
use zentra_proto::ops::v1::ops_service_client::OpsServiceClient;

/// What the overview shows, the gateway first.
pub const SERVICES: [&str; 7] = [
    "gateway",
    "inventory",
    "order",
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
    pub fn new(key: String) -> Self {
        Self {
            client: Client::new(origin()),
            key,
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

    /// The ops service.
    pub fn ops(&self) -> OpsServiceClient<Client> {
        OpsServiceClient::new(self.client.clone())
    }
}

/// `scheme://host:port` of this page.
pub fn origin() -> String {
    web_sys::window()
        .and_then(|window| window.location().origin().ok())
        .unwrap_or_default()
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
        _ => "failed",
    };
    if status.message().is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {}", status.message())
    }
}
