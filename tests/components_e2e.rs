//! examples/components on the real engine: a Python worker built from its own
//! Dockerfile (FROM a Debian-built image), PgBouncer (Debian packages)
//! between analytics and its PostgreSQL, and a registry image that cannot be
//! pulled here, which `start` explains how to load. The worker's state
//! volume is backed up and restored, and it answers under its alias.
//! Traffic goes only to this stack's Nginx on loopback ports of its own and
//! to its containers (docker exec).

mod common;
use common::*;
use std::process::Output;
use std::time::{Duration, Instant};

const PROJECT: &str = "stackctl-components-e2e";
const FILE: &str = "examples/components/stack.toml";

/// A copy of the example with one PgBouncer setting changed, beside it (same
/// root, so the same secrets and build contexts).
const TUNED: &str = "examples/components/stack-e2e-tuned.toml";

fn sc(env: Option<&str>, args: &[&str]) -> Output {
    sc_file(FILE, env, args)
}

fn sc_file(file: &str, env: Option<&str>, args: &[&str]) -> Output {
    let mut c = in_project(PROJECT);
    c.env("PORT_NGINX_80", "38180")
        .env("PORT_NGINX_443", "38543")
        .args(["-f", file]);
    if let Some(e) = env {
        c.args(["--env", e]);
    }
    c.args(args);
    run_logged(
        &mut c,
        &format!("-f {file} {} {}", env.unwrap_or(""), args.join(" ")),
    )
}

fn ok(env: Option<&str>, args: &[&str]) -> String {
    succeeded(&sc(env, args), &format!("stackctl {}", args.join(" ")))
}

fn container(name: &str) -> String {
    format!("{PROJECT}-{name}-1")
}

struct Cleanup;
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = sc(Some("airgapped"), &["down", "--volumes", "--yes"]);
        let _ = std::fs::remove_file(repo().join(TUNED));
        let _ = std::fs::remove_dir_all(backups_dir());
    }
}

fn backups_dir() -> std::path::PathBuf {
    repo().join("examples/components/backups").join(PROJECT)
}

/// A shell line run in the worker (as its own user, 65534).
fn in_worker(line: &str) -> String {
    docker_ok(&["exec", &container("uptime-worker"), "sh", "-c", line])
}

/// Container ID of every container of the example, by service name.
fn container_ids() -> std::collections::BTreeMap<String, String> {
    docker_ok(&[
        "ps",
        "--filter",
        "label=io.stackctl.stack=components-demo",
        "--format",
        "{{.Label \"io.stackctl.service\"}} {{.ID}}",
    ])
    .lines()
    .filter_map(|l| l.split_once(' '))
    .map(|(n, id)| (n.to_string(), id.to_string()))
    .collect()
}

