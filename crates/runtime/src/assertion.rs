//! The gateway's word about a caller, in a form a peer cannot forge: the gateway signs who called
//! (`x-zentra-caller`), in which role (`x-zentra-role`), which RPC and when, with a key it shares
//! with the services (HMAC-SHA256, `x-zentra-assertion`). A service that holds the key believes
//! the caller and role only with a valid signature less than a minute old, so a service, a
//! compromised process or anyone who reaches a service port cannot claim to be an admin.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use tonic::metadata::MetadataMap;

use crate::config::Secret;

/// Metadata carrying the signature.
pub const ASSERTION_METADATA: &str = "x-zentra-assertion";
/// How far a signature's time may be from the verifier's clock.
const MAX_SKEW: Duration = Duration::from_secs(60);

/// The signature of `caller` in `role` calling `rpc` at `at`: `v1.<unix seconds>.<hex mac>`.
pub fn sign(key: &Secret, caller: &str, role: &str, rpc: &str, at: SystemTime) -> String {
    let seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    format!(
        "v1.{seconds}.{}",
        hex(&mac(key, seconds, caller, role, rpc))
    )
}

/// Whether `metadata` carries a fresh, valid signature of its caller and role for `rpc`.
pub fn verify(key: &Secret, metadata: &MetadataMap, rpc: &str, now: SystemTime) -> bool {
    let text = |name: &str| {
        metadata
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    };
    verify_parts(
        key,
        text(crate::audit::CALLER_METADATA),
        text(crate::audit::ROLE_METADATA),
        text(ASSERTION_METADATA),
        rpc,
        now,
    )
}

/// Whether `assertion` is a fresh, valid signature of `caller` in `role` calling `rpc`.
pub fn verify_parts(
    key: &Secret,
    caller: &str,
    role: &str,
    assertion: &str,
    rpc: &str,
    now: SystemTime,
) -> bool {
    let Some(rest) = assertion.strip_prefix("v1.") else {
        return false;
    };
    let Some((seconds, signature)) = rest.split_once('.') else {
        return false;
    };
    let Ok(seconds) = seconds.parse::<u64>() else {
        return false;
    };
    let signed_at = UNIX_EPOCH + Duration::from_secs(seconds);
    let skew = now
        .duration_since(signed_at)
        .or_else(|error| Ok::<_, ()>(error.duration()))
        .unwrap_or(Duration::MAX);
    if skew > MAX_SKEW {
        return false;
    }
    let Some(signature) = unhex(signature) else {
        return false;
    };
    keyed(key)
        .chain_update(message(seconds, caller, role, rpc))
        .verify_slice(&signature)
        .is_ok()
}

fn keyed(key: &Secret) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"))
}

fn message(seconds: u64, caller: &str, role: &str, rpc: &str) -> Vec<u8> {
    // Separated by a byte none of the parts may hold (header values are printable).
    format!("v1\n{seconds}\n{caller}\n{role}\n{rpc}").into_bytes()
}

fn mac(key: &Secret, seconds: u64, caller: &str, role: &str, rpc: &str) -> Vec<u8> {
    keyed(key)
        .chain_update(message(seconds, caller, role, rpc))
        .finalize()
        .into_bytes()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(&text[index..index + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    fn asserted(signature: &str, caller: &'static str, role: &'static str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert(
            crate::audit::CALLER_METADATA,
            MetadataValue::from_static(caller),
        );
        metadata.insert(
            crate::audit::ROLE_METADATA,
            MetadataValue::from_static(role),
        );
        if let Ok(value) = MetadataValue::try_from(signature) {
            metadata.insert(ASSERTION_METADATA, value);
        }
        metadata
    }

    #[test]
    fn only_the_keys_holder_can_assert_a_caller_role_and_rpc_and_only_for_a_minute() {
        let key = Secret::new("shared-by-the-gateway-and-services");
        let rpc = "zentra.ops.v1.OpsService/InjectFault";
        let now = SystemTime::now();
        let signature = sign(&key, "key:ops", "admin", rpc, now);
        assert!(verify(
            &key,
            &asserted(&signature, "key:ops", "admin"),
            rpc,
            now
        ));
        // Another role, caller, RPC, key or time: refused.
        assert!(!verify(
            &key,
            &asserted(&signature, "key:ops", "operator"),
            rpc,
            now
        ));
        assert!(!verify(
            &key,
            &asserted(&signature, "key:eve", "admin"),
            rpc,
            now
        ));
        assert!(!verify(
            &key,
            &asserted(&signature, "key:ops", "admin"),
            "zentra.ops.v1.OpsService/SetLogLevel",
            now
        ));
        let forged = sign(&Secret::new("guessed"), "key:ops", "admin", rpc, now);
        assert!(!verify(
            &key,
            &asserted(&forged, "key:ops", "admin"),
            rpc,
            now
        ));
        let later = now + Duration::from_secs(120);
        assert!(!verify(
            &key,
            &asserted(&signature, "key:ops", "admin"),
            rpc,
            later
        ));
        for junk in ["", "v1.", "v1.x.y", "v2.1.00", "v1.1.zz"] {
            assert!(!verify(&key, &asserted(junk, "key:ops", "admin"), rpc, now));
        }
    }
}
