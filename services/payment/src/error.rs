//! The payment service's errors and their one mapping to gRPC statuses.

use sea_orm::DbErr;
use tonic::Status;
use zentra_runtime::{idempotency::IdempotencyError, status::Violations};

use crate::processor::ProcessorUnavailable;

/// Everything a payment operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    /// The request is malformed.
    #[error("invalid request")]
    Invalid(Violations),
    /// No payment has this id.
    #[error("payment {payment_id} not found")]
    NotFound {
        /// The id asked for.
        payment_id: String,
    },
    /// The payment's state or amounts do not allow the operation.
    #[error("payment {payment_id}: {reason}")]
    Refused {
        /// The payment.
        payment_id: String,
        /// Why, for the caller.
        reason: String,
    },
    /// The processor did not answer; retry with the same key.
    #[error(transparent)]
    Processor(#[from] ProcessorUnavailable),
    /// The idempotency key was used for another request.
    #[error(transparent)]
    KeyReused(IdempotencyError),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
}

impl From<IdempotencyError> for PaymentError {
    fn from(error: IdempotencyError) -> Self {
        match error {
            IdempotencyError::Database(error) => Self::Database(error),
            reused @ IdempotencyError::KeyReused { .. } => Self::KeyReused(reused),
        }
    }
}

impl From<Violations> for PaymentError {
    fn from(violations: Violations) -> Self {
        Self::Invalid(violations)
    }
}

impl From<PaymentError> for Status {
    fn from(error: PaymentError) -> Self {
        match error {
            PaymentError::Invalid(violations) => violations.into_status(),
            error @ PaymentError::NotFound { .. } => Status::not_found(error.to_string()),
            error @ PaymentError::Refused { .. } => Status::failed_precondition(error.to_string()),
            error @ PaymentError::Processor(_) => Status::unavailable(error.to_string()),
            error @ PaymentError::KeyReused(_) => Status::already_exists(error.to_string()),
            PaymentError::Database(error) => zentra_runtime::status::database_error(&error),
        }
    }
}
