//! # analytics — event ingestion, usage queries, CSV export, retention
//!
//! Port 8003, its own PostgreSQL database (migrations in `migrations/`, run
//! at start). Built on `kit`: `/health/live`, `/health/ready` (PostgreSQL),
//! `/metrics`, JSON logs, request ids, graceful shutdown, `healthcheck`.
//!
//! ## Access rules
//!
//! * **Reads** — `GET /usage/*` and `GET /export.csv` — need a JWT (verified
//!   with kit's extractor against `JWKS_URL`) carrying the role `analyst` or
//!   `admin`: 401 without/with a bad token, 403 with another role.
//! * **Retention** — `POST /retention/run` — needs the role `admin`.
//! * **Ingestion** — `POST /events` — is for *services*, not users: the other
//!   services post their events over the backend network, and the gateway
//!   must not route `/events` from outside. Services carry no user JWT, so
//!   ingestion does not look at `Authorization`. When the secret
//!   `INGEST_TOKEN` is configured (`INGEST_TOKEN_FILE`, a shared secret
//!   mounted into every producing service), every `POST /events` must send it
//!   in the `X-Ingest-Token` header (compared in constant time), else 401.
//! * When `JWKS_URL` is **not** set (local runs, tests), JWT checks are off
//!   and reads/retention are open; a warning is logged at start.
//!
//! ## Endpoints
//!
//! * `POST /events` — JSON array of at most [`event::MAX_BATCH_SIZE`] events
//!   (schema in [`event`]). Idempotent by `event_id`. 200 with
//!   `{received, accepted, duplicate, rejected, errors: [{index, event_id,
//!   errors: [{field, message}]}]}`; valid events of a batch are stored even
//!   when others are rejected. 400 when the body is not a JSON array, 413
//!   when the batch is too big.
//! * `GET /usage/daily?from=&to=&service=&kind=` — counts per UTC day,
//!   zero-filled (default: the last 30 days).
//! * `GET /usage/services?from=&to=` — per service: events, distinct users,
//!   errors, first/last seen, counts per kind.
//! * `GET /usage/users?limit=&from=&to=` — the most active users.
//! * `GET /usage/top-questions?limit=&from=&to=` — the most frequent
//!   normalised `properties.question` of `question` events.
//! * `GET /usage/latency?service=&from=&to=` — p50/p90/p99 (PostgreSQL
//!   `percentile_cont`), avg and max `latency_ms` of `answer` events.
//! * `GET /export.csv?from=&to=&kind=` — streamed RFC 4180 CSV (UTF-8, CRLF).
//! * `POST /retention/run` — delete events older than `RETENTION_DAYS`;
//!   returns `{retention_days, cutoff, deleted}` (409 if a run is going on).
//!
//! `from`/`to`: RFC 3339 or `YYYY-MM-DD` (see [`params`]); `limit` 1..=1000,
//! default 10.
//!
//! ## Environment
//!
//! kit's contract (`PORT`, `DATABASE_*`/`DATABASE_URL`, `JWKS_URL`, ...) plus
//! `RETENTION_DAYS` (default 90), `RETENTION_INTERVAL` (seconds between
//! background retention runs, default 3600; `0` disables the background
//! task), `INGEST_BODY_LIMIT_BYTES` (default 16 MiB, the body limit of
//! `POST /events` only) and the optional secret `INGEST_TOKEN[_FILE]`.
//!
//! ## Metrics
//!
//! `events_ingested_total{kind}`, `events_duplicate_total`,
//! `events_rejected_total`, `events_batch_size` (histogram),
//! `events_retention_deleted_total`, plus kit's HTTP metrics.

pub mod csv;
pub mod event;
pub mod metrics;
pub mod params;
pub mod retention;
pub mod routes;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use kit::config::{ConfigError, Env};
use kit::{Infra, Secret, Verifier};
use sqlx::PgPool;

use crate::metrics::IngestMetrics;

/// The service's default port.
pub const DEFAULT_PORT: u16 = 8003;
/// The header carrying the ingest token.
pub const INGEST_TOKEN_HEADER: &str = "x-ingest-token";

/// The migrations, embedded.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// analytics' own settings (kit's [`kit::Config`] holds the common ones).
#[derive(Clone, Debug)]
pub struct Settings {
    /// `RETENTION_DAYS` (default 90, 1..=36500).
    pub retention_days: u32,
    /// `RETENTION_INTERVAL` seconds (default 3600); `None` when 0 (disabled).
    pub retention_interval: Option<Duration>,
    /// `INGEST_TOKEN` secret (`INGEST_TOKEN_FILE`).
    pub ingest_token: Option<Secret<String>>,
    /// `INGEST_BODY_LIMIT_BYTES` (default 16 MiB).
    pub ingest_body_limit: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retention_days: 90,
            retention_interval: Some(Duration::from_secs(3600)),
            ingest_token: None,
            ingest_body_limit: 16 * 1024 * 1024,
        }
    }
}

impl Settings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let d = Settings::default();
        let retention_days: u32 = env.parse_or("RETENTION_DAYS", d.retention_days)?;
        if !(1..=36_500).contains(&retention_days) {
            return Err(ConfigError::Invalid {
                name: "RETENTION_DAYS".into(),
                reason: "must be between 1 and 36500".into(),
            });
        }
        let interval = env.duration_secs_or("RETENTION_INTERVAL", Duration::from_secs(3600))?;
        let ingest_token = env.secret("INGEST_TOKEN")?;
        if ingest_token.as_ref().is_some_and(|t| t.expose().is_empty()) {
            return Err(ConfigError::Invalid {
                name: "INGEST_TOKEN".into(),
                reason: "must not be empty".into(),
            });
        }
        Ok(Settings {
            retention_days,
            retention_interval: (!interval.is_zero()).then_some(interval),
            ingest_token,
            ingest_body_limit: env.parse_or("INGEST_BODY_LIMIT_BYTES", d.ingest_body_limit)?,
        })
    }
}

