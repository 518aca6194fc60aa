//! Zentra's gRPC contracts and event messages, generated from `proto/` at build time.
//!
//! Modules follow the protobuf packages: `zentra.inventory.v1` is [`zentra::inventory::v1`].
//! Features: `client` (transport-agnostic clients, usable from wasm) and `server` (server traits
//! and tonic-transport clients).

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/zentra.rs"));

/// The encoded `FileDescriptorSet` of every contract, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/zentra_descriptor.bin"));

pub use zentra::{
    common, events, fulfillment, gateway, inventory, notification, ops, order, payment, saga,
};

/// A request that carries an idempotency key; implemented for every contract message with a
/// string `idempotency_key` field.
pub trait IdempotentRequest: prost::Message + Clone {
    /// The key.
    fn idempotency_key(&self) -> &str;
    /// A copy without the key, for fingerprinting (a retry must match on everything else).
    fn without_key(&self) -> Self;
}

include!(concat!(env!("OUT_DIR"), "/idempotent_requests.rs"));

/// The platform's processes by name, the gateway first: the name a caller puts in
/// `x-zentra-service` to reach one through the gateway, its Prometheus job, and what
/// `GatewayService.GetServiceHistory` accepts.
pub const PROCESSES: [&str; 7] = [
    "gateway",
    "inventory",
    "order",
    "payment",
    "fulfillment",
    "notification",
    "saga",
];

/// The event types another part of the platform reads, by full name: the saga orchestrator
/// (the order's placement and cancellation, the shipment's outcome), notification (what it mails
/// about) and outside subscribers of saga outcomes. Services always publish these; any other
/// event is published only when the producing service's `outbox.publish` names it, so an event
/// nobody reads costs neither an outbox row nor a broker record. A consumer that starts reading
/// a new event type adds it here.
pub const PLATFORM_EVENTS: &[&str] = &[
    "zentra.order.v1.OrderPlaced",
    "zentra.order.v1.OrderCancellationRequested",
    "zentra.order.v1.OrderConfirmed",
    "zentra.order.v1.OrderRejected",
    "zentra.order.v1.OrderCancelled",
    "zentra.payment.v1.PaymentDeclined",
    "zentra.fulfillment.v1.ShipmentDispatched",
    "zentra.fulfillment.v1.ShipmentFailed",
    "zentra.saga.v1.SagaCompleted",
    "zentra.saga.v1.SagaCompensated",
    "zentra.saga.v1.SagaCompensationFailed",
];
