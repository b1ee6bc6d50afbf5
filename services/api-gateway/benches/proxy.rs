//! Proxy benchmark (not a test): throughput and latency of the gateway
//! binary proxying to an upstream on loopback, beside Nginx proxying the same
//! route to the same upstream, plus the upstream hit directly.
//!
//! `cargo bench -p api-gateway --bench proxy` (builds the release gateway).
//! Knobs: BENCH_SECS (per target, default 5), BENCH_CONCURRENCY (default 32),
//! NGINX (default /usr/sbin/nginx). With TEST_REDIS_URL set, a second gateway
//! row has Redis rate limiting switched on (limits too high to refuse).
//!
//! All processes share the machine: the numbers compare the proxies with
//! each other on this box, they are not absolute capacity figures.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const ROUTE: &str = "/api/v1/user-management/.well-known/jwks.json";
const PAYLOAD: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"47YZOo5ZKW3zjrL-o_8v7D-6_alr7PfSm-WnDcDaITE","kid":"bench","use":"sig","alg":"EdDSA"}]}"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} did not come up");
}

struct Proc(Child, &'static str);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first (graceful), then make sure.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.0.kill();
        let _ = self.0.wait();
        eprintln!("stopped {}", self.1);
    }
}

fn start_gateway(upstream: &str, port: u16, redis: Option<&str>) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_api-gateway"));
    cmd.env_clear()
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .env("SERVICE_URL_USER_MANAGEMENT", upstream)
        .env("TRUST_FORWARDED_FOR", "false")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    match redis {
        Some(url) => cmd
            .env("REDIS_URL", url)
            .env("REDIS_KEY_PREFIX", format!("bench:{}:", std::process::id()))
            .env("RATE_LIMIT_RPS", "1000000")
            .env("RATE_LIMIT_BURST", "1000000"),
        None => cmd.env("RATE_LIMIT_RPS", "0"),
    };
    Proc(cmd.spawn().expect("start gateway binary"), "api-gateway")
}

fn start_nginx(upstream_port: u16, port: u16, dir: &std::path::Path) -> Proc {
    let conf = format!(
        r#"
worker_processes auto;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location /api/v1/user-management/ {{
            proxy_pass http://up/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Request-Id $request_id;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"#,
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let nginx = std::env::var("NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    Proc(child, "nginx")
}

/// The upstream: a tiny hyper server answering every request with PAYLOAD,
/// on its own runtime thread.
fn start_upstream() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            let app = axum::Router::new().fallback(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    PAYLOAD,
                )
            });
            axum::serve(l, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

struct Figures {
    requests: usize,
    errors: usize,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
}

async fn load(url: String, secs: f64, concurrency: usize) -> Figures {
    let client: Client<_, Body> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    // Warm-up: open the connections, fill caches.
    for _ in 0..concurrency * 4 {
        let _ = client
            .request(Request::get(&url).body(Body::empty()).unwrap())
            .await
            .map(|r| r.into_body());
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let url = Arc::new(url);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(65536);
            let mut errors = 0usize;
            while Instant::now() < deadline {
                let t = Instant::now();
                let req = Request::get(url.as_str()).body(Body::empty()).unwrap();
                match client.request(req).await {
                    Ok(resp) if resp.status().is_success() => {
                        match resp.into_body().collect().await {
                            Ok(_) => lat.push(t.elapsed().as_micros() as u64),
                            Err(_) => errors += 1,
                        }
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> u64 {
        if all.is_empty() {
            return 0;
        }
        all[((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1]
    };
    Figures {
        requests: all.len(),
        errors,
        rps: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(5.0)
        .clamp(0.5, 60.0);
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
        .clamp(1, 1024);
    let redis = std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|s| !s.is_empty());

    let upstream = start_upstream();
    let dir = std::env::temp_dir().join(format!("gateway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let gw_port = free_port();
    let nginx_port = free_port();
    let _gw = start_gateway(&format!("http://{upstream}"), gw_port, None);
    let _nginx = start_nginx(upstream.port(), nginx_port, &dir);
    let gw_rl_port = free_port();
    let _gw_rl = redis
        .as_deref()
        .map(|r| start_gateway(&format!("http://{upstream}"), gw_rl_port, Some(r)));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows: Vec<(&str, Figures)> = Vec::new();
    rt.block_on(async {
        wait_port(SocketAddr::from(([127, 0, 0, 1], gw_port))).await;
        wait_port(SocketAddr::from(([127, 0, 0, 1], nginx_port))).await;
        if redis.is_some() {
            wait_port(SocketAddr::from(([127, 0, 0, 1], gw_rl_port))).await;
        }
        eprintln!("{secs} s per target, {concurrency} concurrent keep-alive clients, GET {ROUTE}");
        rows.push((
            "upstream (direct)",
            load(
                format!("http://{upstream}/.well-known/jwks.json"),
                secs,
                concurrency,
            )
            .await,
        ));
        rows.push((
            "nginx 1.22 proxy",
            load(
                format!("http://127.0.0.1:{nginx_port}{ROUTE}"),
                secs,
                concurrency,
            )
            .await,
        ));
        rows.push((
            "api-gateway",
            load(
                format!("http://127.0.0.1:{gw_port}{ROUTE}"),
                secs,
                concurrency,
            )
            .await,
        ));
        if redis.is_some() {
            rows.push((
                "api-gateway + Redis rate limit",
                load(
                    format!("http://127.0.0.1:{gw_rl_port}{ROUTE}"),
                    secs,
                    concurrency,
                )
                .await,
            ));
        }
    });

    let nginx_rps = rows[1].1.rps;
    let nginx_p99 = rows[1].1.p99_us as f64;
    println!();
    println!(
        "| target | requests | errors | req/s | p50 ms | p99 ms | req/s vs nginx | p99 vs nginx |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, f) in &rows {
        println!(
            "| {name} | {} | {} | {:.0} | {:.3} | {:.3} | {:.2}x | {:.2}x |",
            f.requests,
            f.errors,
            f.rps,
            f.p50_us as f64 / 1000.0,
            f.p99_us as f64 / 1000.0,
            f.rps / nginx_rps,
            f.p99_us as f64 / nginx_p99
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
