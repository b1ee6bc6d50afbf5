//! JWT verification (EdDSA/Ed25519) against keys from a JWKS URL, the
//! [`AuthUser`] axum extractor and role checks.
//!
//! ```ignore
//! let verifier = kit::auth::Verifier::from_url(jwks_url);
//! verifier.spawn_refresh(Duration::from_secs(300));
//! let app = Router::new().route("/me", get(me)).layer(Extension(verifier));
//! async fn me(user: AuthUser) -> Result<String, ApiError> {
//!     user.require_any_role(&[Role::Admin, Role::Analyst])?;
//!     Ok(user.sub.clone())
//! }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::identity::{ForwardedIdentity, InternalAuthKey, ProofError};
use crate::revocation::Revocations;

/// The four roles of the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Developer,
    Analyst,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Developer, Role::Analyst, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Analyst => "analyst",
            Role::Viewer => "viewer",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "developer" => Ok(Role::Developer),
            "analyst" => Ok(Role::Analyst),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!(
                "unknown role {other:?} (expected admin, developer, analyst or viewer)"
            )),
        }
    }
}

/// Access-token claims (as issued by user-management).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// User id (UUID).
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
    /// Token id, used for revocation.
    #[serde(default)]
    pub jti: String,
    #[serde(default)]
    pub iss: String,
    /// Audience (`JWT_AUDIENCE`, default `ai-assistants-1c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Issue time in unix milliseconds (revocation cutoffs are finer than
    /// `iat`'s seconds: a token issued right after a cutoff stays valid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Session (refresh-token family) id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

impl Claims {
    /// The claims standing for an identity the api-gateway proved (see
    /// [`crate::identity`]): no `jti`, `sid` or `email`; `iss` is
    /// [`crate::identity::GATEWAY_ISSUER`].
    pub fn from_forwarded(id: &ForwardedIdentity) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Claims {
            sub: id.user_id.clone(),
            roles: id.roles.clone(),
            exp: now + crate::identity::MAX_AGE.as_secs() as i64,
            iat: now,
            jti: String::new(),
            iss: crate::identity::GATEWAY_ISSUER.into(),
            aud: None,
            iat_ms: None,
            email: None,
            sid: None,
        }
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.iter().any(|r| r == role.as_str())
    }
    pub fn has_any_role(&self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.has_role(*r))
    }
    /// 403 unless the token has `role`.
    pub fn require_role(&self, role: Role) -> Result<(), ApiError> {
        self.require_any_role(&[role])
    }
    /// 403 unless the token has one of `roles` (list `Role::Admin`
    /// explicitly when admins may pass).
    pub fn require_any_role(&self, roles: &[Role]) -> Result<(), ApiError> {
        if self.has_any_role(roles) {
            Ok(())
        } else {
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(ApiError::forbidden(format!(
                "requires one of the roles: {}",
                names.join(", ")
            )))
        }
    }
}

/// Why a token was rejected.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("cannot fetch JWKS: {0}")]
    Jwks(String),
    #[error("authentication is not configured on this route")]
    NotConfigured,
    #[error("identity not accepted: {0}")]
    Proof(ProofError),
    #[error("token has been revoked")]
    Revoked,
    #[error("cannot check token revocation")]
    RevocationUnavailable,
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Malformed(_) => "malformed_token",
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::Expired => "token_expired",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::Jwks(_) => "jwks_unavailable",
            AuthError::NotConfigured => "auth_not_configured",
            AuthError::Proof(_) => "invalid_identity_proof",
            AuthError::Revoked => "token_revoked",
            AuthError::RevocationUnavailable => "auth_unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            AuthError::Jwks(_) | AuthError::RevocationUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AuthError::NotConfigured => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = ApiError::new(status, self.code(), self.to_string()).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = e.status();
        ApiError::new(status, e.code(), e.to_string())
    }
}

