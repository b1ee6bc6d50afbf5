//! Retries on a connection that an upstream drops before answering (what a
//! server going away under a rolling deploy does). No database needed: the
//! route used is public and rate limiting is off.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Drops the first connection after reading the request; answers 200 on
/// later ones. Counts connections.
async fn flaky_upstream() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let n = c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                if n == 0 {
                    return; // drop without a response
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (url, conns)
}

async fn gateway(upstream: &str) -> String {
    let mut up = BTreeMap::new();
    up.insert("user-management".to_string(), upstream.to_string());
    let mut cfg = api_gateway::GatewayConfig::new(up);
    cfg.rate_limit_rps = 0.0;
    let app = api_gateway::build(cfg).await.unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(api_gateway::serve(app, l, std::future::pending()));
    base
}

#[tokio::test]
async fn idempotent_request_survives_a_dropped_connection() {
    let (up, conns) = flaky_upstream().await;
    let gw = gateway(&up).await;
    let r = reqwest::get(format!("{gw}/api/v1/user-management/auth/login"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        2,
        "dropped once, retried once"
    );
}

#[tokio::test]
async fn non_idempotent_request_is_not_retried() {
    let (up, conns) = flaky_upstream().await;
    let gw = gateway(&up).await;
    let r = reqwest::Client::new()
        .post(format!("{gw}/api/v1/user-management/auth/login"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_error");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}
