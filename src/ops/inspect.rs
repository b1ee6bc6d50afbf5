//! `health`, `status`, `resources`, `monitor`, `test-service`: what runs,
//! how it is doing, and how it compares with stack.toml.

use crate::engine::create::Desired;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::containers::Kind;
use crate::model::Stack;
use crate::runtime::stackenv::StackEnv;
use crate::ui::Ui;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.1 GET with a deadline: (status, body).
pub async fn http_get(addr: &str, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let host = addr.split(':').next().unwrap_or("localhost");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: stackctl\r\n\r\n").as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.take(1 << 20).read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, dechunk(&text, body)))
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

fn dechunk(head: &str, body: String) -> String {
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body;
    }
    let mut out = String::new();
    let mut rest = body.as_str();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// The container's addresses on its networks.
async fn addresses(engine: &Engine, name: &str) -> Vec<String> {
    let Ok(Some(info)) = engine.container(name).await else {
        return vec![];
    };
    info.network_settings
        .and_then(|n| n.networks)
        .map(|nets| {
            nets.values()
                .filter_map(|e| e.ip_address.clone())
                .filter(|ip| !ip.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// A service's own ready report, fetched from one of its addresses.
async fn ready_report(engine: &Engine, d: &Desired, port: u16, path: &str) -> Option<(u16, Value)> {
    for ip in addresses(engine, &d.name).await {
        if let Some((status, body)) =
            http_get(&format!("{ip}:{port}"), path, Duration::from_secs(3)).await
        {
            return Some((
                status,
                serde_json::from_str(&body).unwrap_or(Value::String(body)),
            ));
        }
    }
    None
}

fn summarize(report: &Value) -> String {
    match report.get("checks").and_then(Value::as_object) {
        Some(checks) if !checks.is_empty() => checks
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k} {}",
                    v.get("status").and_then(Value::as_str).unwrap_or("?")
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => report
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string(),
    }
}

fn uptime(started: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(started) else {
        return "-".into();
    };
    let s = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// One row of `health`.
struct Row {
    container: String,
    state: String,
    health: String,
    restarts: i64,
    uptime: String,
    ready: String,
    ok: bool,
}

async fn health_rows(env: &StackEnv<'_>, desired: &[Desired]) -> Vec<Row> {
    let mut rows = Vec::new();
    for d in desired {
        let Some(info) = env.engine.container(&d.name).await.ok().flatten() else {
            rows.push(Row {
                container: d.name.clone(),
                state: "missing".into(),
                health: "-".into(),
                restarts: 0,
                uptime: "-".into(),
                ready: "-".into(),
                ok: false,
            });
            continue;
        };
        let st = info.state.clone().unwrap_or_default();
        let state = st.status.map(|s| s.to_string()).unwrap_or_default();
        let mut health = st
            .health
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "none".into());
        let running = state == "running";
        // Docker checks only every interval: until then stackctl probes itself.
        if running && health == "starting" {
            if let Some(cmd) = d.spec.probe_cmd() {
                if let Ok((0, _)) = env.engine.exec(&d.name, &cmd, None).await {
                    health = "healthy (probe)".into();
                }
            }
        }
        let mut ok = running && (health.starts_with("healthy") || health == "none");
        let mut ready = "-".to_string();
        if running && d.spec.kind == Kind::App {
            if let Some(s) = env.stack.service(&d.spec.name) {
                match ready_report(&env.engine, d, s.port, &s.health_path).await {
                    Some((200, v)) => ready = summarize(&v),
                    Some((code, v)) => {
                        ready = format!("{code}: {}", summarize(&v));
                        ok = false;
                    }
                    None => ready = "unreachable from the host".into(),
                }
            }
        }
        rows.push(Row {
            container: d.name.clone(),
            state,
            health,
            restarts: info.restart_count.unwrap_or(0),
            uptime: st
                .started_at
                .as_deref()
                .map(uptime)
                .unwrap_or_else(|| "-".into()),
            ready,
            ok,
        });
    }
    rows
}

pub async fn health(stack: &Stack, watch: bool, ui: &Ui) -> Result<i32> {
    let env = StackEnv::connect(stack).await?;
    let desired = env.desired_quietly(ui).await?;
    loop {
        let rows = health_rows(&env, &desired).await;
        let bad = rows.iter().filter(|r| !r.ok).count();
        if ui.json {
            ui.print_json(&json!({
                "healthy": bad == 0,
                "containers": rows.iter().map(|r| json!({
                    "container": r.container, "state": r.state, "health": r.health, "restarts": r.restarts,
                    "uptime": r.uptime, "ready": r.ready, "ok": r.ok,
                })).collect::<Vec<_>>(),
            }));
        } else {
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            let w = rows
                .iter()
                .map(|r| r.container.len())
                .max()
                .unwrap_or(9)
                .max(9);
            println!(
                "{:<w$}  {:<8} {:<16} {:>8} {:>6}  READY",
                "CONTAINER", "STATE", "HEALTH", "RESTARTS", "UP"
            );
            for r in &rows {
                let mark = if r.ok {
                    console::style("✓").green()
                } else {
                    console::style("✗").red()
                };
                println!(
                    "{:<w$}  {:<8} {:<16} {:>8} {:>6}  {} {}",
                    r.container, r.state, r.health, r.restarts, r.uptime, mark, r.ready
                );
            }
            println!("{} of {} healthy", rows.len() - bad, rows.len());
        }
        if !watch {
            return if bad == 0 {
                Ok(0)
            } else {
                Err(Error::Unhealthy {
                    unhealthy: bad,
                    total: rows.len(),
                })
            };
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Desired (stack.toml) against running: missing, outdated, extra.
pub async fn status(stack: &Stack, ui: &Ui) -> Result<i32> {
    let env = StackEnv::connect(stack).await?;
    let desired = env.desired_quietly(ui).await?;
    let running = env.running().await?;
    let mut rows = Vec::new();
    for d in &desired {
        let found = running.iter().find(|c| {
            c.names
                .as_ref()
                .is_some_and(|n| n.iter().any(|x| x.trim_start_matches('/') == d.name))
        });
        let (state, verdict) = match found {
            None => ("-".to_string(), "missing".to_string()),
            Some(c) => {
                let labels = c.labels.clone().unwrap_or_default();
                let state = c.state.map(|s| s.to_string()).unwrap_or_default();
                let verdict =
                    if crate::engine::config_hash_of(Some(&labels)) != Some(d.hash.as_str()) {
                        if labels.get("io.stackctl.image") != Some(&d.image) {
                            format!(
                                "outdated (image {} -> {})",
                                labels
                                    .get("io.stackctl.image")
                                    .map(String::as_str)
                                    .unwrap_or("?"),
                                d.image
                            )
                        } else {
                            "outdated (config or image content)".to_string()
                        }
                    } else if state != "running" {
                        "stopped".to_string()
                    } else {
                        "up to date".to_string()
                    };
                (state, verdict)
            }
        };
        rows.push((d.name.clone(), state, verdict));
    }
    for c in &running {
        let name = crate::engine::name_of(c);
        if !desired.iter().any(|d| d.name == name) {
            rows.push((
                name,
                c.state.map(|s| s.to_string()).unwrap_or_default(),
                "extra (not in stack.toml)".into(),
            ));
        }
    }
    let drift = rows.iter().filter(|r| r.2 != "up to date").count();
    let live = crate::runtime::revision::list(&env.engine, &stack.root, &env.project)
        .await?
        .pop()
        .map(|(r, _)| r);
    if ui.json {
        ui.print_json(&json!({
            "in_sync": drift == 0,
            "revision": live.as_ref().map(|r| json!({"id": r.id, "kind": r.kind, "time": r.time, "by": r.by})),
            "containers": rows.iter().map(|(n, s, v)| json!({"container": n, "state": s, "status": v})).collect::<Vec<_>>(),
        }));
    } else {
        let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(9).max(9);
        println!("{:<w$}  {:<9} STATUS", "CONTAINER", "STATE");
        for (n, s, v) in &rows {
            println!("{n:<w$}  {s:<9} {v}");
        }
        println!("{} of {} match stack.toml", rows.len() - drift, rows.len());
        match &live {
            Some(r) => println!(
                "revision {} is live ({} at {} by {}); `stackctl history` lists them",
                r.id, r.kind, r.time, r.by
            ),
            None => println!("no deploy revision yet (`stackctl deploy` records one)"),
        }
    }
    Ok(if drift == 0 {
        0
    } else {
        crate::error::EXIT_DRIFT
    })
}

pub async fn resources(stack: &Stack, watch: bool, ui: &Ui) -> Result<i32> {
    let env = StackEnv::connect(stack).await?;
    loop {
        let mut rows = Vec::new();
        for c in env.running().await? {
            if !crate::engine::is_running(&c) {
                continue;
            }
            let name = crate::engine::name_of(&c);
            let Some(st) = env.engine.stats_once(&name).await else {
                continue;
            };
            let cpu = st.cpu_stats.clone().unwrap_or_default();
            let pre = st.precpu_stats.clone().unwrap_or_default();
            let cpu_delta = cpu
                .cpu_usage
                .as_ref()
                .and_then(|u| u.total_usage)
                .unwrap_or(0) as f64
                - pre
                    .cpu_usage
                    .as_ref()
                    .and_then(|u| u.total_usage)
                    .unwrap_or(0) as f64;
            let sys_delta =
                cpu.system_cpu_usage.unwrap_or(0) as f64 - pre.system_cpu_usage.unwrap_or(0) as f64;
            let ncpu = cpu.online_cpus.unwrap_or(1) as f64;
            let cpu_pct = if sys_delta > 0.0 {
                cpu_delta / sys_delta * ncpu * 100.0
            } else {
                0.0
            };
            let mem = st.memory_stats.clone().unwrap_or_default();
            let cache = mem
                .stats
                .as_ref()
                .and_then(|m| m.get("inactive_file").or_else(|| m.get("cache")).copied())
                .unwrap_or(0);
            let used = mem.usage.unwrap_or(0).saturating_sub(cache);
            let limit = mem.limit.unwrap_or(0);
            let (rx, tx) = st
                .networks
                .as_ref()
                .map(|n| {
                    n.values().fold((0u64, 0u64), |a, v| {
                        (a.0 + v.rx_bytes.unwrap_or(0), a.1 + v.tx_bytes.unwrap_or(0))
                    })
                })
                .unwrap_or((0, 0));
            let (rd, wr) = st
                .blkio_stats
                .as_ref()
                .and_then(|b| b.io_service_bytes_recursive.as_ref())
                .map(|v| {
                    v.iter().fold((0u64, 0u64), |a, e| {
                        match e.op.as_deref().map(str::to_ascii_lowercase).as_deref() {
                            Some("read") => (a.0 + e.value.unwrap_or(0), a.1),
                            Some("write") => (a.0, a.1 + e.value.unwrap_or(0)),
                            _ => a,
                        }
                    })
                })
                .unwrap_or((0, 0));
            rows.push((name, cpu_pct, used, limit, rx, tx, rd, wr));
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
        if ui.json {
            ui.print_json(&json!(rows
                .iter()
                .map(|r| json!({
                    "container": r.0, "cpu_percent": r.1, "memory": r.2, "memory_limit": r.3,
                    "net_rx": r.4, "net_tx": r.5, "block_read": r.6, "block_write": r.7,
                }))
                .collect::<Vec<_>>()));
        } else {
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(9).max(9);
            println!(
                "{:<w$} {:>7} {:>21} {:>6} {:>17} {:>17}",
                "CONTAINER", "CPU %", "MEMORY / LIMIT", "MEM %", "NET RX / TX", "BLOCK R / W"
            );
            for r in &rows {
                let pct = if r.3 > 0 {
                    r.2 as f64 / r.3 as f64 * 100.0
                } else {
                    0.0
                };
                println!(
                    "{:<w$} {:>6.1}% {:>9.1}M / {:>8.1}M {:>5.1}% {:>7.1}M / {:>6.1}M {:>7.1}M / {:>6.1}M",
                    r.0, r.1, mb(r.2), mb(r.3), pct, mb(r.4), mb(r.5), mb(r.6), mb(r.7)
                );
            }
        }
        if !watch {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The monitoring and logging UIs with their host URLs, checked.
pub async fn monitor(stack: &Stack, open: bool, ui: &Ui) -> Result<i32> {
    let mut targets = Vec::new();
    if let Some(m) = &stack.monitoring {
        targets.push(("Prometheus", m.prometheus.port, "/-/ready"));
        if let Some(g) = &m.grafana {
            targets.push(("Grafana", g.port, "/api/health"));
        }
    }
    if let Some(l) = &stack.logging {
        targets.push(("Elasticsearch", l.elasticsearch.port, "/"));
        targets.push(("Kibana", l.kibana.port, "/api/status"));
    }
    if let Some(n) = &stack.nginx {
        targets.push(("Nginx (HTTP)", n.http_port, "/nginx-health"));
    }
    let mut rows = Vec::new();
    for (name, port, path) in targets {
        let answer = http_get(&format!("127.0.0.1:{port}"), path, Duration::from_secs(3)).await;
        let url = format!("http://localhost:{port}/");
        let state = match answer {
            Some((code, _)) if code < 500 => format!("answers ({code})"),
            Some((code, _)) => format!("error {code}"),
            None => "not answering".to_string(),
        };
        if open && answer.is_some() {
            let _ = std::process::Command::new("xdg-open").arg(&url).spawn();
        }
        rows.push((name, url, state));
    }
    if ui.json {
        ui.print_json(&json!(rows
            .iter()
            .map(|r| json!({"name": r.0, "url": r.1, "state": r.2}))
            .collect::<Vec<_>>()));
    } else {
        for (n, u, s) in &rows {
            println!("{n:<14} {u:<28} {s}");
        }
    }
    Ok(0)
}

/// A running service's smoke checks: live, ready (with its dependencies), metrics.
pub async fn test_service(stack: &Stack, service: &str, ui: &Ui) -> Result<i32> {
    let Some(s) = stack.service(service).cloned() else {
        return Err(Error::usage(
            format!("`{service}` is not a service of this stack (test-service checks the workspace's services)"),
            format!(
                "choose from: {}",
                stack.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let env = StackEnv::connect(stack).await?;
    let name = crate::engine::container_name(&env.project, &s.name, 1);
    let ips = addresses(&env.engine, &name).await;
    let Some(ip) = ips.first() else {
        return Err(Error::usage(
            format!("{name} is not running"),
            format!("start it: stackctl start {}", s.name),
        ));
    };
    let mut failed = 0;
    let mut results = Vec::new();
    for (check, path, want) in [
        ("liveness", "/health/live", "\"status\""),
        ("readiness", s.health_path.as_str(), "\"status\""),
        ("metrics", "/metrics", "http_requests_total"),
    ] {
        let r = http_get(&format!("{ip}:{}", s.port), path, Duration::from_secs(5)).await;
        let (ok, detail) = match &r {
            Some((200, body)) if body.contains(want) => (true, "200".to_string()),
            Some((code, body)) => (
                false,
                format!("{code}: {}", body.chars().take(120).collect::<String>()),
            ),
            None => (false, "no answer".into()),
        };
        if !ok {
            failed += 1;
        }
        results.push((check, path.to_string(), ok, detail));
    }
    let (code, out) = env
        .engine
        .exec(
            &name,
            &[format!("/app/{}", s.binary), "healthcheck".into()],
            None,
        )
        .await?;
    results.push((
        "healthcheck command",
        format!("/app/{} healthcheck", s.binary),
        code == 0,
        format!("exit {code} {}", out.trim()),
    ));
    if code != 0 {
        failed += 1;
    }
    for (check, path, ok, detail) in &results {
        let mark = if *ok {
            console::style("✓").green()
        } else {
            console::style("✗").red()
        };
        ui.info(format!("{mark} {check:<20} {path:<28} {detail}"));
    }
    if failed == 0 {
        ui.ok(format!("{}: all {} checks passed", s.name, results.len()));
        Ok(0)
    } else {
        Err(Error::Unhealthy {
            unhealthy: failed,
            total: results.len(),
        })
    }
}
