//! The gRPC face of the notification service: reads only.

use tonic::{Request, Response, Status};
use zentra_proto::{common::v1::PageResponse, notification::v1 as pb};
use zentra_runtime::{
    paging::Page,
    status::{Violations, parse_uuid},
    time::chrono_to_timestamp,
};

use crate::{
    error::NotificationError,
    store::{self, Attempt, Notification},
};

/// Implements `zentra.notification.v1.NotificationService`.
pub struct NotificationApi {
    db: sea_orm::DatabaseConnection,
}

impl NotificationApi {
    /// The API over `db`.
    pub fn new(db: sea_orm::DatabaseConnection) -> Self {
        Self { db }
    }
}

fn status(text: &str) -> pb::NotificationStatus {
    match text {
        "PENDING" => pb::NotificationStatus::Pending,
        "SENT" => pb::NotificationStatus::Sent,
        "RETRYING" => pb::NotificationStatus::Retrying,
        "DEAD_LETTERED" => pb::NotificationStatus::DeadLettered,
        _ => pb::NotificationStatus::Unspecified,
    }
}

fn to_proto(notification: &Notification, attempts: &[Attempt]) -> pb::Notification {
    pb::Notification {
        notification_id: notification.id.to_string(),
        customer_id: notification.customer_id.clone(),
        order_id: notification.order_id.to_string(),
        channel: pb::NotificationChannel::Email as i32,
        recipient: notification.recipient.clone(),
        subject: notification.subject.clone(),
        body: notification.body.clone(),
        trigger_event_id: notification.trigger_event_id.to_string(),
        trigger_event_type: notification.trigger_event_type.clone(),
        status: status(&notification.status) as i32,
        attempts: attempts
            .iter()
            .filter(|a| a.notification_id == notification.id)
            .map(|a| pb::DeliveryAttempt {
                attempt_number: a.attempt,
                attempt_time: Some(chrono_to_timestamp(a.attempted_at)),
                outcome: if a.outcome == "DELIVERED" {
                    pb::DeliveryOutcome::Delivered
                } else {
                    pb::DeliveryOutcome::TransientFailure
                } as i32,
                error: a.error.clone(),
            })
            .collect(),
        next_attempt_time: notification.next_attempt_at.map(chrono_to_timestamp),
        sent_time: notification.sent_at.map(chrono_to_timestamp),
        create_time: Some(chrono_to_timestamp(notification.created_at)),
        update_time: Some(chrono_to_timestamp(notification.updated_at)),
    }
}

#[tonic::async_trait]
impl pb::notification_service_server::NotificationService for NotificationApi {
    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let page = Page::parse(request.page.as_ref(), &mut violations);
        let order_id = (!request.order_id.is_empty())
            .then(|| parse_uuid("order_id", &request.order_id, &mut violations))
            .flatten();
        let customer_id = (!request.customer_id.is_empty()).then_some(request.customer_id.as_str());
        if customer_id.is_some_and(|id| id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()))
        {
            violations.add("customer_id", "must be 1..=64 printable ASCII characters");
        }
        if request.order_id.is_empty() && request.customer_id.is_empty() {
            violations.add("order_id", "order_id or customer_id is required");
        }
        let status_filter = match pb::NotificationStatus::try_from(request.status) {
            Ok(pb::NotificationStatus::Unspecified) => None,
            Ok(pb::NotificationStatus::Pending) => Some("PENDING"),
            Ok(pb::NotificationStatus::Sent) => Some("SENT"),
            Ok(pb::NotificationStatus::Retrying) => Some("RETRYING"),
            Ok(pb::NotificationStatus::DeadLettered) => Some("DEAD_LETTERED"),
            Err(_) => {
                violations.add("status", "is not a NotificationStatus");
                None
            }
        };
        let after = page.uuid_cursor(&mut violations);
        violations.into_result()?;
        let mut rows = store::list(
            &self.db,
            after,
            order_id,
            customer_id,
            status_filter,
            page.size + 1,
        )
        .await
        .map_err(NotificationError::from)?;
        let next_page_token = page.finish(&mut rows, |n| n.id.to_string());
        let attempts = store::attempts(&self.db, rows.iter().map(|n| n.id).collect())
            .await
            .map_err(NotificationError::from)?;
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: rows.iter().map(|n| to_proto(n, &attempts)).collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }

    async fn get_notification(
        &self,
        request: Request<pb::GetNotificationRequest>,
    ) -> Result<Response<pb::GetNotificationResponse>, Status> {
        let mut violations = Violations::new();
        let Some(id) = parse_uuid(
            "notification_id",
            &request.get_ref().notification_id,
            &mut violations,
        ) else {
            return Err(violations.into_status());
        };
        let notification = store::notification(&self.db, id).await?;
        let attempts = store::attempts(&self.db, vec![id])
            .await
            .map_err(NotificationError::from)?;
        Ok(Response::new(pb::GetNotificationResponse {
            notification: Some(to_proto(&notification, &attempts)),
        }))
    }
}
