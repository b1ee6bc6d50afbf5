//! Proxy benchmark (not a test): throughput and latency of the gateway
//! binary proxying to an upstream on loopback, beside Nginx proxying the same
//! route to the same upstream, plus the upstream hit directly.
//!
//! `cargo bench -p api-gateway --bench proxy` (builds the release gateway).
//! Knobs: BENCH_ROUNDS (interleaved rounds, default 3), BENCH_SECS (per
//! target and round, default 2), BENCH_CONCURRENCY (default 32),
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

/// Samples of one target, accumulated over the rounds.
#[derive(Default)]
struct Samples {
    latencies_us: Vec<u64>,
    errors: usize,
    seconds: f64,
    /// req/s of each round.
    round_rps: Vec<f64>,
}

impl Samples {
    fn pct(&mut self, p: f64) -> u64 {
        self.latencies_us.sort_unstable();
        let n = self.latencies_us.len();
        if n == 0 {
            return 0;
        }
        self.latencies_us[((n as f64 * p).ceil() as usize).clamp(1, n) - 1]
    }
    fn rps(&self) -> f64 {
        self.latencies_us.len() as f64 / self.seconds
    }
}

async fn load(url: &str, secs: f64, concurrency: usize, into: &mut Samples) {
    let client: Client<_, Body> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    // Warm-up: open the connections.
    for _ in 0..concurrency * 2 {
        let _ = client
            .request(Request::get(url).body(Body::empty()).unwrap())
            .await
            .map(|r| r.into_body());
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let url = Arc::new(url.to_string());
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
    let mut n = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        n += l.len();
        into.latencies_us.extend(l);
        into.errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    into.seconds += elapsed;
    into.round_rps.push(n as f64 / elapsed);
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(2.0)
        .clamp(0.5, 30.0);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .clamp(1, 20);
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
    let mut targets: Vec<(&str, String)> = vec![
        (
            "upstream (direct)",
            format!("http://{upstream}/.well-known/jwks.json"),
        ),
        (
            "nginx 1.22 proxy",
            format!("http://127.0.0.1:{nginx_port}{ROUTE}"),
        ),
        ("api-gateway", format!("http://127.0.0.1:{gw_port}{ROUTE}")),
    ];
    if redis.is_some() {
        targets.push((
            "api-gateway + Redis rate limit",
            format!("http://127.0.0.1:{gw_rl_port}{ROUTE}"),
        ));
    }
    let mut samples: Vec<Samples> = targets.iter().map(|_| Samples::default()).collect();
    rt.block_on(async {
        wait_port(SocketAddr::from(([127, 0, 0, 1], gw_port))).await;
        wait_port(SocketAddr::from(([127, 0, 0, 1], nginx_port))).await;
        if redis.is_some() {
            wait_port(SocketAddr::from(([127, 0, 0, 1], gw_rl_port))).await;
        }
        eprintln!(
            "{rounds} interleaved rounds x {secs} s per target, {concurrency} concurrent \
             keep-alive clients, GET {ROUTE}"
        );
        // Interleaved rounds spread the noise of a shared machine evenly.
        for round in 0..rounds {
            for (i, (name, url)) in targets.iter().enumerate() {
                load(url, secs, concurrency, &mut samples[i]).await;
                eprintln!(
                    "round {} {name}: {:.0} req/s",
                    round + 1,
                    samples[i].round_rps.last().unwrap()
                );
            }
        }
    });

    let nginx_rps = samples[1].rps();
    let nginx_p99 = samples[1].pct(0.99) as f64;
    println!();
    println!(
        "| target | requests | errors | req/s | p50 ms | p99 ms | req/s vs nginx | p99 vs nginx |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for ((name, _), f) in targets.iter().zip(samples.iter_mut()) {
        let (p50, p99) = (f.pct(0.50), f.pct(0.99));
        println!(
            "| {name} | {} | {} | {:.0} | {:.3} | {:.3} | {:.2}x | {:.2}x |",
            f.latencies_us.len(),
            f.errors,
            f.rps(),
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
            f.rps() / nginx_rps,
            p99 as f64 / nginx_p99
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
