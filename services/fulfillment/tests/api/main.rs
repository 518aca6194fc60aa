//! Fulfillment service integration tests: the real service on port 0 against a fresh PostgreSQL
//! database and the shared Kafka-protocol broker.

mod helpers;
mod shipments;
