//! The gRPC face of the order service: validate, run the operation idempotently, convert.

use tonic::{Request, Response, Status};
use uuid::Uuid;
use zentra_proto::{common::v1::PageResponse, order::v1 as pb};
use zentra_runtime::{
    fresh_or_replay,
    idempotency::IdempotentRequest,
    paging::Page,
    redact,
    status::{Violations, check_idempotency_key, check_text, parse_uuid},
    time::timestamp_to_chrono,
};

use crate::{
    catalogue::Catalogue,
    convert,
    domain::{OrderRequest, OrderState, check_customer_id},
    error::OrderError,
    orders::Orders,
    store::{self, Change, Filter},
};

/// Implements `zentra.order.v1.OrderService`.
pub struct OrderApi {
    orders: Orders,
    catalogue: Catalogue,
}

impl OrderApi {
    /// The API over `orders`, pricing placements from `catalogue`.
    pub fn new(orders: Orders, catalogue: Catalogue) -> Self {
        Self { orders, catalogue }
    }

    /// Validates a status-change request's common fields.
    fn parse_change(
        order_id: &str,
        idempotency_key: &str,
        expected_version: i64,
        reason: Option<&str>,
    ) -> Result<Uuid, Status> {
        let mut violations = Violations::new();
        check_idempotency_key(idempotency_key, &mut violations);
        let id = parse_uuid("order_id", order_id, &mut violations);
        if expected_version < 0 {
            violations.add("expected_version", "must not be negative");
        }
        if let Some(reason) = reason {
            check_text("reason", reason, 500, &mut violations);
        }
        match id.filter(|_| violations.is_empty()) {
            Some(id) => Ok(id),
            None => Err(violations.into_status()),
        }
    }

    /// Applies a validated status change idempotently, in the orders' group commit, and answers
    /// with the order after it.
    async fn apply_change<Q, R>(
        &self,
        scope: &'static str,
        request: &Q,
        id: Uuid,
        change: Change<'_>,
        respond: fn(pb::Order) -> R,
    ) -> Result<Response<R>, Status>
    where
        Q: IdempotentRequest + Sync,
        R: prost::Message + Default + 'static,
    {
        let orders = self.orders.clone();
        let (to, expected_version) = (change.to, change.expected_version);
        let cause = change.cause.to_owned();
        let reason = change.reason.to_owned();
        let key = change.idempotency_key.to_owned();
        let done = self
            .orders
            .group()
            .idempotent(scope, request, move |tx| {
                Box::pin(async move {
                    let change = Change {
                        to,
                        cause: &cause,
                        reason: &reason,
                        expected_version,
                        idempotency_key: &key,
                    };
                    let order = orders.change(tx, id, change).await?;
                    Ok::<_, OrderError>(respond(convert::order(&order)))
                })
            })
            .await?;
        if done.emitted {
            self.orders.committed();
        }
        tracing::info!(order_id = %id, to = to.as_str(), scope, "order status changed");
        Ok(Response::new(done.value))
    }
}

