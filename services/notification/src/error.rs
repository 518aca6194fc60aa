//! The notification service's errors and their one mapping to gRPC statuses.

use sea_orm::DbErr;
use tonic::Status;

/// Everything a notification read can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    /// No notification has this id.
    #[error("notification {notification_id} not found")]
    NotFound {
        /// The id asked for.
        notification_id: String,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
}

impl From<NotificationError> for Status {
    fn from(error: NotificationError) -> Self {
        match error {
            error @ NotificationError::NotFound { .. } => Status::not_found(error.to_string()),
            NotificationError::Database(error) => zentra_runtime::status::database_error(&error),
        }
    }
}
