//! `stackctl --target swarm` on a real three-node swarm (the harness in
//! tests/common/cluster.rs: three dockerds with their own addresses, data
//! roots and network namespaces, and a registry on node 1's network):
//!
//! 1. The minimal example stack (Nginx, three replicas of analytics, its PostgreSQL) is built
//!    on this host, carried to the manager with `images save`/`images load`,
//!    pushed to the cluster's registry with `build --push` and deployed from
//!    there: every service pinned by digest, so every node pulls it.
//! 2. The stateful parts stay on the node labelled as holding their volume
//!    (`io.stackctl.volume.<name>`); three analytics replicas spread over the
//!    three nodes; requests through Nginx reach replicas on other nodes
//!    (overlay traffic between nodes), read from Nginx's access log.
//! 3. A worker holding a replica is killed (its daemon and containers):
//!    requests through Nginx go on and the failures are counted; `health`
//!    and `status` name the lost node; the replica runs again on the others.
//!    The node comes back and the stack converges (health green).
//! 4. A rolling update and a rollback across the nodes under a bounded
//!    request loop: failures counted, times printed.
//!
//! Runs only as root with dockerd installed (skips with the reason
//! otherwise). Traffic goes only to addresses the harness made.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use cluster::Cluster;
use common::{bin, repo, run_logged, stderr, stdout, succeeded};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PROJECT: &str = "stackctl-nodes-e2e";
const SERVICE: &str = "analytics";
const TAG_1: &str = "nodes-e2e-1";
const TAG_2: &str = "nodes-e2e-2";
/// Nginx's HTTPS port in the minimal example.
const HTTPS: u16 = 8443;

/// Where the test's stack.toml is (in the cluster's work directory).
static STACK_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// The minimal example (Nginx in front of analytics and its PostgreSQL),
/// with the infrastructure built from Debian packages as in the repo's
/// stack.toml (no registry outside the machine can be reached).
fn stack_toml() -> String {
    format!(
        r#"[stack]
name = "nodes-e2e"

# Health checks every 2 s (the default 10 s): each step of a rolling update
# waits for the new task to be healthy, and this test makes six of them.
[defaults]
healthcheck = {{ interval = "2s" }}

[networks.frontend]

[networks.backend]
internal = true

[services.analytics]
path = "{}/services/analytics"
port = 8003
replicas = 3
public = true
networks = ["frontend", "backend"]
postgres = {{ database = "analytics_db" }}
resources = {{ memory = "256M", cpus = 0.5 }}

[infra.postgres]
build = "debian"
image = "stackctl/postgres:15-bookworm"

[infra.nginx]
build = "debian"
image = "stackctl/nginx:1.22-bookworm"
http_port = 8080
https_port = {HTTPS}

[monitoring]
enabled = false

[logging]
enabled = false
"#,
        repo().display()
    )
}

/// stackctl on the test's stack (in the cluster's work directory) under
/// this test's project name; `on` the cluster's manager (with its registry)
/// or, when `None`, this host's engine.
fn sc(on: Option<&Cluster>, tag: &str, args: &[&str]) -> Output {
    let dir = match on {
        Some(cl) => cl.work_dir().join("stack"),
        None => STACK_DIR.get().expect("the stack is written first").clone(),
    };
    let mut c = bin();
    c.current_dir(&dir)
        .env("STACKCTL_PROJECT", PROJECT)
        .env("IMAGE_TAG", tag)
        .env("STACKCTL_SWARM_TIMEOUT", "300")
        .env_remove("STACKCTL_TARGET");
    let shown = match on {
        Some(cl) => {
            c.env("DOCKER_HOST", cl.manager_host())
                .args(["--registry", &registry_prefix(cl)]);
            format!("[manager] {}", args.join(" "))
        }
        None => format!("[host] {}", args.join(" ")),
    };
    c.args(args);
    run_logged(&mut c, &shown)
}

fn swarm(cl: &Cluster, tag: &str, args: &[&str]) -> Output {
    let mut all = vec!["--target", "swarm"];
    all.extend_from_slice(args);
    sc(Some(cl), tag, &all)
}

fn registry_prefix(cl: &Cluster) -> String {
    format!("{}/e2e", cl.registry())
}

fn service(name: &str) -> String {
    format!("{PROJECT}_{name}")
}

