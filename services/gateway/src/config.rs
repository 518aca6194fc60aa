//! The gateway's own settings, under `[gateway]` (environment: `ZENTRA_GATEWAY__*`).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use zentra_runtime::config::{Secret, SecretUrl};

use crate::auth::Role;

/// The whole configuration of the gateway.
pub type Config = zentra_runtime::config::ServiceConfig<GatewayConfig>;

/// The `[gateway]` section.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct GatewayConfig {
    /// Gateway settings.
    #[serde(default)]
    pub gateway: GatewaySettings,
}

/// Routing, limits, authentication and rate limiting.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySettings {
    /// Where each service listens.
    pub upstreams: Upstreams,
    /// Request size and deadlines.
    pub limits: Limits,
    /// Who may call.
    pub auth: AuthSettings,
    /// How often.
    pub rate_limit: RateLimitSettings,
    /// The control center's built files, served on `/` (nothing is served there when unset or
    /// missing).
    pub static_dir: Option<PathBuf>,
    /// Operator tools the control center links to, by name (`grafana`, `tracing`, `prometheus`).
    pub links: BTreeMap<String, String>,
    /// The Prometheus that scrapes this deployment, `http://host:port` as the gateway reaches
    /// it: `GetServiceHistory` reads the control center's chart history from it. Unset: the
    /// charts keep only what the page saw.
    pub prometheus_url: Option<String>,
}

/// The services behind the gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Upstreams {
    /// Inventory service URL.
    pub inventory: String,
    /// Order service URL.
    pub order: String,
    /// Payment service URL.
    pub payment: String,
    /// Fulfillment service URL.
    pub fulfillment: String,
    /// Notification service URL.
    pub notification: String,
    /// Saga orchestrator URL.
    pub saga: String,
    /// Deadline for opening a connection to one of them.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self {
            inventory: "http://127.0.0.1:50051".to_owned(),
            order: "http://127.0.0.1:50052".to_owned(),
            payment: "http://127.0.0.1:50053".to_owned(),
            fulfillment: "http://127.0.0.1:50054".to_owned(),
            notification: "http://127.0.0.1:50055".to_owned(),
            saga: "http://127.0.0.1:50056".to_owned(),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Bounds on every request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted (RESOURCE_EXHAUSTED beyond).
    pub max_request_bytes: usize,
    /// Deadline of a unary call whose caller sets none.
    #[serde(with = "humantime_serde")]
    pub default_deadline: Duration,
    /// A caller's deadline is cut to this.
    #[serde(with = "humantime_serde")]
    pub max_deadline: Duration,
    /// Deadline of a server stream (Watch) whose caller sets none; the caller reconnects after.
    #[serde(with = "humantime_serde")]
    pub stream_deadline: Duration,
    /// Server streams one caller may hold open at once.
    pub max_streams_per_caller: usize,
    /// Server streams open through this gateway at once.
    pub max_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 256 * 1024,
            default_deadline: Duration::from_secs(10),
            max_deadline: Duration::from_secs(60),
            stream_deadline: Duration::from_secs(30 * 60),
            max_streams_per_caller: 16,
            max_streams: 4096,
        }
    }
}

/// Credentials the gateway accepts.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// API keys, stored as SHA-256 hashes; the keys themselves are never in config or logs.
    pub api_keys: Vec<ApiKeyEntry>,
    /// Signed JWTs (`authorization: Bearer <jwt>`); off when unset.
    pub jwt: Option<JwtSettings>,
}

/// One API key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// Who holds it (logged and used as the rate-limit identity).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Lowercase hex SHA-256 of the key.
    pub sha256: String,
}

/// How JWTs are verified: exactly one of `hs256_secret` and `public_key_pem`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Shared secret for HS256.
    pub hs256_secret: Option<Secret>,
    /// PEM public key: Ed25519 (EdDSA) or RSA (RS256).
    pub public_key_pem: Option<String>,
    /// The claim holding the role.
    pub role_claim: String,
    /// Allowed clock difference for `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            issuer: "zentra".to_owned(),
            audience: None,
            hs256_secret: None,
            public_key_pem: None,
            role_claim: "role".to_owned(),
            leeway: Duration::from_secs(30),
        }
    }
}

