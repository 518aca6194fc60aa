//! The order service's errors and their one mapping to gRPC statuses.

use sea_orm::DbErr;
use tonic::Status;

use crate::domain::pricing;
use zentra_runtime::{
    idempotency::IdempotencyError,
    status::{Preconditions, Violations},
};

/// Everything an order operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The request is malformed.
    #[error("invalid request")]
    Invalid(Violations),
    /// No order has this id.
    #[error("order {order_id} not found")]
    NotFound {
        /// The id asked for.
        order_id: String,
    },
    /// The order's status does not allow the change.
    #[error("order {order_id} is {status} and cannot become {target}")]
    IllegalTransition {
        /// The order.
        order_id: String,
        /// Its status.
        status: &'static str,
        /// The status asked for.
        target: &'static str,
    },
    /// Another change got there first (optimistic concurrency).
    #[error("order {order_id} changed concurrently: expected version {expected}, found {actual}")]
    VersionConflict {
        /// The order.
        order_id: String,
        /// The version the caller expected.
        expected: i64,
        /// The version found.
        actual: i64,
    },
    /// A line cannot be priced as asked: unknown product, another currency, or a changed price.
    #[error("the order cannot be priced as asked")]
    NotPriceable(Preconditions),
    /// The catalogue could not be asked for prices; the placement may be retried.
    #[error("the catalogue could not be asked for prices: {reason}")]
    CatalogueUnavailable {
        /// What went wrong.
        reason: String,
    },
    /// The catalogue refused this service's own price request (a bug here, not the caller's).
    #[error("the catalogue refused a price request: {reason}")]
    CatalogueRefused {
        /// Its answer.
        reason: String,
    },
    /// The idempotency key was used for another request.
    #[error(transparent)]
    KeyReused(IdempotencyError),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
}

impl From<IdempotencyError> for OrderError {
    fn from(error: IdempotencyError) -> Self {
        match error {
            IdempotencyError::Database(error) => Self::Database(error),
            reused @ IdempotencyError::KeyReused { .. } => Self::KeyReused(reused),
        }
    }
}

impl From<Violations> for OrderError {
    fn from(violations: Violations) -> Self {
        Self::Invalid(violations)
    }
}

impl From<OrderError> for Status {
    fn from(error: OrderError) -> Self {
        match error {
            OrderError::Invalid(violations) => violations.into_status(),
            error @ OrderError::NotFound { .. } => Status::not_found(error.to_string()),
            error @ OrderError::IllegalTransition { .. } => {
                Status::failed_precondition(error.to_string())
            }
            error @ OrderError::VersionConflict { .. } => Status::aborted(error.to_string()),
            OrderError::NotPriceable(failed) => {
                failed.into_status(pricing::PRICE_CHANGED, "zentra.order.v1")
            }
            error @ OrderError::CatalogueUnavailable { .. } => {
                tracing::warn!(%error, "placement refused");
                Status::unavailable(format!("{error}; retry with the same idempotency key"))
            }
            error @ OrderError::CatalogueRefused { .. } => {
                tracing::error!(%error, "placement failed");
                Status::internal("internal error")
            }
            error @ OrderError::KeyReused(_) => Status::already_exists(error.to_string()),
            OrderError::Database(error) => zentra_runtime::status::database_error(&error),
        }
    }
}
