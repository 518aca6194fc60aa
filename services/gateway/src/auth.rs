//! Who is calling: API keys (stored as SHA-256 hashes) and signed JWTs, each mapped to a role.
//! A key or token never reaches a log line, an error message or an upstream service.

use std::{collections::HashMap, fmt};

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::config::{AuthSettings, JwtSettings};

/// What a caller may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: orders, sagas, dead letters, health, metrics.
    Viewer,
    /// Places orders; retries, cancels and resumes sagas; replays and dismisses dead letters.
    Operator,
    /// Fault injection, log levels, effective config.
    Admin,
}

impl Role {
    /// Its name in config, tokens and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Stable identity: `key:<name>` or `jwt:<sub>`; the rate-limit key and the log field.
    pub id: String,
    /// What it may do.
    pub role: Role,
}

/// Why a request is not authenticated; the text is safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials at all.
    #[error(
        "credentials required: send `x-api-key: <key>` or `authorization: Bearer <key or JWT>`"
    )]
    Missing,
    /// An API key that is not configured.
    #[error("unknown API key")]
    UnknownKey,
    /// A JWT that does not verify or whose claims do not pass.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// A JWT was sent but the gateway accepts none.
    #[error("tokens are not accepted here: use an API key")]
    TokensDisabled,
}

impl AuthError {
    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::UnknownKey => "unknown_key",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::TokensDisabled => "tokens_disabled",
        }
    }
}

/// Turns credentials into a [`Caller`].
#[derive(Clone)]
pub struct Authenticator {
    /// SHA-256 of each key → holder.
    keys: HashMap<[u8; 32], Caller>,
    jwt: Option<JwtVerifier>,
}

#[derive(Clone)]
struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    role_claim: String,
}

/// The lowercase hex SHA-256 of an API key, as stored in config.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let mut hash = [0_u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (index, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(hash)
}

impl Authenticator {
    /// Builds the key table and the JWT verifier; the error names the bad setting.
    pub fn new(settings: &AuthSettings) -> Result<Self, String> {
        let mut keys = HashMap::new();
        for entry in &settings.api_keys {
            let hash = parse_hash(&entry.sha256)
                .ok_or_else(|| format!("api key {}: sha256 is not 64 hex digits", entry.name))?;
            keys.insert(
                hash,
                Caller {
                    id: format!("key:{}", entry.name),
                    role: entry.role,
                },
            );
        }
        let jwt = settings.jwt.as_ref().map(JwtVerifier::new).transpose()?;
        Ok(Self { keys, jwt })
    }

    /// Authenticates the request's headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let presented = headers
            .get("x-api-key")
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .or_else(|| {
                headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| {
                        value
                            .strip_prefix("Bearer ")
                            .or_else(|| value.strip_prefix("bearer "))
                    })
                    .map(str::trim)
                    .filter(|value| !value.is_empty())
            })
            .ok_or(AuthError::Missing)?;
        // A JWT has three dot-separated parts; API keys have no dots.
        if presented.bytes().filter(|byte| *byte == b'.').count() == 2 {
            let verifier = self.jwt.as_ref().ok_or(AuthError::TokensDisabled)?;
            return verifier.verify(presented);
        }
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.keys.get(&hash).cloned().ok_or(AuthError::UnknownKey)
    }
}

