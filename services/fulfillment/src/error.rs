//! The fulfillment service's errors and their one mapping to gRPC statuses.

use sea_orm::DbErr;
use tonic::Status;
use zentra_runtime::{idempotency::IdempotencyError, status::Violations};

/// Everything a fulfillment operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FulfillmentError {
    /// The request is malformed.
    #[error("invalid request")]
    Invalid(Violations),
    /// No shipment has this id.
    #[error("shipment {shipment_id} not found")]
    NotFound {
        /// The id asked for.
        shipment_id: String,
    },
    /// The order already has a shipment.
    #[error("order {order_id} already has a shipment")]
    AlreadyShipped {
        /// The order.
        order_id: String,
    },
    /// The shipment's state does not allow the operation.
    #[error("shipment {shipment_id} is {status} and cannot be {action}")]
    IllegalTransition {
        /// The shipment.
        shipment_id: String,
        /// Its status.
        status: String,
        /// What was asked.
        action: &'static str,
    },
    /// The idempotency key was used for another request.
    #[error(transparent)]
    KeyReused(IdempotencyError),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
}

impl From<IdempotencyError> for FulfillmentError {
    fn from(error: IdempotencyError) -> Self {
        match error {
            IdempotencyError::Database(error) => Self::Database(error),
            reused @ IdempotencyError::KeyReused { .. } => Self::KeyReused(reused),
        }
    }
}

impl From<Violations> for FulfillmentError {
    fn from(violations: Violations) -> Self {
        Self::Invalid(violations)
    }
}

impl From<FulfillmentError> for Status {
    fn from(error: FulfillmentError) -> Self {
        match error {
            FulfillmentError::Invalid(violations) => violations.into_status(),
            error @ FulfillmentError::NotFound { .. } => Status::not_found(error.to_string()),
            error @ (FulfillmentError::AlreadyShipped { .. } | FulfillmentError::KeyReused(_)) => {
                Status::already_exists(error.to_string())
            }
            error @ FulfillmentError::IllegalTransition { .. } => {
                Status::failed_precondition(error.to_string())
            }
            FulfillmentError::Database(error) => zentra_runtime::status::database_error(&error),
        }
    }
}
