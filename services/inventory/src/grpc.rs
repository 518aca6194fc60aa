//! The gRPC face of inventory: validate, run the operation (idempotently where it mutates),
//! convert. Every failure becomes a precise status through [`InventoryError`].

use sea_orm::DatabaseTransaction;
use tonic::{Request, Response, Status};
use zentra_proto::{common::v1::PageResponse, inventory::v1 as pb};
use zentra_runtime::{
    events::tracked,
    group_commit::Work,
    idempotency::IdempotentRequest,
    paging::Page,
    status::{Violations, check_idempotency_key, check_text, parse_uuid},
};

use crate::{
    config::InventorySettings,
    convert,
    domain::{CreateProduct, ReserveStock, SetProductPrice, Sku, parse_batch_skus},
    error::InventoryError,
    stock::Stock,
    store::{self, Reservation, ReservationState},
};

/// Implements `zentra.inventory.v1.InventoryService`.
pub struct InventoryApi {
    stock: Stock,
    settings: InventorySettings,
}

impl InventoryApi {
    /// The API over `stock`. The saga's calls (reserve, pin, confirm, release) commit through
    /// its group, together when they come together.
    pub fn new(stock: Stock, settings: InventorySettings) -> Self {
        Self { stock, settings }
    }

    /// The inventory database.
    pub fn db(&self) -> &sea_orm::DatabaseConnection {
        self.stock.db()
    }

    /// Runs `change` idempotently under the request's key in the stock's group commit, and
    /// answers with the reservation after it, as `respond` wraps it.
    async fn change_reservation<Q, R, F>(
        &self,
        scope: &'static str,
        request: &Q,
        change: F,
        respond: fn(Option<pb::Reservation>) -> R,
    ) -> Result<R, Status>
    where
        Q: IdempotentRequest,
        R: prost::Message + Default + 'static,
        F: for<'t> FnOnce(Stock, &'t DatabaseTransaction) -> Work<'t, Reservation, InventoryError>
            + Send
            + 'static,
    {
        let stock = self.stock.clone();
        let done = self
            .stock
            .group()
            .idempotent(scope, request, move |tx| {
                Box::pin(async move {
                    let reservation = change(stock, tx).await?;
                    Ok::<_, InventoryError>(respond(Some(convert::reservation(&reservation))))
                })
            })
            .await?;
        if done.emitted {
            self.stock.committed();
        }
        Ok(done.value)
    }
}