struct Inner {
    url: Option<String>,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, DecodingKey>>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refetch: Duration,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

/// Verifies access tokens. Cheap to clone; put it in the router with
/// `.layer(Extension(verifier))` so [`AuthUser`] finds it.
#[derive(Clone)]
pub struct Verifier(Arc<Inner>);

impl Verifier {
    fn build(url: Option<String>) -> Self {
        Verifier(Arc::new(Inner {
            url,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client"),
            keys: RwLock::new(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
            min_refetch: Duration::from_secs(5),
            issuer: None,
            audience: None,
            leeway: 30,
        }))
    }

    /// Keys fetched from `url` (lazily, on first use / unknown `kid`).
    pub fn from_url(url: impl Into<String>) -> Self {
        Self::build(Some(url.into()))
    }

    /// Keys given directly (no fetching), e.g. by the issuer itself.
    pub fn from_jwks(jwks: &JwkSet) -> Self {
        let v = Self::build(None);
        v.set_jwks(jwks);
        v
    }

    /// Also require `iss` to equal `issuer`.
    pub fn with_issuer(self, issuer: impl Into<String>) -> Self {
        let inner = Arc::try_unwrap(self.0)
            .unwrap_or_else(|_| panic!("with_issuer must be called before the verifier is cloned"));
        Verifier(Arc::new(Inner {
            issuer: Some(issuer.into()),
            ..inner
        }))
    }

    /// Also require `aud` to equal `audience`.
    pub fn with_audience(self, audience: impl Into<String>) -> Self {
        let inner = Arc::try_unwrap(self.0).unwrap_or_else(|_| {
            panic!("with_audience must be called before the verifier is cloned")
        });
        Verifier(Arc::new(Inner {
            audience: Some(audience.into()),
            ..inner
        }))
    }

    /// Replace the key set. Keys that are not usable for EdDSA or that lack a
    /// `kid` are skipped (with a warning).
    pub fn set_jwks(&self, jwks: &JwkSet) {
        let mut map = HashMap::new();
        for jwk in &jwks.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                tracing::warn!("JWKS key without kid skipped");
                continue;
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(k) => {
                    map.insert(kid, k);
                }
                Err(e) => tracing::warn!(%kid, error = %e, "unusable JWKS key skipped"),
            }
        }
        *self.0.keys.write().expect("keys lock") = map;
    }

    /// Number of cached keys.
    pub fn key_count(&self) -> usize {
        self.0.keys.read().expect("keys lock").len()
    }

    /// Fetch the JWKS now (no-op without a URL).
    pub async fn refresh(&self) -> Result<(), AuthError> {
        let Some(url) = &self.0.url else {
            return Ok(());
        };
        let mut last = self.0.last_fetch.lock().await;
        let jwks: JwkSet = self
            .0
            .client
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| AuthError::Jwks(e.to_string()))?
            .json()
            .await
            .map_err(|e| AuthError::Jwks(e.to_string()))?;
        self.set_jwks(&jwks);
        *last = Some(Instant::now());
        tracing::debug!(keys = self.key_count(), "JWKS refreshed");
        Ok(())
    }

    /// Refetch unless a fetch happened less than `min_refetch` ago (bounds
    /// the cost of tokens with made-up `kid`s).
    async fn refresh_if_stale(&self) -> Result<(), AuthError> {
        if self.0.url.is_none() {
            return Ok(());
        }
        {
            let last = self.0.last_fetch.lock().await;
            if let Some(t) = *last {
                if t.elapsed() < self.0.min_refetch {
                    return Ok(());
                }
            }
        }
        self.refresh().await
    }

    /// Refresh the keys every `every` in the background.
    pub fn spawn_refresh(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let v = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = v.refresh().await {
                    tracing::warn!(error = %e, "periodic JWKS refresh failed");
                }
            }
        })
    }

    fn key_for(&self, kid: &str) -> Option<DecodingKey> {
        self.0.keys.read().expect("keys lock").get(kid).cloned()
    }

    /// Verify signature (EdDSA only), `exp`, and `iss`/`aud` when configured
    /// (then the token must carry them).
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Malformed("token has no kid".into()))?;
        let key = match self.key_for(&kid) {
            Some(k) => k,
            None => {
                self.refresh_if_stale().await?;
                self.key_for(&kid)
                    .ok_or_else(|| AuthError::UnknownKey(kid.clone()))?
            }
        };
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = self.0.leeway;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.0.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.0.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            })
    }
}

