//! The day-one path against the real Docker Engine on this machine:
//! setup -> build -> start -> health -> a real request through Nginx and
//! the gateway -> logs -> exec -> stop -> start (data kept) -> down.
//! Traffic goes only to this stack's own containers (published on loopback).
//! Everything runs under its own project name, so a developer's stack is untouched.

mod common;
use common::*;
use std::process::Output;
use std::time::{Duration, Instant};

const PROJECT: &str = "stackctl-e2e";

fn sc(args: &[&str]) -> Output {
    run_logged(in_project(PROJECT).args(args), &args.join(" "))
}

fn ok(args: &[&str]) -> String {
    succeeded(&sc(args), &format!("stackctl {}", args.join(" ")))
}

/// Through Nginx (TLS on 443) and the gateway to user-management.
fn api(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let c = https_client();
    let url = format!("https://127.0.0.1:443/api/v1/user-management{path}");
    let mut req = if method == "GET" {
        c.get(&url)
    } else {
        c.post(&url).json(&body)
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().expect("request through nginx");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(serde_json::Value::Null))
}

#[test]
fn day_one_path_on_the_real_engine() {
    // Clean slate for this project only.
    let _ = sc(&["down", "--volumes", "--yes"]);

    let out = ok(&["setup"]);
    assert!(out.contains("Docker Engine"), "{out}");
    // Idempotent: the second run changes nothing and says so.
    let again = ok(&["setup"]);
    assert!(again.contains("nothing to do"), "{again}");
    // Secrets only root reads are 0600; those a service (uid 1001) reads are
    // 0640 owned by it, group root: never readable by anyone else.
    for (s, want) in [
        ("redis-acl", 0o600),
        ("nginx-tls-key", 0o600),
        ("admin-password", 0o640),
        ("postgres-user-password", 0o640),
    ] {
        let p = repo().join("secrets").join(s);
        let meta = std::fs::metadata(&p).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
        assert_eq!(mode & 0o777, want, "{s}");
        assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), 0, "{s}");
    }

    let built = ok(&["build"]);
    assert!(built.contains("api-gateway"), "{built}");
    let t = Instant::now();
    let cached = ok(&["build", "--no-cargo"]);
    assert!(
        cached.contains("0 built"),
        "a no-change build rebuilds nothing: {cached}"
    );
    eprintln!(
        "no-change build (images only): {:.2}s",
        t.elapsed().as_secs_f64()
    );

    the_assembled_image_is_what_the_dockerfile_builds("security");
    images_move_as_one_archive();

    // Push to the local registry on loopback (scripts/test-setup.sh starts it).
    let pushed = ok(&[
        "--registry",
        "127.0.0.1:5000/e2e",
        "build",
        "--no-cargo",
        "--push",
        "analytics",
    ]);
    assert!(
        pushed.contains("pushed 127.0.0.1:5000/e2e/ai-assistants-1c/analytics:"),
        "{pushed}"
    );
    let catalog = reqwest::blocking::get("http://127.0.0.1:5000/v2/_catalog")
        .unwrap()
        .text()
        .unwrap();
    assert!(
        catalog.contains("e2e/ai-assistants-1c/analytics"),
        "{catalog}"
    );
    let tags =
        reqwest::blocking::get("http://127.0.0.1:5000/v2/e2e/ai-assistants-1c/analytics/tags/list")
            .unwrap()
            .text()
            .unwrap();
    let tag = pushed
        .split("pushed 127.0.0.1:5000/e2e/ai-assistants-1c/analytics:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    assert!(tags.contains(tag), "{tags} lacks {tag}");

    let t = Instant::now();
    let started = ok(&["start"]);
    eprintln!("start to all-ready: {:.1}s", t.elapsed().as_secs_f64());
    // The stack's migration jobs ran before their services, and are gone.
    for job in [
        "migrate-security",
        "migrate-user-management",
        "migrate-analytics",
        "migrate-1c-integration",
        "migrate-ai-assistant",
    ] {
        assert!(
            started.contains(&format!("job {job} (")) && started.contains("migrate) succeeded"),
            "{job} did not run: {started}"
        );
    }
    let left = docker_ok(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=io.stackctl.project={PROJECT}"),
        "--filter",
        "label=io.stackctl.role=job",
    ]);
    assert!(left.trim().is_empty(), "job containers left: {left}");
    // Nothing to change: nothing to migrate either.
    let again = ok(&["start"]);
    assert!(!again.contains("job "), "jobs ran again: {again}");
    let h = ok(&["health"]);
    assert!(
        h.contains("api-gateway") && h.contains("postgres-user"),
        "{h}"
    );
    let hj = sc(&["--json", "health"]);
    let v: serde_json::Value = serde_json::from_slice(&hj.stdout).unwrap();
    assert_eq!(v["healthy"], true, "{v}");
    let st = ok(&["status"]);
    assert!(st.contains("match stack.toml"), "{st}");
    // Every container has a process limit (a fork bomb stops there).
    let ids = docker_ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.stackctl.project={PROJECT}"),
    ]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert!(ids.len() > 10, "{ids:?}");
    let mut args = vec!["inspect", "-f", "{{.Name}} {{.HostConfig.PidsLimit}}"];
    args.extend(&ids);
    for line in docker_ok(&args).lines() {
        let limit: i64 = line.rsplit(' ').next().unwrap().parse().unwrap_or(0);
        assert!(limit >= 1024, "no process limit: {line}");
    }

    // A real request: register and log in through Nginx and the gateway.
    let email = "e2e-user@example.com";
    let (code, _) = api(
        "POST",
        "/auth/register",
        None,
        serde_json::json!({"email": email, "password": "correct horse battery staple 42"}),
    );
    assert!(code == 200 || code == 201, "register: {code}");
    let (code, login) = api(
        "POST",
        "/auth/login",
        None,
        serde_json::json!({"email": email, "password": "correct horse battery staple 42"}),
    );
    assert_eq!(code, 200, "login: {login}");
    let token = login["access_token"]
        .as_str()
        .expect("access token")
        .to_string();
    let (code, me) = api("GET", "/me", Some(&token), serde_json::Value::Null);
    assert_eq!(code, 200, "{me}");
    assert_eq!(me["email"].as_str(), Some(email), "{me}");
    revocation_reaches_the_gateway_at_once(email);
    a_login_burst_leaves_user_management_running(email);
    // What 1C users come for, through Nginx and the gateway, as the first admin.
    let admin_pw = std::fs::read_to_string(repo().join("secrets/admin-password")).unwrap();
    let (code, login) = api(
        "POST",
        "/auth/login",
        None,
        serde_json::json!({"email": "admin@localhost", "password": admin_pw.trim()}),
    );
    assert_eq!(code, 200, "admin login: {login}");
    let admin = login["access_token"].as_str().unwrap().to_string();
    let ask = |q: &str| -> serde_json::Value {
        let r = https_client()
            .post("https://127.0.0.1:443/api/v1/ai-assistant/chat")
            .bearer_auth(&admin)
            .json(&serde_json::json!({"message": q}))
            .send()
            .expect("chat");
        assert_eq!(r.status().as_u16(), 200);
        r.json().unwrap()
    };
    let kb = ask("как получить остатки товаров на складе запросом?");
    assert!(kb["answer"].as_str().unwrap().contains("Остатки"), "{kb}");
    assert!(
        !kb["sources"].as_array().unwrap().is_empty(),
        "answers cite their sources: {kb}"
    );
    // The simulator's metadata, through 1c-integration: its real fields.
    let md = ask("какие реквизиты у Справочник.Номенклатура?");
    let text = md["answer"].as_str().unwrap();
    assert!(
        text.contains("Catalog_Номенклатура") && text.contains("Артикул"),
        "{md}"
    );
    // Every question reaches analytics (asynchronously).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r: serde_json::Value = https_client()
            .get("https://127.0.0.1:443/api/v1/analytics/usage/services")
            .bearer_auth(&admin)
            .send()
            .unwrap()
            .json()
            .unwrap_or_default();
        let questions = r["services"]
            .as_array()
            .and_then(|v| v.iter().find(|s| s["service"] == "ai-assistant"))
            .map(|s| s["kinds"]["question"].as_u64().unwrap_or(0))
            .unwrap_or(0);
        if questions >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "analytics never counted the questions: {r}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Each service has its own Redis user (stackctl's ACL): the gateway's
    // rate-limit buckets were written through it, and 1c-integration's user
    // cannot read them.
    let redis_as = |user: &str, secret: &str, cmd: &str| -> String {
        let pw = std::fs::read_to_string(repo().join("secrets").join(secret)).unwrap();
        let line = format!(
            "REDISCLI_AUTH='{}' redis-cli --user {user} {cmd} 2>&1",
            pw.trim()
        );
        let o = sc(&["exec", "redis", "--", "/bin/sh", "-c", &line]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stdout(&o).trim().to_string()
    };
    let buckets = redis_as(
        "default",
        "redis-password",
        "--scan --pattern 'api-gateway:*'",
    );
    let bucket = buckets
        .lines()
        .next()
        .expect("the gateway wrote no Redis key");
    let theirs = redis_as(
        "1c-integration",
        "redis-1c-integration-password",
        &format!("GET '{bucket}'"),
    );
    assert!(theirs.contains("NOPERM"), "{theirs}");
    // The exporter has its own user too: its metrics reads, no keys.
    let exporter = redis_as(
        "redis-exporter",
        "redis-redis-exporter-password",
        &format!("GET '{bucket}'"),
    );
    assert!(exporter.contains("NOPERM"), "{exporter}");
    let own = redis_as(
        "1c-integration",
        "redis-1c-integration-password",
        "SETEX 1c-integration:e2e 60 x",
    );
    assert_eq!(own, "OK");

    monitoring_sees_everything_and_alerts_reach_alertmanager();
    only_prometheus_of_the_monitoring_side_reaches_the_services();
    the_docker_api_proxy_passes_only_reads();

    // Plain HTTP is redirected to HTTPS.
    let r = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get("http://127.0.0.1:80/api/v1/x")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 301);

    let logs = ok(&["logs", "--tail", "5", "user-management"]);
    assert!(logs.contains("stackctl-e2e-user-management-1 |"), "{logs}");
    let ex = sc(&[
        "exec",
        "postgres-user",
        "--",
        "psql",
        "-U",
        "user_management",
        "-d",
        "user_management_db",
        "-tAc",
        "select count(*) from users",
    ]);
    assert_eq!(ex.status.code(), Some(0), "{}", stderr(&ex));
    let sh = sc(&["shell", "api-gateway"]);
    assert_eq!(sh.status.code(), Some(2));
    assert!(stderr(&sh).contains("FROM scratch"), "{}", stderr(&sh));
    let ts = ok(&["test-service", "user-management"]);
    assert!(ts.contains("checks passed"), "{ts}");

    // Stop and start again: the data is still there.
    ok(&["stop"]);
    ok(&["start"]);
    let (code, login) = api(
        "POST",
        "/auth/login",
        None,
        serde_json::json!({"email": email, "password": "correct horse battery staple 42"}),
    );
    assert_eq!(code, 200, "after restart: {login}");

    // A container removed while `start` waits for it: a clear error naming it.
    ok(&["down"]);
    let handle = std::thread::spawn(|| sc(&["start", "--wait-timeout", "120"]));
    let name = format!("{PROJECT}-security-1");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut removed = false;
    while Instant::now() < deadline && !removed {
        let o = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "DELETE",
                "--unix-socket",
                "/var/run/docker.sock",
            ])
            .arg(format!("http://localhost/containers/{name}?force=true"))
            .output()
            .unwrap();
        removed = String::from_utf8_lossy(&o.stdout) == "204";
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(removed, "{name} never appeared");
    let o = handle.join().unwrap();
    assert!(
        matches!(o.status.code(), Some(32) | Some(34)),
        "{:?}: {}",
        o.status.code(),
        stderr(&o)
    );
    assert!(stderr(&o).contains(&name), "{}", stderr(&o));

    ok(&["down", "--volumes", "--yes"]);
    let o = sc(&["status"]);
    assert!(stdout(&o).contains("missing"), "{}", stdout(&o));
}

