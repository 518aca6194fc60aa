//! `zentra.gateway.v1.GatewayService`: the signed-in caller's identity, role and the operator
//! tools, and the processes' history from Prometheus ([`crate::history`]), for the control
//! center. The front sets the identity headers after authenticating and
//! removes any a caller sent, so they cannot be forged.

use std::collections::BTreeMap;

use tonic::{Request, Response, Status};
use zentra_proto::gateway::v1::{
    self as pb, GetServiceHistoryRequest, GetServiceHistoryResponse, GetSessionRequest,
    GetSessionResponse, gateway_service_server::GatewayService,
};

use crate::{
    auth::Role,
    front::{CALLER_HEADER, ROLE_HEADER},
    history::Prometheus,
};

/// Serves the session API.
pub struct SessionApi {
    links: BTreeMap<String, String>,
    prometheus: Option<Prometheus>,
}

impl SessionApi {
    /// With the configured tool links, and the Prometheus histories are read from.
    pub fn new(links: BTreeMap<String, String>, prometheus: Option<Prometheus>) -> Self {
        Self { links, prometheus }
    }
}

/// The caller the front identified: a request that did not come through it has none.
fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .metadata()
        .get(CALLER_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| Status::unauthenticated("call this through the gateway's front"))
}

#[tonic::async_trait]
impl GatewayService for SessionApi {
    async fn get_session(
        &self,
        request: Request<GetSessionRequest>,
    ) -> Result<Response<GetSessionResponse>, Status> {
        let caller_id = caller(&request)?;
        let role = match request
            .metadata()
            .get(ROLE_HEADER)
            .and_then(|value| value.to_str().ok())
        {
            Some("viewer") => pb::Role::Viewer,
            Some("operator") => pb::Role::Operator,
            Some("admin") => pb::Role::Admin,
            _ => pb::Role::Unspecified,
        };
        Ok(Response::new(GetSessionResponse {
            caller_id,
            role: role as i32,
            links: self
                .links
                .iter()
                .map(|(name, url)| pb::ToolLink {
                    name: name.clone(),
                    url: url.clone(),
                })
                .collect(),
            service_history: self.prometheus.is_some(),
        }))
    }

    async fn get_service_history(
        &self,
        request: Request<GetServiceHistoryRequest>,
    ) -> Result<Response<GetServiceHistoryResponse>, Status> {
        caller(&request)?;
        let Some(prometheus) = &self.prometheus else {
            return Err(Status::failed_precondition(
                "this gateway has no Prometheus to read history from (gateway.prometheus_url; \
                 `just up --prometheus` runs one)",
            ));
        };
        let request = request.into_inner();
        let history = prometheus.history(&request.service, request.window).await?;
        Ok(Response::new(history))
    }
}

/// The header value of a role.
pub fn role_header(role: Role) -> &'static str {
    role.as_str()
}
