//! The payment processor behind a trait, and a simulated processor whose behaviour the payment
//! method token chooses, so every scenario is reproducible:
//!
//! | token | outcome |
//! | --- | --- |
//! | `tok_decline` | declined: card declined |
//! | `tok_insufficient_funds` | declined: insufficient funds |
//! | `tok_timeout` | answers only after `simulated_delay` (beyond a caller's deadline), then approves |
//! | `tok_transient` | fails with a transient processor error the first time per idempotency key, then approves |
//! | any other `tok_…` | approved |
//!
//! Like a real processor, it is idempotent by key: a retried authorization returns the same
//! reference instead of charging twice.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;

/// What the processor said about an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    /// Approved, with the processor's reference.
    Approved {
        /// Processor reference.
        reference: String,
    },
    /// Declined.
    Declined {
        /// Why.
        reason: DeclineReason,
        /// The processor's message.
        message: String,
    },
}

/// Decline reasons the processor reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclineReason {
    /// The issuer declined.
    CardDeclined,
    /// Not enough funds.
    InsufficientFunds,
}

impl DeclineReason {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CardDeclined => "CARD_DECLINED",
            Self::InsufficientFunds => "INSUFFICIENT_FUNDS",
        }
    }
}

/// The processor could not answer; worth retrying with the same key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("payment processor unavailable: {0}")]
pub struct ProcessorUnavailable(pub String);

/// A payment processor.
pub trait PaymentProcessor: Send + Sync + 'static {
    /// Authorizes `amount_minor` of `currency` on the token; idempotent by `key`.
    fn authorize<'a>(
        &'a self,
        token: &'a str,
        currency: &'a str,
        amount_minor: i64,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Authorization, ProcessorUnavailable>>;
}

/// The built-in simulated processor.
#[derive(Clone)]
pub struct SimulatedProcessor {
    delay: Duration,
    seen: Arc<Mutex<HashMap<String, u32>>>,
}

impl SimulatedProcessor {
    /// A simulator whose `tok_timeout` answers after `delay`.
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            seen: Arc::default(),
        }
    }

    fn attempt(&self, key: &str) -> u32 {
        let Ok(mut seen) = self.seen.lock() else {
            return 1;
        };
        let count = seen.entry(key.to_owned()).or_insert(0);
        *count += 1;
        *count
    }
}

impl PaymentProcessor for SimulatedProcessor {
    fn authorize<'a>(
        &'a self,
        token: &'a str,
        _currency: &'a str,
        _amount_minor: i64,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Authorization, ProcessorUnavailable>> {
        Box::pin(async move {
            let attempt = self.attempt(key);
            let reference = format!("sim_{:x}", fxhash(key));
            match token {
                "tok_decline" => Ok(Authorization::Declined {
                    reason: DeclineReason::CardDeclined,
                    message: "the issuer declined the card".to_owned(),
                }),
                "tok_insufficient_funds" => Ok(Authorization::Declined {
                    reason: DeclineReason::InsufficientFunds,
                    message: "insufficient funds".to_owned(),
                }),
                "tok_timeout" => {
                    tokio::time::sleep(self.delay).await;
                    Ok(Authorization::Approved { reference })
                }
                "tok_transient" if attempt == 1 => Err(ProcessorUnavailable(
                    "simulated transient error; retry with the same key".to_owned(),
                )),
                _ => Ok(Authorization::Approved { reference }),
            }
        })
    }
}

/// A stable, dependency-free hash for simulated references.
fn fxhash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
