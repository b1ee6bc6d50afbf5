//! # kit — the shared spine of every stackctl service
//!
//! Every service crate under `services/` builds on this crate so that all of
//! them honour `docs/service-contract.md` the same way.
//!
//! ## Quick start (a service's `main.rs` and `run`)
//!
//! ```ignore
//! // main.rs
//! fn main() -> std::process::ExitCode {
//!     // `<bin> migrate`: apply pending migrations, one JSON line, exit 0/1/2/3.
//!     if let Some(code) = kit::migrate::run_if_requested("my-service", &my_service::MIGRATOR) {
//!         return code;
//!     }
//!     // `<bin> healthcheck` probes 127.0.0.1:$PORT/health/ready and exits 0/1;
//!     // otherwise: JSON logs + multi-thread runtime + your run().
//!     kit::main_with(8002, my_service::run)
//! }
//!
//! // lib.rs
//! pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
//! pub async fn run() -> anyhow::Result<()> {
//!     let cfg = kit::Config::from_env("my-service", 8002)?;      // env + *_FILE secrets
//!     let pool = kit::db::connect_pg(cfg.require_database_url()?, Some(&MIGRATOR),
//!                                    cfg.connect_timeout).await?; // retries, migrates
//!     let infra = kit::Infra::new(&cfg, env!("CARGO_PKG_VERSION")).with_pg(pool.clone());
//!     let app = infra.wrap(router(pool));     // + /health/*, /metrics, request ids,
//!                                             //   metrics, timeout, body limit
//!     let listener = kit::server::bind(cfg.port).await?;
//!     kit::serve_with_timeout(app, listener, kit::shutdown_signal(), cfg.shutdown_timeout).await?;
//!     Ok(())
//! }
//! ```
//!
//! ## Modules
//!
//! * [`config`] — [`Config::from_env`]`(default_name, default_port)`: `SERVICE_NAME`,
//!   `PORT`, `DATABASE_URL` or `DATABASE_HOST/PORT/NAME/USER` + `DATABASE_PASSWORD_FILE`,
//!   `REDIS_URL` + `REDIS_PASSWORD_FILE`, `JWKS_URL`, `SHUTDOWN_TIMEOUT` (s, default 10),
//!   `REQUEST_TIMEOUT` (s, default 30), `BODY_LIMIT_BYTES` (default 2 MiB),
//!   `DB_CONNECT_TIMEOUT` (s, default 60). [`config::secret`]`("NAME")` reads `NAME_FILE`
//!   (trailing newline trimmed) or `NAME`; values are [`config::Secret`] whose `Debug`
//!   prints `[redacted]`. [`config::service_url`]`("1c-integration")` reads
//!   `SERVICE_URL_1C_INTEGRATION`. [`config::Env::from_pairs`] for tests.
//! * [`telemetry::init_tracing`] — JSON lines on stdout, `RUST_LOG` filter (default info).
//! * [`Infra`] — `Infra::new(&cfg, version).with_pg(pool).with_redis(cm)`; `infra.wrap(router)`
//!   merges `/health/live`, `/health/ready` (PostgreSQL `SELECT 1`, Redis `PING`; JSON
//!   report per dependency with `latency_ms`; 503 when any fails) and `/metrics`, and adds:
//!   request id (`x-request-id` accepted or generated, echoed on the response, available
//!   as `Extension<http::RequestId>`, recorded in every log line of the request), access
//!   log, metrics, request timeout (504 JSON), body-size limit (413 JSON) and a panicking
//!   handler turned into a logged 500 JSON.
//!   `infra.metrics.registry()` is the Prometheus registry for your own metrics.
//! * [`metrics::Metrics`] — `http_requests_total{method,route,status}` (route = axum
//!   `MatchedPath`, or `unmatched`), `http_request_duration_seconds{method,route}`,
//!   `http_requests_in_flight`, `build_info{service,version}`.
//! * [`server`] — [`serve`]`(router, listener, shutdown)` (grace from `SHUTDOWN_TIMEOUT`) and
//!   [`serve_with_timeout`]: stop accepting, finish in-flight requests, bounded by the grace
//!   period. [`shutdown_signal`] resolves on SIGTERM/SIGINT. `server::bind(port)` binds
//!   0.0.0.0. Handlers may extract `ConnectInfo<SocketAddr>`.
//! * [`healthcheck`] — [`main_with`], `healthcheck::check(port, timeout)`.
//! * [`db`] — `db::connect_pg(url, Some(&MIGRATOR), retry_for)` → `PgPool` (retry loop,
//!   then migrations); `db::connect_redis(url, retry_for)` → Redis `ConnectionManager`.
//! * [`migrate`] — `migrate::run_if_requested(default_name, &MIGRATOR)`: `<bin> migrate`
//!   reads the database settings as at startup, retries the connection for
//!   `DB_CONNECT_TIMEOUT`, applies the pending migrations under the migrator's advisory
//!   lock, prints one JSON line (`status` `applied`/`up_to_date`/`failed`, `applied`
//!   versions, `database` host:port/db) and exits 0, or 1 (migration failed), 2 (config),
//!   3 (database unreachable/refused). Starts no server or background task.
//! * [`auth`] — `auth::Verifier::from_url(jwks_url)` (keys cached by `kid`, refetched on an
//!   unknown `kid` at most every 5 s, `verifier.spawn_refresh(period)` for periodic refresh;
//!   `Verifier::from_jwks(&set)` / `set_jwks` for local keys). Only EdDSA (Ed25519) tokens
//!   are accepted. Add it with `.layer(Extension(verifier))`; then the extractor
//!   [`auth::AuthUser`] (derefs to [`auth::Claims`]: `sub`, `roles`, `exp`, `iat`, `jti`, `iss`,
//!   `email?`, `sid?`) returns 401 JSON on a missing/invalid token. Roles: [`auth::Role`]
//!   (`admin`, `developer`, `analyst`, `viewer`); `claims.has_role`, `has_any_role`,
//!   `require_role(Role::Admin)?`, `require_any_role(&[..])?` (403 JSON).
//!   Route groups: `.route_layer(from_fn_with_state(ROLES, kit::auth::role_guard))` with
//!   `const ROLES: &[Role] = &[Role::Admin];`.
//! * [`error::ApiError`] — `{"error": {"code", "message"}}` responses with helpers
//!   (`bad_request`, `validation`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
//!   `unavailable`, `internal` (logs the cause, hides it)); `From<sqlx::Error>`.
//! * [`extract`] — `extract::Json<T>` and `extract::Query<T>`: like axum's, but rejections
//!   are the standard JSON error (400/415/422) instead of plain text.
//! * [`testing`] — `testing::TestDb::new().await` creates a fresh random database on
//!   `TEST_DATABASE_URL` (`.url`; dropped on drop), `testing::test_redis_url()` and
//!   `testing::redis_prefix()`; panics with a clear message when the variables are unset.

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod extract;
pub mod health;
pub mod healthcheck;
pub mod http;
pub mod identity;
pub mod memory;
pub mod metrics;
pub mod migrate;
pub mod revocation;
pub mod server;
pub mod telemetry;
pub mod testing;

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;

