//! # api-gateway — the single public entry (behind Nginx), port 3000
//!
//! `/api/v1/<service>/<rest>?<query>` is forwarded to `SERVICE_URL_<SERVICE>`
//! as `/<rest>?<query>`; the upstream set is every `SERVICE_URL_*` variable
//! present. For each request, in order:
//!
//! 1. route lookup in the [`routes::ROUTE_TABLE`] (404 unknown, 400 for dot
//!    segments or encoded slashes);
//! 2. per-IP token bucket in Redis (429 + `Retry-After`);
//! 3. authentication unless the route is public: `Authorization: Bearer`
//!    JWT (EdDSA, keys from `JWKS_URL`, `iss`/`aud` = `JWT_ISSUER`/
//!    `JWT_AUDIENCE`, plus the shared revocation list `revoked:*` in Redis,
//!    read on every request: no cache) or `X-API-Key` (verified by the
//!    security service, cached `API_KEY_CACHE_SECS`, but checked against
//!    `revoked:apikey:<id>` on every request) → 401; 503 when the list
//!    cannot be read;
//! 4. RBAC from the route table → 403;
//! 5. per-user token bucket → 429;
//! 6. the upstream's circuit breaker → 503 + `Retry-After` while open;
//! 7. forwarding with streamed bodies, identity headers (`x-user-id`,
//!    `x-user-roles`, `x-auth-method`) with their proof
//!    (`x-identity-timestamp`, `x-identity-proof`: HMAC-SHA256 over them,
//!    the method and the upstream path and query, keyed with
//!    `INTERNAL_AUTH_KEY_FILE`; see `kit::identity`; client copies of all
//!    five stripped),
//!    `x-request-id`, `x-forwarded-for`; idempotent methods retried once on
//!    a connect error (or a connection closed before any answer); 504 after `UPSTREAM_TIMEOUT` without response headers.
//!
//! Revocations are written by user-management (logout, password change,
//! force logout, disable, role change, delete) and security (single tokens,
//! API keys) to the shared list, which every replica reads per request.
//!
//! Environment (besides kit's `PORT`, `REDIS_URL`, `JWKS_URL`, ...):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `SERVICE_URL_<NAME>` | — | upstreams (http only) |
//! | `SERVICE_TOKEN_FILE` | — | shared token sent to the security service |
//! | `INTERNAL_AUTH_KEY_FILE` | — | per-stack key signing every forwarded identity (without it upstreams accept no forwarded identity) |
//! | `JWT_ISSUER` / `JWT_AUDIENCE` | `user-management` / `ai-assistants-1c` | required `iss` / `aud` |
//! | `REDIS_USERNAME`, `REDIS_PASSWORD_FILE` | — | the gateway's Redis ACL user |
//! | `RATE_LIMIT_RPS` / `RATE_LIMIT_BURST` | 20 / 40 | token bucket per IP and per user (0 disables) |
//! | `CORS_ORIGINS` | — | comma-separated allowed origins, `*` for any; unset: no CORS |
//! | `UPSTREAM_TIMEOUT` | 25 | seconds to the upstream's response headers |
//! | `UPSTREAM_CONNECT_TIMEOUT` | 2 | seconds |
//! | `BREAKER_THRESHOLD` / `BREAKER_COOLDOWN` | 5 / 10 | consecutive failures to open; seconds before the half-open probe |
//! | `API_KEY_CACHE_SECS` | 30 | how long a verified key is cached (revocations still apply at once) |
//! | `TRUST_FORWARDED_FOR` | true | client IP = last `X-Forwarded-For` entry (set by Nginx) instead of the TCP peer |
//! | `REDIS_KEY_PREFIX` | `<SERVICE_NAME>:` (`api-gateway:`) | prefix of the rate-limit keys |
//!
//! Breaker failures are connect errors, timeouts, other transport errors and
//! 502/503/504 answers; any other status counts as success.