#[test]
fn an_unreachable_daemon_is_a_clear_error_with_its_own_code() {
    let o = bin()
        .current_dir(repo())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .arg("health")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(30), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot reach the Docker daemon at unix:///nonexistent/docker.sock"),
        "{}",
        stderr(&o)
    );
    let o = bin()
        .current_dir(repo())
        .env("DOCKER_HOST", "tcp://127.0.0.1:1")
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(30), "{}", stderr(&o));
}

/// GET a URL from inside one of the stack's containers (wget is in every
/// Debian-built image); the monitoring ports are not published beyond
/// loopback, and Alertmanager's not at all.
fn from_inside(container: &str, url: &str) -> serde_json::Value {
    let name = format!("{PROJECT}-{container}-1");
    let out = docker_ok(&["exec", &name, "wget", "-qO-", url]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{url}: {e}: {out}"))
}

/// `stackctl build` assembles each service image without the builder; the
/// rendered Dockerfile (what docker-compose builds) must make the same
/// image: the same metadata and the same files with the same owners and
/// modes. Built here with `docker build` (the classic builder) from the
/// files the Dockerfile copies, and compared.
fn the_assembled_image_is_what_the_dockerfile_builds(service: &str) {
    let dockerfile =
        std::fs::read_to_string(repo().join(format!("deploy/services/{service}/Dockerfile")))
            .unwrap();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), &dockerfile).unwrap();
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ")) {
        let src = line.split_whitespace().rev().nth(1).unwrap();
        let from = match src.strip_prefix("target/") {
            Some(rest) => target.join(rest),
            None => repo().join(src),
        };
        let to = ctx.path().join(src);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
    let tag = format!("{PROJECT}-dockerfile/{service}:compare");
    docker_ok(&["build", "-q", "-t", &tag, ctx.path().to_str().unwrap()]);
    let ours = docker_ok(&[
        "images",
        "--filter",
        &format!("label=io.stackctl.service={service}"),
        "--filter",
        "label=io.stackctl.inputs",
        "--format",
        "{{.ID}}",
    ]);
    let ours = ours.lines().next().expect("stackctl's image").to_string();
    let config = |image: &str| -> serde_json::Value {
        serde_json::from_str(&docker_ok(&["inspect", "-f", "{{json .Config}}", image])).unwrap()
    };
    let (a, b) = (config(&ours), config(&tag));
    for key in [
        "User",
        "Env",
        "Entrypoint",
        "ExposedPorts",
        "Healthcheck",
        "Cmd",
        "WorkingDir",
    ] {
        assert_eq!(
            a[key], b[key],
            "{key}: assembled {} / Dockerfile {}",
            a[key], b[key]
        );
    }
    for (k, v) in b["Labels"].as_object().unwrap() {
        assert_eq!(&a["Labels"][k], v, "label {k}");
    }
    // The files, their modes and owners.
    let listing = |image: &str| -> Vec<String> {
        let name = format!("{PROJECT}-compare-{}", image.replace([':', '/'], "-"));
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &name])
            .output();
        docker_ok(&["create", "--name", &name, image]);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker export {name} | tar -tvf - --numeric-owner | grep -E ' (etc/ssl|app)' | awk '{{print $1, $2, $NF}}' | sort"
            ))
            .output()
            .unwrap();
        docker_ok(&["rm", "-f", &name]);
        stdout(&out).lines().map(str::to_string).collect()
    };
    let (la, lb) = (listing(&ours), listing(&tag));
    assert!(la.iter().any(|l| l.contains("app/")), "{la:?}");
    assert_eq!(la, lb, "assembled / Dockerfile files differ");
    docker_ok(&["rmi", &tag]);
}

