//! A 1C:Enterprise simulator: the standard OData v3 interface
//! (`/<base>/odata/standard.odata/`) and one SOAP web service
//! (`/<base>/ws/exchange`), behaving the way a published infobase does.

mod atom;
mod http;
mod query;
pub mod seed;
mod soap;
pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::routing::any;
use axum::Router;

use crate::odata::metadata::Metadata;
use store::Store;

/// The `$metadata` document the simulator publishes.
pub const METADATA_XML: &str = include_str!("../../fixtures/metadata.xml");

#[derive(Clone)]
pub struct SimConfig {
    /// Infobase publication name (`demo` → `/demo/odata/standard.odata/`).
    pub base: String,
    pub user: String,
    pub password: String,
    /// Where to keep state across restarts (SIM_STATE_FILE).
    pub state_file: Option<PathBuf>,
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("base", &self.base)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("state_file", &self.state_file)
            .finish()
    }
}

impl SimConfig {
    /// From SIM_BASE (default `demo`), SIM_USER (default `Администратор`),
    /// SIM_PASSWORD_FILE (no file: empty password, like a fresh infobase)
    /// and SIM_STATE_FILE.
    pub fn from_env() -> anyhow::Result<SimConfig> {
        let password = match std::env::var_os("SIM_PASSWORD_FILE") {
            Some(p) => std::fs::read_to_string(&p)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot read SIM_PASSWORD_FILE {}: {e}",
                        PathBuf::from(&p).display()
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            None => {
                tracing::warn!("SIM_PASSWORD_FILE is not set: the simulated infobase user has an empty password");
                String::new()
            }
        };
        Ok(SimConfig {
            base: std::env::var("SIM_BASE").unwrap_or_else(|_| "demo".into()),
            user: std::env::var("SIM_USER").unwrap_or_else(|_| "Администратор".into()),
            password,
            state_file: std::env::var_os("SIM_STATE_FILE").map(PathBuf::from),
        })
    }
}

pub struct SimState {
    pub cfg: SimConfig,
    pub meta: Metadata,
    pub store: Mutex<Store>,
}

impl SimState {
    pub fn new(cfg: SimConfig) -> anyhow::Result<Arc<SimState>> {
        let meta = Metadata::parse(METADATA_XML)?;
        let store = Store::load_or_seed(&meta, cfg.state_file.clone())?;
        Ok(Arc::new(SimState {
            cfg,
            meta,
            store: Mutex::new(store),
        }))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The simulator's router (state shared, so tests can stop a server and
/// start another one over the same data). The binary adds kit's
/// `/health/*` and `/metrics`.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/{base}/odata/standard.odata", any(http::odata))
        .route("/{base}/odata/standard.odata/", any(http::odata))
        .route("/{base}/odata/standard.odata/{*rest}", any(http::odata))
        .route("/{base}/ws/{alias}", any(soap::handle))
        .with_state(state)
}

/// The binary's entry: config from env, kit's health/metrics/middleware,
/// listen on PORT (default 8080) until SIGTERM/SIGINT.
pub async fn run() -> anyhow::Result<()> {
    let cfg = SimConfig::from_env()?;
    tracing::info!(config = ?cfg, "starting 1C simulator");
    let state = SimState::new(cfg)?;
    let port: u16 = kit::config::Env::process().parse_or("PORT", 8080)?;
    let infra = kit::Infra::named("onec-simulator", env!("CARGO_PKG_VERSION"));
    let app = infra.wrap(router(state));
    let listener = kit::server::bind(port).await?;
    kit::serve_with_timeout(
        app,
        listener,
        kit::shutdown_signal(),
        std::time::Duration::from_secs(10),
    )
    .await?;
    Ok(())
}
