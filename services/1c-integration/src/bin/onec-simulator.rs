//! `onec-simulator`: a stand-in for a published 1C:Enterprise infobase
//! (standard OData v3 + the `exchange` SOAP web service).
//!
//! Env: PORT (default 8080), SIM_BASE (default `demo`), SIM_USER (default
//! `Администратор`), SIM_PASSWORD_FILE, SIM_STATE_FILE, RUST_LOG.
//! `onec-simulator healthcheck` probes `/health/live` and exits 0 or 1.

use std::net::SocketAddr;

use onec_integration::simulator::{router, SimConfig, SimState};

fn port() -> u16 {
    std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        let url = format!("http://127.0.0.1:{}/health/live", port());
        let ok = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .build()?
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        std::process::exit(if ok { 0 } else { 1 });
    }
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cfg = SimConfig::from_env()?;
    tracing::info!(config = ?cfg, "starting 1C simulator");
    let state = SimState::new(cfg)?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port()))).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let ctrl_c = tokio::signal::ctrl_c();
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
            tracing::info!("shutting down");
        })
        .await?;
    Ok(())
}