#[test]
fn components_from_a_dockerfile_debian_packages_and_a_registry() {
    let _ = sc(Some("airgapped"), &["down", "--volumes", "--yes"]);
    let _cleanup = Cleanup;
    const AIR: Option<&str> = Some("airgapped");

    let t = Instant::now();
    ok(AIR, &["setup"]);
    // setup built the worker's base image (its Dockerfile names it in FROM).
    let base = docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{.Id}}",
        "stackctl/python:3.11-bookworm",
    ]);
    assert!(base.starts_with("sha256:"), "{base}");
    eprintln!(
        "FIGURE components example setup: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let built = ok(AIR, &["build"]);
    assert!(built.contains("uptime-worker"), "{built}");
    // The worker's .dockerignore keeps its tests out of the image.
    let listing = docker_ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "python3",
        "components-demo/uptime-worker:dev",
        "-c",
        "import os; print(sorted(os.listdir('/app')))",
    ]);
    assert_eq!(listing.trim(), "['worker.py']", "{listing}");
    // A second build finds the same inputs: nothing is built again.
    let again = ok(AIR, &["build", "--no-cargo", "uptime-worker"]);
    assert!(again.contains("0 built"), "{again}");

    // With the registry image: `start` stops before creating anything and says how to load it.
    let o = sc(None, &["start"]);
    assert_eq!(o.status.code(), Some(36), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("qdrant/qdrant:v1.12.4") && err.contains("docker load"),
        "{err}"
    );

    let t = Instant::now();
    ok(AIR, &["start"]);
    eprintln!(
        "FIGURE components example start to all-ready: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let h = sc(AIR, &["--json", "health"]);
    let v: serde_json::Value = serde_json::from_slice(&h.stdout).unwrap();
    assert_eq!(v["healthy"], true, "{v}");

    // analytics reaches its database only through PgBouncer.
    let ip = |name: &str| {
        docker_ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            &container(name),
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect::<Vec<_>>()
    };
    let bouncer = ip("pgbouncer");
    let analytics = ip("analytics");
    // A real query through Nginx, analytics and PgBouncer.
    let r = https_client()
        .get("https://127.0.0.1:38543/usage/services")
        .send()
        .expect("through nginx");
    let status = r.status().as_u16();
    assert_eq!(status, 200, "{}", r.text().unwrap_or_default());
    let clients = docker_ok(&[
        "exec",
        &container("postgres-analytics"),
        "psql",
        "-U",
        "analytics",
        "-d",
        "analytics_db",
        "-tAc",
        "select distinct host(client_addr) from pg_stat_activity where datname = 'analytics_db' and client_addr is not null",
    ]);
    let clients: Vec<&str> = clients.split_whitespace().collect();
    assert!(!clients.is_empty(), "nobody is connected");
    for c in &clients {
        assert!(
            bouncer.iter().any(|b| b == c),
            "{c} is not PgBouncer ({bouncer:?})"
        );
        assert!(
            !analytics.iter().any(|a| a == c),
            "analytics connects directly"
        );
    }
    let pools = docker_ok(&[
        "exec",
        &container("pgbouncer"),
        "bash",
        "-c",
        "exec 3<>/dev/tcp/127.0.0.1/6432 && echo open",
    ]);
    assert!(pools.contains("open"), "{pools}");

    // The worker probes analytics and reports it up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = docker_ok(&[
            "exec",
            &container("uptime-worker"),
            "wget",
            "-qO-",
            "http://127.0.0.1:8090/status",
        ]);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        if v["targets"]["http://analytics:8003/health/ready"]["ok"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never saw analytics up: {v}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let m = docker_ok(&[
        "exec",
        &container("uptime-worker"),
        "wget",
        "-qO-",
        "http://127.0.0.1:8090/metrics",
    ]);
    assert!(
        m.contains("uptime_probe_success{target=\"http://analytics:8003/health/ready\"} 1"),
        "{m}"
    );

    // A deploy that changes only PgBouncer's config file rolls PgBouncer and nothing else.
    ok(AIR, &["deploy", "--no-build", "--watch", "0"]);
    let before = container_ids();
    assert!(before.contains_key("pgbouncer"), "{before:?}");
    let text = std::fs::read_to_string(repo().join(FILE)).unwrap();
    let tuned = text.replace("default_pool_size = 10", "default_pool_size = 12");
    assert_ne!(tuned, text, "the example sets default_pool_size = 10");
    std::fs::write(repo().join(TUNED), tuned).unwrap();
    let plan = succeeded(
        &sc_file(TUNED, AIR, &["deploy", "--dry-run"]),
        "deploy --dry-run",
    );
    eprintln!("{plan}");
    let t = Instant::now();
    succeeded(
        &sc_file(TUNED, AIR, &["deploy", "--no-build", "--watch", "0"]),
        "deploy of the tuned stack",
    );
    eprintln!(
        "FIGURE deploy of one component's config change: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let after = container_ids();
    let changed: Vec<&String> = before
        .iter()
        .filter(|(n, id)| after.get(*n) != Some(id))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(changed, ["pgbouncer"], "before {before:?}, after {after:?}");
    let ini = docker_ok(&[
        "exec",
        &after["pgbouncer"],
        "grep",
        "default_pool_size",
        "/etc/pgbouncer/pgbouncer.ini",
    ]);
    assert!(ini.contains("= 12"), "{ini}");
    // Still serving through the new PgBouncer.
    let r = https_client()
        .get("https://127.0.0.1:38543/usage/services")
        .send()
        .expect("through nginx");
    assert_eq!(r.status().as_u16(), 200);

    // Other containers reach the worker under its alias too.
    let alias = docker_ok(&[
        "exec",
        &container("pgbouncer"),
        "bash",
        "-c",
        "exec 3<>/dev/tcp/uptime/8090 && echo open",
    ]);
    assert!(alias.contains("open"), "{alias}");

    // The worker's state volume (backup = true): archived with the worker
    // stopped for it, then restored over later changes.
    let _ = std::fs::remove_dir_all(backups_dir());
    in_worker("echo before > /var/lib/uptime/marker");
    let worker_id = container_ids()["uptime-worker"].clone();
    let t = Instant::now();
    let o = sc_file(
        TUNED,
        AIR,
        &["--json", "backup", "--service", "uptime-worker"],
    );
    let out = succeeded(&o, "backup --service uptime-worker");
    eprintln!(
        "FIGURE backup of the worker's volume (stop, archive, start): {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("backup --json");
    let files = v["manifest"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{v}");
    assert_eq!(files[0]["kind"], "volume");
    assert_eq!(files[0]["file"], "uptime-worker.uptime-data.tar");
    assert_eq!(files[0]["volume"], "uptime-data");
    assert_eq!(files[0]["path"], "/var/lib/uptime");
    let name = v["backup"].as_str().unwrap().to_string();
    let tar = std::fs::read(
        backups_dir()
            .join(&name)
            .join("uptime-worker.uptime-data.tar"),
    )
    .unwrap();
    assert!(
        tar.windows(b"uptime/marker".len())
            .any(|w| w == b"uptime/marker"),
        "the archive holds the marker"
    );
    // Stopped and started again, not recreated.
    assert_eq!(container_ids()["uptime-worker"], worker_id);
    let running = docker_ok(&[
        "inspect",
        "-f",
        "{{.State.Running}}",
        &container("uptime-worker"),
    ]);
    assert_eq!(running.trim(), "true");

    in_worker("echo after > /var/lib/uptime/marker && echo x > /var/lib/uptime/extra");
    let t = Instant::now();
    succeeded(
        &sc_file(TUNED, AIR, &["restore", &name, "--yes"]),
        "restore of the worker's volume",
    );
    eprintln!(
        "FIGURE restore of the worker's volume: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let after = in_worker(
        "cat /var/lib/uptime/marker; stat -c %u /var/lib/uptime/marker; ls -A /var/lib/uptime",
    );
    let lines: Vec<&str> = after.lines().collect();
    assert_eq!(lines[0], "before", "{after}");
    assert_eq!(lines[1], "65534", "owners are kept: {after}");
    assert!(
        !after.contains("extra"),
        "files added later are gone: {after}"
    );
    assert!(!after.contains(".stackctl"), "no helper leftovers: {after}");
    assert!(after.contains("state.json"), "{after}");
    // The worker serves again, its probe count carried over from the volume.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = sc_file(TUNED, AIR, &["--json", "health"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if v["healthy"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "not healthy after restore: {v}");
        std::thread::sleep(Duration::from_secs(1));
    }
}
