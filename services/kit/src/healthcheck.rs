//! The `<binary> healthcheck` subcommand: a tiny raw HTTP/1.1 GET of
//! `http://127.0.0.1:$PORT/health/ready`, exit 0 on 200, else 1.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path` on `127.0.0.1:port`; true when the status is 200.
pub async fn probe(port: u16, path: &str, timeout: Duration) -> bool {
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: healthcheck\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
        let mut buf = Vec::with_capacity(64);
        let mut chunk = [0u8; 64];
        // Read only the status line.
        while !buf.contains(&b'\n') && buf.len() < 1024 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(buf)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(buf)) => {
            let line = String::from_utf8_lossy(&buf);
            let mut parts = line.split_whitespace();
            matches!(
                (parts.next(), parts.next()),
                (Some(v), Some("200")) if v.starts_with("HTTP/1.")
            )
        }
        _ => false,
    }
}

/// Probe `/health/ready` on `PORT` (or `default_port`) and return the exit code.
pub async fn run(default_port: u16) -> ExitCode {
    let env = crate::config::Env::process();
    let port = env.parse_or("PORT", default_port).unwrap_or(default_port);
    let timeout = env
        .duration_secs_or("HEALTHCHECK_TIMEOUT", Duration::from_secs(3))
        .unwrap_or(Duration::from_secs(3));
    check(port, timeout).await
}

/// Exit code of a `/health/ready` probe of `127.0.0.1:port`.
pub async fn check(port: u16, timeout: Duration) -> ExitCode {
    if probe(port, "/health/ready", timeout).await {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// True when the binary was invoked as `<binary> healthcheck`.
pub fn is_healthcheck_invocation() -> bool {
    std::env::args().nth(1).as_deref() == Some("healthcheck")
}

/// The whole `main` of a service binary:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     kit::main_with(8002, || async { Ok::<(), anyhow::Error>(()) })
/// }
/// ```
///
/// With `healthcheck` as first argument it only probes `/health/ready` (on a
/// small current-thread runtime). With `migrate` (not handled by the service
/// with [`crate::migrate::run_if_requested`] first) it exits 2 with a JSON
/// error: the binary has no migrations. Otherwise it installs JSON logging, starts
/// a multi-thread runtime and runs `run`; an error is logged and exits 1.
pub fn main_with<F, Fut>(default_port: u16, run: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if is_healthcheck_invocation() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        return rt.block_on(self::run(default_port));
    }
    if crate::migrate::is_migrate_invocation() {
        // Services with a database handle `migrate` before calling us
        // (`kit::migrate::run_if_requested`); never start the server instead.
        return crate::migrate::not_supported();
    }
    crate::memory::return_large_frees();
    crate::telemetry::init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "service failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::Router;

    async fn server(status: StatusCode) -> u16 {
        let app = Router::new().route("/health/ready", get(move || async move { (status, "x") }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        port
    }

    #[tokio::test]
    async fn probe_is_true_only_for_200() {
        let ok = server(StatusCode::OK).await;
        let bad = server(StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(probe(ok, "/health/ready", Duration::from_secs(2)).await);
        assert!(!probe(bad, "/health/ready", Duration::from_secs(2)).await);
        assert!(!probe(ok, "/nope", Duration::from_secs(2)).await);
        assert_eq!(check(ok, Duration::from_secs(2)).await, ExitCode::SUCCESS);
        assert_eq!(check(bad, Duration::from_secs(2)).await, ExitCode::FAILURE);
    }

    #[tokio::test]
    async fn probe_fails_on_closed_port_and_silent_server() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = l.local_addr().unwrap().port();
        drop(l);
        assert!(!probe(closed, "/health/ready", Duration::from_secs(2)).await);
        assert_eq!(
            check(closed, Duration::from_secs(2)).await,
            ExitCode::FAILURE
        );
        // Accepts but never answers: the timeout must fire.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let start = std::time::Instant::now();
        assert!(!probe(port, "/health/ready", Duration::from_millis(300)).await);
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(silent);
    }
}