/// The bearer token of a request, if any.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
        Some(token.trim())
    } else {
        None
    }
}

/// An authenticated caller. Derefs to [`Claims`]. Either
///
/// * `Authorization: Bearer <jwt>` verified with the [`Verifier`] found in
///   the request extensions (and, when a [`Revocations`] extension is there
///   too, checked against the revocation list), or
/// * an identity the api-gateway proved (`x-user-id`, `x-user-roles`,
///   `x-auth-method` + `x-identity-timestamp`/`x-identity-proof`, see
///   [`crate::identity`]) checked with the [`InternalAuthKey`] extension
///   (kit's `Infra::wrap` adds it from `INTERNAL_AUTH_KEY_FILE`); the
///   [`ForwardedIdentity`] is also put in the request extensions.
///
/// A bearer token is verified when the route has a verifier; otherwise the
/// proof decides. Identity headers without a valid proof are refused (401
/// `invalid_identity_proof`), never trusted.
#[derive(Clone, Debug)]
pub struct AuthUser(pub Claims);

impl std::ops::Deref for AuthUser {
    type Target = Claims;
    fn deref(&self) -> &Claims {
        &self.0
    }
}

/// The identity the gateway proved for this request, if any.
fn forwarded(parts: &Parts, key: &InternalAuthKey) -> Result<ForwardedIdentity, AuthError> {
    let uri = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map(|u| &u.0)
        .unwrap_or(&parts.uri);
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    key.verify(&parts.method, path_and_query, &parts.headers)
        .map_err(AuthError::Proof)
}