/// Shared handler state.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub metrics: IngestMetrics,
    /// `Some` when `JWKS_URL` is configured: reads need analyst/admin.
    pub verifier: Option<Verifier>,
    pub settings: Arc<Settings>,
}

impl AppState {
    /// Build the state; the ingestion metrics go into `infra`'s registry.
    pub fn new(
        pool: PgPool,
        infra: &Infra,
        verifier: Option<Verifier>,
        settings: Settings,
    ) -> anyhow::Result<Self> {
        Ok(AppState {
            pool,
            metrics: IngestMetrics::register(infra.metrics.registry())?,
            verifier,
            settings: Arc::new(settings),
        })
    }
}

/// The service's own routes (without kit's health/metrics/middleware).
pub fn router(state: AppState) -> Router {
    let ingest_limit = state.settings.ingest_body_limit;
    Router::new()
        .route(
            "/events",
            post(routes::ingest).layer(DefaultBodyLimit::max(ingest_limit)),
        )
        .route("/usage/daily", get(routes::daily))
        .route("/usage/services", get(routes::services))
        .route("/usage/users", get(routes::users))
        .route("/usage/top-questions", get(routes::top_questions))
        .route("/usage/latency", get(routes::latency))
        .route("/export.csv", get(routes::export_csv))
        .route("/retention/run", post(routes::retention_run))
        .fallback(routes::not_found)
        .with_state(state)
}

/// The complete application: [`router`] wrapped by kit (health, metrics,
/// request ids, timeouts, body limit). Used by `run` and by tests.
pub fn app(state: AppState, infra: &Infra) -> Router {
    infra.wrap(router(state))
}

/// The binary's entry: config, database (+ migrations), retention task,
/// serve until SIGTERM/SIGINT.
pub async fn run() -> anyhow::Result<()> {
    let env = Env::process();
    let cfg = kit::Config::from_env("analytics", DEFAULT_PORT)?;
    let settings = Settings::from_env(&env)?;
    let pool = kit::db::connect_pg(
        cfg.require_database_url()?,
        Some(&MIGRATOR),
        cfg.connect_timeout,
    )
    .await?;
    let infra = Infra::new(&cfg, env!("CARGO_PKG_VERSION")).with_pg(pool.clone());

    let verifier = match cfg.verifier() {
        Some(v) => {
            if let Err(e) = v.refresh().await {
                // Not fatal: user-management may start after us; keys are
                // fetched again on the first token with an unknown kid.
                tracing::warn!(error = %e, "initial JWKS fetch failed");
            }
            v.spawn_refresh(Duration::from_secs(300));
            Some(v)
        }
        None if cfg.internal_auth_key.is_some() => {
            tracing::info!(
                "JWKS_URL is not set: only identities the api-gateway proved are accepted"
            );
            None
        }
        None => {
            tracing::warn!(
                "neither JWKS_URL nor INTERNAL_AUTH_KEY_FILE is set: read and retention endpoints \
                 are NOT protected"
            );
            None
        }
    };
    if settings.ingest_token.is_none() {
        tracing::info!("INGEST_TOKEN is not set: POST /events accepts any caller on the network");
    }

    let state = AppState::new(pool.clone(), &infra, verifier, settings.clone())?;
    let retention_task = settings.retention_interval.map(|every| {
        tracing::info!(
            retention_days = settings.retention_days,
            interval_s = every.as_secs(),
            "retention task started"
        );
        tokio::spawn(retention::background(
            pool.clone(),
            settings.retention_days,
            every,
            state.metrics.retention_deleted.clone(),
        ))
    });

    let app = app(state, &infra);
    let listener = kit::server::bind(cfg.port).await?;
    let result =
        kit::serve_with_timeout(app, listener, kit::shutdown_signal(), cfg.shutdown_timeout).await;
    if let Some(t) = retention_task {
        t.abort();
    }
    tracing::debug!("closing the database pool");
    pool.close().await;
    tracing::info!("analytics stopped");
    result?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_defaults_and_overrides() {
        let s = Settings::from_env(&Env::from_pairs::<[(&str, &str); 0], _, _>([])).unwrap();
        assert_eq!(s.retention_days, 90);
        assert_eq!(s.retention_interval, Some(Duration::from_secs(3600)));
        assert!(s.ingest_token.is_none());

        let s = Settings::from_env(&Env::from_pairs([
            ("RETENTION_DAYS", "7"),
            ("RETENTION_INTERVAL", "0"),
            ("INGEST_TOKEN", "t0k"),
        ]))
        .unwrap();
        assert_eq!(s.retention_days, 7);
        assert_eq!(s.retention_interval, None);
        assert_eq!(s.ingest_token.unwrap().expose(), "t0k");
        assert!(format!("{:?}", Settings::default()).contains("ingest_token"));
    }

    #[test]
    fn settings_reject_bad_values() {
        assert!(Settings::from_env(&Env::from_pairs([("RETENTION_DAYS", "0")])).is_err());
        assert!(Settings::from_env(&Env::from_pairs([("RETENTION_DAYS", "-3")])).is_err());
        assert!(Settings::from_env(&Env::from_pairs([("RETENTION_DAYS", "x")])).is_err());
        assert!(Settings::from_env(&Env::from_pairs([("RETENTION_INTERVAL", "soon")])).is_err());
    }
}
