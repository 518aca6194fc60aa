//! Integration tests of the gateway in front of real services, PostgreSQL, Kafka and Redis.

mod access;
mod audit;
mod faults;
mod grpc_web;
mod helpers;
mod minimisation;
mod mtls;
mod pricing;
mod rate_limit;
mod tls;
