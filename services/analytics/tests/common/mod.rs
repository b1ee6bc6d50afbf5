//! Test harness: a fresh database per test, the full app (kit-wrapped) on a
//! 127.0.0.1:0 listener, and a reqwest client.

#![allow(dead_code)]

use std::time::Duration;

use analytics::{AppState, Settings};
use chrono::{DateTime, Utc};
use kit::testing::TestDb;
use kit::{Infra, Verifier};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    // Last: dropped after the pool is closed.
    db: Option<TestDb>,
}

impl TestApp {
    pub async fn start() -> TestApp {
        Self::start_with(Settings::default(), None).await
    }

    pub async fn start_with(settings: Settings, verifier: Option<Verifier>) -> TestApp {
        let db = TestDb::new().await;
        let pool =
            kit::db::connect_pg(&db.url, Some(&analytics::MIGRATOR), Duration::from_secs(10))
                .await
                .expect("connect + migrate the test database");
        let infra = Infra::named("analytics", "test").with_pg(pool.clone());
        let state = AppState::new(pool.clone(), &infra, verifier, settings).unwrap();
        let app = analytics::app(state, &infra);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(kit::serve_with_timeout(
            app,
            listener,
            async {
                let _ = rx.await;
            },
            Duration::from_secs(5),
        ));
        TestApp {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            pool,
            shutdown: Some(tx),
            server: Some(server),
            db: Some(db),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POST a batch; returns (status, body).
    pub async fn post_events(&self, batch: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url("/events"))
            .json(batch)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// POST a batch that must be fully accepted.
    pub async fn ingest_ok(&self, batch: &Value) {
        let (status, body) = self.post_events(batch).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rejected"], 0, "{body}");
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn count_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Stop the server, close the pool and drop the database.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
        self.pool.close().await;
        if let Some(db) = self.db.take() {
            db.drop_db().await;
        }
    }
}

/// One event as JSON.
pub fn ev(kind: &str, service: &str, user: Option<&str>, at: DateTime<Utc>) -> Value {
    let mut v = json!({
        "event_id": Uuid::new_v4().to_string(),
        "kind": kind,
        "service": service,
        "occurred_at": at.to_rfc3339(),
    });
    if let Some(u) = user {
        v["user_id"] = json!(u);
    }
    v
}

pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A minimal RFC 4180 reader (handles quotes, doubled quotes, CRLF inside
/// quoted fields).
pub fn parse_csv(input: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = input.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
        } else {
            match c {
                '"' => quoted = true,
                ',' => row.push(std::mem::take(&mut field)),
                '\r' if chars.peek() == Some(&'\n') => {
                    chars.next();
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                _ => field.push(c),
            }
        }
    }
    assert!(!quoted, "unterminated quoted field");
    assert!(field.is_empty() && row.is_empty(), "last record lacks CRLF");
    rows
}

// Ed25519 test key (the same pair kit's own tests use).
pub const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEICgPFPQHHG8WB8FjWrSBBTzBTIm9oQHnggiRKNPRud7R
-----END PRIVATE KEY-----
";
pub const TEST_KEY_X: &str = "47YZOo5ZKW3zjrL-o_8v7D-6_alr7PfSm-WnDcDaITE";

pub fn test_verifier() -> Verifier {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "x": TEST_KEY_X,
        "kid": "k1", "use": "sig", "alg": "EdDSA"
    }]}))
    .unwrap();
    Verifier::from_jwks(&set)
}

pub fn token(roles: &[&str]) -> String {
    let now = Utc::now().timestamp();
    let claims = kit::Claims {
        sub: "user-1".into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        exp: now + 600,
        iat: now,
        jti: Uuid::new_v4().to_string(),
        iss: "user-management".into(),
        aud: Some("ai-assistants-1c".into()),
        iat_ms: None,
        email: None,
        sid: None,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let key = jsonwebtoken::EncodingKey::from_ed_pem(TEST_KEY_PEM.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}
