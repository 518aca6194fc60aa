//! Stored rows to proto messages.

use zentra_proto::{common::v1::Money, inventory::v1 as pb};
use zentra_runtime::time::chrono_to_timestamp;

use crate::store::{ProductRow, Reservation, ReservationState};

/// A product row as the API shows it.
pub fn product(row: ProductRow) -> pb::Product {
    pb::Product {
        sku: row.sku,
        name: row.name,
        available: row.available,
        reserved: row.reserved,
        sold: row.sold,
        low_stock_threshold: row.low_stock_threshold,
        unit_price: Some(Money {
            currency_code: row.currency,
            amount_minor: row.price_minor,
        }),
        create_time: Some(chrono_to_timestamp(row.created_at)),
        update_time: Some(chrono_to_timestamp(row.updated_at)),
    }
}

/// Lines as the API shows them.
pub fn lines(lines: &[(String, i64)]) -> Vec<pb::ReservationLine> {
    lines
        .iter()
        .map(|(sku, quantity)| pb::ReservationLine {
            sku: sku.clone(),
            quantity: *quantity,
        })
        .collect()
}

/// A reservation as the API shows it.
pub fn reservation(reservation: &Reservation) -> pb::Reservation {
    pb::Reservation {
        reservation_id: reservation.id.to_string(),
        order_id: reservation.order_id.to_string(),
        lines: lines(&reservation.lines),
        status: status(reservation.state) as i32,
        expire_time: reservation
            .pinned_at
            .is_none()
            .then(|| chrono_to_timestamp(reservation.expires_at)),
        create_time: Some(chrono_to_timestamp(reservation.created_at)),
        update_time: Some(chrono_to_timestamp(reservation.updated_at)),
        release_reason: reservation.release_reason.clone(),
        pin_time: reservation.pinned_at.map(chrono_to_timestamp),
    }
}

/// A stored state as the API enum.
pub fn status(state: ReservationState) -> pb::ReservationStatus {
    match state {
        ReservationState::Pending => pb::ReservationStatus::Pending,
        ReservationState::Confirmed => pb::ReservationStatus::Confirmed,
        ReservationState::Released => pb::ReservationStatus::Released,
        ReservationState::Expired => pb::ReservationStatus::Expired,
    }
}
