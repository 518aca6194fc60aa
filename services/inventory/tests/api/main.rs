//! Inventory integration tests: the real service on port 0 against a fresh PostgreSQL database
//! and the shared Kafka-protocol broker.

mod clients;
mod events;
mod helpers;
mod reservations;
mod validation;
