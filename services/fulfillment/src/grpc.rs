//! The gRPC face of the fulfillment service.

use std::collections::BTreeSet;

use tonic::{Request, Response, Status};
use zentra_proto::{common::v1::PageResponse, fulfillment::v1 as pb};
use zentra_runtime::{
    paging::Page,
    status::{Violations, check_idempotency_key, check_text, parse_uuid},
    validate::{Sku, check_address},
};

use crate::{convert, error::FulfillmentError, shipments::Shipments, store};

/// Most lines one shipment may hold.
pub const MAX_LINES: usize = 100;

/// Implements `zentra.fulfillment.v1.FulfillmentService`.
pub struct FulfillmentApi {
    shipments: Shipments,
}

impl FulfillmentApi {
    /// The API over `shipments`.
    pub fn new(shipments: Shipments) -> Self {
        Self { shipments }
    }

    /// The fulfillment database.
    pub fn db(&self) -> &sea_orm::DatabaseConnection {
        self.shipments.db()
    }
}

fn parse_lines(lines: &[pb::ShipmentLine], violations: &mut Violations) -> Vec<(String, i64)> {
    if lines.is_empty() || lines.len() > MAX_LINES {
        violations.add("lines", format!("must hold 1..={MAX_LINES} lines"));
    }
    let mut seen = BTreeSet::new();
    let mut parsed = Vec::new();
    for (index, line) in lines.iter().take(MAX_LINES).enumerate() {
        let sku = Sku::parse(&format!("lines[{index}].sku"), &line.sku, violations);
        if !(1..=1_000_000).contains(&line.quantity) {
            violations.add(format!("lines[{index}].quantity"), "must be 1..=1000000");
        }
        if let Some(sku) = sku {
            if !seen.insert(sku.clone()) {
                violations.add(format!("lines[{index}].sku"), "appears more than once");
            }
            parsed.push((sku.to_string(), line.quantity));
        }
    }
    parsed
}

#[tonic::async_trait]
impl pb::fulfillment_service_server::FulfillmentService for FulfillmentApi {
    async fn create_shipment(
        &self,
        request: Request<pb::CreateShipmentRequest>,
    ) -> Result<Response<pb::CreateShipmentResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        let order_id = parse_uuid("order_id", &request.order_id, &mut violations);
        check_address(
            "shipping_address",
            request.shipping_address.as_ref(),
            &mut violations,
        );
        let lines = parse_lines(&request.lines, &mut violations);
        let (Some(order_id), Some(address), true) = (
            order_id,
            request.shipping_address.as_ref(),
            violations.is_empty(),
        ) else {
            return Err(violations.into_status());
        };
        let shipments = self.shipments.clone();
        let address = address.clone();
        let done = self
            .shipments
            .group()
            .idempotent("CreateShipment", &request, move |tx| {
                Box::pin(async move {
                    let shipment = shipments.create(tx, order_id, &address, &lines).await?;
                    Ok::<_, FulfillmentError>(pb::CreateShipmentResponse {
                        shipment: Some(convert::shipment(&shipment)),
                    })
                })
            })
            .await?;
        self.shipments.committed(done.emitted);
        let shipment_id = done.value.shipment.as_ref().map(|s| s.shipment_id.as_str());
        tracing::info!(shipment_id, order_id = %order_id, "shipment created");
        Ok(Response::new(done.value))
    }

    async fn cancel_shipment(
        &self,
        request: Request<pb::CancelShipmentRequest>,
    ) -> Result<Response<pb::CancelShipmentResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        check_idempotency_key(&request.idempotency_key, &mut violations);
        let id = parse_uuid("shipment_id", &request.shipment_id, &mut violations);
        check_text("reason", &request.reason, 500, &mut violations);
        let (Some(id), true) = (id, violations.is_empty()) else {
            return Err(violations.into_status());
        };
        let shipments = self.shipments.clone();
        let reason = request.reason.trim().to_owned();
        let done = self
            .shipments
            .group()
            .idempotent("CancelShipment", &request, move |tx| {
                Box::pin(async move {
                    let shipment = shipments.cancel(tx, id, &reason).await?;
                    Ok::<_, FulfillmentError>(pb::CancelShipmentResponse {
                        shipment: Some(convert::shipment(&shipment)),
                    })
                })
            })
            .await?;
        self.shipments.committed(done.emitted);
        tracing::info!(shipment_id = %id, "shipment cancelled");
        Ok(Response::new(done.value))
    }

    async fn get_shipment(
        &self,
        request: Request<pb::GetShipmentRequest>,
    ) -> Result<Response<pb::GetShipmentResponse>, Status> {
        let mut violations = Violations::new();
        let Some(id) = parse_uuid(
            "shipment_id",
            &request.get_ref().shipment_id,
            &mut violations,
        ) else {
            return Err(violations.into_status());
        };
        let shipment = store::shipment(self.shipments.db(), id).await?;
        Ok(Response::new(pb::GetShipmentResponse {
            shipment: Some(convert::shipment(&shipment)),
        }))
    }

    async fn list_shipments(
        &self,
        request: Request<pb::ListShipmentsRequest>,
    ) -> Result<Response<pb::ListShipmentsResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let page = Page::parse(request.page.as_ref(), &mut violations);
        let order_id = (!request.order_id.is_empty())
            .then(|| parse_uuid("order_id", &request.order_id, &mut violations))
            .flatten();
        let status = match pb::ShipmentStatus::try_from(request.status) {
            Ok(status) => convert::status_text(status),
            Err(_) => {
                violations.add("status", "is not a ShipmentStatus");
                None
            }
        };
        let after = page.uuid_cursor(&mut violations);
        violations.into_result()?;
        let mut shipments =
            store::list(self.shipments.db(), after, order_id, status, page.size + 1)
                .await
                .map_err(FulfillmentError::from)?;
        let next_page_token = page.finish(&mut shipments, |s| s.row.id.to_string());
        Ok(Response::new(pb::ListShipmentsResponse {
            shipments: shipments.iter().map(convert::shipment).collect(),
            page: Some(PageResponse { next_page_token }),
        }))
    }
}
