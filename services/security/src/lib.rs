//! # security — audit chain, API keys, token revocations, credential vault
//!
//! Port 8004, own PostgreSQL (audit log, API keys, encrypted credentials) and
//! Redis (token revocation list).
//!
//! | endpoint | who | what |
//! |---|---|---|
//! | `POST /audit` | service, admin | append `{actor, action, resource?, category?, ip?, detail?}` to the hash chain |
//! | `GET /audit?page=&per_page=&category=&action=&actor=` | service, admin | entries, newest first |
//! | `GET /audit/verify` | service, admin | walk the chain: `{ok, entries_checked, head_seq, first_broken_id?, reason?}` |
//! | `POST /events` | service, admin | record `{kind, subject, ip?, detail?}` (a `security_event` audit entry) |
//! | `GET /events?kind=&page=` | service, admin | security events |
//! | `POST /api-keys` | service, admin | `{name, owner, roles}` → record plus `key` (shown once) |
//! | `GET /api-keys` | service, admin | list (no keys, no hashes) |
//! | `DELETE /api-keys/{id}` | service, admin | revoke |
//! | `POST /api-keys/verify` | service, admin | `{key}` → `{valid, roles, owner, id, name}` |
//! | `POST /revocations` | service, admin, or the token's own holder | `{jti, exp}`: revoked until `exp` |
//! | `GET /revocations/{jti}` | service, admin | `{jti, revoked}` |
//! | `POST /credentials` | service, admin | `{owner, name, secret}` stored AES-256-GCM encrypted |
//! | `GET /credentials/{owner}/{name}` | service, admin | decrypted `{owner, name, secret}` |
//! | `DELETE /credentials/{owner}/{name}` | service, admin | delete |
//!
//! "service" = header `x-service-token` equal to the SERVICE_TOKEN secret;
//! "admin" = a JWT (verified against JWKS_URL by kit) with the `admin` role.
//!
//! Environment (besides kit's: PORT, DATABASE_*, REDIS_URL, JWKS_URL, ...):
//! `ENCRYPTION_KEY_FILE` (required; 32 raw bytes, 64 hex digits or base64),
//! `SERVICE_TOKEN_FILE` (optional; without it only admin JWTs are accepted),
//! `REDIS_KEY_PREFIX` (default `security:`).

pub mod audit;
pub mod crypto;
pub mod http;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::{Extension, Router};
use kit::{Secret, Verifier};

pub use http::SERVICE_TOKEN_HEADER;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub pool: sqlx::PgPool,
    pub redis: redis::aio::ConnectionManager,
    pub secret_box: Arc<crypto::SecretBox>,
    pub service_token: Option<Secret<String>>,
    pub redis_prefix: String,
}

impl AppState {
    pub fn revocation_key(&self, jti: &str) -> String {
        format!("{}revoked:{jti}", self.redis_prefix)
    }
}

/// Everything needed to build the service (from env, or given by tests).
#[derive(Clone)]
pub struct Settings {
    pub service_name: String,
    pub database_url: Secret<String>,
    pub redis_url: Secret<String>,
    pub redis_prefix: String,
    pub jwks_url: Option<String>,
    pub encryption_key: Secret<[u8; 32]>,
    pub service_token: Option<Secret<String>>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub body_limit: usize,
}

impl Settings {
    pub fn from_env(cfg: &kit::Config) -> anyhow::Result<Self> {
        let env = kit::config::Env::process();
        let key_path = env
            .var("ENCRYPTION_KEY_FILE")
            .context("ENCRYPTION_KEY_FILE is required (32-byte key: raw, hex or base64)")?;
        let raw = std::fs::read(&key_path)
            .with_context(|| format!("cannot read ENCRYPTION_KEY_FILE {key_path}"))?;
        let key = crypto::parse_key(&raw).context("ENCRYPTION_KEY_FILE")?;
        let service_token = env.secret("SERVICE_TOKEN")?;
        if service_token.is_none() {
            tracing::warn!("SERVICE_TOKEN_FILE not set: only admin JWTs are accepted");
        }
        Ok(Settings {
            service_name: cfg.service_name.clone(),
            database_url: Secret::new(cfg.require_database_url()?.to_string()),
            redis_url: cfg
                .redis_url
                .clone()
                .context("REDIS_URL is required (token revocation list)")?,
            redis_prefix: env
                .var("REDIS_KEY_PREFIX")
                .unwrap_or_else(|| "security:".into()),
            jwks_url: cfg.jwks_url.clone(),
            encryption_key: Secret::new(key),
            service_token,
            connect_timeout: cfg.connect_timeout,
            request_timeout: cfg.request_timeout,
            body_limit: cfg.body_limit,
        })
    }
}

/// The API routes alone (no health/metrics/middleware), for a given state.
pub fn router(state: AppState, verifier: Option<Verifier>) -> Router {
    let r = http::routes(state);
    match verifier {
        Some(v) => r.layer(Extension(v)),
        None => r,
    }
}

/// Connects PostgreSQL (running migrations) and Redis, and returns the
/// complete app: API routes plus kit's health, metrics and middleware.
pub async fn build(settings: &Settings) -> anyhow::Result<Router> {
    let pool = kit::db::connect_pg(
        settings.database_url.expose(),
        Some(&MIGRATOR),
        settings.connect_timeout,
    )
    .await?;
    let redis =
        kit::db::connect_redis(settings.redis_url.expose(), settings.connect_timeout).await?;
    let verifier = settings.jwks_url.as_ref().map(|u| {
        let v = Verifier::from_url(u.clone());
        v.spawn_refresh(Duration::from_secs(300));
        v
    });
    if verifier.is_none() {
        tracing::warn!("JWKS_URL not set: only the service token is accepted");
    }
    let state = AppState {
        pool: pool.clone(),
        redis: redis.clone(),
        secret_box: Arc::new(crypto::SecretBox::new(settings.encryption_key.expose())),
        service_token: settings.service_token.clone(),
        redis_prefix: settings.redis_prefix.clone(),
    };
    let mut infra = kit::Infra::named(&settings.service_name, env!("CARGO_PKG_VERSION"))
        .with_pg(pool)
        .with_redis(redis);
    infra.request_timeout = settings.request_timeout;
    infra.body_limit = settings.body_limit;
    Ok(infra.wrap(router(state, verifier)))
}

/// The binary's entry: config from env, listen on PORT (default 8004), serve
/// until SIGTERM/SIGINT.
pub async fn run() -> anyhow::Result<()> {
    let cfg = kit::Config::from_env("security", 8004)?;
    let settings = Settings::from_env(&cfg)?;
    let app = build(&settings).await?;
    let listener = kit::server::bind(cfg.port).await?;
    kit::serve_with_timeout(app, listener, kit::shutdown_signal(), cfg.shutdown_timeout).await?;
    Ok(())
}
