//! The stack binary as users run it, with real services, the tests' broker and PostgreSQL.

mod helpers;
mod mtls;
mod prometheus;
mod supervisor;
mod traces;
