//! # user-management (port 8002)
//!
//! Users, login, tokens and RBAC for the stack. Built on `kit` (health,
//! metrics, request ids, graceful shutdown, `healthcheck` subcommand).
//!
//! ## Routes (plain paths; the api-gateway maps `/api/v1/user-management/<rest>` → `/<rest>`)
//!
//! | method & path | who | what |
//! |---|---|---|
//! | `POST /auth/register` `{email, password, display_name?}` | public (unless `ALLOW_REGISTRATION=false`) | 201 user with role `viewer` |
//! | `POST /auth/login` `{email, password}` | public | `{access_token, token_type, expires_in, refresh_token, refresh_expires_in, user}`; 401 `invalid_credentials` (also while the account is locked after `LOCKOUT_THRESHOLD` failures for `LOCKOUT_MINUTES`: a lock is never revealed); 400 `password_too_long` over 1024 bytes; 503 `busy` + `Retry-After` when `ARGON2_MAX_CONCURRENT` hashes already run and no slot frees within `ARGON2_QUEUE_TIMEOUT` |
//! | `POST /auth/refresh` `{refresh_token}` | public | rotates: new access + refresh token in the same family; a reused (already rotated) token revokes the whole family (401 `refresh_token_reused`) |
//! | `POST /auth/logout` `{refresh_token?}` + optional bearer | either | revokes the session(s); reports the access token `jti` to `SERVICE_URL_SECURITY` `POST /revocations` (best effort, `access_token_reported`: true/false/null) |
//! | `POST /auth/password` `{current_password, new_password}` | bearer | changes the password, revokes every other session |
//! | `GET /me` | bearer | the user + `permissions` + `session_id` |
//! | `GET /me/sessions` | bearer | the caller's live sessions (`id`, `created_at`, `last_refreshed_at`, `current`) |
//! | `DELETE /me/sessions/{id}` | bearer | 204; revokes one of the caller's sessions |
//! | `DELETE /users/{id}/sessions` | `users:write` | `{revoked_sessions}`: force logout |
//! | `GET /roles` | bearer | roles and their permissions |
//! | `GET /users?page=&per_page=&q=` | `users:read` | `{items, page, per_page, total, total_pages}` (per_page ≤ 100) |
//! | `POST /users` `{email, password, display_name?, roles?}` | `users:write` (+`roles:assign` for non-viewer roles) | 201 user |
//! | `GET /users/{id}` | self or `users:read` | user |
//! | `PATCH /users/{id}` `{email?, display_name?, is_active?, roles?, password?, unlock?}` | `users:write` (+`roles:assign` for roles) | user; disabling or a password reset revokes its sessions |
//! | `PUT /users/{id}/roles` `{roles}` | `roles:assign` | user |
//! | `DELETE /users/{id}` | `users:delete` | 204 |
//! | `POST /keys/rotate` | `keys:rotate` | `{kid, previous_kid, published_kids}` |
//! | `GET /.well-known/jwks.json` | public | OKP/Ed25519 JWKs (`kty, crv, x, kid, use, alg`) |
//!
//! The last active admin can be neither demoted, disabled nor deleted (409).
//!
//! ## Revocation reaches everyone
//! With `REDIS_URL` every revocation is also written to the shared list of
//! [`kit::revocation`], which the api-gateway and security read on every
//! request: logout, refresh-token reuse, a session revoked by its owner and
//! the other sessions on a password change write `revoked:sid:<session>`;
//! force logout, disable, password reset, a role change and delete write
//! `revoked:user:<id>` (tokens issued before now; the user may refresh into
//! new roles). TTL: `ACCESS_TOKEN_TTL` + 90 s. When Redis does not answer
//! the change is refused (503; before the commit where there is one) rather than left unpublished.
//! Every bearer-authenticated route also checks the database: the user is
//! active and the token's session (`sid`) is not revoked; permission checks
//! use the user's current roles.
//!
//! ## Tokens
//! Access tokens: EdDSA JWT with `kid` header; claims `sub` (user id), `roles`,
//! `exp`, `iat`, `iat_ms` (issue time in ms, for revocation cutoffs), `jti`,
//! `iss` (`JWT_ISSUER`, default `user-management`), `aud` (`JWT_AUDIENCE`,
//! default `ai-assistants-1c`), `email`, `sid` (session = refresh family);
//! TTL `ACCESS_TOKEN_TTL` (s, default 900). Every verifier in the stack
//! requires that `iss` and `aud`.
//! Refresh tokens: opaque `rt_<43 chars>`, stored as SHA-256, TTL
//! `REFRESH_TOKEN_TTL` (s, default 30 days). Signing keys live in the
//! database; the private half is AES-256-GCM encrypted with a key derived
//! from the `JWT_SIGNING_KEY_SECRET` secret (unencrypted, with a warning,
//! when it is absent). Rotation keeps retired keys published for the access
//! TTL + 5 min, so rotation logs nobody out. Replicas reload keys every 60 s.
//!
//! ## Roles → permissions (table `role_permissions`)
//! admin: all; developer: assistant:use, integration:read/write, analytics:read;
//! analyst: assistant:use, integration:read, analytics:read/export; viewer:
//! assistant:use, analytics:read.
//!
//! ## Environment
//! kit's (`PORT`, `DATABASE_*`, `SHUTDOWN_TIMEOUT`, …) plus `ADMIN_EMAIL`
//! (default `admin@localhost`), `ADMIN_PASSWORD_FILE` (first admin, created at
//! start when absent from the DB; no file → no admin, a warning),
//! `JWT_SIGNING_KEY_SECRET_FILE`, `JWT_ISSUER` (`user-management`),
//! `JWT_AUDIENCE` (`ai-assistants-1c`), `ACCESS_TOKEN_TTL`,
//! `REFRESH_TOKEN_TTL`, `LOCKOUT_THRESHOLD` (5), `LOCKOUT_MINUTES` (15),
//! `ALLOW_REGISTRATION` (true; production sets false), `ARGON2_MEMORY_KIB`/
//! `ARGON2_ITERATIONS`/`ARGON2_PARALLELISM` (19456/2/1),
//! `ARGON2_MAX_CONCURRENT` (2 × CPUs, bounded by a quarter of the memory
//! limit, 1..=16), `ARGON2_QUEUE_TIMEOUT` (s, 2), `SERVICE_URL_SECURITY`,
//! `REDIS_URL` + `REDIS_USERNAME` + `REDIS_PASSWORD_FILE` (the revocation
//! list; writes only `revoked:*`).

