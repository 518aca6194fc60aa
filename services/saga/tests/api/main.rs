//! Integration tests of the saga orchestrator against the real services, PostgreSQL and broker.

mod bulk;
mod helpers;
mod operator;
mod outcomes;
mod resilience;
mod store;
mod watch;