impl JwtVerifier {
    fn new(settings: &JwtSettings) -> Result<Self, String> {
        let (key, algorithm) = match (&settings.hs256_secret, &settings.public_key_pem) {
            (Some(secret), None) => (
                DecodingKey::from_secret(secret.expose().as_bytes()),
                Algorithm::HS256,
            ),
            (None, Some(pem)) => {
                if let Ok(key) = DecodingKey::from_ed_pem(pem.as_bytes()) {
                    (key, Algorithm::EdDSA)
                } else {
                    let key = DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| {
                        "jwt.public_key_pem is neither an Ed25519 nor an RSA public key".to_owned()
                    })?;
                    (key, Algorithm::RS256)
                }
            }
            _ => return Err("jwt: set exactly one of hs256_secret and public_key_pem".to_owned()),
        };
        // One algorithm only: a token cannot pick a weaker one (no algorithm confusion).
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[settings.issuer.as_str()]);
        match &settings.audience {
            Some(audience) => validation.set_audience(&[audience.as_str()]),
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = settings.leeway.as_secs();
        Ok(Self {
            key,
            validation,
            role_claim: settings.role_claim.clone(),
        })
    }

    fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let data = jsonwebtoken::decode::<HashMap<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|error| AuthError::InvalidToken(error.to_string()))?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .filter(|sub| !sub.is_empty() && sub.len() <= 128)
            .ok_or_else(|| AuthError::InvalidToken("sub must be a short string".to_owned()))?;
        let role = claims
            .get(&self.role_claim)
            .and_then(serde_json::Value::as_str)
            .and_then(Role::parse)
            .ok_or_else(|| {
                AuthError::InvalidToken(format!(
                    "claim `{}` must be viewer, operator or admin",
                    self.role_claim
                ))
            })?;
        Ok(Caller {
            id: format!("jwt:{subject}"),
            role,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{EncodingKey, Header};
    use zentra_runtime::config::Secret;

    use super::*;
    use crate::config::ApiKeyEntry;

    fn settings() -> AuthSettings {
        AuthSettings {
            api_keys: vec![ApiKeyEntry {
                name: "ops".to_owned(),
                role: Role::Operator,
                sha256: hash_key("zk_secret"),
            }],
            jwt: Some(JwtSettings {
                hs256_secret: Some(Secret::new("s3cret-s3cret-s3cret-s3cret-s3cret")),
                ..JwtSettings::default()
            }),
        }
    }

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
        headers
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode")
    }

    fn in_an_hour() -> u64 {
        (SystemTime::now() + Duration::from_secs(3600))
            .duration_since(UNIX_EPOCH)
            .expect("time")
            .as_secs()
    }

    #[test]
    fn an_api_key_is_recognised_by_its_hash_in_either_header() {
        let auth = Authenticator::new(&settings()).expect("settings");
        let expected = Caller {
            id: "key:ops".to_owned(),
            role: Role::Operator,
        };
        assert_eq!(
            auth.authenticate(&headers("x-api-key", "zk_secret")),
            Ok(expected.clone())
        );
        assert_eq!(
            auth.authenticate(&headers("authorization", "Bearer zk_secret")),
            Ok(expected)
        );
        assert_eq!(
            auth.authenticate(&headers("x-api-key", "zk_other")),
            Err(AuthError::UnknownKey)
        );
        assert_eq!(
            auth.authenticate(&HeaderMap::new()),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn a_signed_token_carries_subject_and_role_and_a_forged_one_is_refused() {
        let auth = Authenticator::new(&settings()).expect("settings");
        let secret = "s3cret-s3cret-s3cret-s3cret-s3cret";
        let good = token(
            serde_json::json!({"sub": "ana", "iss": "zentra", "role": "admin", "exp": in_an_hour()}),
            secret,
        );
        assert_eq!(
            auth.authenticate(&headers("authorization", &format!("Bearer {good}"))),
            Ok(Caller {
                id: "jwt:ana".to_owned(),
                role: Role::Admin
            })
        );
        let refused = [
            token(
                serde_json::json!({"sub": "ana", "iss": "zentra", "role": "admin", "exp": in_an_hour()}),
                "another-secret-another-secret-xx",
            ),
            token(
                serde_json::json!({"sub": "ana", "iss": "zentra", "role": "admin", "exp": 1000}),
                secret,
            ),
            token(
                serde_json::json!({"sub": "ana", "iss": "elsewhere", "role": "admin", "exp": in_an_hour()}),
                secret,
            ),
            token(
                serde_json::json!({"sub": "ana", "iss": "zentra", "role": "root", "exp": in_an_hour()}),
                secret,
            ),
            token(
                serde_json::json!({"sub": "ana", "iss": "zentra", "role": "admin"}),
                secret,
            ),
        ];
        for token in refused {
            let result = auth.authenticate(&headers("authorization", &format!("Bearer {token}")));
            assert!(
                matches!(result, Err(AuthError::InvalidToken(_))),
                "{result:?}"
            );
        }
    }

    #[test]
    fn an_unsigned_token_is_refused() {
        let auth = Authenticator::new(&settings()).expect("settings");
        // {"alg":"none"} . {"sub":"ana","iss":"zentra","role":"admin","exp":9999999999} .
        let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbmEiLCJpc3MiOiJ6ZW50cmEiLCJyb2xlIjoiYWRtaW4iLCJleHAiOjk5OTk5OTk5OTl9.";
        let result = auth.authenticate(&headers("authorization", &format!("Bearer {unsigned}")));
        assert!(
            matches!(result, Err(AuthError::InvalidToken(_))),
            "{result:?}"
        );
    }

    #[test]
    fn roles_include_the_ones_below() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }
}