/// `images save` writes every image the stack needs into one archive and
/// `images load` brings them back (the way to a host without a registry):
/// an image removed in between is there again, with the same id.
fn images_move_as_one_archive() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let archive = dir.path().join("stack-images.tar");
    let t = Instant::now();
    let saved = ok(&["images", "save", archive.to_str().unwrap()]);
    let size = std::fs::metadata(&archive).unwrap().len();
    eprintln!(
        "FIGURE images save: {:.0} MB in {:.1}s",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    assert!(saved.contains("saved") || size > 0, "{saved}");
    assert!(!dir.path().join("stack-images.partial").exists());
    let image = "stackctl/docker-api-proxy:bookworm";
    let id = docker_ok(&["image", "inspect", "-f", "{{.Id}}", image]);
    // Another name holds the image meanwhile: removing the stack's name only
    // untags it (a container of another test may use it).
    let holder = format!("{PROJECT}-holder/docker-api-proxy:keep");
    docker_ok(&["tag", image, &holder]);
    docker_ok(&["rmi", image]);
    assert!(!docker_ok(&["images", "-q", image]).contains(&id[7..19]));
    let t = Instant::now();
    let loaded = ok(&["images", "load", archive.to_str().unwrap()]);
    eprintln!("FIGURE images load: {:.1}s", t.elapsed().as_secs_f64());
    assert!(
        loaded.contains(image) && !loaded.contains("missing: run"),
        "{loaded}"
    );
    assert_eq!(docker_ok(&["image", "inspect", "-f", "{{.Id}}", image]), id);
    docker_ok(&["rmi", &holder]);
}

