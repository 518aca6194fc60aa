//! `zentra.gateway.v1.GatewayService`: the signed-in caller's identity, role and the operator
//! tools, for the control center. The front sets the identity headers after authenticating and
//! removes any a caller sent, so they cannot be forged.

use std::collections::BTreeMap;

use tonic::{Request, Response, Status};
use zentra_proto::gateway::v1::{
    self as pb, GetSessionRequest, GetSessionResponse, gateway_service_server::GatewayService,
};

use crate::{
    auth::Role,
    front::{CALLER_HEADER, ROLE_HEADER},
};

/// Serves the session API.
pub struct SessionApi {
    links: BTreeMap<String, String>,
}

impl SessionApi {
    /// With the configured tool links.
    pub fn new(links: BTreeMap<String, String>) -> Self {
        Self { links }
    }
}

#[tonic::async_trait]
impl GatewayService for SessionApi {
    async fn get_session(
        &self,
        request: Request<GetSessionRequest>,
    ) -> Result<Response<GetSessionResponse>, Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let caller_id = header(CALLER_HEADER)
            .ok_or_else(|| Status::unauthenticated("call this through the gateway's front"))?;
        let role = match header(ROLE_HEADER).as_deref() {
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
        }))
    }
}

/// The header value of a role.
pub fn role_header(role: Role) -> &'static str {
    role.as_str()
}
