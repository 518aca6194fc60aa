//! Open server streams (Watch), capped per caller and for the whole gateway. A stream holds its
//! slot until its response body is dropped: when it ends, fails, or its client goes away. When
//! the gateway stops taking calls, every stream ends with UNAVAILABLE so it can drain.

use std::{
    collections::HashMap,
    future::Future as _,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Code, Status, body::Body};
use tonic_types::{ErrorDetails, StatusExt as _};

/// The slots of every open stream.
pub struct StreamSlots {
    per_caller: usize,
    total: Arc<Semaphore>,
    max_total: usize,
    callers: Mutex<HashMap<String, usize>>,
}

impl StreamSlots {
    /// At most `per_caller` streams per caller and `total` in all.
    pub fn new(per_caller: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_caller,
            total: Arc::new(Semaphore::new(total)),
            max_total: total,
            callers: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a stream of `caller` (none for open routes, which count only in the total),
    /// or RESOURCE_EXHAUSTED with RetryInfo.
    pub fn take(self: &Arc<Self>, caller: Option<&str>) -> Result<Slot, Status> {
        let permit = self.total.clone().try_acquire_owned().map_err(|_| {
            exhausted(format!(
                "{} streams are open through this gateway, the most it serves",
                self.max_total
            ))
        })?;
        if let Some(caller) = caller {
            let mut callers = lock(&self.callers);
            let open = callers.entry(caller.to_owned()).or_insert(0);
            if *open >= self.per_caller {
                return Err(exhausted(format!(
                    "you have {} streams open, the most one caller may; close one first",
                    self.per_caller
                )));
            }
            *open += 1;
        }
        Ok(Slot {
            slots: self.clone(),
            caller: caller.map(str::to_owned),
            _permit: permit,
        })
    }

    /// Streams open now for `caller`.
    pub fn open_for(&self, caller: &str) -> usize {
        lock(&self.callers).get(caller).copied().unwrap_or(0)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn exhausted(message: String) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
    )
}

/// One open stream's place; given back when dropped.
pub struct Slot {
    slots: Arc<StreamSlots>,
    caller: Option<String>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(caller) = &self.caller else {
            return;
        };
        let mut callers = lock(&self.slots.callers);
        if let Some(open) = callers.get_mut(caller) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                callers.remove(caller);
            }
        }
    }
}

/// A response body that holds its stream's slot until it is dropped, and ends with UNAVAILABLE
/// when the gateway stops taking calls, so it can drain.
pub struct Held {
    inner: Body,
    _slot: Slot,
    draining: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
}

impl Held {
    /// `inner`, holding `slot`, cut when `draining` is cancelled.
    pub fn new(inner: Body, slot: Slot, draining: CancellationToken) -> Self {
        Self {
            inner,
            _slot: slot,
            draining: Box::pin(draining.cancelled_owned()),
            ended: false,
        }
    }
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.draining.as_mut().poll(cx).is_ready() {
            self.ended = true;
            let mut trailers = http::HeaderMap::new();
            let status = Status::unavailable("the gateway is shutting down; open the stream again");
            // Only fails for a message that cannot be a header; this one can.
            let _ = status.add_header(&mut trailers);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_its_share_and_a_closed_stream_gives_its_slot_back() {
        let slots = StreamSlots::new(2, 3);
        let first = slots.take(Some("ada")).expect("first");
        let _second = slots.take(Some("ada")).expect("second");
        let refused = slots.take(Some("ada")).err().expect("third refused");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(refused.get_error_details().retry_info().is_some());
        let _other = slots.take(Some("grace")).expect("another caller");
        let full = slots.take(None).err().expect("the gateway is full");
        assert_eq!(full.code(), Code::ResourceExhausted);
        drop(first);
        assert_eq!(slots.open_for("ada"), 1);
        let _again = slots.take(Some("ada")).expect("a slot came back");
    }
}
