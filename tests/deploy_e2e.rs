//! Deploys on the real Docker Engine: revisions, zero-downtime rolling
//! deploys under load, automatic rollback (a failing image; a service that
//! fails after cutover), manual rollback, the lock, a deploy killed midway,
//! image pruning, and backup/restore of users created through the API.
//!
//! Load goes only to this stack's Nginx, published on loopback ports of its
//! own, in bounded loops. Changed images are derived from the built ones
//! (`FROM image` + a label), so no recompilation is needed.

mod common;
use common::*;
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PROJECT: &str = "stackctl-deploy-e2e";
const HTTPS: u16 = 38443;
const STACK: &str = "ai-assistants-1c";
const APPS: [&str; 7] = [
    "security",
    "user-management",
    "analytics",
    "1c-integration",
    "onec-simulator",
    "ai-assistant",
    "api-gateway",
];

fn cmd(tag: Option<&str>, args: &[&str]) -> std::process::Command {
    let mut c = bin();
    c.current_dir(repo())
        .env("STACKCTL_PROJECT", PROJECT)
        .env("PORT_NGINX_80", "38080")
        .env("PORT_NGINX_443", HTTPS.to_string())
        .env("PORT_PROMETHEUS_9090", "39090")
        .env("PORT_GRAFANA_3000", "33001")
        .env("PORT_NODE_EXPORTER_9100", "39100")
        .env("PORT_KIBANA_5601", "35601")
        .env("PORT_ELASTICSEARCH_9200", "39200");
    match tag {
        Some(t) => c.env("IMAGE_TAG", t),
        None => c.env_remove("IMAGE_TAG"),
    };
    c.args(args);
    c
}

fn sc(tag: Option<&str>, args: &[&str]) -> Output {
    run_logged(
        &mut cmd(tag, args),
        &format!("{} (IMAGE_TAG={})", args.join(" "), tag.unwrap_or("-")),
    )
}

fn ok(tag: Option<&str>, args: &[&str]) -> String {
    succeeded(&sc(tag, args), &format!("stackctl {}", args.join(" ")))
}

fn docker(args: &[&str]) -> String {
    docker_ok(args).trim().to_string()
}

fn image(svc: &str, tag: &str) -> String {
    format!("{STACK}/{svc}:{tag}")
}

/// Tag every service image of `from` as `to`, and derive a changed image
/// (a new id, same program) for each of `changed`.
fn make_tag(from: &str, to: &str, changed: &[&str]) {
    for svc in APPS {
        if changed.contains(&svc) {
            docker_build_text(
                &image(svc, to),
                &format!("FROM {}\nLABEL e2e.change=\"{to}\"\n", image(svc, from)),
            );
        } else {
            docker(&["tag", &image(svc, from), &image(svc, to)]);
        }
    }
}

/// The image id the running container of a service uses.
fn running_image(svc: &str) -> String {
    docker(&["inspect", "-f", "{{.Image}}", &format!("{PROJECT}-{svc}-1")])
}

fn api(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let url = format!("https://127.0.0.1:{HTTPS}/api/v1/user-management{path}");
    let c = https_client();
    let mut req = if method == "GET" {
        c.get(&url)
    } else {
        c.post(&url).json(&body)
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send() {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().unwrap_or(serde_json::Value::Null))
        }
        Err(e) => (0, serde_json::json!({"error": e.to_string()})),
    }
}

fn login(email: &str, password: &str) -> String {
    let (code, v) = api(
        "POST",
        "/auth/login",
        None,
        serde_json::json!({"email": email, "password": password}),
    );
    assert_eq!(code, 200, "login {email}: {v}");
    v["access_token"].as_str().unwrap().to_string()
}

fn register(email: &str, password: &str) {
    let (code, v) = api(
        "POST",
        "/auth/register",
        None,
        serde_json::json!({"email": email, "password": password}),
    );
    assert!(code == 200 || code == 201, "register {email}: {code} {v}");
}

/// A bounded load loop through Nginx and the gateway to user-management
/// (`GET /me`): two clients, ~12 requests/s in all, at most 240 s.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    samples: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(token: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..2)
            .map(|_| {
                let (stop, ok, failed, samples) =
                    (stop.clone(), ok.clone(), failed.clone(), samples.clone());
                let token = token.to_string();
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed)
                        && t0.elapsed() < Duration::from_secs(240)
                        && n < 3000
                    {
                        n += 1;
                        let (code, v) = api("GET", "/me", Some(&token), serde_json::Value::Null);
                        if code == 200 {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let mut s = samples.lock().unwrap();
                            if s.len() < 10 {
                                s.push(format!("{:.1}s: {code} {v}", t0.elapsed().as_secs_f64()));
                            }
                        }
                        std::thread::sleep(Duration::from_millis(160));
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            samples,
            threads,
        }
    }

    /// (succeeded, failed, failure samples)
    fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let s = self.samples.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            s,
        )
    }
}