/// 401 `token_revoked` when the list names the token, 503 when it cannot
/// be read (fail closed).
pub async fn check_revocation(revocations: &Revocations, claims: &Claims) -> Result<(), AuthError> {
    match revocations.check_token(claims).await {
        Ok(None) => Ok(()),
        Ok(Some(why)) => {
            tracing::info!(sub = %claims.sub, reason = ?why, "revoked token refused");
            Err(AuthError::Revoked)
        }
        Err(e) => {
            tracing::warn!(error = %e, "revocation list unavailable");
            Err(AuthError::RevocationUnavailable)
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AuthUser {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(user) = parts.extensions.get::<AuthUser>() {
            return Ok(user.clone());
        }
        let verifier = parts.extensions.get::<Verifier>().cloned();
        let key = parts.extensions.get::<InternalAuthKey>().cloned();
        let token = bearer_token(parts).map(str::to_string);
        let user = match (token, verifier) {
            (Some(token), Some(verifier)) => {
                let claims = verifier.verify(&token).await?;
                if let Some(r) = parts.extensions.get::<Revocations>().cloned() {
                    check_revocation(&r, &claims).await?;
                }
                AuthUser(claims)
            }
            (token, verifier) => {
                if InternalAuthKey::present(&parts.headers) {
                    let Some(key) = key else {
                        tracing::warn!(
                            "identity headers refused: INTERNAL_AUTH_KEY_FILE is not configured"
                        );
                        return Err(AuthError::Proof(ProofError::Missing));
                    };
                    let id = forwarded(parts, &key)?;
                    let claims = Claims::from_forwarded(&id);
                    parts.extensions.insert(id);
                    AuthUser(claims)
                } else if token.is_some() || (verifier.is_none() && key.is_none()) {
                    // A bearer token but no verifier on this route, or no
                    // way at all to authenticate.
                    return Err(AuthError::NotConfigured);
                } else {
                    return Err(AuthError::Missing);
                }
            }
        };
        parts.extensions.insert(user.clone());
        Ok(user)
    }
}

/// Middleware guarding a group of routes by role:
///
/// ```ignore
/// const ADMINS: &[Role] = &[Role::Admin];
/// let admin_routes = Router::new()
///     .route("/admin/thing", post(handler))
///     .route_layer(axum::middleware::from_fn_with_state(ADMINS, kit::auth::role_guard));
/// ```
///
/// 401 without a valid token, 403 without one of the roles. The verified
/// [`AuthUser`] is cached in the request, so handlers extracting it again
/// do not re-verify.
pub async fn role_guard(
    axum::extract::State(roles): axum::extract::State<&'static [Role]>,
    user: AuthUser,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match user.require_any_role(roles) {
        Ok(()) => {
            let mut req = req;
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    // A throw-away Ed25519 test key (PKCS#8) and its public `x`.
    const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEICgPFPQHHG8WB8FjWrSBBTzBTIm9oQHnggiRKNPRud7R
-----END PRIVATE KEY-----
";
    const TEST_KEY_X: &str = "47YZOo5ZKW3zjrL-o_8v7D-6_alr7PfSm-WnDcDaITE";

    fn jwks(kid: &str) -> JwkSet {
        serde_json::from_value(serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "x": TEST_KEY_X,
            "kid": kid, "use": "sig", "alg": "EdDSA"
        }]}))
        .unwrap()
    }

    fn token(kid: &str, exp_offset: i64) -> String {
        token_for(kid, exp_offset, Some("user-management"), None)
    }

    fn token_for(kid: &str, exp_offset: i64, iss: Option<&str>, aud: Option<&str>) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut claims = serde_json::to_value(Claims {
            sub: "user-1".into(),
            roles: vec!["developer".into()],
            exp: now + exp_offset,
            iat: now,
            jti: "jti-1".into(),
            iss: iss.unwrap_or_default().into(),
            aud: aud.map(str::to_string),
            iat_ms: None,
            email: Some("a@b.c".into()),
            sid: None,
        })
        .unwrap();
        if iss.is_none() {
            claims.as_object_mut().unwrap().remove("iss");
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        let key = EncodingKey::from_ed_pem(TEST_KEY_PEM.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    #[tokio::test]
    async fn verifies_local_keys() {
        let v = Verifier::from_jwks(&jwks("k1")).with_issuer("user-management");
        let claims = v.verify(&token("k1", 300)).await.unwrap();
        assert_eq!(claims.sub, "user-1");
        assert!(claims.has_role(Role::Developer));
        assert!(matches!(
            v.verify(&token("k1", -300)).await,
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            v.verify(&token("k2", 300)).await,
            Err(AuthError::UnknownKey(_))
        ));
        // Tamper with a signature character in the middle (the last one
        // carries padding bits a decoder may ignore), always changing it.
        let t = token("k1", 300);
        let at = t.rfind('.').unwrap() + 10;
        let c = t.as_bytes()[at];
        let t = format!(
            "{}{}{}",
            &t[..at],
            if c == b'A' { 'B' } else { 'A' },
            &t[at + 1..]
        );
        assert!(v.verify(&t).await.is_err());
        let other_iss = Verifier::from_jwks(&jwks("k1")).with_issuer("someone-else");
        assert!(matches!(
            other_iss.verify(&token("k1", 300)).await,
            Err(AuthError::Invalid(_))
        ));
        // HS256 tokens are refused outright.
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let hs = jsonwebtoken::encode(
            &h,
            &serde_json::json!({"sub": "x", "exp": 9999999999i64}),
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(matches!(v.verify(&hs).await, Err(AuthError::Invalid(_))));
    }

    #[tokio::test]
    async fn fetches_jwks_and_refetches_on_unknown_kid() {
        use axum::routing::get;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits = Arc::new(AtomicUsize::new(0));
        let kid = Arc::new(RwLock::new("k1".to_string()));
        let (h, k) = (hits.clone(), kid.clone());
        let app = axum::Router::new().route(
            "/jwks",
            get(move || {
                let (h, k) = (h.clone(), k.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let kid = k.read().unwrap().clone();
                    axum::Json(serde_json::to_value(jwks(&kid)).unwrap())
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        let v = Verifier::from_url(format!("http://{addr}/jwks"));
        assert_eq!(v.verify(&token("k1", 300)).await.unwrap().sub, "user-1");
        assert_eq!(v.verify(&token("k1", 300)).await.unwrap().sub, "user-1");
        assert_eq!(hits.load(Ordering::SeqCst), 1, "keys are cached");
        // Rotation: a new kid appears; within min_refetch no refetch happens.
        *kid.write().unwrap() = "k2".into();
        assert!(v.verify(&token("k2", 300)).await.is_err());
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // After min_refetch, an unknown kid triggers a refetch.
        *v.0.last_fetch.lock().await = Some(Instant::now() - Duration::from_secs(60));
        assert_eq!(v.verify(&token("k2", 300)).await.unwrap().sub, "user-1");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn extractor_rejects_and_accepts() {
        use axum::body::Body;
        use axum::routing::get;
        use axum::{Extension, Router};
        use tower::ServiceExt;
        let v = Verifier::from_jwks(&jwks("k1"));
        let app = Router::new()
            .route(
                "/me",
                get(|u: AuthUser| async move {
                    u.require_role(Role::Admin)?;
                    Ok::<_, ApiError>(u.sub.clone())
                }),
            )
            .route("/any", get(|u: AuthUser| async move { u.sub.clone() }))
            .layer(Extension(v));
        let req = |path: &str, auth: Option<String>| {
            let mut b = axum::http::Request::builder().uri(path);
            if let Some(a) = auth {
                b = b.header("authorization", a);
            }
            b.body(Body::empty()).unwrap()
        };
        let r = app.clone().oneshot(req("/any", None)).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let bearer = format!("Bearer {}", token("k1", 300));
        let r = app
            .clone()
            .oneshot(req("/any", Some(bearer.clone())))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = app
            .clone()
            .oneshot(req("/me", Some(bearer.clone())))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        // role_guard on a route group.
        const DEVS: &[Role] = &[Role::Developer, Role::Admin];
        const ADMINS: &[Role] = &[Role::Admin];
        let guarded = Router::new()
            .route("/dev", get(|u: AuthUser| async move { u.sub.clone() }))
            .route_layer(axum::middleware::from_fn_with_state(DEVS, role_guard))
            .merge(
                Router::new()
                    .route("/admin", get(|| async { "admin" }))
                    .route_layer(axum::middleware::from_fn_with_state(ADMINS, role_guard)),
            )
            .layer(Extension(Verifier::from_jwks(&jwks("k1"))));
        let r = guarded.clone().oneshot(req("/dev", None)).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = guarded
            .clone()
            .oneshot(req("/dev", Some(bearer.clone())))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = guarded.oneshot(req("/admin", Some(bearer))).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "forbidden");
    }

    #[tokio::test]
    async fn issuer_and_audience_are_required_when_configured() {
        let v = Verifier::from_jwks(&jwks("k1"))
            .with_issuer("user-management")
            .with_audience("ai-assistants-1c");
        let ok = token_for("k1", 300, Some("user-management"), Some("ai-assistants-1c"));
        assert_eq!(
            v.verify(&ok).await.unwrap().aud.as_deref(),
            Some("ai-assistants-1c")
        );
        for (what, t) in [
            (
                "no aud",
                token_for("k1", 300, Some("user-management"), None),
            ),
            (
                "other aud",
                token_for("k1", 300, Some("user-management"), Some("other-stack")),
            ),
            (
                "no iss",
                token_for("k1", 300, None, Some("ai-assistants-1c")),
            ),
            (
                "other iss",
                token_for("k1", 300, Some("evil"), Some("ai-assistants-1c")),
            ),
        ] {
            assert!(
                matches!(v.verify(&t).await, Err(AuthError::Invalid(_))),
                "{what} must be refused"
            );
        }
        // Without configured values, neither is checked (local verifiers).
        let plain = Verifier::from_jwks(&jwks("k1"));
        assert!(plain
            .verify(&token_for("k1", 300, None, Some("x")))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn identity_headers_need_the_gateways_proof() {
        use crate::identity::{AuthMethod, ForwardedIdentity};
        use axum::body::Body;
        use axum::routing::get;
        use axum::{Extension, Router};
        use tower::ServiceExt;
        let key = InternalAuthKey::new(&crate::Secret::new(
            "0123456789abcdef0123456789abcdef".into(),
        ))
        .unwrap();
        let handler = |u: AuthUser, f: Option<Extension<ForwardedIdentity>>| async move {
            format!(
                "{} {} {}",
                u.sub,
                u.roles.join(","),
                f.map(|f| f.0.method.as_str()).unwrap_or("-")
            )
        };
        let app = Router::new()
            .route("/chat", get(handler))
            .layer(Extension(key.clone()));
        let send = |app: Router, h: axum::http::HeaderMap, uri: &str| {
            let mut req = axum::http::Request::builder().uri(uri);
            *req.headers_mut().unwrap() = h;
            async move {
                let r = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
                let status = r.status();
                let body = http_body_util::BodyExt::collect(r.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        // A forged X-User-Id (what TRUST_X_USER_ID accepted): refused.
        let mut forged = axum::http::HeaderMap::new();
        forged.insert("x-user-id", "admin".parse().unwrap());
        forged.insert("x-user-roles", "admin".parse().unwrap());
        let (st, body) = send(app.clone(), forged.clone(), "/chat").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body.contains("invalid_identity_proof"), "{body}");
        // The gateway's proof for this very request: accepted.
        let id = ForwardedIdentity {
            user_id: "svc-bot".into(),
            roles: vec!["analyst".into()],
            method: AuthMethod::ApiKey,
        };
        let mut h = axum::http::HeaderMap::new();
        key.sign_into(&mut h, &axum::http::Method::GET, "/chat?x=1", &id)
            .unwrap();
        let (st, body) = send(app.clone(), h.clone(), "/chat?x=1").await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(body, "svc-bot analyst api_key");
        // The same proof on another query: refused.
        let (st, _) = send(app.clone(), h.clone(), "/chat?x=2").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        // A service without the key refuses identity headers outright.
        let keyless = Router::new()
            .route("/chat", get(handler))
            .layer(Extension(Verifier::from_jwks(&jwks("k1"))));
        let (st, _) = send(keyless, h, "/chat?x=1").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        // A bearer token still works where a verifier is configured.
        let both = Router::new()
            .route("/chat", get(handler))
            .layer(Extension(Verifier::from_jwks(&jwks("k1"))))
            .layer(Extension(key));
        let mut b = forged;
        b.insert(
            "authorization",
            format!("Bearer {}", token("k1", 300)).parse().unwrap(),
        );
        let (st, body) = send(both, b, "/chat").await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(
            body, "user-1 developer -",
            "the token decides, not the headers"
        );
    }

    #[test]
    fn roles_parse_and_check() {
        let c = Claims {
            sub: "u".into(),
            roles: vec!["analyst".into()],
            exp: 0,
            iat: 0,
            jti: "j".into(),
            iss: "i".into(),
            aud: None,
            iat_ms: None,
            email: None,
            sid: None,
        };
        assert!(c.has_role(Role::Analyst));
        assert!(!c.has_any_role(&[Role::Admin, Role::Developer]));
        assert!(c.require_any_role(&[Role::Admin, Role::Analyst]).is_ok());
        let err = c.require_role(Role::Admin).unwrap_err();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        assert_eq!("viewer".parse::<Role>().unwrap(), Role::Viewer);
        assert!("root".parse::<Role>().is_err());
    }
}
