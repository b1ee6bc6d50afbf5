//! Caller identity: a JWT (kit's EdDSA verifier, `iss`/`aud` required, and
//! the shared revocation list in Redis) or an API key (verified by the
//! security service, cached briefly, and checked against the revocation list
//! on every request).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use kit::auth::AuthError;
use kit::revocation::Revocations;
use kit::{ApiError, Secret, Verifier};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::cache::TtlCache;

pub use kit::identity::AuthMethod as Method;

/// Header with an API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Header the security service expects from internal callers.
pub const SERVICE_TOKEN_HEADER: &str = "x-service-token";

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id (JWT `sub`) or the API key's owner.
    pub user_id: String,
    pub roles: Vec<String>,
    pub method: Method,
    /// JWT id and expiry (JWT callers only).
    pub jti: Option<String>,
    pub exp: Option<i64>,
    /// Session (refresh-token family) of a JWT.
    pub sid: Option<String>,
    /// The API key's id (API-key callers only).
    pub key_id: Option<String>,
}

impl Identity {
    /// What the gateway forwards (and signs) for this caller.
    pub fn forwarded(&self) -> kit::identity::ForwardedIdentity {
        kit::identity::ForwardedIdentity {
            user_id: self.user_id.clone(),
            roles: self.roles.clone(),
            method: self.method,
        }
    }
}

/// The security service as seen by the gateway.
#[derive(Clone)]
pub struct SecurityClient {
    base: String,
    token: Option<Secret<String>>,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct KeyAnswer {
    valid: bool,
    #[serde(default)]
    id: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    roles: Vec<String>,
}

/// A valid API key: its id, owner and roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKey {
    pub id: String,
    pub owner: String,
    pub roles: Vec<String>,
}

impl SecurityClient {
    pub fn new(base: impl Into<String>, token: Option<Secret<String>>, timeout: Duration) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .expect("http client"),
        }
    }

    fn req(&self, m: reqwest::Method, path: &str, request_id: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(m, format!("{}{path}", self.base))
            .header("x-request-id", request_id);
        if let Some(t) = &self.token {
            r = r.header(SERVICE_TOKEN_HEADER, t.expose());
        }
        r
    }

    async fn json<T: serde::de::DeserializeOwned>(r: reqwest::RequestBuilder) -> Result<T, String> {
        let resp = r.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("security answered {status}"));
        }
        resp.json().await.map_err(|e| e.to_string())
    }

    /// `Some(key)` for a valid key.
    pub async fn verify_key(
        &self,
        key: &str,
        request_id: &str,
    ) -> Result<Option<VerifiedKey>, String> {
        let r = self
            .req(reqwest::Method::POST, "/api-keys/verify", request_id)
            .json(&serde_json::json!({ "key": key }));
        let a: KeyAnswer = Self::json(r).await?;
        Ok(a.valid.then_some(VerifiedKey {
            id: a.id,
            owner: a.owner,
            roles: a.roles,
        }))
    }
}

/// Authenticates requests; see the module docs.
pub struct Authenticator {
    pub verifier: Option<Verifier>,
    pub security: Option<SecurityClient>,
    /// The shared revocation list; `None` (no Redis) disables the checks.
    pub revocations: Option<Revocations>,
    keys: TtlCache<String, Option<Identity>>,
    pub api_key_ttl: Duration,
}

fn err(status: StatusCode, code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::new(status, code, msg)
}

fn unavailable() -> ApiError {
    err(
        StatusCode::SERVICE_UNAVAILABLE,
        "auth_unavailable",
        "cannot check revocations",
    )
}

impl Authenticator {
    pub fn new(
        verifier: Option<Verifier>,
        security: Option<SecurityClient>,
        revocations: Option<Revocations>,
        api_key_ttl: Duration,
    ) -> Self {
        Self {
            verifier,
            security,
            revocations,
            keys: TtlCache::new(10_000),
            api_key_ttl,
        }
    }

