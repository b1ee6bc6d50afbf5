//! ai-assistant: the AI assistant for 1C:Enterprise users and developers.
//!
//! * Knowledge base ([`kb`]): `kb/*.md` embedded in the binary, indexed in
//!   RAM with tantivy (Russian + English stemming); answers cite file and
//!   heading.
//! * BSL checker ([`bsl`]): tree-sitter-bsl syntax errors, well-known
//!   diagnostics, query texts validated with the SDBL grammar.
//! * Chat ([`api`]): `POST /chat` (JSON or SSE), `GET /conversations`,
//!   `GET /conversations/{id}`, `POST /bsl/check`, `GET /kb/search`.
//!
//! Environment (besides kit's `PORT`, `DATABASE_*`, `JWKS_URL`, …):
//!
//! | variable | meaning |
//! |---|---|
//! | `JWKS_URL` | verify `Authorization: Bearer` JWTs (user = `sub`; `iss`/`aud` = `JWT_ISSUER`/`JWT_AUDIENCE`) |
//! | `INTERNAL_AUTH_KEY_FILE` | accept identities the api-gateway proved (HMAC, see `kit::identity`) when no bearer token is sent: API-key callers |
//! | `LLM_BASE_URL`, `LLM_MODEL`, `LLM_API_KEY_FILE` | OpenAI-compatible provider (else offline) |
//! | `LLM_TIMEOUT` (s, 60), `LLM_MAX_RETRIES` (2), `LLM_RETRY_BACKOFF_MS` (250) | its limits |
//! | `SERVICE_URL_1C_INTEGRATION` | metadata questions via `GET /metadata` |
//! | `SERVICE_URL_ANALYTICS`, `INGEST_TOKEN_FILE` | question/answer events to `POST /events` |
//! | `ANALYTICS_QUEUE` (1000) | bounded analytics queue size |
//!
//! `TRUST_X_USER_ID` is gone: a bare `X-User-Id` is never trusted (anything
//! on a shared network could send one). A config that still sets it gets a
//! warning at start and the variable is ignored.

pub mod analytics;
pub mod api;
pub mod bsl;
pub mod context;
pub mod kb;
pub mod llm;
pub mod metadata;
pub mod metrics;
pub mod provider;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

pub use api::{router, AppState, AuthMode};

pub const DEFAULT_PORT: u16 = 8000;
pub const SERVICE_NAME: &str = "ai-assistant";

/// This service's migrations (run at startup and by `ai-assistant migrate`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Runs the migrations of this service on `pool`.
pub async fn migrate(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// The service's own settings, read from the environment.
pub struct Settings {
    pub auth: AuthMode,
    pub llm: Option<llm::LlmConfig>,
    pub integration_url: Option<String>,
    pub analytics_url: Option<String>,
    pub ingest_token: Option<kit::Secret<String>>,
    pub analytics_queue: usize,
}

impl Settings {
    pub fn from_env(cfg: &kit::Config, env: &kit::config::Env) -> anyhow::Result<Self> {
        if let Some(warning) = trust_x_user_id_warning(env) {
            tracing::warn!("{warning}");
        }
        let auth = match (cfg.verifier(), cfg.internal_auth_key.clone()) {
            (Some(v), Some(k)) => AuthMode::JwtOrGateway(v, k),
            (Some(v), None) => {
                tracing::warn!(
                    "INTERNAL_AUTH_KEY_FILE is not set: only bearer JWTs are accepted (API-key \
                     callers of the gateway cannot use the assistant)"
                );
                AuthMode::Jwt(v)
            }
            (None, Some(k)) => AuthMode::Gateway(k),
            (None, None) => anyhow::bail!(
                "JWKS_URL or INTERNAL_AUTH_KEY_FILE is required to identify users \
                 (TRUST_X_USER_ID no longer exists: the api-gateway proves identities with \
                 the INTERNAL_AUTH_KEY_FILE secret)"
            ),
        };
        Ok(Settings {
            auth,
            llm: llm::LlmConfig::from_env(env)?,
            integration_url: env.service_url("1c-integration"),
            analytics_url: env.service_url("analytics"),
            ingest_token: env.secret("INGEST_TOKEN")?,
            analytics_queue: env.parse_or("ANALYTICS_QUEUE", 1000usize)?,
        })
    }
}

/// The start-up warning for a config that still sets `TRUST_X_USER_ID`.
pub fn trust_x_user_id_warning(env: &kit::config::Env) -> Option<String> {
    env.var("TRUST_X_USER_ID").map(|v| {
        format!(
            "TRUST_X_USER_ID={v} is no longer supported and is ignored: X-User-Id is never \
             trusted on its own. The api-gateway now signs every identity it forwards with the \
             per-stack key INTERNAL_AUTH_KEY_FILE (secret internal-auth-key); give this service \
             that secret and remove TRUST_X_USER_ID"
        )
    })
}

/// Builds the application state (knowledge-base index, provider, clients);
/// the assistant's metrics go into `metrics`' registry.
pub fn build_state(
    pool: sqlx::PgPool,
    settings: Settings,
    metrics: &kit::Metrics,
) -> anyhow::Result<AppState> {
    let kb = kb::KnowledgeBase::embedded()?;
    tracing::info!(passages = kb.passages().len(), "knowledge base indexed");
    let provider: Arc<dyn provider::Provider> = match settings.llm {
        Some(cfg) => {
            tracing::info!(?cfg, "using the OpenAI-compatible provider");
            Arc::new(llm::OpenAiProvider::new(cfg)?)
        }
        None => {
            tracing::info!("using the offline provider (LLM_BASE_URL not set)");
            Arc::new(provider::OfflineProvider)
        }
    };
    let analytics = match &settings.analytics_url {
        Some(url) => {
            analytics::Analytics::spawn(url, settings.ingest_token, settings.analytics_queue)
        }
        None => analytics::Analytics::disabled(),
    };
    Ok(AppState {
        kb: Arc::new(kb),
        store: store::Store::new(pool),
        provider,
        analytics,
        metadata: settings.integration_url.map(metadata::MetadataClient::new),
        auth: settings.auth,
        metrics: metrics::ChatMetrics::register(metrics.registry())?,
    })
}

/// The binary's entry: config, database + migrations, serve until SIGTERM.
pub async fn run() -> anyhow::Result<()> {
    let cfg = kit::Config::from_env(SERVICE_NAME, DEFAULT_PORT)?;
    let env = kit::config::Env::process();
    let settings = Settings::from_env(&cfg, &env)?;
    if let AuthMode::Jwt(v) | AuthMode::JwtOrGateway(v, _) = &settings.auth {
        v.spawn_refresh(Duration::from_secs(300));
    }
    let pool = kit::db::connect_pg(
        cfg.require_database_url()?,
        Some(&MIGRATOR),
        cfg.connect_timeout,
    )
    .await?;
    let infra = kit::Infra::new(&cfg, env!("CARGO_PKG_VERSION")).with_pg(pool.clone());
    let state = build_state(pool, settings, &infra.metrics)?;
    let app = infra.wrap(router(state));
    let listener = kit::server::bind(cfg.port).await?;
    kit::serve_with_timeout(app, listener, kit::shutdown_signal(), cfg.shutdown_timeout).await?;
    Ok(())
}