pub mod auth;
pub mod breaker;
pub mod cache;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod routes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use kit::http::RequestId;
use kit::revocation::Revocations;
use kit::{ApiError, InternalAuthKey, Secret, Verifier};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::{Authenticator, Identity, SecurityClient};
use crate::breaker::{Breaker, Guard};
use crate::metrics::{status_class, GatewayMetrics};
use crate::proxy::{ForwardError, UpstreamClient};
use crate::ratelimit::RateLimiter;
use crate::routes::{Access, RouteError};

/// Gateway settings (from env with [`GatewayConfig::from_env`], or built by tests).
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub service_name: String,
    pub port: u16,
    /// service name → base URL (`http://host:port[/prefix]`).
    pub upstreams: BTreeMap<String, String>,
    pub jwks_url: Option<String>,
    /// Required `iss` / `aud` of access tokens (`None`: not checked).
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    /// Signs every forwarded identity (`INTERNAL_AUTH_KEY_FILE`).
    pub internal_auth: Option<InternalAuthKey>,
    pub service_token: Option<Secret<String>>,
    pub redis_url: Option<Secret<String>>,
    pub redis_prefix: String,
    pub rate_limit_rps: f64,
    pub rate_limit_burst: f64,
    pub cors_origins: Vec<String>,
    pub upstream_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
    pub api_key_cache: Duration,
    pub trust_forwarded_for: bool,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub connect_retry: Duration,
}

impl GatewayConfig {
    /// Defaults for everything but the upstreams (handy for tests).
    pub fn new(upstreams: BTreeMap<String, String>) -> Self {
        Self {
            service_name: "api-gateway".into(),
            port: 3000,
            upstreams,
            jwks_url: None,
            jwt_issuer: Some(kit::config::DEFAULT_JWT_ISSUER.into()),
            jwt_audience: Some(kit::config::DEFAULT_JWT_AUDIENCE.into()),
            internal_auth: None,
            service_token: None,
            redis_url: None,
            redis_prefix: "api-gateway:".into(),
            rate_limit_rps: 20.0,
            rate_limit_burst: 40.0,
            cors_origins: Vec::new(),
            upstream_timeout: Duration::from_secs(25),
            upstream_connect_timeout: Duration::from_secs(2),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(10),
            api_key_cache: Duration::from_secs(30),
            trust_forwarded_for: true,
            request_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            connect_retry: Duration::from_secs(60),
        }
    }

    pub fn from_env() -> anyhow::Result<Self> {
        let cfg = kit::Config::from_env("api-gateway", 3000)?;
        let env = kit::config::Env::process();
        let mut upstreams = BTreeMap::new();
        for (k, v) in std::env::vars() {
            if let Some(name) = routes::service_for_env_var(&k) {
                if !v.is_empty() {
                    upstreams.insert(name, v.trim_end_matches('/').to_string());
                }
            }
        }
        let mut c = Self::new(upstreams);
        c.service_name = cfg.service_name.clone();
        c.port = cfg.port;
        c.jwks_url = cfg.jwks_url.clone().or_else(|| {
            c.upstreams
                .get("user-management")
                .map(|u| format!("{u}/.well-known/jwks.json"))
        });
        c.jwt_issuer = Some(cfg.jwt_issuer.clone());
        c.jwt_audience = Some(cfg.jwt_audience.clone());
        c.internal_auth = cfg.internal_auth_key.clone();
        c.service_token = env.secret("SERVICE_TOKEN")?;
        c.redis_url = cfg.redis_url.clone();
        c.redis_prefix = cfg.redis_key_prefix.clone();
        c.rate_limit_rps = env.parse_or("RATE_LIMIT_RPS", c.rate_limit_rps)?;
        c.rate_limit_burst = env.parse_or("RATE_LIMIT_BURST", c.rate_limit_burst)?;
        c.cors_origins = env
            .var("CORS_ORIGINS")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        c.upstream_timeout = env.duration_secs_or("UPSTREAM_TIMEOUT", c.upstream_timeout)?;
        c.upstream_connect_timeout =
            env.duration_secs_or("UPSTREAM_CONNECT_TIMEOUT", c.upstream_connect_timeout)?;
        c.breaker_threshold = env.parse_or("BREAKER_THRESHOLD", c.breaker_threshold)?;
        c.breaker_cooldown = env.duration_secs_or("BREAKER_COOLDOWN", c.breaker_cooldown)?;
        c.api_key_cache = env.duration_secs_or("API_KEY_CACHE_SECS", c.api_key_cache)?;
        c.trust_forwarded_for = env.parse_or("TRUST_FORWARDED_FOR", true)?;
        for gone in ["REVOCATION_CACHE_SECS", "SESSION_REVOCATION_SECS"] {
            if env.var(gone).is_some() {
                tracing::warn!(
                    variable = gone,
                    "ignored: revocations are read from the shared Redis list on every request"
                );
            }
        }
        c.request_timeout = cfg.request_timeout;
        c.shutdown_timeout = cfg.shutdown_timeout;
        c.connect_retry = cfg.connect_timeout;
        Ok(c)
    }
}

