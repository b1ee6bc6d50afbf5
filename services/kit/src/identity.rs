//! The api-gateway's proof of the identity it forwards.
//!
//! The gateway authenticates every caller (JWT or API key), then forwards
//! the identity to the upstream in headers, together with a timestamp and an
//! HMAC-SHA256 over all of them, the method and the path, keyed with the
//! per-stack secret `INTERNAL_AUTH_KEY_FILE` that every kit service reads:
//!
//! | header | value |
//! |---|---|
//! | `x-user-id` | user id (JWT `sub`) or the API key's owner |
//! | `x-user-roles` | comma-separated roles |
//! | `x-auth-method` | `jwt` or `api_key` |
//! | `x-identity-timestamp` | unix seconds when the gateway signed |
//! | `x-identity-proof` | `v1=<hex HMAC-SHA256>` |
//!
//! The MAC covers, length-prefixed so no field can bleed into another:
//! `stackctl-identity-v1`, the method, the path and query the upstream
//! receives, the timestamp, the user id, the roles and the auth method. An
//! upstream ([`crate::auth::AuthUser`]) accepts the identity only when the
//! MAC matches and the timestamp is at most [`MAX_AGE`] old (or ahead):
//! a header forged by anything else on a shared network, or a proof replayed
//! for another request or later, is refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

pub const USER_HEADER: &str = "x-user-id";
pub const ROLES_HEADER: &str = "x-user-roles";
pub const METHOD_HEADER: &str = "x-auth-method";
pub const TIMESTAMP_HEADER: &str = "x-identity-timestamp";
pub const PROOF_HEADER: &str = "x-identity-proof";

/// Every header of a forwarded identity: a gateway removes client copies of
/// all of them before it sets its own.
pub const HEADERS: &[&str] = &[
    USER_HEADER,
    ROLES_HEADER,
    METHOD_HEADER,
    TIMESTAMP_HEADER,
    PROOF_HEADER,
];

/// How old (or how far ahead of this host's clock) a proof may be.
pub const MAX_AGE: Duration = Duration::from_secs(30);

/// The `iss` of the [`crate::Claims`] built from a proved identity.
pub const GATEWAY_ISSUER: &str = "api-gateway";

const CONTEXT: &str = "stackctl-identity-v1";
/// The shortest key accepted (bytes of the secret file).
pub const MIN_KEY_BYTES: usize = 16;

/// How the gateway authenticated the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    Jwt,
    ApiKey,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::ApiKey => "api_key",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "jwt" => Some(AuthMethod::Jwt),
            "api_key" => Some(AuthMethod::ApiKey),
            _ => None,
        }
    }
}

/// An identity the gateway forwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardedIdentity {
    pub user_id: String,
    pub roles: Vec<String>,
    pub method: AuthMethod,
}

/// Why a proof was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("identity headers without a proof")]
    Missing,
    #[error("malformed identity headers: {0}")]
    Malformed(&'static str),
    #[error("identity proof expired or from the future (clock skew above 30 s?)")]
    Stale,
    #[error("identity proof does not match")]
    BadSignature,
}

/// The per-stack key (`INTERNAL_AUTH_KEY_FILE`). Cheap to clone; `Debug`
/// never shows it. Add it to a router with `.layer(Extension(key))` (kit's
/// [`crate::Infra::wrap`] does when the config has one).
#[derive(Clone)]
pub struct InternalAuthKey(Arc<Secret<Vec<u8>>>);