    /// Identity from `Authorization: Bearer` or `X-API-Key`; 401 without
    /// valid credentials, 503 when a needed dependency does not answer.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        request_id: &str,
    ) -> Result<Identity, ApiError> {
        if let Some(token) = bearer(headers) {
            return self.jwt(token).await;
        }
        if let Some(key) = headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()) {
            return self.api_key(key.trim(), request_id).await;
        }
        Err(err(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "authentication required: Authorization: Bearer <token> or X-API-Key",
        ))
    }

    async fn jwt(&self, token: &str) -> Result<Identity, ApiError> {
        let verifier = self.verifier.as_ref().ok_or_else(|| {
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_not_configured",
                "JWT verification is not configured (JWKS_URL)",
            )
        })?;
        let claims = verifier.verify(token).await.map_err(ApiError::from)?;
        // Its id, its session and its user: one MGET, on every request (a
        // revocation is refused at once, on every replica).
        if let Some(r) = &self.revocations {
            kit::auth::check_revocation(r, &claims)
                .await
                .map_err(|e| match e {
                    AuthError::RevocationUnavailable => unavailable(),
                    other => ApiError::from(other),
                })?;
        }
        Ok(Identity {
            user_id: claims.sub,
            roles: claims.roles,
            method: Method::Jwt,
            jti: Some(claims.jti).filter(|j| !j.is_empty()),
            exp: Some(claims.exp),
            sid: claims.sid,
            key_id: None,
        })
    }

    async fn api_key(&self, key: &str, request_id: &str) -> Result<Identity, ApiError> {
        let security = self.security.as_ref().ok_or_else(|| {
            err(
                StatusCode::UNAUTHORIZED,
                "api_keys_unavailable",
                "API keys are not accepted (no security service configured)",
            )
        })?;
        let invalid = || {
            err(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "invalid API key",
            )
        };
        if key.is_empty() || key.len() > 256 {
            return Err(invalid());
        }
        let hashed = hex::encode(Sha256::digest(key.as_bytes()));
        let now = Instant::now();
        let cached = self.keys.get(&hashed, now);
        let found = match cached {
            Some(v) => v,
            None => {
                let v = security
                    .verify_key(key, request_id)
                    .await
                    .map_err(|e| {
                        tracing::warn!(error = %e, "API key verification failed");
                        err(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "auth_unavailable",
                            "cannot verify the API key",
                        )
                    })?
                    .map(|k| Identity {
                        user_id: k.owner,
                        roles: k.roles,
                        method: Method::ApiKey,
                        jti: None,
                        exp: None,
                        sid: None,
                        key_id: Some(k.id).filter(|id| !id.is_empty()),
                    });
                // Invalid keys are remembered briefly too, so a client
                // retrying a bad key does not hammer the security service.
                let ttl = if v.is_some() {
                    self.api_key_ttl
                } else {
                    self.api_key_ttl.min(Duration::from_secs(5))
                };
                self.keys.insert(hashed.clone(), v.clone(), ttl, now);
                v
            }
        };
        let id = found.ok_or_else(invalid)?;
        // A cached key may have been revoked since: the list says so at once.
        if let (Some(r), Some(key_id)) = (&self.revocations, &id.key_id) {
            let revoked = r.api_key_revoked(key_id).await.map_err(|e| {
                tracing::warn!(error = %e, "revocation list unavailable");
                unavailable()
            })?;
            if revoked {
                self.keys.insert(hashed, None, self.api_key_ttl, now);
                return Err(invalid());
            }
        }
        Ok(id)
    }
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

pub type SharedAuth = Arc<Authenticator>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "bearer  xyz ".parse().unwrap());
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[tokio::test]
    async fn missing_credentials_are_401() {
        let a = Authenticator::new(None, None, None, Duration::from_secs(30));
        let e = a.authenticate(&HeaderMap::new(), "r1").await.unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        let mut h = HeaderMap::new();
        h.insert(API_KEY_HEADER, "sk_x".parse().unwrap());
        let e = a.authenticate(&h, "r1").await.unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert_eq!(e.code, "api_keys_unavailable");
    }
}
