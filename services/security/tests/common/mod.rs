//! Test harness: a fresh database, a Redis prefix, an in-test JWKS server with
//! a throw-away Ed25519 key, and the security service on 127.0.0.1:0.

#![allow(dead_code)]

use std::time::Duration;

use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kit::testing::{redis_prefix, test_redis_url, TestDb};
use kit::Secret;
use serde_json::{json, Value};

pub const SERVICE_TOKEN: &str = "test-service-token-0123456789";

pub struct Jwt {
    key: EncodingKey,
    pub jwks_url: String,
}

impl Jwt {
    pub async fn start() -> Self {
        let sk = SigningKey::generate(&mut rand::rngs::OsRng);
        let der = sk.to_pkcs8_der().unwrap();
        let key = EncodingKey::from_ed_der(der.as_bytes());
        let x =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sk.verifying_key().as_bytes());
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x,
            "kid": "test-key", "use": "sig", "alg": "EdDSA"}]});
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let j = jwks.clone();
                async move { axum::Json(j) }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        Jwt {
            key,
            jwks_url: format!("http://{addr}/jwks.json"),
        }
    }

    /// Any claims, signed with the test key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("test-key".into());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    pub fn token(&self, sub: &str, roles: &[&str], jti: &str) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("test-key".into());
        let claims = json!({"sub": sub, "roles": roles, "exp": now + 600, "iat": now,
            "jti": jti, "iss": "user-management", "aud": "ai-assistants-1c",
            "sid": format!("sid-{jti}")});
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

pub struct Service {
    pub base: String,
    pub db: TestDb,
    pub pool: sqlx::PgPool,
    pub jwt: Jwt,
    pub http: reqwest::Client,
    pub settings: security::Settings,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

pub fn settings(db_url: &str, jwks_url: &str, key: [u8; 32]) -> security::Settings {
    security::Settings {
        service_name: "security".into(),
        database_url: Secret::new(db_url.to_string()),
        redis_url: Secret::new(test_redis_url()),
        redis_prefix: redis_prefix(),
        jwks_url: Some(jwks_url.to_string()),
        jwt_issuer: Some("user-management".into()),
        jwt_audience: Some("ai-assistants-1c".into()),
        internal_auth: None,
        encryption_key: Secret::new(key),
        service_token: Some(Secret::new(SERVICE_TOKEN.to_string())),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        body_limit: 1 << 20,
    }
}

/// Serves an app built from `settings` on 127.0.0.1:0; returns its base URL
/// and a shutdown trigger.
pub async fn serve(settings: &security::Settings) -> (String, tokio::sync::oneshot::Sender<()>) {
    let app = security::build(settings).await.expect("build security app");
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kit::serve_with_timeout(
        app,
        l,
        async {
            let _ = rx.await;
        },
        Duration::from_secs(2),
    ));
    (format!("http://{addr}"), tx)
}

impl Service {
    pub async fn start() -> Self {
        let db = TestDb::new().await;
        let jwt = Jwt::start().await;
        let settings = settings(&db.url, &jwt.jwks_url, [7u8; 32]);
        let (base, tx) = serve(&settings).await;
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        Service {
            base,
            db,
            pool,
            jwt,
            http: reqwest::Client::new(),
            settings,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request authenticated with the service token.
    pub fn svc(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header(security::SERVICE_TOKEN_HEADER, SERVICE_TOKEN)
    }

    /// A request with a JWT holding `roles`.
    pub fn as_user(
        &self,
        method: reqwest::Method,
        path: &str,
        roles: &[&str],
    ) -> reqwest::RequestBuilder {
        let t = self
            .jwt
            .token("user-1", roles, &uuid::Uuid::new_v4().to_string());
        self.http.request(method, self.url(path)).bearer_auth(t)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    let v = serde_json::from_str(&body).unwrap_or_else(|_| json!({ "raw": body }));
    (status, v)
}
