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
//! | `POST /revocations` | service, admin, or the token's own holder | `{jti, exp}`: revoked until `exp` (`revoked:jti:<jti>`) |
//! | `GET /revocations/{jti}` | service, admin | `{jti, revoked}` |
//! | `POST /credentials` | service, admin | `{owner, name, secret}` stored AES-256-GCM encrypted |
//! | `GET /credentials/{owner}/{name}` | service, admin | decrypted `{owner, name, secret}` |
//! | `DELETE /credentials/{owner}/{name}` | service, admin | delete |
//!
//! "service" = header `x-service-token` equal to the SERVICE_TOKEN secret;
//! "admin" = a JWT (verified against JWKS_URL by kit, `iss`/`aud` checked,
//! refused when the shared revocation list names its token, session or
//! user) with the `admin` role, or an admin identity the api-gateway proved
//! (`INTERNAL_AUTH_KEY_FILE`, e.g. an admin API key).
//!
//! Revocations live in the shared Redis list of [`kit::revocation`]
//! (`revoked:*`): `POST /revocations` writes `revoked:jti:<jti>`,
//! `DELETE /api-keys/{id}` writes `revoked:apikey:<id>` (the gateway refuses
//! a revoked key on the next request although it caches verified keys).
//!
//! Environment (besides kit's: PORT, DATABASE_*, REDIS_URL, REDIS_USERNAME,
//! JWKS_URL, JWT_ISSUER, JWT_AUDIENCE, INTERNAL_AUTH_KEY_FILE, ...):
//! `ENCRYPTION_KEY_FILE` (required; 32 raw bytes, 64 hex digits or base64),
//! `SERVICE_TOKEN_FILE` (optional; without it only admin JWTs are accepted),
//! `REDIS_KEY_PREFIX` (default `security:`; no key of its own today).

pub mod audit;
pub mod crypto;
pub mod http;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::{Extension, Router};
use kit::revocation::Revocations;
use kit::{InternalAuthKey, Secret, Verifier};

pub use http::SERVICE_TOKEN_HEADER;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub pool: sqlx::PgPool,
    pub redis: redis::aio::ConnectionManager,
    pub secret_box: Arc<crypto::SecretBox>,
    pub service_token: Option<Secret<String>>,
    /// The shared revocation list (`revoked:*`).
    pub revocations: Revocations,
}

/// Everything needed to build the service (from env, or given by tests).
#[derive(Clone)]
pub struct Settings {
    pub service_name: String,
    pub database_url: Secret<String>,
    pub redis_url: Secret<String>,
    pub redis_prefix: String,
    pub jwks_url: Option<String>,
    /// `JWT_ISSUER` / `JWT_AUDIENCE` required in tokens (`None`: not checked).
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    /// `INTERNAL_AUTH_KEY_FILE`: identities the api-gateway proved.
    pub internal_auth: Option<InternalAuthKey>,
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
            redis_prefix: cfg.redis_key_prefix.clone(),
            jwks_url: cfg.jwks_url.clone(),
            jwt_issuer: Some(cfg.jwt_issuer.clone()),
            jwt_audience: Some(cfg.jwt_audience.clone()),
            internal_auth: cfg.internal_auth_key.clone(),
            encryption_key: Secret::new(key),
            service_token,
            connect_timeout: cfg.connect_timeout,
            request_timeout: cfg.request_timeout,
            body_limit: cfg.body_limit,
        })
    }
}

/// The API routes alone (no health/metrics/middleware), for a given state.
/// JWT callers are checked against the revocation list.
pub fn router(state: AppState, verifier: Option<Verifier>) -> Router {
    let revocations = state.revocations.clone();
    let r = http::routes(state).layer(Extension(revocations));
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
        let mut v = Verifier::from_url(u.clone());
        if let Some(iss) = &settings.jwt_issuer {
            v = v.with_issuer(iss.clone());
        }
        if let Some(aud) = &settings.jwt_audience {
            v = v.with_audience(aud.clone());
        }
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
        revocations: Revocations::new(redis.clone()),
    };
    let mut infra = kit::Infra::named(&settings.service_name, env!("CARGO_PKG_VERSION"))
        .with_pg(pool)
        .with_redis(redis)
        .with_internal_auth(settings.internal_auth.clone());
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