/// Node hostname → its index (1-based) in the cluster.
fn index_of(cl: &Cluster, host: &str) -> usize {
    (1..=cl.len())
        .find(|i| cl.node_name(*i) == host)
        .unwrap_or_else(|| panic!("no node {host}"))
}

/// A bounded request loop through Nginx on `addr` (at most `max` requests,
/// one every 100 ms, each with a 5 s timeout) until stopped: (ok, failed).
/// A request fails when it gets no answer or a 5xx: anything else came from
/// an analytics replica through Nginx.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: &str, max: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let url = format!("https://{addr}:{HTTPS}/usage/services");
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let client = reqwest::blocking::Client::builder()
                .danger_accept_invalid_certs(true)
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client");
            for _ in 0..max {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                match client.get(&url).send() {
                    Ok(r) if r.status().as_u16() < 500 => o.fetch_add(1, Ordering::SeqCst),
                    _ => f.fetch_add(1, Ordering::SeqCst),
                };
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Load {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The overlay addresses of the service's running tasks → their node.
fn task_addresses(cl: &Cluster, name: &str) -> BTreeMap<String, String> {
    let ids = cl.docker_ok(
        1,
        &[
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            &service(name),
        ],
    );
    let mut out = BTreeMap::new();
    for id in ids.split_whitespace() {
        let line = cl.docker_ok(
            1,
            &[
                "inspect",
                "--format",
                "{{.NodeID}} {{range .NetworksAttachments}}{{range .Addresses}}{{.}} {{end}}{{end}}",
                id,
            ],
        );
        let mut w = line.split_whitespace();
        let node_id = w.next().unwrap_or_default().to_string();
        let host = (1..=cl.len())
            .find(|i| cl.node_id(*i) == node_id)
            .map(|i| cl.node_name(i))
            .unwrap_or(node_id);
        for a in w {
            out.insert(a.split('/').next().unwrap_or(a).to_string(), host.clone());
        }
    }
    out
}

/// The upstream addresses in Nginx's access log (JSON lines).
fn upstreams(cl: &Cluster, tag: &str) -> BTreeSet<String> {
    let o = swarm(cl, tag, &["logs", "nginx", "--tail", "400"]);
    let text = format!("{}{}", stdout(&o), stderr(&o));
    let mut out = BTreeSet::new();
    for part in text.split("\"upstream\":\"").skip(1) {
        let v = part.split('"').next().unwrap_or_default();
        for a in v.split(", ") {
            if let Some((ip, _)) = a.rsplit_once(':') {
                out.insert(ip.to_string());
            }
        }
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[test]
fn three_nodes_deploy_node_loss_rolling_update_rollback() {
    if let Some(why) = cluster::unavailable() {
        println!("SKIPPED swarm_nodes_e2e: {why}");
        return;
    }
    let total = Instant::now();
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut cl = Cluster::start(3);
    rows.push((
        "cluster up (3 daemons, registry, swarm)".into(),
        secs(total.elapsed()),
    ));

    let dir = cl.work_dir().join("stack");
    std::fs::create_dir_all(&dir).expect("mkdir stack");
    std::fs::write(dir.join("stack.toml"), stack_toml()).expect("write stack.toml");
    STACK_DIR.set(dir).expect("one stack");

    // 1. Images: made on this host, carried to the manager, pushed.
    succeeded(&sc(None, TAG_1, &["setup"]), "setup on this host");
    succeeded(&sc(None, TAG_1, &["build"]), "build on this host");
    let archive = cl.work_dir().join("images.tar");
    let archive_s = archive.display().to_string();
    let t = Instant::now();
    succeeded(
        &sc(None, TAG_1, &["images", "save", &archive_s]),
        "images save",
    );
    succeeded(
        &sc(Some(&cl), TAG_1, &["images", "load", &archive_s]),
        "images load on the manager",
    );
    let _ = std::fs::remove_file(&archive);
    rows.push((
        "images: save here, load on the manager".into(),
        secs(t.elapsed()),
    ));
    let t = Instant::now();
    let o = sc(Some(&cl), TAG_1, &["--json", "build", "--push"]);
    let built = succeeded(&o, "build --push on the manager");
    rows.push((
        "build --push to the cluster's registry".into(),
        secs(t.elapsed()),
    ));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap_or_default();
    let image_1 = report["images"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["service"] == SERVICE))
        .and_then(|i| i["image"].as_str())
        .unwrap_or_else(|| panic!("{SERVICE} in the build report: {built}"))
        .to_string();
    assert!(
        image_1.starts_with(&registry_prefix(&cl)),
        "the service image is named under the registry: {image_1}"
    );

    // 2. Deploy on three nodes.
    let t = Instant::now();
    let d = swarm(&cl, TAG_1, &["deploy"]);
    let said = succeeded(&d, "deploy on three nodes");
    let t_deploy = t.elapsed();
    rows.push((
        "deploy on three nodes (all converged)".into(),
        secs(t_deploy),
    ));
    for s in ["nginx", "postgres-analytics", SERVICE] {
        let img = cl.docker_ok(
            1,
            &[
                "service",
                "inspect",
                "--format",
                "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
                &service(s),
            ],
        );
        assert!(
            img.trim().starts_with(&cl.registry()) && img.contains("@sha256:"),
            "{s} runs an image pinned by digest in the registry: {img}"
        );
    }
    // The volume's node is labelled, and PostgreSQL runs there.
    let pg_nodes = cl.wait_for("postgres running", Duration::from_secs(60), || {
        let r = cl.running_on(&service("postgres-analytics"));
        (r.len() == 1).then_some(r)
    });
    let labels = cl.docker_ok(
        1,
        &[
            "node",
            "inspect",
            &pg_nodes[0],
            "--format",
            "{{json .Spec.Labels}}",
        ],
    );
    assert!(
        labels.contains(&format!("io.stackctl.volume.{PROJECT}_")),
        "the node holding PostgreSQL's volume carries its label: {labels}"
    );
    assert!(
        said.contains("stay on node"),
        "deploy says where the volumes stay: {said}"
    );

    // Three replicas of analytics (stack.toml), one per node.
    let spread: BTreeSet<String> =
        cl.wait_for("3 replicas on 3 nodes", Duration::from_secs(60), || {
            let r = cl.running_on(&service(SERVICE));
            let s: BTreeSet<String> = r.iter().cloned().collect();
            (r.len() == 3 && s.len() == 3).then_some(s)
        });
    assert_eq!(spread.len(), 3, "spread over the nodes: {spread:?}");

    // Requests through Nginx reach replicas on other nodes.
    let nginx_node = cl
        .running_on(&service("nginx"))
        .first()
        .cloned()
        .expect("nginx runs");
    let entry = cl.node_addr(index_of(&cl, &nginx_node));
    let load = Load::start(&entry, 60);
    std::thread::sleep(Duration::from_secs(6));
    let (ok, failed) = load.finish();
    assert!(
        ok >= 20 && failed == 0,
        "through Nginx on {nginx_node}: {ok} ok, {failed} failed"
    );
    let addrs = task_addresses(&cl, SERVICE);
    let served: BTreeSet<String> = upstreams(&cl, TAG_1)
        .iter()
        .filter_map(|ip| addrs.get(ip).cloned())
        .collect();
    println!("Nginx on {nginx_node} reached replicas on {served:?}");
    assert!(
        served.iter().any(|n| *n != nginx_node),
        "Nginx on {nginx_node} reached a replica on another node: {served:?} (tasks {addrs:?})"
    );

    // 3. Node loss: a worker that runs a replica but not Nginx.
    let lost = (2..=3)
        .find(|i| cl.node_name(*i) != nginx_node && !pg_nodes.contains(&cl.node_name(*i)))
        .expect("a worker without Nginx or PostgreSQL");
    let lost_name = cl.node_name(lost);
    let load = Load::start(&entry, 900);
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    cl.kill_node(lost);
    cl.wait_for("the lost node marked down", Duration::from_secs(90), || {
        (cl.node_state(lost) == "down").then_some(())
    });
    let t_marked = t.elapsed();
    let moved: Vec<String> = cl.wait_for(
        "3 replicas on the other nodes",
        Duration::from_secs(120),
        || {
            let r = cl.running_on(&service(SERVICE));
            (r.len() == 3 && !r.contains(&lost_name)).then_some(r)
        },
    );
    let t_resched = t.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let (ok_loss, failed_loss) = load.finish();
    println!("replicas after the loss: {moved:?}");
    let h = swarm(&cl, TAG_1, &["health"]);
    let health_text = format!("{}{}", stdout(&h), stderr(&h));
    assert_eq!(
        h.status.code(),
        Some(0),
        "every service at its replicas again: {health_text}"
    );
    assert!(
        health_text.contains(&lost_name),
        "health names the lost node: {health_text}"
    );
    let st = swarm(&cl, TAG_1, &["status"]);
    let status_text = format!("{}{}", stdout(&st), stderr(&st));
    assert!(
        status_text.contains(&lost_name) && status_text.to_lowercase().contains("down"),
        "status shows the lost node: {status_text}"
    );
    assert!(
        status_text.contains("→") || status_text.contains("moved"),
        "status shows which tasks moved: {status_text}"
    );
    rows.push((format!("{lost_name} killed → marked down"), secs(t_marked)));
    rows.push((
        format!("{lost_name} killed → 3 replicas on the others"),
        secs(t_resched),
    ));
    rows.push((
        "requests through Nginx during the loss".into(),
        format!("{failed_loss} failed of {}", ok_loss + failed_loss),
    ));

    // The node comes back: the stack converges.
    let t = Instant::now();
    cl.start_node(lost);
    cl.wait_for("the node ready again", Duration::from_secs(120), || {
        (cl.node_state(lost) == "ready").then_some(())
    });
    cl.wait_for(
        "health green with the node back",
        Duration::from_secs(120),
        || {
            let h = swarm(&cl, TAG_1, &["health"]);
            (h.status.code() == Some(0)
                && !format!("{}{}", stdout(&h), stderr(&h)).contains("down"))
            .then_some(())
        },
    );
    rows.push((
        format!("{lost_name} back → ready, health green"),
        secs(t.elapsed()),
    ));

    // 4. A rolling update across the nodes, then a rollback, under load.
    let image_2 = image_1.replace(&format!(":{TAG_1}"), &format!(":{TAG_2}"));
    let dockerfile = format!("FROM {image_1}\nLABEL io.stackctl.test={TAG_2}\n");
    let ctx = cl.work_dir().join("rev2");
    std::fs::create_dir_all(&ctx).expect("mkdir");
    std::fs::write(ctx.join("Dockerfile"), dockerfile).expect("Dockerfile");
    cl.docker_ok(
        1,
        &["build", "-q", "-t", &image_2, &ctx.display().to_string()],
    );
    cl.docker_ok(1, &["push", &image_2]);
    let load = Load::start(&entry, 1500);
    let t = Instant::now();
    succeeded(&swarm(&cl, TAG_2, &["deploy"]), "rolling update");
    let t_update = t.elapsed();
    let (ok_up, failed_up) = load.finish();
    let img = cl.docker_ok(
        1,
        &[
            "service",
            "inspect",
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
            &service(SERVICE),
        ],
    );
    let digests_2 = cl.docker_ok(
        1,
        &[
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            &image_2,
        ],
    );
    let running_digest = img
        .trim()
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or_default();
    assert!(
        !running_digest.is_empty() && digests_2.contains(running_digest),
        "the update runs revision 2's image ({img}; its digests {digests_2})"
    );
    let load = Load::start(&entry, 1500);
    let t = Instant::now();
    succeeded(&swarm(&cl, TAG_2, &["rollback"]), "rollback");
    let t_rollback = t.elapsed();
    let (ok_rb, failed_rb) = load.finish();
    rows.push((
        "rolling update (3 replicas, 3 nodes)".into(),
        secs(t_update),
    ));
    rows.push((
        "requests during the update".into(),
        format!("{failed_up} failed of {}", ok_up + failed_up),
    ));
    rows.push(("rollback".into(), secs(t_rollback)));
    rows.push((
        "requests during the rollback".into(),
        format!("{failed_rb} failed of {}", ok_rb + failed_rb),
    ));

    // Nothing of the test stays on this host but the shared Debian images.
    let _ = sc(None, TAG_1, &["down", "--volumes", "--yes"]);
    let _ = Command::new("docker")
        .args(["rmi", &format!("nodes-e2e/analytics:{TAG_1}")])
        .output();
    let t = Instant::now();
    cl.shutdown();
    rows.push(("teardown".into(), secs(t.elapsed())));
    rows.push(("total".into(), secs(total.elapsed())));
    let w = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    println!("\n| {:w$} | {:>18} |", "three-node swarm", "");
    println!("|{}|{}|", "-".repeat(w + 2), "-".repeat(20));
    for (k, v) in &rows {
        println!("| {k:w$} | {v:>18} |");
    }
    assert_eq!(
        failed_loss, 0,
        "no request through Nginx failed during the node loss"
    );
    assert_eq!(failed_up, 0, "no request failed during the rolling update");
    assert_eq!(failed_rb, 0, "no request failed during the rollback");
}