pub use auth::{AuthUser, Claims, Role, Verifier};
pub use config::{Config, Secret};
pub use error::ApiError;
pub use healthcheck::main_with;
pub use identity::InternalAuthKey;
pub use metrics::Metrics;
pub use server::{serve, serve_with_timeout, shutdown_signal};

/// The shared infrastructure of one service: metrics registry, health
/// dependencies and HTTP limits.
#[derive(Clone)]
pub struct Infra {
    pub service: String,
    pub metrics: Metrics,
    pub health: health::Health,
    pub request_timeout: Duration,
    pub body_limit: usize,
    /// `INTERNAL_AUTH_KEY_FILE`: checks the gateway's identity proofs
    /// ([`auth::AuthUser`]); [`Infra::wrap`] adds it to every request.
    pub internal_auth: Option<InternalAuthKey>,
}

impl Infra {
    /// From the loaded config; `version` is usually `env!("CARGO_PKG_VERSION")`.
    pub fn new(cfg: &Config, version: &str) -> Self {
        let mut infra = Self::named(&cfg.service_name, version);
        infra.request_timeout = cfg.request_timeout;
        infra.body_limit = cfg.body_limit;
        infra.internal_auth = cfg.internal_auth_key.clone();
        infra
    }

    /// Defaults (30 s timeout, 2 MiB body limit) without a config.
    pub fn named(service: &str, version: &str) -> Self {
        Infra {
            service: service.to_string(),
            metrics: Metrics::new(service, version),
            health: health::Health::new(service),
            request_timeout: Duration::from_secs(30),
            body_limit: 2 * 1024 * 1024,
            internal_auth: None,
        }
    }

    /// Accept identities the api-gateway proved with this key.
    pub fn with_internal_auth(mut self, key: Option<InternalAuthKey>) -> Self {
        self.internal_auth = key;
        self
    }

    /// `/health/ready` checks this pool.
    pub fn with_pg(mut self, pool: sqlx::PgPool) -> Self {
        self.health.pg = Some(pool);
        self
    }

    /// `/health/ready` checks this Redis.
    pub fn with_redis(mut self, redis: redis::aio::ConnectionManager) -> Self {
        self.health.redis = Some(redis);
        self
    }

    /// Merge the standard routes into `router` and add the standard layers.
    /// Call it last, on the complete service router.
    pub fn wrap(&self, router: Router) -> Router {
        let router = match &self.internal_auth {
            Some(key) => router.layer(axum::Extension(key.clone())),
            None => router,
        };
        router
            .merge(health::routes(self.health.clone(), self.metrics.clone()))
            .layer(axum::middleware::from_fn_with_state(
                self.request_timeout,
                http::timeout,
            ))
            .layer(DefaultBodyLimit::max(self.body_limit))
            .layer(axum::middleware::from_fn(http::json_413))
            .layer(axum::middleware::from_fn_with_state(
                self.metrics.clone(),
                http::observe,
            ))
    }
}