#[tonic::async_trait]
impl pb::order_service_server::OrderService for OrderApi {
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let request = request.into_inner();
        let asked = OrderRequest::parse(&request).map_err(OrderError::from)?;
        // The key is claimed first: a retry of a placed order replays it even if prices changed
        // since, and concurrent retries wait on the key instead of pricing twice.
        let tx = fresh_or_replay!(self.orders.db(), "PlaceOrder", request, OrderError);
        let prices = self.catalogue.prices(asked.skus()).await?;
        let order = asked.price(&prices).map_err(OrderError::NotPriceable)?;
        let stored = self
            .orders
            .place(tx.transaction(), &order, &request.idempotency_key)
            .await?;
        let response = pb::PlaceOrderResponse {
            order: Some(convert::order(&stored)),
        };
        tx.commit(&response).await.map_err(OrderError::from)?;
        self.orders.committed();
        tracing::info!(order_id = %stored.id, customer_id = %stored.customer_id, total_minor = stored.total_minor, "order placed");
        Ok(Response::new(response))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let mut violations = Violations::new();
        let id = parse_uuid("order_id", &request.get_ref().order_id, &mut violations);
        let Some(id) = id else {
            return Err(violations.into_status());
        };
        let viewer = redact::for_viewer(request.metadata());
        let order = store::order(self.orders.db(), id).await?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(convert::order_for(&order, viewer)),
        }))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let viewer = redact::for_viewer(request.metadata());
        let request = request.into_inner();
        let mut violations = Violations::new();
        let page = Page::parse(request.page.as_ref(), &mut violations);
        let mut filter = Filter::default();
        if request.status != 0 {
            filter.state = OrderState::from_proto(request.status);
            if filter.state.is_none() {
                violations.add("status", "is not an OrderStatus");
            }
        }
        if !request.customer_id.is_empty() {
            check_customer_id("customer_id", &request.customer_id, &mut violations);
            filter.customer_id = Some(request.customer_id.clone());
        }
        if let Some(range) = &request.create_time_range {
            filter.created_from = range.start_time.as_ref().and_then(|t| {
                timestamp_to_chrono(t, "create_time_range.start_time", &mut violations)
            });
            filter.created_to = range.end_time.as_ref().and_then(|t| {
                timestamp_to_chrono(t, "create_time_range.end_time", &mut violations)
            });
        }
        let after = page.uuid_cursor(&mut violations);
        violations.into_result()?;
        let mut orders = store::list(self.orders.db(), after, &filter, page.size + 1)
            .await
            .map_err(OrderError::from)?;
        let next_page_token = page.finish(&mut orders, |o| o.id.to_string());
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders
                .iter()
                .map(|order| convert::order_for(order, viewer))
                .collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let request = request.into_inner();
        let id = Self::parse_change(
            &request.order_id,
            &request.idempotency_key,
            request.expected_version,
            Some(&request.reason),
        )?;
        self.apply_change(
            "CancelOrder",
            &request,
            id,
            Change {
                to: OrderState::CancellationRequested,
                cause: "CUSTOMER_CANCELLATION",
                reason: request.reason.trim(),
                expected_version: request.expected_version,
                idempotency_key: &request.idempotency_key,
            },
            |order| pb::CancelOrderResponse { order: Some(order) },
        )
        .await
    }

    async fn confirm_order(
        &self,
        request: Request<pb::ConfirmOrderRequest>,
    ) -> Result<Response<pb::ConfirmOrderResponse>, Status> {
        let request = request.into_inner();
        let id = Self::parse_change(
            &request.order_id,
            &request.idempotency_key,
            request.expected_version,
            None,
        )?;
        self.apply_change(
            "ConfirmOrder",
            &request,
            id,
            Change {
                to: OrderState::Confirmed,
                cause: "SAGA_CONFIRMED",
                reason: "",
                expected_version: request.expected_version,
                idempotency_key: &request.idempotency_key,
            },
            |order| pb::ConfirmOrderResponse { order: Some(order) },
        )
        .await
    }

    async fn reject_order(
        &self,
        request: Request<pb::RejectOrderRequest>,
    ) -> Result<Response<pb::RejectOrderResponse>, Status> {
        let request = request.into_inner();
        let id = Self::parse_change(
            &request.order_id,
            &request.idempotency_key,
            request.expected_version,
            Some(&request.reason),
        )?;
        self.apply_change(
            "RejectOrder",
            &request,
            id,
            Change {
                to: OrderState::Rejected,
                cause: "SAGA_REJECTED",
                reason: request.reason.trim(),
                expected_version: request.expected_version,
                idempotency_key: &request.idempotency_key,
            },
            |order| pb::RejectOrderResponse { order: Some(order) },
        )
        .await
    }

    async fn complete_cancellation(
        &self,
        request: Request<pb::CompleteCancellationRequest>,
    ) -> Result<Response<pb::CompleteCancellationResponse>, Status> {
        let request = request.into_inner();
        let id = Self::parse_change(
            &request.order_id,
            &request.idempotency_key,
            request.expected_version,
            None,
        )?;
        self.apply_change(
            "CompleteCancellation",
            &request,
            id,
            Change {
                to: OrderState::Cancelled,
                cause: "SAGA_CANCELLATION_COMPLETED",
                reason: "",
                expected_version: request.expected_version,
                idempotency_key: &request.idempotency_key,
            },
            |order| pb::CompleteCancellationResponse { order: Some(order) },
        )
        .await
    }

    async fn get_order_history(
        &self,
        request: Request<pb::GetOrderHistoryRequest>,
    ) -> Result<Response<pb::GetOrderHistoryResponse>, Status> {
        let mut violations = Violations::new();
        let id = parse_uuid("order_id", &request.get_ref().order_id, &mut violations);
        let Some(id) = id else {
            return Err(violations.into_status());
        };
        let history = store::history(self.orders.db(), id).await?;
        Ok(Response::new(pb::GetOrderHistoryResponse {
            changes: history.iter().map(convert::change).collect(),
        }))
    }
}
