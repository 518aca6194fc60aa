//! What every Zentra service is built on: layered config, telemetry, the gRPC server with its
//! tower stack (health, reflection, grpc-web, tracing, metrics, fault injection, graceful
//! shutdown), the ops service, PostgreSQL with migrations, Kafka, the outbox and the inbox.
//! A service adds only its domain.

pub mod assertion;
pub mod audit;
pub mod bin_support;
pub mod circuit_breaker;
pub mod client;
pub mod commands;
pub mod config;
pub mod db;
pub mod dead_letters;
pub mod deadline;
pub mod events;
pub mod faults;
pub mod gauges;
pub mod group_commit;
pub mod idempotency;
pub mod inbox;
pub mod kafka;
pub mod ops;
pub mod outbox;
pub mod paging;
pub mod pki;
pub mod platform;
pub mod redact;
pub mod retention;
pub mod rpc_stats;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod time;
pub mod validate;

pub use tokio_util::sync::CancellationToken;
