//! `serve` with graceful shutdown, and the SIGTERM/SIGINT future.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!(signal = "SIGINT", "shutdown requested"),
        _ = term => tracing::info!(signal = "SIGTERM", "shutdown requested"),
    }
}

/// Bind `0.0.0.0:port` (all interfaces, as the contract requires).
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await
}

/// Serve `router` on `listener` until `shutdown` resolves, then stop
/// accepting, let in-flight requests finish, and return. In-flight requests
/// still running after `grace` are abandoned (the function returns anyway).
/// Handlers can read the peer address with `ConnectInfo<SocketAddr>`.
pub async fn serve_with_timeout<F>(
    router: Router,
    listener: TcpListener,
    shutdown: F,
    grace: Duration,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        let _ = tx.send(());
    });
    tracing::info!(%addr, "listening");
    let mut handle = tokio::spawn(async move { server.await });
    tokio::select! {
        biased;
        _ = rx => {}
        res = &mut handle => {
            tracing::info!("server stopped");
            return res.map_err(std::io::Error::other)?;
        }
    }
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "draining in-flight requests"
    );
    match tokio::time::timeout(grace, &mut handle).await {
        Ok(res) => {
            tracing::info!("shutdown complete");
            res.map_err(std::io::Error::other)?
        }
        Err(_) => {
            tracing::warn!("shutdown timeout reached; abandoning in-flight requests");
            handle.abort();
            Ok(())
        }
    }
}

/// [`serve_with_timeout`] with the grace period from `SHUTDOWN_TIMEOUT`
/// (seconds, default 10).
pub async fn serve<F>(router: Router, listener: TcpListener, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let grace = crate::config::Env::process()
        .duration_secs_or("SHUTDOWN_TIMEOUT", Duration::from_secs(10))
        .unwrap_or(Duration::from_secs(10));
    serve_with_timeout(router, listener, shutdown, grace).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn raw_get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn graceful_shutdown_finishes_in_flight_request() {
        let router = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "done"
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with_timeout(
            router,
            listener,
            async {
                let _ = rx.await;
            },
            Duration::from_secs(5),
        ));
        let req = tokio::spawn(raw_get(addr, "/slow"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(()).unwrap();
        let body = req.await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.ends_with("done"), "{body}");
        server.await.unwrap().unwrap();
        // No longer accepting.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn shutdown_is_bounded_by_grace_period() {
        let router = Router::new().route(
            "/hang",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "never"
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with_timeout(
            router,
            listener,
            async {
                let _ = rx.await;
            },
            Duration::from_millis(300),
        ));
        let _req = tokio::spawn(raw_get(addr, "/hang"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = std::time::Instant::now();
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(start.elapsed() < Duration::from_secs(3));
    }
}