pub mod api;
pub mod keys;
pub mod password;
pub mod settings;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use kit::http::RequestId;
use kit::revocation::Revocations;
use kit::{Claims, Config, Infra};
use sqlx::migrate::Migrator;
use sqlx::PgPool;

pub use keys::Keys;
pub use settings::Settings;

/// The service's migrations.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Shared state of the handlers. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub keys: Keys,
    /// role → permissions, loaded from the database at start.
    pub perms: Arc<BTreeMap<String, Vec<String>>>,
    pub http: reqwest::Client,
    pub metrics: AuthMetrics,
    /// Argon2 with bounded concurrency (`ARGON2_MAX_CONCURRENT`).
    pub hasher: password::Hasher,
    /// The shared revocation list (`REDIS_URL`): every revocation is written
    /// there so the gateway and security refuse the tokens at once.
    pub revocations: Option<Revocations>,
    dummy_hash: Arc<String>,
}

/// Service metrics, registered into kit's registry by [`app`].
#[derive(Clone)]
pub struct AuthMetrics {
    /// `user_management_logins_total{outcome}`: success,
    /// invalid_credentials, locked, disabled.
    pub logins: prometheus::IntCounterVec,
    /// `user_management_refresh_token_reuse_total`.
    pub refresh_reuse: prometheus::IntCounter,
}

impl AuthMetrics {
    fn new() -> Self {
        AuthMetrics {
            logins: prometheus::IntCounterVec::new(
                prometheus::Opts::new("user_management_logins_total", "Login attempts by outcome"),
                &["outcome"],
            )
            .expect("valid metric"),
            refresh_reuse: prometheus::IntCounter::new(
                "user_management_refresh_token_reuse_total",
                "Reused refresh tokens (session families revoked)",
            )
            .expect("valid metric"),
        }
    }

    pub fn login(&self, outcome: &str) {
        self.logins.with_label_values(&[outcome]).inc();
    }

    /// Register into `registry` (a second registration is ignored).
    pub fn register(&self, registry: &prometheus::Registry) {
        let _ = registry.register(Box::new(self.logins.clone()));
        let _ = registry.register(Box::new(self.refresh_reuse.clone()));
    }
}

impl AppState {
    /// Load keys (creating the first one), permissions, and bootstrap the
    /// first admin. The pool must be migrated already.
    pub async fn new(pool: PgPool, settings: Settings) -> anyhow::Result<Self> {
        let keys = Keys::init(
            &pool,
            settings
                .key_encryption_secret
                .as_ref()
                .map(|s| s.expose().as_str()),
            settings.access_ttl,
            &settings.issuer,
            &settings.audience,
        )
        .await?;
        let perms = store::role_permissions(&pool).await?;
        let dummy_hash = password::dummy_hash(settings.argon2).await?;
        let hasher =
            password::Hasher::new(settings.argon2_max_concurrent, settings.argon2_queue_wait);
        tracing::info!(
            argon2_max_concurrent = hasher.permits(),
            "password hashing bounded"
        );
        let state = AppState {
            pool,
            settings: Arc::new(settings),
            keys,
            perms: Arc::new(perms),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
            metrics: AuthMetrics::new(),
            hasher,
            revocations: None,
            dummy_hash: Arc::new(dummy_hash),
        };
        bootstrap_admin(&state).await?;
        Ok(state)
    }
}