fn wait_child(mut c: Child) -> (Option<i32>, String) {
    let o = {
        let _ = c.wait();
        let mut out = String::new();
        use std::io::Read;
        if let Some(mut e) = c.stderr.take() {
            let _ = e.read_to_string(&mut out);
        }
        if let Some(mut s) = c.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        out
    };
    (c.wait().ok().and_then(|s| s.code()), o)
}

/// This project's revision records, lock and local history: a fresh start.
fn forget_history() {
    remove_project_containers(PROJECT);
    let _ = std::fs::remove_dir_all(repo().join(".stackctl/revisions").join(PROJECT));
}

struct Cleanup;
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = cmd(None, &["down", "--volumes", "--yes", "-q"]).output();
        forget_history();
        // The test's own tags, some of them broken on purpose: no later
        // test may take them for the built images.
        for svc in APPS {
            for tag in ["e2e-v1", "e2e-v2", "e2e-bad", "e2e-late"] {
                let _ = std::process::Command::new("docker")
                    .args(["rmi", "-f", &image(svc, tag)])
                    .output();
            }
        }
    }
}

#[test]
fn deploys_rollbacks_and_backups_on_the_real_engine() {
    let _ = sc(None, &["down", "--volumes", "--yes"]);
    forget_history();
    let _cleanup = Cleanup;
    ok(None, &["setup"]);
    // The built images, as this test's version 1.
    ok(None, &["build"]);
    let base = stdout(
        &std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(repo())
            .output()
            .unwrap(),
    )
    .trim()
    .to_string();
    make_tag(&base, "e2e-v1", &[]);
    make_tag("e2e-v1", "e2e-v2", &["api-gateway", "user-management"]);
    // Fails at once: the container runs the health probe instead of the server and exits.
    make_tag("e2e-v1", "e2e-bad", &[]);
    docker_build_text(
        &image("api-gateway", "e2e-bad"),
        &format!(
            "FROM {}\nENTRYPOINT [\"/app/api-gateway\", \"healthcheck\"]\n",
            image("api-gateway", "e2e-v1")
        ),
    );
    // Passes its first checks, then its server stops 12 s after start (its
    // migration job still runs the real `migrate`).
    make_tag("e2e-v2", "e2e-late", &[]);
    docker_build_text(
        &image("user-management", "e2e-late"),
        &format!(
            "FROM {} AS app\nFROM stackctl/redis:7-bookworm\nCOPY --from=app /app /app\nENTRYPOINT [\"/bin/sh\", \"-c\", \"if [ \\\"$1\\\" = migrate ]; then exec /app/user-management migrate; fi; /app/user-management & sleep 12; kill $!; exec sleep 600\", \"sh\"]\n",
            image("user-management", "e2e-v1")
        ),
    );

    // --- Revision 1: the first deploy creates everything.
    let plan = ok(Some("e2e-v1"), &["deploy", "--dry-run"]);
    assert!(
        plan.contains("create") && plan.contains("api-gateway"),
        "{plan}"
    );
    assert!(
        ok(None, &["history"]).contains("no revisions"),
        "a dry run records nothing"
    );
    let out = ok(Some("e2e-v1"), &["deploy", "--watch", "3s"]);
    assert!(out.contains("revision 1 is live"), "{out}");
    let v1_gw = running_image("api-gateway");
    let v1_um = running_image("user-management");
    assert_eq!(v1_gw, image_id(&image("api-gateway", "e2e-v1")));
    // Every service runs its immutable per-revision tag.
    let tagged = docker(&[
        "inspect",
        "-f",
        "{{.Config.Image}}",
        &format!("{PROJECT}-api-gateway-1"),
    ]);
    assert_eq!(tagged, format!("{STACK}/api-gateway:{PROJECT}-r1"));
    // Nothing changed: nothing to do.
    let again = ok(Some("e2e-v1"), &["deploy"]);
    assert!(again.contains("nothing to deploy"), "{again}");

    let password = "correct horse battery staple 42";
    register("deploy-e2e-1@example.com", password);
    let token = login("deploy-e2e-1@example.com", password);

    // --- Revision 2: a changed gateway and user-management, under load.
    let diff = ok(Some("e2e-v2"), &["diff"]);
    assert!(
        diff.contains("roll") && diff.contains("api-gateway") && diff.contains("user-management"),
        "{diff}"
    );
    assert!(
        !diff.contains("roll      stackctl-deploy-e2e-security"),
        "only what changed rolls: {diff}"
    );
    let load = Load::start(&token);
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    // From another directory with a relative `-f`: every path handed to the
    // engine (secret and config bind mounts) must still be absolute.
    let mut relative = cmd(
        Some("e2e-v2"),
        &["-f", "../stack.toml", "deploy", "--watch", "5s"],
    );
    relative.current_dir(repo().join("services"));
    let out = succeeded(
        &run_logged(&mut relative, "-f ../stack.toml deploy (from services/)"),
        "stackctl -f ../stack.toml deploy",
    );
    let deploy_secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let (served, failed, samples) = load.finish();
    eprintln!("FIGURE rolling deploy of api-gateway + user-management: {deploy_secs:.1}s, {served} requests served, {failed} failed");
    assert!(served > 50, "the load loop ran: {served}");
    assert_eq!(failed, 0, "failed requests during the deploy: {samples:?}");
    assert!(out.contains("revision 2 is live"), "{out}");
    assert!(
        !out.contains("configuration changed"),
        "`-f ../stack.toml` names the same files as a run at the root: only the two changed images roll: {out}"
    );
    assert_ne!(running_image("api-gateway"), v1_gw);
    assert_ne!(running_image("user-management"), v1_um);
    let h = ok(None, &["history"]);
    assert!(
        h.contains("<- live") && h.lines().filter(|l| l.contains("deploy")).count() >= 2,
        "{h}"
    );

    // --- Manual rollback, under load: the old images serve again.
    let load = Load::start(&token);
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let out = ok(None, &["rollback"]);
    let rollback_secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let (served, failed, samples) = load.finish();
    eprintln!("FIGURE manual rollback (2 services): {rollback_secs:.1}s, {served} requests served, {failed} failed");
    assert_eq!(
        failed, 0,
        "failed requests during the rollback: {samples:?}"
    );
    assert!(out.contains("rolled back to revision 1"), "{out}");
    assert_eq!(running_image("api-gateway"), v1_gw);
    assert_eq!(running_image("user-management"), v1_um);

    // --- A failing image: rolled back automatically, the old one serves throughout.
    let load = Load::start(&token);
    let o = sc(
        Some("e2e-bad"),
        &["deploy", "--watch", "3s", "--ready-timeout", "20s"],
    );
    let (served, failed, samples) = load.finish();
    assert_eq!(o.status.code(), Some(40), "a failed deploy exits 40");
    let err = stderr(&o);
    assert!(
        err.contains("api-gateway") && err.contains("kept serving"),
        "{err}"
    );
    assert_eq!(running_image("api-gateway"), v1_gw);
    assert_eq!(
        failed, 0,
        "the previous revision served throughout: {samples:?} ({served} served)"
    );
    assert!(
        !docker(&["ps", "-a", "--format", "{{.Names}}"]).contains("api-gateway-1-next"),
        "the failed container is gone"
    );

    // --- Fails 10 s after its first good check: rolled back automatically.
    let t = Instant::now();
    let o = sc(Some("e2e-late"), &["deploy", "--watch", "30s"]);
    eprintln!(
        "FIGURE deploy + late failure + automatic rollback: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(o.status.code(), Some(40));
    let err = stderr(&o);
    assert!(
        err.contains("user-management") && err.contains("rolled back automatically"),
        "{err}"
    );
    assert_eq!(
        running_image("user-management"),
        v1_um,
        "the previous image runs again"
    );
    let h = ok(None, &["history"]);
    assert!(h.contains("auto-rollback"), "{h}");

    // --- Two deploys at once: the second is refused and names the holder.
    let first = cmd(Some("e2e-v2"), &["deploy", "--watch", "15s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::process::Command::new("docker")
        .args(["inspect", &format!("{PROJECT}-lock")])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "the first deploy never took the lock"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = sc(Some("e2e-v2"), &["deploy"]);
    assert_eq!(
        second.status.code(),
        Some(41),
        "the second deploy is refused"
    );
    let err = stderr(&second);
    assert!(
        err.contains("pid") && err.contains("deploy since"),
        "the holder is named: {err}"
    );
    let (code, out) = wait_child(first);
    assert_eq!(code, Some(0), "{out}");

    // --- SIGKILL a rollback midway, then deploy again: it completes.
    let mut killed = cmd(None, &["rollback"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the new containers are starting (before the cutover).
    let deadline = Instant::now() + Duration::from_secs(60);
    let ours_next = || {
        docker(&["ps", "-a", "--format", "{{.Names}}"])
            .lines()
            .any(|n| n.starts_with(PROJECT) && n.ends_with("-next"))
    };
    while !ours_next() {
        assert!(
            Instant::now() < deadline,
            "the rollback never started a container"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    killed.kill().unwrap();
    let _ = killed.wait();
    assert!(
        docker(&["ps", "-a", "--format", "{{.Names}}"]).contains(&format!("{PROJECT}-lock")),
        "the killed run left its lock"
    );
    let out = ok(Some("e2e-v1"), &["deploy", "--watch", "3s"]);
    assert!(out.contains("stale deploy lock"), "{out}");
    let names = docker(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(
        !ours_next() && !names.contains(&format!("{PROJECT}-lock")),
        "{names}"
    );
    assert_eq!(running_image("api-gateway"), v1_gw);
    ok(None, &["health"]);

    // --- clean and an image prune cannot take a kept revision's images.
    ok(Some("e2e-v2"), &["deploy", "--watch", "0"]);
    ok(None, &["clean"]);
    for svc in ["api-gateway", "user-management"] {
        for t in ["e2e-v1", "e2e-v2", "e2e-bad", "e2e-late"] {
            let _ = std::process::Command::new("docker")
                .args(["rmi", &image(svc, t)])
                .output();
        }
    }
    // Only this stack's images (label filter): never other projects'.
    docker(&[
        "image",
        "prune",
        "-a",
        "-f",
        "--filter",
        &format!("label=io.stackctl.stack={STACK}"),
    ]);
    let h = sc(None, &["--json", "history"]);
    let revs: serde_json::Value = serde_json::from_slice(&h.stdout).expect("history as JSON");
    // The oldest kept revision that ran version 1 of both changed services.
    let oldest = revs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["services"]["api-gateway"]["image_id"] == v1_gw.as_str()
                && r["services"]["user-management"]["image_id"] == v1_um.as_str()
        })
        .map(|r| r["id"].as_u64().unwrap())
        .expect("a kept revision of version 1");
    assert!(
        docker(&["images", "-q", &image("api-gateway", "e2e-v1")]).is_empty(),
        "its tag is gone"
    );
    let t = Instant::now();
    ok(None, &["rollback", "--to", &oldest.to_string()]);
    eprintln!(
        "FIGURE rollback --to the oldest kept revision after clean + prune: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(running_image("api-gateway"), v1_gw);
    // What runs now is version 1: tag it so for the start below.
    for svc in APPS {
        docker(&["tag", &running_image(svc), &image(svc, "e2e-v1")]);
    }

    // --- Users created through the API survive down --volumes via backup/restore.
    let (code, _) = api("GET", "/me", Some(&token), serde_json::Value::Null);
    assert_eq!(code, 200);
    for i in 2..=3 {
        register(&format!("deploy-e2e-{i}@example.com"), password);
    }
    let t = Instant::now();
    let out = sc(None, &["--json", "backup"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    eprintln!("FIGURE backup: {:.1}s", t.elapsed().as_secs_f64());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("backup as JSON");
    let dir = std::path::PathBuf::from(v["dir"].as_str().unwrap());
    assert!(
        v["manifest"]["revision"].as_u64().is_some(),
        "the manifest names the live revision: {v}"
    );
    assert!(dir.join("manifest.json").exists(), "{}", dir.display());
    ok(None, &["down", "--volumes", "--yes"]);
    ok(Some("e2e-v1"), &["start"]);
    assert_eq!(
        api(
            "POST",
            "/auth/login",
            None,
            serde_json::json!({"email": "deploy-e2e-2@example.com", "password": password})
        )
        .0,
        401
    );

    // One flipped byte: refused, nothing changed.
    let corrupt = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), corrupt.path().join(e.file_name())).unwrap();
    }
    let victim = std::fs::read_dir(corrupt.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name().unwrap() != "manifest.json" && std::fs::metadata(p).unwrap().len() > 100
        })
        .expect("a data file");
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();
    let o = sc(
        None,
        &["restore", "--yes", corrupt.path().to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(37), "a corrupt backup is refused");
    assert_eq!(
        api(
            "POST",
            "/auth/login",
            None,
            serde_json::json!({"email": "deploy-e2e-2@example.com", "password": password})
        )
        .0,
        401
    );

    let t = Instant::now();
    ok(Some("e2e-v1"), &["restore", "--yes", dir.to_str().unwrap()]);
    eprintln!("FIGURE restore: {:.1}s", t.elapsed().as_secs_f64());
    for i in 1..=3 {
        login(&format!("deploy-e2e-{i}@example.com"), password);
    }
}
