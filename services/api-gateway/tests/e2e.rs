//! End to end: user-management and security started in-process (their
//! library entry points, real PostgreSQL databases and Redis), a small echo
//! upstream, and the gateway, all on 127.0.0.1:0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_gateway::GatewayConfig;
use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::HeaderMap;
use axum::routing::{any, get};
use axum::Router;
use futures::StreamExt;
use kit::config::{Env, Secret};
use kit::testing::{redis_prefix, test_redis_url, TestDb};
use kit::Infra;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const ADMIN_EMAIL: &str = "admin@localhost";
const ADMIN_PW: &str = "Admin-Password-1";
const SERVICE_TOKEN: &str = "e2e-service-token-0123456789";
/// The per-stack key the gateway signs forwarded identities with.
const INTERNAL_KEY: &str = "e2e-internal-auth-key-0123456789abcdef";

fn internal_key() -> kit::InternalAuthKey {
    kit::InternalAuthKey::new(&Secret::new(INTERNAL_KEY.into())).unwrap()
}

// ---------------------------------------------------------------------------
// A small upstream: echoes what it received; streams on request.

fn pick(h: &HeaderMap, name: &str) -> Value {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| json!(s))
        .unwrap_or(Value::Null)
}

async fn echo(req: Request) -> axum::Json<Value> {
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut len = 0usize;
    while let Some(chunk) = stream.next().await {
        len += chunk.expect("body chunk").len();
    }
    let h = &parts.headers;
    // What a kit upstream would conclude from the identity headers.
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let proof = match internal_key().verify(&parts.method, pq, h) {
        Ok(id) => json!(format!("ok:{}", id.user_id)),
        Err(e) => json!(e.to_string()),
    };
    axum::Json(json!({
        "proof": proof,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "body_len": len,
        "x-user-id": pick(h, "x-user-id"),
        "x-user-roles": pick(h, "x-user-roles"),
        "x-auth-method": pick(h, "x-auth-method"),
        "x-request-id": pick(h, "x-request-id"),
        "x-forwarded-for": pick(h, "x-forwarded-for"),
        "x-service-token": pick(h, "x-service-token"),
        "x-identity-timestamp": pick(h, "x-identity-timestamp"),
        "x-identity-proof": pick(h, "x-identity-proof"),
    }))
}

/// `chunks` chunks of 16 KiB, each after a short pause.
async fn stream(Path(chunks): Path<usize>) -> Body {
    let s = futures::stream::iter(0..chunks).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b'a' + (i % 26) as u8; 16384]))
    });
    Body::from_stream(s)
}

fn echo_app(hits: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route("/stream/{chunks}", get(stream))
        .route(
            "/slow/{ms}",
            get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "slow"
            }),
        )
        .route(
            "/status/{code}",
            any(|Path(code): Path<u16>| async move {
                axum::http::StatusCode::from_u16(code).unwrap()
            }),
        )
        .fallback(any(echo))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: axum::middleware::Next| {
                let hits = hits.clone();
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    next.run(req).await
                }
            },
        ))
}

struct Echo {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Echo {
    async fn start_on(addr: SocketAddr, hits: Arc<AtomicUsize>) -> Self {
        let l = TcpListener::bind(addr).await.expect("bind echo");
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = echo_app(hits.clone());
        let task = tokio::spawn(async move {
            let _ = kit::serve_with_timeout(
                app,
                l,
                async {
                    let _ = rx.await;
                },
                Duration::from_millis(200),
            )
            .await;
        });
        Echo {
            addr,
            hits,
            stop: Some(tx),
            task: Some(task),
        }
    }

