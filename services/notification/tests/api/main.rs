//! Notification service integration tests: the real service against a fresh PostgreSQL
//! database, the shared broker and a real SMTP server (aiosmtpd) on 127.0.0.1.

mod delivery;
mod helpers;
