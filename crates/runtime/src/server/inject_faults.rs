//! Applies the service's injected faults to its domain RPCs.

use std::{
    collections::HashSet,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use http::{Request, Response};
use tower::{Layer, Service};

use crate::faults::Faults;

/// Wraps services with [`InjectFaults`].
#[derive(Clone)]
pub struct InjectFaultsLayer {
    faults: Faults,
    domain_services: Arc<HashSet<String>>,
}

impl InjectFaultsLayer {
    /// Faults apply only to paths of `domain_services`.
    pub fn new(faults: Faults, domain_services: impl IntoIterator<Item = String>) -> Self {
        Self {
            faults,
            domain_services: Arc::new(domain_services.into_iter().collect()),
        }
    }
}

impl<S> Layer<S> for InjectFaultsLayer {
    type Service = InjectFaults<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InjectFaults {
            inner,
            faults: self.faults.clone(),
            domain_services: self.domain_services.clone(),
        }
    }
}

/// Delays or rejects domain RPCs as the injected faults say.
#[derive(Clone)]
pub struct InjectFaults<S> {
    inner: S,
    faults: Faults,
    domain_services: Arc<HashSet<String>>,
}

impl<S, B> Service<Request<B>> for InjectFaults<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
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
        let is_domain = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|path| path.split_once('/'))
            .is_some_and(|(service, _)| self.domain_services.contains(service));
        if !is_domain {
            return Box::pin(inner.call(request));
        }
        let decision = self.faults.decide();
        Box::pin(async move {
            if let Some(delay) = decision.delay {
                tokio::time::sleep(delay).await;
            }
            match decision.reject {
                Some(status) => Ok(status.into_http()),
                None => inner.call(request).await,
            }
        })
    }
}