    async fn start() -> Self {
        Self::start_on(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(AtomicUsize::new(0)),
        )
        .await
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

// ---------------------------------------------------------------------------
// The stack.

async fn serve(app: Router, l: TcpListener) {
    tokio::spawn(kit::serve_with_timeout(
        app,
        l,
        std::future::pending(),
        Duration::from_secs(1),
    ));
}

struct Stack {
    um: String,
    security: String,
    echo: Echo,
    http: reqwest::Client,
    _dbs: (TestDb, TestDb),
}

impl Stack {
    async fn start() -> Self {
        let um_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sec_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let um = format!("http://{}", um_l.local_addr().unwrap());
        let security = format!("http://{}", sec_l.local_addr().unwrap());

        // user-management
        let um_db = TestDb::new().await;
        let mut s = user_management::Settings::from_source(&Env::from_pairs([(
            "SERVICE_URL_SECURITY",
            security.as_str(),
        )]))
        .unwrap();
        s.argon2 = user_management::settings::Argon2Cost {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        s.admin_password = Some(Secret::new(ADMIN_PW.to_string()));
        let pool = kit::db::connect_pg(
            &um_db.url,
            Some(&user_management::MIGRATOR),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let redis = kit::db::connect_redis(&test_redis_url(), Duration::from_secs(5))
            .await
            .unwrap();
        let state = user_management::AppState::new(pool.clone(), s)
            .await
            .unwrap()
            .with_revocations(kit::revocation::Revocations::new(redis));
        let infra = Infra::named("user-management", "test").with_pg(pool);
        serve(user_management::app(state, &infra), um_l).await;

        // security
        let sec_db = TestDb::new().await;
        let settings = security::Settings {
            service_name: "security".into(),
            database_url: Secret::new(sec_db.url.clone()),
            redis_url: Secret::new(test_redis_url()),
            redis_prefix: redis_prefix(),
            jwks_url: Some(format!("{um}/.well-known/jwks.json")),
            jwt_issuer: Some("user-management".into()),
            jwt_audience: Some("ai-assistants-1c".into()),
            internal_auth: Some(internal_key()),
            encryption_key: Secret::new([5u8; 32]),
            service_token: Some(Secret::new(SERVICE_TOKEN.into())),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            body_limit: 1 << 20,
        };
        serve(security::build(&settings).await.unwrap(), sec_l).await;

        Stack {
            um,
            security,
            echo: Echo::start().await,
            http: reqwest::Client::new(),
            _dbs: (um_db, sec_db),
        }
    }

    fn config(&self) -> GatewayConfig {
        let mut up = BTreeMap::new();
        up.insert("user-management".to_string(), self.um.clone());
        up.insert("security".to_string(), self.security.clone());
        up.insert("ai-assistant".to_string(), self.echo.url());
        up.insert("analytics".to_string(), self.echo.url());
        let mut c = GatewayConfig::new(up);
        c.jwks_url = Some(format!("{}/.well-known/jwks.json", self.um));
        c.service_token = Some(Secret::new(SERVICE_TOKEN.into()));
        c.internal_auth = Some(internal_key());
        c.redis_url = Some(Secret::new(test_redis_url()));
        c.redis_prefix = redis_prefix();
        c.rate_limit_rps = 1000.0;
        c.rate_limit_burst = 1000.0;
        c.breaker_threshold = 3;
        c.breaker_cooldown = Duration::from_secs(1);
        c.api_key_cache = Duration::from_secs(30);
        c.connect_retry = Duration::from_secs(5);
        c
    }

    async fn gateway(&self, cfg: GatewayConfig) -> Gw {
        let app = api_gateway::build(cfg).await.unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        serve(app, l).await;
        Gw {
            base,
            http: self.http.clone(),
        }
    }
}

struct Gw {
    base: String,
    http: reqwest::Client,
}

impl Gw {
    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(m, format!("{}{path}", self.base))
    }

    async fn call(
        &self,
        m: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.req(m, path);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        json_of(r.send().await.unwrap()).await
    }

    async fn login(&self, email: &str, pw: &str) -> Value {
        let (st, v) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/user-management/auth/login",
                None,
                Some(json!({"email": email, "password": pw})),
            )
            .await;
        assert_eq!(st, 200, "login: {v}");
        v
    }
}

async fn json_of(r: reqwest::Response) -> (StatusCode, Value) {
    let st = r.status();
    let text = r.text().await.unwrap();
    (
        st,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
    )
}

use reqwest::Method as M;

/// The status line and headers of a raw `GET path` (no normalisation).
async fn raw_get(base: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn auth_flow_rbac_identity_headers_and_logout_revocation() {
    let stack = Stack::start().await;
    let gw = stack.gateway(stack.config()).await;

    // Public routes need no token; others do.
    let (st, v) = gw
        .call(
            M::GET,
            "/api/v1/user-management/.well-known/jwks.json",
            None,
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["keys"][0]["kid"].is_string());
    let (st, v) = gw
        .call(M::GET, "/api/v1/ai-assistant/echo", None, None)
        .await;
    assert_eq!(st, 401, "{v}");
    assert_eq!(
        stack.echo.hits.load(Ordering::SeqCst),
        0,
        "refused before the upstream"
    );

    // register → login
    let (st, v) = gw
        .call(
            M::POST,
            "/api/v1/user-management/auth/register",
            None,
            Some(json!({"email": "eve@example.com", "password": "Viewer-Pass-1"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let user_id = v["id"].as_str().unwrap().to_string();
    let login = gw.login("eve@example.com", "Viewer-Pass-1").await;
    let t1 = login["access_token"].as_str().unwrap().to_string();
    let rt1 = login["refresh_token"].as_str().unwrap().to_string();

    // A protected route on user-management, and one on the echo upstream.
    let (st, v) = gw
        .call(M::GET, "/api/v1/user-management/me", Some(&t1), None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["id"], user_id.as_str());
    let (st, v) = json_of(
        gw.req(M::GET, "/api/v1/ai-assistant/chat/7?q=1%202&x=y")
            .bearer_auth(&t1)
            .header("x-user-id", "spoofed-admin")
            .header("x-user-roles", "admin")
            .header("x-service-token", "guess")
            .header("x-request-id", "req-e2e-1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["path"], "/chat/7");
    assert_eq!(v["query"], "q=1%202&x=y");
    assert_eq!(
        v["x-user-id"],
        user_id.as_str(),
        "identity from the token, not the client"
    );
    assert_eq!(v["x-user-roles"], "viewer");
    assert_eq!(v["x-auth-method"], "jwt");
    assert_eq!(
        v["proof"],
        format!("ok:{user_id}"),
        "the forwarded identity carries the gateway's proof"
    );
    assert_eq!(v["x-service-token"], Value::Null);
    assert_eq!(v["x-request-id"], "req-e2e-1");
    assert_eq!(v["x-forwarded-for"], "127.0.0.1");

    // Wrong role → 403 (gateway RBAC), never reaching the upstream.
    let hits = stack.echo.hits.load(Ordering::SeqCst);
    let (st, v) = gw
        .call(M::GET, "/api/v1/analytics/reports", Some(&t1), None)
        .await;
    assert_eq!(st, 403, "{v}");
    assert_eq!(v["error"]["code"], "forbidden");
    assert_eq!(stack.echo.hits.load(Ordering::SeqCst), hits);
    let (st, _) = gw
        .call(M::GET, "/api/v1/user-management/users", Some(&t1), None)
        .await;
    assert_eq!(st, 403);
    let (st, _) = gw
        .call(M::GET, "/api/v1/security/audit", Some(&t1), None)
        .await;
    assert_eq!(st, 403);
    // Traversal out of a public route is refused (raw request: HTTP
    // clients would normalise the dot segments themselves).
    for path in [
        "/api/v1/user-management/auth/login/../../users",
        "/api/v1/user-management/auth/login/%2e%2e/%2E%2E/users",
        "/api/v1/user-management/auth/login%2f..%2f..%2fusers",
    ] {
        let head = raw_get(&gw.base, path).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{path}: {head}");
    }
    let (st, _) = gw.call(M::GET, "/api/v1/nope/x", Some(&t1), None).await;
    assert_eq!(st, 404);

    // refresh → a new access token works.
    let (st, v) = gw
        .call(
            M::POST,
            "/api/v1/user-management/auth/refresh",
            None,
            Some(json!({ "refresh_token": rt1 })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let t2 = v["access_token"].as_str().unwrap().to_string();
    let rt2 = v["refresh_token"].as_str().unwrap().to_string();
    let (st, _) = gw
        .call(M::GET, "/api/v1/ai-assistant/echo", Some(&t2), None)
        .await;
    assert_eq!(st, 200);

    // logout → both access tokens of the session are refused by the gateway.
    let (st, v) = gw
        .call(
            M::POST,
            "/api/v1/user-management/auth/logout",
            Some(&t2),
            Some(json!({ "refresh_token": rt2 })),
        )
        .await;
    assert!(st.is_success(), "{st} {v}");
    for t in [&t2, &t1] {
        let (st, v) = gw
            .call(M::GET, "/api/v1/ai-assistant/echo", Some(t), None)
            .await;
        assert_eq!(st, 401, "{v}");
        assert_eq!(v["error"]["code"], "token_revoked", "{v}");
    }
    // A second gateway replica refuses them too: the revocation lives in
    // the shared list.
    let gw2 = stack.gateway(stack.config()).await;
    let (st, v) = gw2
        .call(M::GET, "/api/v1/ai-assistant/echo", Some(&t1), None)
        .await;
    assert_eq!(st, 401, "{v}");
    let (st, _) = gw2
        .call(
            M::POST,
            "/api/v1/user-management/auth/refresh",
            None,
            Some(json!({ "refresh_token": rt2 })),
        )
        .await;
    assert_eq!(st, 401, "refresh token of a logged-out session");

    // Gateway metrics are exposed.
    let text = gw
        .req(M::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("gateway_upstream_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains(r#"gateway_circuit_breaker_state{service="ai-assistant"} 0"#));
    assert!(text.contains(r#"gateway_auth_failures_total{code="token_revoked"}"#));
}

#[tokio::test]
async fn admin_routes_and_api_keys() {
    let stack = Stack::start().await;
    let gw = stack.gateway(stack.config()).await;
    let admin = gw.login(ADMIN_EMAIL, ADMIN_PW).await;
    let at = admin["access_token"].as_str().unwrap().to_string();

    let (st, v) = gw
        .call(M::GET, "/api/v1/user-management/users", Some(&at), None)
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = gw
        .call(M::GET, "/api/v1/analytics/x", Some(&at), None)
        .await;
    assert_eq!(st, 200, "admin may use analytics: {v}");

    // Issue an API key through the gateway (security checks the admin JWT).
    let (st, v) = gw
        .call(
            M::POST,
            "/api/v1/security/api-keys",
            Some(&at),
            Some(json!({"name": "bot", "owner": "svc-bot", "roles": ["analyst"]})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let key = v["key"].as_str().unwrap().to_string();
    let id = v["id"].as_str().unwrap().to_string();

    let with_key = |path: &str| gw.req(M::GET, path).header("x-api-key", key.clone()).send();
    let (st, v) = json_of(with_key("/api/v1/analytics/usage").await.unwrap()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["x-user-id"], "svc-bot");
    assert_eq!(v["x-user-roles"], "analyst");
    assert_eq!(v["x-auth-method"], "api_key");
    assert_eq!(
        v["proof"], "ok:svc-bot",
        "API-key callers carry the same proof"
    );
    let (st, _) = json_of(with_key("/api/v1/security/audit").await.unwrap()).await;
    assert_eq!(st, 403, "analyst key is not admin");
    let (st, v) = json_of(
        gw.req(M::GET, "/api/v1/analytics/usage")
            .header("x-api-key", "sk_not-a-key")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"]["code"], "invalid_api_key");

    // Revoke: although the gateway caches the verified key for 30 s, the
    // next request is refused (the revocation list is read every time).
    let (st, v) = gw
        .call(
            M::DELETE,
            &format!("/api/v1/security/api-keys/{id}"),
            Some(&at),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let revoked_at = Instant::now();
    let (st, v) = json_of(with_key("/api/v1/analytics/usage").await.unwrap()).await;
    println!(
        "revoked API key refused by the gateway {:?} after the revocation",
        revoked_at.elapsed()
    );
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"]["code"], "invalid_api_key");

    // The security audit chain recorded it and still verifies.
    let (st, v) = gw
        .call(M::GET, "/api/v1/security/audit/verify", Some(&at), None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["entries_checked"].as_u64().unwrap() >= 2);
}

#[tokio::test]
async fn rate_limit_floods_get_429_with_retry_after() {
    let stack = Stack::start().await;
    let mut cfg = stack.config();
    cfg.rate_limit_rps = 2.0;
    cfg.rate_limit_burst = 10.0;
    let gw = stack.gateway(cfg).await;
    let path = "/api/v1/user-management/.well-known/jwks.json";
    let mut limited = None;
    let mut ok = 0;
    for _ in 0..200 {
        let r = gw.req(M::GET, path).send().await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
        ok += 1;
    }
    let r = limited.expect("a 429 within 200 requests");
    assert!((10..=12).contains(&ok), "burst of 10 admitted, got {ok}");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    let (_, v) = json_of(r).await;
    assert_eq!(v["error"]["code"], "rate_limited");

    // Another client IP (X-Forwarded-For from Nginx) has its own bucket.
    let r = gw
        .req(M::GET, path)
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Tokens refill: after Retry-After the client is admitted again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let r = gw.req(M::GET, path).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Per user too: one user's flood from many IPs is still limited.
    let login = gw.login(ADMIN_EMAIL, ADMIN_PW).await;
    let t = login["access_token"].as_str().unwrap().to_string();
    let mut got = false;
    for i in 0..200 {
        let r = gw
            .req(M::GET, "/api/v1/ai-assistant/echo")
            .bearer_auth(&t)
            .header("x-forwarded-for", format!("203.0.113.{}", i % 250))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers().contains_key("retry-after"));
            let (_, v) = json_of(r).await;
            assert!(
                v["error"]["message"].as_str().unwrap().contains("user"),
                "{v}"
            );
            got = true;
            break;
        }
        assert_eq!(r.status(), 200);
    }
    assert!(got, "per-user limit reached within 200 requests");
}

#[tokio::test]
async fn breaker_opens_on_a_dead_upstream_and_recovers() {
    let mut stack = Stack::start().await;
    let gw = stack.gateway(stack.config()).await;
    let login = gw.login(ADMIN_EMAIL, ADMIN_PW).await;
    let t = login["access_token"].as_str().unwrap().to_string();
    let get = |path: &'static str| gw.req(M::GET, path).bearer_auth(t.clone()).send();

    assert_eq!(
        get("/api/v1/ai-assistant/echo").await.unwrap().status(),
        200
    );
    let addr = stack.echo.addr;
    let hits = stack.echo.hits.clone();
    stack.echo.stop().await;

    // Connect errors (each retried once) until the breaker opens...
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (st, v) = json_of(get("/api/v1/ai-assistant/echo").await.unwrap()).await;
        assert_eq!(v["error"]["code"], "upstream_unreachable", "{v}");
        statuses.push(st.as_u16());
    }
    assert_eq!(statuses, vec![502, 502, 502]);
    // ...then 503 at once, with Retry-After.
    let start = Instant::now();
    let r = get("/api/v1/ai-assistant/echo").await.unwrap();
    let took = start.elapsed();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(
        took < Duration::from_millis(200),
        "fast failure, took {took:?}"
    );
    let (_, v) = json_of(r).await;
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    let text = gw
        .req(M::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(r#"gateway_circuit_breaker_state{service="ai-assistant"} 1"#));
    // Other upstreams are unaffected.
    let (st, _) = gw
        .call(M::GET, "/api/v1/user-management/me", Some(&t), None)
        .await;
    assert_eq!(st, 200);

    // The upstream comes back on the same address; after the cool-down the
    // half-open probe succeeds and the breaker closes.
    stack.echo = Echo::start_on(addr, hits).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        assert_eq!(
            get("/api/v1/ai-assistant/echo").await.unwrap().status(),
            200
        );
    }
    let text = gw
        .req(M::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(r#"gateway_circuit_breaker_state{service="ai-assistant"} 0"#));
}

#[tokio::test]
async fn streaming_bodies_and_retry_on_connect_error() {
    let stack = Stack::start().await;
    // A port with nothing behind it yet: the upstream starts 40 ms after the
    // request, so the first connect fails and the one retry succeeds.
    let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let late_addr = probe.local_addr().unwrap();
    drop(probe);
    let mut cfg = stack.config();
    cfg.upstreams
        .insert("1c-integration".into(), format!("http://{late_addr}"));
    cfg.upstream_timeout = Duration::from_millis(500);
    let gw = stack.gateway(cfg).await;
    let login = gw.login(ADMIN_EMAIL, ADMIN_PW).await;
    let t = login["access_token"].as_str().unwrap().to_string();

    // 8 MiB request body streamed through (far above the 2 MiB body limit
    // of buffered handlers) and counted by the upstream.
    let chunks = futures::stream::iter(0..128)
        .map(|_| Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![7u8; 64 * 1024])));
    let (st, v) = json_of(
        gw.req(M::PUT, "/api/v1/ai-assistant/upload")
            .bearer_auth(&t)
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["body_len"], 8 * 1024 * 1024);
    assert_eq!(v["method"], "PUT");

    // A streamed response arrives chunk by chunk.
    let r = gw
        .req(M::GET, "/api/v1/ai-assistant/stream/64")
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut s = r.bytes_stream();
    let (mut n, mut total) = (0, 0);
    while let Some(c) = s.next().await {
        total += c.unwrap().len();
        n += 1;
    }
    assert_eq!(total, 64 * 16384);
    assert!(n > 1, "streamed in several chunks");

    // No response headers within UPSTREAM_TIMEOUT → 504.
    let start = Instant::now();
    let (st, v) = json_of(
        gw.req(M::GET, "/api/v1/ai-assistant/slow/3000")
            .bearer_auth(&t)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 504, "{v}");
    assert_eq!(v["error"]["code"], "upstream_timeout");
    assert!(start.elapsed() < Duration::from_millis(2000));

    // Upstream 5xx statuses pass through.
    let (st, _) = json_of(
        gw.req(M::GET, "/api/v1/ai-assistant/status/500")
            .bearer_auth(&t)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 500);

    // GET is retried once after a connect error...
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(40)).await;
        Echo::start_on(late_addr, Arc::new(AtomicUsize::new(0))).await
    });
    let (st, v) = json_of(
        gw.req(M::GET, "/api/v1/1c-integration/odata?$top=1")
            .bearer_auth(&t)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["path"], "/odata");
    let mut late = late.await.unwrap();
    let text = gw
        .req(M::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"gateway_upstream_retries_total{service="1c-integration"} 1"#),
        "{text}"
    );
    // ...but a POST is not (it may not be idempotent).
    late.stop().await;
    let late2 = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(40)).await;
        Echo::start_on(late_addr, Arc::new(AtomicUsize::new(0))).await
    });
    let (st, v) = json_of(
        gw.req(M::POST, "/api/v1/1c-integration/documents")
            .bearer_auth(&t)
            .json(&json!({"a": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 502, "{v}");
    let _ = late2.await;
}

#[tokio::test]
async fn cors_preflight_from_configured_origin() {
    let stack = Stack::start().await;
    let mut cfg = stack.config();
    cfg.cors_origins = vec!["https://app.example".into()];
    let gw = stack.gateway(cfg).await;
    let r = gw
        .req(M::OPTIONS, "/api/v1/ai-assistant/chat")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let r = gw
        .req(M::OPTIONS, "/api/v1/ai-assistant/chat")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn every_revocation_is_refused_by_the_gateway_within_a_second() {
    let stack = Stack::start().await;
    let gw = stack.gateway(stack.config()).await;
    let gw2 = stack.gateway(stack.config()).await;
    let admin = gw.login(ADMIN_EMAIL, ADMIN_PW).await;
    let at = admin["access_token"].as_str().unwrap().to_string();
    let (st, v) = gw
        .call(
            M::POST,
            "/api/v1/user-management/users",
            Some(&at),
            Some(json!({"email": "rev@example.com", "password": "Revoke-Pass-1"})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let uid = v["id"].as_str().unwrap().to_string();

    /// Runs `revoke`, then polls both gateway replicas with `token` until
    /// they refuse it; returns the delay.
    async fn refused_after(
        gws: [&Gw; 2],
        token: &str,
        revoke: impl std::future::Future<Output = ()>,
    ) -> Duration {
        for g in gws {
            let (st, v) = g
                .call(M::GET, "/api/v1/ai-assistant/echo", Some(token), None)
                .await;
            assert_eq!(st, 200, "accepted before the revocation: {v}");
        }
        revoke.await;
        let start = Instant::now();
        loop {
            let mut refused = 0;
            for g in gws {
                let (st, v) = g
                    .call(M::GET, "/api/v1/ai-assistant/echo", Some(token), None)
                    .await;
                if st == 401 {
                    assert_eq!(v["error"]["code"], "token_revoked", "{v}");
                    refused += 1;
                }
            }
            if refused == 2 {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "still accepted after 1 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let login = |pw: &'static str| {
        let gw = &gw;
        async move {
            let v = gw.login("rev@example.com", pw).await;
            v["access_token"].as_str().unwrap().to_string()
        }
    };
    let mut delays = Vec::new();

    // Admin force logout.
    let t = login("Revoke-Pass-1").await;
    let d = refused_after([&gw, &gw2], &t, async {
        let (st, v) = gw
            .call(
                M::DELETE,
                &format!("/api/v1/user-management/users/{uid}/sessions"),
                Some(&at),
                None,
            )
            .await;
        assert_eq!(st, 200, "{v}");
    })
    .await;
    delays.push(("force logout", d));

    // Role change.
    let t = login("Revoke-Pass-1").await;
    let d = refused_after([&gw, &gw2], &t, async {
        let (st, v) = gw
            .call(
                M::PUT,
                &format!("/api/v1/user-management/users/{uid}/roles"),
                Some(&at),
                Some(json!({"roles": ["analyst"]})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    })
    .await;
    delays.push(("role change", d));

    // Password change (the other sessions).
    let other = login("Revoke-Pass-1").await;
    let me = login("Revoke-Pass-1").await;
    let d = refused_after([&gw, &gw2], &other, async {
        let (st, v) = gw
            .call(
                M::POST,
                "/api/v1/user-management/auth/password",
                Some(&me),
                Some(json!({"current_password": "Revoke-Pass-1", "new_password": "Revoke-Pass-2"})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    })
    .await;
    delays.push(("password change", d));

    // Refresh-token reuse.
    let v = gw.login("rev@example.com", "Revoke-Pass-2").await;
    let (t, rt) = (
        v["access_token"].as_str().unwrap().to_string(),
        v["refresh_token"].clone(),
    );
    let d = refused_after([&gw, &gw2], &t, async {
        let refresh = || {
            gw.call(
                M::POST,
                "/api/v1/user-management/auth/refresh",
                None,
                Some(json!({"refresh_token": rt})),
            )
        };
        assert_eq!(refresh().await.0, 200);
        let (st, v) = refresh().await;
        assert_eq!(v["error"]["code"], "refresh_token_reused", "{st} {v}");
    })
    .await;
    delays.push(("refresh-token reuse", d));

    // Disable.
    let t = login("Revoke-Pass-2").await;
    let d = refused_after([&gw, &gw2], &t, async {
        let (st, v) = gw
            .call(
                M::PATCH,
                &format!("/api/v1/user-management/users/{uid}"),
                Some(&at),
                Some(json!({"is_active": false})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
    })
    .await;
    delays.push(("disable", d));

    for (what, d) in &delays {
        println!("{what}: the gateway (2 replicas) refused the token {d:?} after the revocation answered");
    }
}

#[tokio::test]
async fn forged_identity_headers_never_reach_an_upstream_as_an_identity() {
    let stack = Stack::start().await;
    let gw = stack.gateway(stack.config()).await;
    // Straight to the upstream (as anything on a shared network could):
    // headers without the gateway's proof are not an identity.
    let r = reqwest::Client::new()
        .get(format!("{}/chat", stack.echo.url()))
        .header("x-user-id", "admin-1")
        .header("x-user-roles", "admin")
        .header("x-auth-method", "jwt")
        .send()
        .await
        .unwrap();
    let (_, v) = json_of(r).await;
    assert_eq!(v["proof"], "identity headers without a proof");
    // A proof copied from a real request does not fit another path.
    let login = gw.login(ADMIN_EMAIL, ADMIN_PW).await;
    let t = login["access_token"].as_str().unwrap();
    let (_, seen) = gw
        .call(M::GET, "/api/v1/ai-assistant/chat", Some(t), None)
        .await;
    let r = reqwest::Client::new()
        .delete(format!("{}/conversations", stack.echo.url()))
        .header("x-user-id", seen["x-user-id"].as_str().unwrap())
        .header("x-user-roles", seen["x-user-roles"].as_str().unwrap())
        .header("x-auth-method", "jwt")
        .header(
            "x-identity-timestamp",
            seen["x-identity-timestamp"].as_str().unwrap(),
        )
        .header(
            "x-identity-proof",
            seen["x-identity-proof"].as_str().unwrap(),
        )
        .send()
        .await
        .unwrap();
    let (_, v) = json_of(r).await;
    assert_eq!(v["proof"], "identity proof does not match");
}
