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
