//! Stored shipments to proto messages.

use zentra_proto::fulfillment::v1 as pb;
use zentra_runtime::time::chrono_to_timestamp;

use crate::store::Shipment;

/// A stored status as the API enum.
pub fn status(text: &str) -> pb::ShipmentStatus {
    match text {
        "PENDING" => pb::ShipmentStatus::Pending,
        "PICKING" => pb::ShipmentStatus::Picking,
        "PACKED" => pb::ShipmentStatus::Packed,
        "DISPATCHED" => pb::ShipmentStatus::Dispatched,
        "CANCELLED" => pb::ShipmentStatus::Cancelled,
        "FAILED" => pb::ShipmentStatus::Failed,
        _ => pb::ShipmentStatus::Unspecified,
    }
}

/// The stored text of an API status; `None` for UNSPECIFIED.
pub fn status_text(status: pb::ShipmentStatus) -> Option<&'static str> {
    Some(match status {
        pb::ShipmentStatus::Unspecified => return None,
        pb::ShipmentStatus::Pending => "PENDING",
        pb::ShipmentStatus::Picking => "PICKING",
        pb::ShipmentStatus::Packed => "PACKED",
        pb::ShipmentStatus::Dispatched => "DISPATCHED",
        pb::ShipmentStatus::Cancelled => "CANCELLED",
        pb::ShipmentStatus::Failed => "FAILED",
    })
}

/// Lines as the API shows them.
pub fn lines(shipment: &Shipment) -> Vec<pb::ShipmentLine> {
    shipment
        .lines
        .iter()
        .map(|(sku, quantity)| pb::ShipmentLine {
            sku: sku.clone(),
            quantity: *quantity,
        })
        .collect()
}

/// A shipment as the API shows it.
pub fn shipment(shipment: &Shipment) -> pb::Shipment {
    let row = &shipment.row;
    pb::Shipment {
        shipment_id: row.id.to_string(),
        order_id: row.order_id.to_string(),
        status: status(&row.status) as i32,
        shipping_address: Some(shipment.address.clone()),
        lines: lines(shipment),
        carrier: row.carrier.clone(),
        tracking_number: row.tracking_number.clone(),
        failure_reason: row.failure_reason.clone(),
        cancellation_reason: row.cancellation_reason.clone(),
        create_time: Some(chrono_to_timestamp(row.created_at)),
        picking_start_time: row.picking_at.map(chrono_to_timestamp),
        pack_time: row.packed_at.map(chrono_to_timestamp),
        dispatch_time: row.dispatched_at.map(chrono_to_timestamp),
        cancel_time: row.cancelled_at.map(chrono_to_timestamp),
        fail_time: row.failed_at.map(chrono_to_timestamp),
        update_time: Some(chrono_to_timestamp(row.updated_at)),
    }
}