/// A logout revokes the session everywhere at once: the very next request
/// with the same access token is refused by the gateway (on its way to
/// another service, so user-management's own check plays no part).
fn revocation_reaches_the_gateway_at_once(email: &str) {
    let (code, login) = api(
        "POST",
        "/auth/login",
        None,
        serde_json::json!({"email": email, "password": "correct horse battery staple 42"}),
    );
    assert_eq!(code, 200, "login: {login}");
    let token = login["access_token"].as_str().unwrap().to_string();
    let conversations = || {
        https_client()
            .get("https://127.0.0.1:443/api/v1/ai-assistant/conversations")
            .bearer_auth(&token)
            .send()
            .expect("conversations")
            .status()
            .as_u16()
    };
    assert_eq!(conversations(), 200);
    let (code, out) = api("POST", "/auth/logout", Some(&token), serde_json::json!({}));
    assert!(code == 200 || code == 204, "logout: {code} {out}");
    let t = Instant::now();
    let first = conversations();
    eprintln!(
        "FIGURE logout to the gateway refusing the session: {:.0} ms (first request after logout: {first})",
        t.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(first, 401, "the gateway still honours a revoked session");
}

/// 60 logins at once, straight to user-management from a helper on its
/// network (Nginx's rate limit would stop most of them first): each answers
/// 200 or 503 (the hashing pool is full), and the service is still running,
/// never restarted or killed for memory; its memory peak is printed.
fn a_login_burst_leaves_user_management_running(email: &str) {
    let name = format!("{PROJECT}-user-management-1");
    let id = docker_ok(&["inspect", "-f", "{{.Id}}", &name]);
    let body =
        format!("{{\"email\":\"{email}\",\"password\":\"correct horse battery staple 42\"}}");
    let script = format!(
        "for i in $(seq 60); do (wget -t 1 -S -q -T 30 -O /dev/null --header 'Content-Type: application/json' --post-data '{body}' http://user-management:8002/auth/login 2>&1 | grep -m1 'HTTP/' ) & done; wait"
    );
    let t = Instant::now();
    let o = helper_on("backend", "sh", &["-c", &script]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let ok = out.matches(" 200 ").count();
    let busy = out.matches(" 503 ").count();
    let peak = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/docker/{}/memory.max_usage_in_bytes",
        id.trim()
    ))
    .ok()
    .and_then(|v| v.trim().parse::<u64>().ok())
    .map_or("unknown (not cgroup v1)".to_string(), |b| {
        format!("{} MiB", b / 1024 / 1024)
    });
    eprintln!(
        "FIGURE 60 concurrent logins in {:.1}s: {ok} ok, {busy} busy (503); user-management memory peak {peak} of its 256 MiB limit",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(ok + busy, 60, "every login answered 200 or 503: {out}");
    assert!(ok > 0, "{out}");
    let state = docker_ok(&[
        "inspect",
        "-f",
        "{{.State.Running}} {{.State.OOMKilled}} {{.RestartCount}}",
        &name,
    ]);
    assert_eq!(
        state.trim(),
        "true false 0",
        "user-management after the burst"
    );
}

/// The services are not on the monitoring network: Alertmanager (there, like
/// Grafana, the exporters and logging) cannot even resolve them, while
/// Prometheus scrapes them all (checked above). A container that does share
/// their network (the PostgreSQL exporter) is refused when it forges an
/// identity header.
fn only_prometheus_of_the_monitoring_side_reaches_the_services() {
    // wget inside one of the stack's containers (the Debian base has it).
    let wget = |container: &str, args: &[&str]| {
        let mut all = vec!["exec", container, "--", "wget"];
        all.extend_from_slice(args);
        sc(&all)
    };
    let url = "http://ai-assistant:8000/health/live";
    let from_alertmanager = wget("alertmanager", &["-q", "-T", "3", "-O-", url]);
    assert_ne!(
        from_alertmanager.status.code(),
        Some(0),
        "alertmanager reached the ai-assistant: {}",
        stdout(&from_alertmanager)
    );
    let from_prometheus = wget("prometheus", &["-q", "-T", "3", "-O-", url]);
    assert_eq!(
        from_prometheus.status.code(),
        Some(0),
        "{}",
        stderr(&from_prometheus)
    );
    let forged = wget(
        "postgres-exporter",
        &[
            "-S",
            "-T",
            "5",
            "-O-",
            "--header",
            "X-User-Id: 00000000-0000-0000-0000-000000000001",
            "http://ai-assistant:8000/conversations",
        ],
    );
    let text = format!("{}{}", stdout(&forged), stderr(&forged));
    assert!(
        text.contains(" 401 "),
        "a forged X-User-Id was not refused: {text}"
    );
}

/// A one-off helper container on one of this project's networks (the Debian
/// base of the proxy image has sh and wget): its output and error text.
fn helper_on(network: &str, entrypoint: &str, args: &[&str]) -> std::process::Output {
    let net = format!("{PROJECT}-{network}");
    let mut all = vec![
        "run",
        "--rm",
        "--network",
        &net,
        "--entrypoint",
        entrypoint,
        "stackctl/docker-api-proxy:bookworm",
    ];
    all.extend_from_slice(args);
    std::process::Command::new("docker")
        .args(&all)
        .output()
        .expect("docker run")
}

/// Filebeat's view of the engine: through the proxy on its own network, the
/// container list and an inspection answer; creating a container, exec,
/// archives, secrets, images and the engine's info are refused (403), and no
/// container but the proxy mounts the socket. (Filebeat itself is a
/// registry image, skipped here; a helper on the proxy's network stands in.)
fn the_docker_api_proxy_passes_only_reads() {
    let call = |args: &[&str]| -> String {
        let mut all = vec!["-S", "-T", "5", "-O-"];
        all.extend_from_slice(args);
        let o = helper_on("docker-api", "wget", &all);
        format!("{}{}", stdout(&o), stderr(&o))
    };
    let api = "http://docker-api:2375";
    let list = call(&[&format!("{api}/v1.41/containers/json")]);
    assert!(list.contains(" 200 ") && list.contains(PROJECT), "{list}");
    let gw = docker_ok(&[
        "inspect",
        "-f",
        "{{.Id}}",
        &format!("{PROJECT}-api-gateway-1"),
    ]);
    let one = call(&[&format!("{api}/containers/{}/json", gw.trim())]);
    assert!(one.contains(" 200 "), "{one}");
    for refused in [
        vec![
            "--post-data={}".to_string(),
            format!("{api}/containers/create"),
        ],
        vec![
            "--post-data={\"Cmd\":[\"id\"]}".to_string(),
            format!("{api}/containers/{}/exec", gw.trim()),
        ],
        vec![format!(
            "{api}/containers/{}/archive?path=/run/secrets",
            gw.trim()
        )],
        vec![format!("{api}/secrets")],
        vec![format!("{api}/images/json")],
        vec![format!("{api}/info")],
        vec![format!("{api}/containers/%2e%2e/info")],
    ] {
        let args: Vec<&str> = refused.iter().map(String::as_str).collect();
        let reply = call(&args);
        assert!(
            reply.contains(" 403 "),
            "{refused:?} was not refused: {reply}"
        );
    }
    let sockets = docker_ok(&[
        "ps",
        "--filter",
        &format!("label=io.stackctl.project={PROJECT}"),
        "--filter",
        "volume=/var/run/docker.sock",
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(sockets.trim(), format!("{PROJECT}-docker-api-1"));
}

/// The air-gapped monitoring stack: Prometheus scrapes every service and
/// every exporter (all `up == 1`), and a stopped service's ServiceDown alert
/// reaches Alertmanager.
fn monitoring_sees_everything_and_alerts_reach_alertmanager() {
    let want_jobs = [
        "prometheus",
        "api-gateway",
        "user-management",
        "security",
        "analytics",
        "ai-assistant",
        "1c-integration",
        "onec-simulator",
        "node-exporter",
        "postgres-exporter",
        "redis-exporter",
        "nginx-exporter",
        "alertmanager",
    ];
    let t = Instant::now();
    let deadline = t + Duration::from_secs(120);
    let up = loop {
        let v = from_inside("prometheus", "http://127.0.0.1:9090/api/v1/query?query=up");
        let series = v["data"]["result"].as_array().cloned().unwrap_or_default();
        let all_up = series.iter().all(|s| s["value"][1] == "1");
        let jobs: Vec<String> = series
            .iter()
            .filter_map(|s| s["metric"]["job"].as_str().map(str::to_string))
            .collect();
        if all_up && want_jobs.iter().all(|j| jobs.iter().any(|x| x == j)) {
            break series;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw every target up: {v}"
        );
        std::thread::sleep(Duration::from_secs(3));
    };
    eprintln!(
        "FIGURE Prometheus targets up: {} of {} ({} jobs), {:.0}s after start",
        up.iter().filter(|s| s["value"][1] == "1").count(),
        up.len(),
        want_jobs.len(),
        t.elapsed().as_secs_f64()
    );
    // Each exporter reads what it exports: the databases, Redis and Nginx answer.
    let probe = |q: &str| {
        let v = from_inside(
            "prometheus",
            &format!("http://127.0.0.1:9090/api/v1/query?query={q}"),
        );
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pg = probe("pg_up");
        // One exporter, five servers: each database's statistics, by `server`.
        let servers = probe("count(count%20by%20(server)%20(pg_stat_database_xact_commit))");
        let redis = probe("redis_up");
        // Its own Redis user reads the configuration and scrapes without an error.
        let redis_config = probe("redis_config_maxmemory");
        let redis_errors = probe("redis_exporter_last_scrape_error");
        let nginx = probe("nginx_up");
        let ok = servers.first().is_some_and(|s| s["value"][1] == "5")
            && pg.iter().all(|s| s["value"][1] == "1")
            && redis.iter().any(|s| s["value"][1] == "1")
            && redis_config.iter().any(|s| s["value"][1] == "209715200")
            && redis_errors.iter().all(|s| s["value"][1] == "0")
            && nginx.iter().any(|s| s["value"][1] == "1");
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "exporters: pg_up {pg:?} servers {servers:?} redis_up {redis:?} redis_config_maxmemory {redis_config:?} redis_exporter_last_scrape_error {redis_errors:?} nginx_up {nginx:?}"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    // Prometheus knows its Alertmanager.
    let am = from_inside("prometheus", "http://127.0.0.1:9090/api/v1/alertmanagers");
    assert!(
        am["data"]["activeAlertmanagers"]
            .to_string()
            .contains(":9093"),
        "{am}"
    );

    // A stopped service: its alert reaches Alertmanager.
    ok(&["stop", "analytics"]);
    let t = Instant::now();
    let deadline = t + Duration::from_secs(240);
    loop {
        let alerts = from_inside("alertmanager", "http://127.0.0.1:9093/api/v2/alerts");
        let found = alerts.as_array().into_iter().flatten().any(|a| {
            a["labels"]["alertname"] == "ServiceDown" && a["labels"]["job"] == "analytics"
        });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ServiceDown alert for analytics in Alertmanager: {alerts}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    eprintln!(
        "FIGURE stopped service to its ServiceDown alert in Alertmanager: {:.0}s",
        t.elapsed().as_secs_f64()
    );
    ok(&["start"]);
}