impl AppState {
    /// Publish revocations to the shared list in Redis.
    pub fn with_revocations(mut self, r: Revocations) -> Self {
        self.revocations = Some(r);
        self
    }
}

/// Create the first admin from `ADMIN_EMAIL` + `ADMIN_PASSWORD_FILE` when no
/// user with that e-mail exists. Never a default password.
pub async fn bootstrap_admin(state: &AppState) -> anyhow::Result<()> {
    let email = state.settings.admin_email.trim().to_lowercase();
    let Some(pw) = &state.settings.admin_password else {
        let admins: i64 =
            sqlx::query_scalar("SELECT count(*) FROM user_roles WHERE role = 'admin'")
                .fetch_one(&state.pool)
                .await?;
        if admins == 0 {
            tracing::warn!(
                "ADMIN_PASSWORD_FILE is not set and no admin exists: no admin account was created"
            );
        }
        return Ok(());
    };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE lower(email) = $1)")
            .bind(&email)
            .fetch_one(&state.pool)
            .await?;
    if exists {
        return Ok(());
    }
    if pw.expose().chars().count() < 10 {
        anyhow::bail!("the ADMIN_PASSWORD secret must be at least 10 characters long");
    }
    let hash = password::hash(pw.expose().clone(), state.settings.argon2).await?;
    let mut tx = state.pool.begin().await?;
    let created =
        store::insert_user(&mut tx, &email, "Administrator", &hash, &["admin".into()]).await?;
    tx.commit().await?;
    if let Some(id) = created {
        tracing::info!(user_id = %id, email = %email, "first admin created");
    }
    Ok(())
}

/// Tell the security service that an access token is revoked. Best effort:
/// `None` when `SERVICE_URL_SECURITY` is unset, `Some(false)` on failure.
pub async fn report_revocation(
    state: &AppState,
    token: &str,
    claims: &Claims,
    request_id: Option<RequestId>,
) -> Option<bool> {
    let base = state.settings.security_url.as_ref()?;
    let mut req = state
        .http
        .post(format!("{base}/revocations"))
        .bearer_auth(token)
        .json(&serde_json::json!({"jti": claims.jti, "exp": claims.exp}));
    if let Some(id) = request_id {
        req = req.header(kit::http::REQUEST_ID_HEADER, id.0);
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Some(true),
        Ok(r) => {
            tracing::warn!(
                status = r.status().as_u16(),
                "security refused the revocation"
            );
            Some(false)
        }
        Err(e) => {
            tracing::warn!(error = %e, "security unreachable; access token not reported");
            Some(false)
        }
    }
}

/// The service routes (without kit's standard routes and layers).
pub fn router(state: AppState) -> Router {
    api::routes(state)
}

/// The complete application: service routes wrapped by kit.
pub fn app(state: AppState, infra: &Infra) -> Router {
    state.metrics.register(infra.metrics.registry());
    infra.wrap(router(state))
}

/// Reload signing keys periodically (rotations by another replica).
pub fn spawn_key_reload(state: &AppState, every: Duration) -> tokio::task::JoinHandle<()> {
    let (keys, pool) = (state.keys.clone(), state.pool.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = keys.reload(&pool).await {
                tracing::warn!(error = format!("{e:#}"), "reloading signing keys failed");
            }
        }
    })
}

/// The binary's entry point.
pub async fn run() -> anyhow::Result<()> {
    let cfg = Config::from_env("user-management", 8002)?;
    let settings = Settings::from_env()?;
    let pool = kit::db::connect_pg(
        cfg.require_database_url()?,
        Some(&MIGRATOR),
        cfg.connect_timeout,
    )
    .await?;
    let mut state = AppState::new(pool.clone(), settings).await?;
    let mut infra = Infra::new(&cfg, env!("CARGO_PKG_VERSION")).with_pg(pool);
    match &cfg.redis_url {
        Some(url) => {
            let redis = kit::db::connect_redis(url.expose(), cfg.connect_timeout).await?;
            infra = infra.with_redis(redis.clone());
            state = state.with_revocations(Revocations::new(redis));
        }
        None => tracing::warn!(
            "REDIS_URL is not set: revocations are not published; the api-gateway and \
             security keep accepting revoked access tokens until they expire"
        ),
    }
    spawn_key_reload(&state, Duration::from_secs(60));
    let listener = kit::server::bind(cfg.port).await?;
    kit::serve_with_timeout(
        app(state, &infra),
        listener,
        kit::shutdown_signal(),
        cfg.shutdown_timeout,
    )
    .await?;
    Ok(())
}