impl std::fmt::Debug for InternalAuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalAuthKey([redacted])")
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl InternalAuthKey {
    /// The key from the secret file's content (at least 16 bytes).
    pub fn new(secret: &Secret<String>) -> Result<Self, String> {
        let bytes = secret.expose().trim().as_bytes().to_vec();
        if bytes.len() < MIN_KEY_BYTES {
            return Err(format!(
                "INTERNAL_AUTH_KEY must be at least {MIN_KEY_BYTES} bytes (got {})",
                bytes.len()
            ));
        }
        Ok(InternalAuthKey(Arc::new(Secret::new(bytes))))
    }

    fn mac(
        &self,
        method: &Method,
        path_and_query: &str,
        timestamp: &str,
        user: &str,
        roles: &str,
        auth: &str,
    ) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.0.expose()).expect("HMAC takes any key length");
        for field in [
            CONTEXT,
            method.as_str(),
            path_and_query,
            timestamp,
            user,
            roles,
            auth,
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac
    }

    /// Sets the identity headers and their proof for `method path_and_query`
    /// (the path and query the upstream receives), signed now.
    pub fn sign_into(
        &self,
        headers: &mut HeaderMap,
        method: &Method,
        path_and_query: &str,
        id: &ForwardedIdentity,
    ) -> Result<(), ProofError> {
        self.sign_at(headers, method, path_and_query, id, now_secs())
    }

    /// [`Self::sign_into`] with a given timestamp (tests).
    pub fn sign_at(
        &self,
        headers: &mut HeaderMap,
        method: &Method,
        path_and_query: &str,
        id: &ForwardedIdentity,
        timestamp: i64,
    ) -> Result<(), ProofError> {
        let roles = id.roles.join(",");
        let ts = timestamp.to_string();
        let tag = self
            .mac(
                method,
                path_and_query,
                &ts,
                &id.user_id,
                &roles,
                id.method.as_str(),
            )
            .finalize()
            .into_bytes();
        let value = |s: &str| {
            HeaderValue::from_str(s).map_err(|_| ProofError::Malformed("unsendable header value"))
        };
        let set = |h: &mut HeaderMap, name: &'static str, v: HeaderValue| {
            h.insert(HeaderName::from_static(name), v);
        };
        let user = value(&id.user_id)?;
        let roles = value(&roles)?;
        set(headers, USER_HEADER, user);
        set(headers, ROLES_HEADER, roles);
        set(
            headers,
            METHOD_HEADER,
            HeaderValue::from_static(id.method.as_str()),
        );
        set(headers, TIMESTAMP_HEADER, value(&ts)?);
        set(
            headers,
            PROOF_HEADER,
            value(&format!("v1={}", hex_encode(&tag)))?,
        );
        Ok(())
    }

    /// Whether the request carries any identity header at all.
    pub fn present(headers: &HeaderMap) -> bool {
        HEADERS.iter().any(|h| headers.contains_key(*h))
    }

    /// The proved identity of a request, checked now.
    pub fn verify(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<ForwardedIdentity, ProofError> {
        self.verify_at(method, path_and_query, headers, now_secs())
    }

    /// [`Self::verify`] against a given clock (tests).
    pub fn verify_at(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        now: i64,
    ) -> Result<ForwardedIdentity, ProofError> {
        let get = |name: &str| -> Result<Option<&str>, ProofError> {
            let mut all = headers.get_all(name).iter();
            let Some(first) = all.next() else {
                return Ok(None);
            };
            if all.next().is_some() {
                return Err(ProofError::Malformed("repeated identity header"));
            }
            first
                .to_str()
                .map(Some)
                .map_err(|_| ProofError::Malformed("non-ASCII identity header"))
        };
        let proof = get(PROOF_HEADER)?.ok_or(ProofError::Missing)?;
        let user = get(USER_HEADER)?.ok_or(ProofError::Malformed("no x-user-id"))?;
        let roles = get(ROLES_HEADER)?.unwrap_or("");
        let auth = get(METHOD_HEADER)?.ok_or(ProofError::Malformed("no x-auth-method"))?;
        let ts = get(TIMESTAMP_HEADER)?.ok_or(ProofError::Malformed("no timestamp"))?;
        let tag = proof
            .strip_prefix("v1=")
            .and_then(hex_decode)
            .ok_or(ProofError::Malformed("proof is not v1=<hex>"))?;
        let t: i64 = ts
            .parse()
            .map_err(|_| ProofError::Malformed("timestamp is not a number"))?;
        // The MAC first: only then is anything in the headers meaningful.
        self.mac(method, path_and_query, ts, user, roles, auth)
            .verify_slice(&tag)
            .map_err(|_| ProofError::BadSignature)?;
        if (now - t).abs() > MAX_AGE.as_secs() as i64 {
            return Err(ProofError::Stale);
        }
        let method = AuthMethod::parse(auth).ok_or(ProofError::Malformed("unknown auth method"))?;
        if user.is_empty() {
            return Err(ProofError::Malformed("empty user id"));
        }
        Ok(ForwardedIdentity {
            user_id: user.to_string(),
            roles: roles
                .split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect(),
            method,
        })
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> InternalAuthKey {
        InternalAuthKey::new(&Secret::new(s.to_string())).unwrap()
    }

    fn id() -> ForwardedIdentity {
        ForwardedIdentity {
            user_id: "u-1".into(),
            roles: vec!["viewer".into(), "analyst".into()],
            method: AuthMethod::ApiKey,
        }
    }

    #[test]
    fn round_trip_and_every_field_is_covered() {
        let k = key("0123456789abcdef0123456789abcdef");
        let mut h = HeaderMap::new();
        k.sign_at(&mut h, &Method::GET, "/chat?x=1", &id(), 1000)
            .unwrap();
        assert_eq!(h[USER_HEADER], "u-1");
        assert_eq!(h[ROLES_HEADER], "viewer,analyst");
        assert_eq!(h[METHOD_HEADER], "api_key");
        assert_eq!(
            k.verify_at(&Method::GET, "/chat?x=1", &h, 1010).unwrap(),
            id()
        );
        // Another method, path or query: refused.
        for (m, p) in [
            (Method::POST, "/chat?x=1"),
            (Method::GET, "/chat?x=2"),
            (Method::GET, "/conversations"),
        ] {
            assert_eq!(
                k.verify_at(&m, p, &h, 1010),
                Err(ProofError::BadSignature),
                "{m} {p}"
            );
        }
        // Any header changed: refused.
        for (name, v) in [
            (USER_HEADER, "admin-1"),
            (ROLES_HEADER, "admin"),
            (METHOD_HEADER, "jwt"),
            (TIMESTAMP_HEADER, "1001"),
        ] {
            let mut forged = h.clone();
            forged.insert(name, HeaderValue::from_static(v));
            assert_eq!(
                k.verify_at(&Method::GET, "/chat?x=1", &forged, 1010),
                Err(ProofError::BadSignature),
                "{name}"
            );
        }
        // Another stack's key: refused.
        assert_eq!(
            key("another-key-0123456789").verify_at(&Method::GET, "/chat?x=1", &h, 1010),
            Err(ProofError::BadSignature)
        );
    }

    #[test]
    fn stale_missing_and_malformed_proofs() {
        let k = key("0123456789abcdef0123456789abcdef");
        let mut h = HeaderMap::new();
        k.sign_at(&mut h, &Method::GET, "/x", &id(), 1000).unwrap();
        assert!(k.verify_at(&Method::GET, "/x", &h, 1030).is_ok());
        assert_eq!(
            k.verify_at(&Method::GET, "/x", &h, 1031),
            Err(ProofError::Stale)
        );
        assert_eq!(
            k.verify_at(&Method::GET, "/x", &h, 969),
            Err(ProofError::Stale)
        );
        // A bare X-User-Id (what TRUST_X_USER_ID used to accept).
        let mut bare = HeaderMap::new();
        bare.insert(USER_HEADER, HeaderValue::from_static("admin"));
        assert!(InternalAuthKey::present(&bare));
        assert_eq!(
            k.verify_at(&Method::GET, "/x", &bare, 1000),
            Err(ProofError::Missing)
        );
        let mut bad = h.clone();
        bad.insert(PROOF_HEADER, HeaderValue::from_static("v1=zz"));
        assert!(matches!(
            k.verify_at(&Method::GET, "/x", &bad, 1000),
            Err(ProofError::Malformed(_))
        ));
        let mut twice = h.clone();
        twice.append(USER_HEADER, HeaderValue::from_static("admin"));
        assert!(matches!(
            k.verify_at(&Method::GET, "/x", &twice, 1000),
            Err(ProofError::Malformed(_))
        ));
        assert!(InternalAuthKey::new(&Secret::new("short".into())).is_err());
        assert_eq!(format!("{k:?}"), "InternalAuthKey([redacted])");
    }
}
