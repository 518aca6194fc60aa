//! The signed-in caller: its key (kept in this tab's session storage), identity, role and the
//! operator tools the gateway links to. Pages read it from the context.

use leptos::prelude::*;
use zentra_proto::gateway::v1 as gateway;

use crate::api::{Api, describe};

const KEY_ITEM: &str = "zentra-api-key";

/// What a caller may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads.
    Viewer,
    /// Orders, sagas, dead letters.
    Operator,
    /// Faults, log levels, configuration.
    Admin,
}

impl Role {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// The signed-in caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    key: String,
    /// As the gateway identified it.
    pub caller: String,
    /// Its role.
    pub role: Role,
    /// Operator tools: name and URL.
    pub links: Vec<(String, String)>,
    /// Whether the gateway reads the processes' history from a Prometheus.
    pub service_history: bool,
}

impl Session {
    /// A connection with this caller's key.
    pub fn api(&self) -> Api {
        Api::new(&self.key)
    }

    /// Whether the role allows `needed`.
    pub fn can(&self, needed: Role) -> bool {
        self.role >= needed
    }

    /// Asks the gateway who `key` is.
    pub async fn open(key: &str) -> Result<Self, String> {
        let api = Api::new(key);
        let session = api
            .gateway()
            .get_session(api.call(gateway::GetSessionRequest {}))
            .await
            .map_err(|status| describe(&status))?
            .into_inner();
        let role = match gateway::Role::try_from(session.role) {
            Ok(gateway::Role::Admin) => Role::Admin,
            Ok(gateway::Role::Operator) => Role::Operator,
            _ => Role::Viewer,
        };
        Ok(Self {
            key: key.to_owned(),
            caller: session.caller_id,
            role,
            links: session
                .links
                .into_iter()
                .map(|link| (link.name, link.url))
                .collect(),
            service_history: session.service_history,
        })
    }
}

fn storage() -> Option<web_sys::Storage> {
    web_sys::window().and_then(|window| window.session_storage().ok().flatten())
}

/// The key kept from an earlier sign-in in this tab.
pub fn stored_key() -> Option<String> {
    storage().and_then(|storage| storage.get_item(KEY_ITEM).ok().flatten())
}

/// Keeps the key for this tab, or forgets it.
pub fn store_key(key: Option<&str>) {
    if let Some(storage) = storage() {
        let _ = match key {
            Some(key) => storage.set_item(KEY_ITEM, key),
            None => storage.remove_item(KEY_ITEM),
        };
    }
}

/// The current session (pages are shown only when there is one).
pub fn use_session() -> Session {
    expect_context::<RwSignal<Option<Session>>>()
        .get_untracked()
        .expect("pages render only when signed in")
}
