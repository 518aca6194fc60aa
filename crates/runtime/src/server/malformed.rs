//! Requests that cannot be decoded are the caller's mistake: INVALID_ARGUMENT, not INTERNAL.
//!
//! tonic (and tonic-web) answer INTERNAL when a request's protobuf does not decode, its gRPC frame
//! is truncated or carries a compression flag without an encoding, its body is empty, or its
//! grpc-web-text is not base64. These failures happen before any handler runs, so nothing was
//! stored; the status only misleads the caller and pages the operator for a bug that is not
//! there. This layer recognises exactly those answers (a trailers-only response, the status in
//! its headers) and turns them into INVALID_ARGUMENT with a message saying what was wrong. The
//! gRPC specification asks for INTERNAL on a compression flag without an encoding; Zentra treats
//! every request it cannot read the same way, as the caller's error.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Request, Response};
use tonic::{Code, Status};
use tower::{Layer, Service};

/// What tonic and tonic-web say, at the start of their message, when a request cannot be read.
const UNREADABLE: &[(&str, &str)] = &[
    (
        "failed to decode Protobuf message",
        "the request message is not valid protobuf for this method",
    ),
    (
        "protocol error: received message with compressed-flag",
        "a frame is flagged compressed but the request names no grpc-encoding",
    ),
    (
        "protocol error: received message with invalid compression flag",
        "a frame's flag byte is neither 0 (message) nor 1 (compressed message)",
    ),
    (
        "Unexpected EOF decoding stream",
        "the request ends inside a frame (truncated)",
    ),
    (
        "Missing request message",
        "the request holds no message (empty body)",
    ),
    (
        "Error decompressing",
        "a compressed frame does not decompress",
    ),
    (
        "tonic-web: malformed base64",
        "the grpc-web-text body is not base64",
    ),
    ("tonic-web: Invalid", "the grpc-web-text body is not base64"),
    (
        "tonic-web: unexpected frame type",
        "the grpc-web request holds a frame that is not a message",
    ),
];

/// Wraps services with [`Malformed`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MalformedLayer;

impl<S> Layer<S> for MalformedLayer {
    type Service = Malformed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Malformed { inner }
    }
}

/// Answers INVALID_ARGUMENT where tonic answered INTERNAL for a request it could not read.
#[derive(Debug, Clone)]
pub struct Malformed<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for Malformed<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut response = inner.call(request).await?;
            if let Some(status) = reinterpret(response.headers()) {
                let headers = response.headers_mut();
                headers.remove(Status::GRPC_STATUS);
                headers.remove(Status::GRPC_MESSAGE);
                headers.remove("grpc-status-details-bin");
                // Only fails for a message that cannot be a header; ours always can.
                let _ = status.add_header(headers);
            }
            Ok(response)
        })
    }
}

/// The INVALID_ARGUMENT to answer instead, if `headers` are tonic's answer to an unreadable
/// request.
fn reinterpret(headers: &http::HeaderMap) -> Option<Status> {
    let status = Status::from_header_map(headers)?;
    if !matches!(
        status.code(),
        Code::Internal | Code::Cancelled | Code::Unknown
    ) {
        return None;
    }
    let (_, meaning) = UNREADABLE
        .iter()
        .find(|(prefix, _)| status.message().starts_with(prefix))?;
    Some(Status::invalid_argument(format!(
        "malformed request: {meaning} ({})",
        status.message()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(status: &Status) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        status.add_header(&mut headers).expect("header");
        headers
    }

    #[test]
    fn undecodable_requests_become_invalid_argument_and_handler_errors_stay() {
        let undecodable = Status::internal("failed to decode Protobuf message: invalid wire type");
        let answer = reinterpret(&headers_of(&undecodable)).expect("reinterpreted");
        assert_eq!(answer.code(), Code::InvalidArgument);
        assert!(answer.message().contains("not valid protobuf"));

        for kept in [
            Status::internal("internal error"),
            Status::unavailable("Missing request message."),
            Status::ok(""),
        ] {
            assert!(reinterpret(&headers_of(&kept)).is_none(), "{kept:?}");
        }
    }
}