/// Distributed rate limiting in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Off: no Redis round trip at all.
    pub enabled: bool,
    /// Redis URL (its password is redacted when shown).
    pub redis_url: SecretUrl,
    /// Prepended to every key, so stacks and tests sharing one Redis stay apart.
    pub key_prefix: String,
    /// The limit of each caller on each route without its own.
    pub default: Limit,
    /// Limits of single routes (`zentra.order.v1.OrderService/PlaceOrder`), per caller. Setting
    /// this table replaces the default one, which limits PlaceOrder below the platform's
    /// measured peak (docs/BENCHMARKS.md).
    pub routes: BTreeMap<String, Limit>,
    /// Each caller's budget across every route together, so more routes do not mean more calls.
    pub per_caller: Limit,
    /// Each client address's budget, spent by every call that needs credentials, whether they
    /// are right or wrong: guessing keys costs the guesser. (Behind a proxy every caller shares
    /// the proxy's address; raise it there.)
    pub per_address: Limit,
    /// What happens to reads when Redis does not answer in time.
    pub when_unavailable: UnavailablePolicy,
    /// What happens to operator and admin actions (PlaceOrder, CancelOrder, saga and dead-letter
    /// actions, faults) when Redis does not answer in time.
    pub when_unavailable_for_actions: UnavailablePolicy,
    /// How long a limit check may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            redis_url: SecretUrl::new("redis://127.0.0.1:6379"),
            key_prefix: "zentra:".to_owned(),
            default: Limit {
                per_second: 200.0,
                burst: 400,
            },
            // The measured peak is 75.9 orders/s for the whole platform (docs/BENCHMARKS.md): one
            // caller alone cannot push it past that.
            routes: BTreeMap::from([(
                "zentra.order.v1.OrderService/PlaceOrder".to_owned(),
                Limit {
                    per_second: 50.0,
                    burst: 100,
                },
            )]),
            per_caller: Limit {
                per_second: 400.0,
                burst: 800,
            },
            per_address: Limit {
                per_second: 500.0,
                burst: 1000,
            },
            when_unavailable: UnavailablePolicy::FailOpen,
            when_unavailable_for_actions: UnavailablePolicy::FailClosed,
            timeout: Duration::from_millis(100),
        }
    }
}

/// A rate: calls per second with a burst allowance.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Sustained calls per second.
    pub per_second: f64,
    /// Calls allowed at once on top of the steady rate (at least 1).
    pub burst: u32,
}

/// The policy when Redis is unreachable.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnavailablePolicy {
    /// Let the call through, count it and warn.
    FailOpen,
    /// Refuse the call with UNAVAILABLE.
    FailClosed,
}

/// Checks that cannot be expressed in types; the message names the key.
pub fn validate(settings: &GatewaySettings) -> Result<(), String> {
    let rate = &settings.rate_limit;
    for (route, limit) in [
        ("default", &rate.default),
        ("per_caller", &rate.per_caller),
        ("per_address", &rate.per_address),
    ]
    .into_iter()
    .chain(
        rate.routes
            .iter()
            .map(|(route, limit)| (route.as_str(), limit)),
    ) {
        if !(limit.per_second.is_finite() && limit.per_second > 0.0) || limit.burst == 0 {
            return Err(format!(
                "invalid config: gateway.rate_limit ({route}): per_second must be > 0 and burst >= 1"
            ));
        }
    }
    for key in &settings.auth.api_keys {
        let valid = key.sha256.len() == 64
            && key
                .sha256
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if !valid {
            return Err(format!(
                "invalid config: gateway.auth.api_keys ({}): sha256 must be 64 lowercase hex digits",
                key.name
            ));
        }
    }
    if let Some(url) = &settings.prometheus_url {
        crate::history::Prometheus::new(url)
            .map_err(|error| format!("invalid config: gateway.prometheus_url: {error}"))?;
    }
    if let Some(jwt) = &settings.auth.jwt
        && jwt.hs256_secret.is_some() == jwt.public_key_pem.is_some()
    {
        return Err(
            "invalid config: gateway.auth.jwt: set exactly one of hs256_secret and public_key_pem"
                .to_owned(),
        );
    }
    Ok(())
}
