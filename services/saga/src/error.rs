//! The saga orchestrator's errors and their one mapping to gRPC statuses.

use sea_orm::DbErr;
use tonic::Status;
use zentra_runtime::{idempotency::IdempotencyError, status::Violations};

/// Everything a saga API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// The request is malformed.
    #[error("invalid request")]
    Invalid(Violations),
    /// No saga (or order) has this id.
    #[error("{what} {id} not found")]
    NotFound {
        /// "saga", "saga of order", "order" or "circuit breaker".
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The saga's state does not allow the action.
    #[error("{0}")]
    Refused(String),
    /// The idempotency key was used for another request.
    #[error(transparent)]
    KeyReused(IdempotencyError),
    /// A downstream service failed to answer (order lookup of StartSaga).
    #[error("order service: {0}")]
    Downstream(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
}

impl From<IdempotencyError> for SagaError {
    fn from(error: IdempotencyError) -> Self {
        match error {
            IdempotencyError::Database(error) => Self::Database(error),
            reused @ IdempotencyError::KeyReused { .. } => Self::KeyReused(reused),
        }
    }
}

impl From<Violations> for SagaError {
    fn from(violations: Violations) -> Self {
        Self::Invalid(violations)
    }
}

impl From<SagaError> for Status {
    fn from(error: SagaError) -> Self {
        match error {
            SagaError::Invalid(violations) => violations.into_status(),
            error @ SagaError::NotFound { .. } => Status::not_found(error.to_string()),
            SagaError::Refused(reason) => Status::failed_precondition(reason),
            error @ SagaError::KeyReused(_) => Status::already_exists(error.to_string()),
            error @ SagaError::Downstream(_) => Status::unavailable(error.to_string()),
            SagaError::Database(error) => zentra_runtime::status::database_error(&error),
        }
    }
}
