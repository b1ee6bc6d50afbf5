//! Caller identity: a JWT (kit's EdDSA verifier + the security service's
//! revocation list) or an API key (verified by the security service). Both
//! remote answers are cached briefly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use kit::{ApiError, Secret, Verifier};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::cache::TtlCache;

/// Header with an API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Header the security service expects from internal callers.
pub const SERVICE_TOKEN_HEADER: &str = "x-service-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Jwt,
    ApiKey,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Jwt => "jwt",
            Method::ApiKey => "api_key",
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id (JWT `sub`) or the API key's owner.
    pub user_id: String,
    pub roles: Vec<String>,
    pub method: Method,
    /// JWT id and expiry (JWT callers only), for logout revocation.
    pub jti: Option<String>,
    pub exp: Option<i64>,
    /// Session (refresh-token family) of a JWT.
    pub sid: Option<String>,
}

/// The revocation-list entry standing for a whole session.
pub fn session_key(sid: &str) -> String {
    format!("sid:{sid}")
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
    owner: String,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize)]
struct RevocationAnswer {
    revoked: bool,
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

    pub async fn is_revoked(&self, jti: &str, request_id: &str) -> Result<bool, String> {
        let path = format!("/revocations/{}", urlencode(jti));
        let a: RevocationAnswer =
            Self::json(self.req(reqwest::Method::GET, &path, request_id)).await?;
        Ok(a.revoked)
    }

    pub async fn revoke(&self, jti: &str, exp: i64, request_id: &str) -> Result<(), String> {
        let r = self
            .req(reqwest::Method::POST, "/revocations", request_id)
            .json(&serde_json::json!({"jti": jti, "exp": exp}));
        Self::json::<serde_json::Value>(r).await.map(|_| ())
    }

    /// `Some((owner, roles))` for a valid key.
    pub async fn verify_key(
        &self,
        key: &str,
        request_id: &str,
    ) -> Result<Option<(String, Vec<String>)>, String> {
        let r = self
            .req(reqwest::Method::POST, "/api-keys/verify", request_id)
            .json(&serde_json::json!({ "key": key }));
        let a: KeyAnswer = Self::json(r).await?;
        Ok(a.valid.then_some((a.owner, a.roles)))
    }
}

fn urlencode(s: &str) -> String {
    kit::config::percent_encode(s)
}

/// Authenticates requests; see the module docs.
pub struct Authenticator {
    pub verifier: Option<Verifier>,
    pub security: Option<SecurityClient>,
    revoked: TtlCache<String, bool>,
    keys: TtlCache<String, Option<Identity>>,
    pub revocation_ttl: Duration,
    pub api_key_ttl: Duration,
}

fn err(status: StatusCode, code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::new(status, code, msg)
}

impl Authenticator {
    pub fn new(
        verifier: Option<Verifier>,
        security: Option<SecurityClient>,
        revocation_ttl: Duration,
        api_key_ttl: Duration,
    ) -> Self {
        Self {
            verifier,
            security,
            revoked: TtlCache::new(100_000),
            keys: TtlCache::new(10_000),
            revocation_ttl,
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
            return self.jwt(token, request_id).await;
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

    async fn jwt(&self, token: &str, request_id: &str) -> Result<Identity, ApiError> {
        let verifier = self.verifier.as_ref().ok_or_else(|| {
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_not_configured",
                "JWT verification is not configured (JWKS_URL)",
            )
        })?;
        let claims = verifier.verify(token).await.map_err(ApiError::from)?;
        if self.security.is_some() {
            if claims.jti.is_empty() {
                return Err(err(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "token has no jti",
                ));
            }
            // The token itself, and its whole session (revoked on logout).
            let sid_key = claims.sid.as_ref().map(|s| session_key(s));
            let (by_jti, by_sid) = tokio::join!(
                self.is_revoked(&claims.jti, claims.exp, request_id),
                async {
                    match &sid_key {
                        Some(k) => self.is_revoked(k, claims.exp, request_id).await,
                        None => Ok(false),
                    }
                }
            );
            if by_jti? || by_sid? {
                return Err(err(
                    StatusCode::UNAUTHORIZED,
                    "token_revoked",
                    "token has been revoked",
                ));
            }
        }
        Ok(Identity {
            user_id: claims.sub,
            roles: claims.roles,
            method: Method::Jwt,
            jti: Some(claims.jti).filter(|j| !j.is_empty()),
            exp: Some(claims.exp),
            sid: claims.sid,
        })
    }

    /// Whether the security service lists `key` as revoked (cached).
    async fn is_revoked(&self, key: &str, exp: i64, request_id: &str) -> Result<bool, ApiError> {
        if let Some(r) = self.revoked.get(&key.to_string(), Instant::now()) {
            return Ok(r);
        }
        let Some(security) = &self.security else {
            return Ok(false);
        };
        let r = security.is_revoked(key, request_id).await.map_err(|e| {
            tracing::warn!(error = %e, "revocation check failed");
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                "cannot check token revocation",
            )
        })?;
        self.remember_revocation(key, r, exp);
        Ok(r)
    }

    /// Caches a revocation answer: "revoked" until the token expires,
    /// "not revoked" for the short revocation TTL.
    pub fn remember_revocation(&self, jti: &str, revoked: bool, exp: i64) {
        let ttl = if revoked {
            let left = exp - chrono_now();
            Duration::from_secs(left.clamp(1, 24 * 3600) as u64)
        } else {
            self.revocation_ttl
        };
        self.revoked
            .insert(jti.to_string(), revoked, ttl, Instant::now());
    }

    async fn api_key(&self, key: &str, request_id: &str) -> Result<Identity, ApiError> {
        let security = self.security.as_ref().ok_or_else(|| {
            err(
                StatusCode::UNAUTHORIZED,
                "api_keys_unavailable",
                "API keys are not accepted (no security service configured)",
            )
        })?;
        if key.is_empty() || key.len() > 256 {
            return Err(err(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "invalid API key",
            ));
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
                    .map(|(owner, roles)| Identity {
                        user_id: owner,
                        roles,
                        method: Method::ApiKey,
                        jti: None,
                        exp: None,
                        sid: None,
                    });
                // Invalid keys are remembered briefly too, so a client
                // retrying a bad key does not hammer the security service.
                let ttl = if v.is_some() {
                    self.api_key_ttl
                } else {
                    self.api_key_ttl.min(Duration::from_secs(5))
                };
                self.keys.insert(hashed, v.clone(), ttl, now);
                v
            }
        };
        found.ok_or_else(|| {
            err(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                "invalid API key",
            )
        })
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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
        let a = Authenticator::new(None, None, Duration::from_secs(5), Duration::from_secs(30));
        let e = a.authenticate(&HeaderMap::new(), "r1").await.unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        let mut h = HeaderMap::new();
        h.insert(API_KEY_HEADER, "sk_x".parse().unwrap());
        let e = a.authenticate(&h, "r1").await.unwrap_err();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert_eq!(e.code, "api_keys_unavailable");
    }
}