#[tonic::async_trait]
impl pb::inventory_service_server::InventoryService for InventoryApi {
    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        let request = request.into_inner();
        let product = CreateProduct::parse(&request).map_err(InventoryError::from)?;
        let tx = zentra_runtime::fresh_or_replay!(
            self.stock.db(),
            "CreateProduct",
            request,
            InventoryError
        );
        let row = store::insert_product(tx.transaction(), &product).await?;
        let response = pb::CreateProductResponse {
            product: Some(convert::product(row)),
        };
        tx.commit(&response).await.map_err(InventoryError::from)?;
        tracing::info!(sku = %product.sku, stock = product.initial_stock, "product created");
        Ok(Response::new(response))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let sku = Sku::parse("sku", &request.sku, &mut violations);
        let Some(sku) = sku else {
            return Err(violations.into_status());
        };
        let row = store::product(self.stock.db(), sku.as_str()).await?;
        Ok(Response::new(pb::GetProductResponse {
            product: Some(convert::product(row)),
        }))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let page = Page::parse(request.page.as_ref(), &mut violations);
        if !request.sku_prefix.is_empty() {
            Sku::parse("sku_prefix", &request.sku_prefix, &mut violations);
        }
        violations.into_result()?;
        let mut rows = store::list_products(
            self.stock.db(),
            page.after.as_deref(),
            &request.sku_prefix,
            request.low_stock_only,
            page.size + 1,
        )
        .await
        .map_err(InventoryError::from)?;
        let next_page_token = page.finish(&mut rows, |row| row.sku.clone());
        Ok(Response::new(pb::ListProductsResponse {
            products: rows.into_iter().map(convert::product).collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }

    async fn batch_get_products(
        &self,
        request: Request<pb::BatchGetProductsRequest>,
    ) -> Result<Response<pb::BatchGetProductsResponse>, Status> {
        let skus = parse_batch_skus(&request.get_ref().skus).map_err(InventoryError::from)?;
        let rows = store::products(self.stock.db(), &skus)
            .await
            .map_err(InventoryError::from)?;
        let mut found: std::collections::HashMap<String, store::ProductRow> =
            rows.into_iter().map(|row| (row.sku.clone(), row)).collect();
        let mut response = pb::BatchGetProductsResponse::default();
        for sku in skus {
            match found.remove(sku.as_str()) {
                Some(row) => response.products.push(convert::product(row)),
                None => response.missing_skus.push(sku.to_string()),
            }
        }
        Ok(Response::new(response))
    }

    async fn set_product_price(
        &self,
        request: Request<pb::SetProductPriceRequest>,
    ) -> Result<Response<pb::SetProductPriceResponse>, Status> {
        let request = request.into_inner();
        let change = SetProductPrice::parse(&request).map_err(InventoryError::from)?;
        let tx = zentra_runtime::fresh_or_replay!(
            self.stock.db(),
            "SetProductPrice",
            request,
            InventoryError
        );
        let (row, emitted) = tracked(self.stock.set_price(tx.transaction(), &change)).await;
        let response = pb::SetProductPriceResponse {
            product: Some(convert::product(row?)),
        };
        tx.commit(&response).await.map_err(InventoryError::from)?;
        if emitted {
            self.stock.committed();
        }
        tracing::info!(sku = %change.sku, price = %change.price, "product price set");
        Ok(Response::new(response))
    }

    async fn adjust_stock(
        &self,
        request: Request<pb::AdjustStockRequest>,
    ) -> Result<Response<pb::AdjustStockResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        let sku = Sku::parse("sku", &request.sku, &mut violations);
        if request.delta == 0 || request.delta.abs() > 1_000_000_000 {
            violations.add("delta", "must be non-zero and at most 1000000000 in size");
        }
        let reason = request.reason.trim();
        check_text("reason", reason, 500, &mut violations);
        let Some(sku) = sku.filter(|_| violations.is_empty()) else {
            return Err(violations.into_status());
        };
        let tx = zentra_runtime::fresh_or_replay!(
            self.stock.db(),
            "AdjustStock",
            request,
            InventoryError
        );
        let row = store::adjust_stock(tx.transaction(), &sku, request.delta, reason).await?;
        let response = pb::AdjustStockResponse {
            product: Some(convert::product(row)),
        };
        tx.commit(&response).await.map_err(InventoryError::from)?;
        tracing::info!(sku = %sku, delta = request.delta, reason, "stock adjusted");
        Ok(Response::new(response))
    }

    async fn reserve_stock(
        &self,
        request: Request<pb::ReserveStockRequest>,
    ) -> Result<Response<pb::ReserveStockResponse>, Status> {
        let request = request.into_inner();
        let reserve =
            ReserveStock::parse(&request, self.settings.max_hold).map_err(InventoryError::from)?;
        let hold = reserve.hold.unwrap_or(self.settings.default_hold);
        let response = self
            .change_reservation(
                "ReserveStock",
                &request,
                move |stock, tx| Box::pin(async move { stock.reserve(tx, &reserve, hold).await }),
                |reservation| pb::ReserveStockResponse { reservation },
            )
            .await?;
        let reservation = response.reservation.as_ref();
        tracing::info!(
            reservation_id = reservation.map_or("", |r| r.reservation_id.as_str()),
            order_id = reservation.map_or("", |r| r.order_id.as_str()),
            "stock reserved"
        );
        Ok(Response::new(response))
    }

    async fn pin_reservation(
        &self,
        request: Request<pb::PinReservationRequest>,
    ) -> Result<Response<pb::PinReservationResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        let id = parse_uuid("reservation_id", &request.reservation_id, &mut violations);
        let Some(id) = id.filter(|_| violations.is_empty()) else {
            return Err(violations.into_status());
        };
        let response = self
            .change_reservation(
                "PinReservation",
                &request,
                move |stock, tx| Box::pin(async move { stock.pin(tx, id).await }),
                |reservation| pb::PinReservationResponse { reservation },
            )
            .await?;
        tracing::info!(reservation_id = %id, "reservation pinned");
        Ok(Response::new(response))
    }