/// One upstream: its base URL and breaker.
pub struct Upstream {
    pub name: String,
    base: String,
    pub breaker: Arc<Breaker>,
}

impl Upstream {
    fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, axum::http::uri::InvalidUri> {
        match query {
            Some(q) => format!("{}{path}?{q}", self.base).parse(),
            None => format!("{}{path}", self.base).parse(),
        }
    }
}

/// The gateway's shared state.
pub struct Gateway {
    cfg: GatewayConfig,
    upstreams: BTreeMap<String, Upstream>,
    client: UpstreamClient,
    auth: Authenticator,
    limiter: Option<(RateLimiter, redis::aio::ConnectionManager)>,
    metrics: GatewayMetrics,
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    ApiError::new(status, code, message).into_response()
}

fn with_retry_after(mut resp: Response, secs: u64) -> Response {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    resp
}

impl Gateway {
    fn client_ip(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
        if self.cfg.trust_forwarded_for {
            let last = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .rfind(|s| !s.is_empty());
            if let Some(ip) = last {
                return ip.chars().take(64).collect();
            }
        }
        peer.map(|p| p.ip().to_string())
            .unwrap_or_else(|| "unknown".into())
    }

    /// `Some(429 response)` when any of the buckets is empty.
    async fn limit(&self, scope: &str, id: &str) -> Option<Response> {
        let (limiter, conn) = self.limiter.as_ref()?;
        let mut conn = conn.clone();
        let checked = tokio::time::timeout(
            Duration::from_millis(250),
            limiter.check(&mut conn, &[(scope, id)]),
        )
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "rate limiter timed out",
            )))
        });
        match checked {
            Ok(d) if d.allowed => None,
            Ok(d) => {
                self.metrics.rate_limited.with_label_values(&[scope]).inc();
                let resp = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many requests (per {scope}); retry later"),
                );
                Some(with_retry_after(resp, d.retry_after_secs()))
            }
            Err(e) => {
                // Fail open: an unavailable Redis must not take the API down.
                tracing::warn!(error = %e, "rate limiter unavailable; request allowed");
                None
            }
        }
    }

    fn auth_failure(&self, e: ApiError) -> Response {
        self.metrics
            .auth_failures
            .with_label_values(&[e.code.as_str()])
            .inc();
        let unauthorized = e.status == StatusCode::UNAUTHORIZED;
        let mut resp = e.into_response();
        if unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

async fn proxy(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let target = match routes::resolve(&path) {
        Ok(t) => t,
        Err(RouteError::NotFound) => {
            return error(StatusCode::NOT_FOUND, "not_found", "no such route")
        }
        Err(RouteError::BadPath) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_path",
                "dot segments, empty segments and encoded separators are not allowed",
            )
        }
    };
    let Some(up) = gw.upstreams.get(target.service) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_service",
            format!("no upstream service {:?}", target.service),
        );
    };
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let client_ip = gw.client_ip(req.headers(), peer);

    if let Some(resp) = gw.limit("ip", &client_ip).await {
        return resp;
    }

    let identity: Option<Identity> = match target.access {
        Access::Public => None,
        access => {
            let id = match gw.auth.authenticate(req.headers(), &request_id).await {
                Ok(id) => id,
                Err(e) => return gw.auth_failure(e),
            };
            if !routes::allowed(access, &id.roles) {
                let need = match access {
                    Access::Roles(r) => r.join(", "),
                    _ => String::new(),
                };
                return gw.auth_failure(ApiError::forbidden(format!(
                    "this route requires one of the roles: {need}"
                )));
            }
            if let Some(resp) = gw.limit("user", &id.user_id).await {
                return resp;
            }
            Some(id)
        }
    };

    let permit = match up.breaker.try_acquire(Instant::now()) {
        Ok(p) => p,
        Err(wait) => {
            gw.metrics
                .upstream_requests
                .with_label_values(&[up.name.as_str(), "circuit_open"])
                .inc();
            let resp = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_unavailable",
                format!("{} is unavailable (circuit open)", up.name),
            );
            return with_retry_after(resp, wait.as_secs_f64().ceil() as u64);
        }
    };
    let guard = Guard::new(&up.breaker, permit);

    let (parts, body) = req.into_parts();
    let uri = match up.uri(&target.upstream_path, parts.uri.query()) {
        Ok(u) => u,
        Err(_) => return error(StatusCode::BAD_REQUEST, "bad_path", "invalid request path"),
    };
    let peer_ip = peer
        .map(|p| p.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let mut headers = proxy::upstream_headers(
        parts.headers,
        &peer_ip,
        identity
            .as_ref()
            .map(|i| (i.user_id.as_str(), i.roles.as_slice(), i.method.as_str())),
    );
    // The proof that this identity comes from the gateway, for this very
    // method, path and query, now.
    if let (Some(id), Some(key)) = (&identity, &gw.cfg.internal_auth) {
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        if let Err(e) = key.sign_into(&mut headers, &parts.method, pq, &id.forwarded()) {
            tracing::warn!(error = %e, "cannot sign the forwarded identity");
            return error(
                StatusCode::BAD_REQUEST,
                "bad_identity",
                "the identity cannot be forwarded",
            );
        }
    }
    let start = Instant::now();
    let result = proxy::forward(
        &gw.client,
        parts.method,
        uri,
        headers,
        body,
        gw.cfg.upstream_timeout,
        Duration::from_millis(100),
    )
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    let name = up.name.as_str();
    match result {
        Ok((resp, retried)) => {
            if retried {
                gw.metrics.retries.with_label_values(&[name]).inc();
            }
            let status = resp.status();
            let class = status_class(status.as_u16());
            guard.record(!matches!(status.as_u16(), 502..=504));
            gw.metrics
                .upstream_duration
                .with_label_values(&[name, class])
                .observe(elapsed);
            gw.metrics
                .upstream_requests
                .with_label_values(&[name, class])
                .inc();
            proxy::downstream_response(resp)
        }
        Err(e) => {
            guard.record(false);
            let (status, code, outcome, msg) = match &e {
                ForwardError::Connect(m) => (
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    "connect_error",
                    m.clone(),
                ),
                ForwardError::Timeout => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "timeout",
                    format!(
                        "no response within {} ms",
                        gw.cfg.upstream_timeout.as_millis()
                    ),
                ),
                ForwardError::Other(m) => (
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    "error",
                    m.clone(),
                ),
            };
            tracing::warn!(upstream = name, error = %msg, outcome, "upstream request failed");
            gw.metrics
                .upstream_requests
                .with_label_values(&[name, outcome])
                .inc();
            error(status, code, format!("{name}: {code}"))
        }
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                header::HeaderName::from_static("x-api-key"),
                header::HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                header::HeaderName::from_static("x-request-id"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// Builds the complete gateway app (API routes plus kit's health, metrics
/// and middleware). Connects Redis when rate limiting is on.
pub async fn build(cfg: GatewayConfig) -> anyhow::Result<Router> {
    for (name, url) in &cfg.upstreams {
        anyhow::ensure!(
            url.starts_with("http://"),
            "SERVICE_URL for {name} must be an http:// URL (got {url:?})"
        );
    }
    let breakers: BTreeMap<String, Arc<Breaker>> = cfg
        .upstreams
        .keys()
        .map(|n| {
            (
                n.clone(),
                Arc::new(Breaker::new(cfg.breaker_threshold, cfg.breaker_cooldown)),
            )
        })
        .collect();
    let upstreams = cfg
        .upstreams
        .iter()
        .map(|(n, url)| {
            (
                n.clone(),
                Upstream {
                    name: n.clone(),
                    base: url.trim_end_matches('/').to_string(),
                    breaker: breakers[n].clone(),
                },
            )
        })
        .collect();

    let mut infra = kit::Infra::named(&cfg.service_name, env!("CARGO_PKG_VERSION"));
    infra.request_timeout = cfg.request_timeout;
    let redis = match &cfg.redis_url {
        Some(url) => {
            let conn = kit::db::connect_redis(url.expose(), cfg.connect_retry).await?;
            infra = infra.with_redis(conn.clone());
            Some(conn)
        }
        None => None,
    };
    let limiter = if cfg.rate_limit_rps > 0.0 {
        let conn = redis
            .clone()
            .context("REDIS_URL is required for rate limiting (or set RATE_LIMIT_RPS=0)")?;
        Some((
            RateLimiter::new(cfg.rate_limit_rps, cfg.rate_limit_burst, &cfg.redis_prefix),
            conn,
        ))
    } else {
        tracing::warn!("rate limiting disabled (RATE_LIMIT_RPS=0)");
        None
    };
    let revocations = redis.map(Revocations::new);
    if revocations.is_none() {
        tracing::warn!("no REDIS_URL: revoked tokens and API keys are honoured until they expire");
    }
    if cfg.internal_auth.is_none() {
        tracing::warn!(
            "INTERNAL_AUTH_KEY_FILE not set: forwarded identities are unsigned, and upstreams \
             accept none of them (API-key callers cannot reach kit services)"
        );
    }

    let verifier = cfg.jwks_url.as_ref().map(|u| {
        let mut v = Verifier::from_url(u.clone());
        if let Some(iss) = &cfg.jwt_issuer {
            v = v.with_issuer(iss.clone());
        }
        if let Some(aud) = &cfg.jwt_audience {
            v = v.with_audience(aud.clone());
        }
        v.spawn_refresh(Duration::from_secs(300));
        v
    });
    if verifier.is_none() {
        tracing::warn!("no JWKS_URL: bearer tokens cannot be verified");
    }
    let security = cfg
        .upstreams
        .get("security")
        .map(|u| SecurityClient::new(u.clone(), cfg.service_token.clone(), Duration::from_secs(3)));
    if security.is_none() {
        tracing::warn!("no SERVICE_URL_SECURITY: no API keys");
    } else if cfg.service_token.is_none() {
        tracing::warn!(
            "SERVICE_TOKEN_FILE not set: the security service will refuse the gateway's API key \
             verification"
        );
    }
    let metrics = GatewayMetrics::register(infra.metrics.registry(), Arc::new(breakers))?;
    let gw = Arc::new(Gateway {
        client: proxy::client(cfg.upstream_connect_timeout),
        auth: Authenticator::new(verifier, security, revocations, cfg.api_key_cache),
        upstreams,
        limiter,
        metrics,
        cfg: cfg.clone(),
    });
    tracing::info!(upstreams = ?cfg.upstreams.keys().collect::<Vec<_>>(), "gateway configured");

    let mut api = Router::new()
        .route("/api/v1/{*rest}", any(proxy))
        .fallback(not_found)
        .with_state(gw);
    if let Some(c) = cors(&cfg.cors_origins) {
        api = api.layer(c);
    }
    Ok(infra.wrap(api))
}

/// The binary's entry: config from env, listen on PORT (default 3000).
pub async fn run() -> anyhow::Result<()> {
    let cfg = GatewayConfig::from_env()?;
    let port = cfg.port;
    let grace = cfg.shutdown_timeout;
    let app = build(cfg).await?;
    let listener = kit::server::bind(port).await?;
    kit::serve_with_timeout(app, listener, kit::shutdown_signal(), grace).await?;
    Ok(())
}

/// Serves `app` on an already-bound listener (tests use 127.0.0.1:0).
pub async fn serve(
    app: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    kit::serve_with_timeout(app, listener, shutdown, Duration::from_secs(5)).await
}
