//! Inventory's errors and their one mapping to gRPC statuses.

use sea_orm::DbErr;
use tonic::Status;
use zentra_runtime::{idempotency::IdempotencyError, status::Violations};

/// Everything an inventory operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The request is malformed.
    #[error("invalid request")]
    Invalid(Violations),
    /// No product has this SKU.
    #[error("product {sku} not found")]
    ProductNotFound {
        /// The SKU asked for.
        sku: String,
    },
    /// A product with this SKU exists.
    #[error("product {sku} already exists")]
    ProductExists {
        /// The SKU.
        sku: String,
    },
    /// No reservation has this id.
    #[error("reservation {reservation_id} not found")]
    ReservationNotFound {
        /// The id asked for.
        reservation_id: String,
    },
    /// Not enough available stock.
    #[error("insufficient stock for {sku}: requested {requested}, available {available}")]
    InsufficientStock {
        /// The SKU that is short.
        sku: String,
        /// Units asked for.
        requested: i64,
        /// Units available.
        available: i64,
    },
    /// The reservation's state does not allow the action.
    #[error("reservation {reservation_id} is {status} and cannot be {action}")]
    IllegalTransition {
        /// The reservation.
        reservation_id: String,
        /// Its state.
        status: &'static str,
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

impl From<IdempotencyError> for InventoryError {
    fn from(error: IdempotencyError) -> Self {
        match error {
            IdempotencyError::Database(error) => Self::Database(error),
            reused @ IdempotencyError::KeyReused { .. } => Self::KeyReused(reused),
        }
    }
}

impl From<Violations> for InventoryError {
    fn from(violations: Violations) -> Self {
        Self::Invalid(violations)
    }
}

impl From<InventoryError> for Status {
    fn from(error: InventoryError) -> Self {
        match error {
            InventoryError::Invalid(violations) => violations.into_status(),
            error @ (InventoryError::ProductNotFound { .. }
            | InventoryError::ReservationNotFound { .. }) => Status::not_found(error.to_string()),
            error @ (InventoryError::ProductExists { .. } | InventoryError::KeyReused(_)) => {
                Status::already_exists(error.to_string())
            }
            error @ (InventoryError::InsufficientStock { .. }
            | InventoryError::IllegalTransition { .. }) => {
                Status::failed_precondition(error.to_string())
            }
            InventoryError::Database(error) => zentra_runtime::status::database_error(&error),
        }
    }
}