    async fn confirm_reservation(
        &self,
        request: Request<pb::ConfirmReservationRequest>,
    ) -> Result<Response<pb::ConfirmReservationResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        let id = parse_uuid("reservation_id", &request.reservation_id, &mut violations);
        let Some(id) = id.filter(|_| violations.is_empty()) else {
            return Err(violations.into_status());
        };
        let response = self
            .change_reservation(
                "ConfirmReservation",
                &request,
                move |stock, tx| Box::pin(async move { stock.confirm(tx, id).await }),
                |reservation| pb::ConfirmReservationResponse { reservation },
            )
            .await?;
        tracing::info!(reservation_id = %id, "reservation confirmed");
        Ok(Response::new(response))
    }

    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        let id = parse_uuid("reservation_id", &request.reservation_id, &mut violations);
        let reason = request.reason.trim();
        check_text("reason", reason, 500, &mut violations);
        let Some(id) = id.filter(|_| violations.is_empty()) else {
            return Err(violations.into_status());
        };
        let why = reason.to_owned();
        let response = self
            .change_reservation(
                "ReleaseReservation",
                &request,
                move |stock, tx| Box::pin(async move { stock.release(tx, id, &why).await }),
                |reservation| pb::ReleaseReservationResponse { reservation },
            )
            .await?;
        tracing::info!(reservation_id = %id, reason, "reservation released");
        Ok(Response::new(response))
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::GetReservationResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let id = parse_uuid("reservation_id", &request.reservation_id, &mut violations);
        let Some(id) = id else {
            return Err(violations.into_status());
        };
        let reservation = store::reservation(self.stock.db(), id, false).await?;
        Ok(Response::new(pb::GetReservationResponse {
            reservation: Some(convert::reservation(&reservation)),
        }))
    }

    async fn list_reservations(
        &self,
        request: Request<pb::ListReservationsRequest>,
    ) -> Result<Response<pb::ListReservationsResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let page = Page::parse(request.page.as_ref(), &mut violations);
        let order_id = if request.order_id.is_empty() {
            None
        } else {
            parse_uuid("order_id", &request.order_id, &mut violations)
        };
        let state = match pb::ReservationStatus::try_from(request.status) {
            Ok(pb::ReservationStatus::Unspecified) => None,
            Ok(pb::ReservationStatus::Pending) => Some(ReservationState::Pending),
            Ok(pb::ReservationStatus::Confirmed) => Some(ReservationState::Confirmed),
            Ok(pb::ReservationStatus::Released) => Some(ReservationState::Released),
            Ok(pb::ReservationStatus::Expired) => Some(ReservationState::Expired),
            Err(_) => {
                violations.add("status", "is not a ReservationStatus");
                None
            }
        };
        let after = page.uuid_cursor(&mut violations);
        violations.into_result()?;
        let mut reservations =
            store::list_reservations(self.stock.db(), after, order_id, state, page.size + 1)
                .await
                .map_err(InventoryError::from)?;
        let next_page_token = page.finish(&mut reservations, |r| r.id.to_string());
        Ok(Response::new(pb::ListReservationsResponse {
            reservations: reservations.iter().map(convert::reservation).collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }
}
