//! The Swarm target against this machine's engine in single-node swarm mode:
//! deploy the repo's stack.toml (staging) as Swarm services, a real request
//! through the published Nginx port, scale a service, a second good deploy,
//! a failing image that Swarm rolls back by itself, a rollback by hand,
//! history, logs; then everything of the project removed and, when this test
//! made the swarm, the swarm left (also when the test fails: a drop guard).
//!
//! The docker CLI is used only around stackctl: swarm init/leave, building
//! the test's own images (FROM the service images, under tags of its own).
//! Traffic goes only to loopback.

mod common;
use common::*;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PROJECT: &str = "stackctl-swarm-e2e";
/// Ports of their own: 80/443 and 8080/8443 belong to other tests.
const PORTS: &[(&str, &str)] = &[
    ("PORT_NGINX_80", "18080"),
    ("PORT_NGINX_443", "18443"),
    ("PORT_PROMETHEUS_9090", "19190"),
    ("PORT_GRAFANA_3000", "13101"),
];
const SERVICES: &[&str] = &[
    "security",
    "user-management",
    "analytics",
    "1c-integration",
    "onec-simulator",
    "ai-assistant",
    "api-gateway",
];
const REPO: &str = "ai-assistants-1c";
/// The service whose third revision cannot start.
const FAILING: &str = "analytics";

fn sc_env(args: &[&str], tag: Option<&str>, swarm: bool) -> Output {
    let mut c = bin();
    c.current_dir(repo())
        .env_remove("IMAGE_TAG")
        .env("STACKCTL_PROJECT", PROJECT)
        .env("STACKCTL_SWARM_TIMEOUT", "420")
        .args(["-e", "staging"])
        .args(args);
    if swarm {
        c.env("STACKCTL_TARGET", "swarm");
    } else {
        c.env_remove("STACKCTL_TARGET");
    }
    if let Some(t) = tag {
        c.env("IMAGE_TAG", t);
    }
    for (k, v) in PORTS {
        c.env(k, v);
    }
    run_logged(
        &mut c,
        &format!(
            "{}{} {}",
            if swarm { "--target swarm " } else { "" },
            tag.map(|t| format!("(IMAGE_TAG={t})")).unwrap_or_default(),
            args.join(" ")
        ),
    )
}

fn swarm(args: &[&str], tag: &str) -> Output {
    sc_env(args, Some(tag), true)
}

fn ok(o: Output, what: &str) -> String {
    succeeded(&o, what)
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

/// Build `tag` FROM `from` with extra Dockerfile lines (no context).
fn build_image(from: &str, tag: &str, extra: &str) {
    docker_build_text(tag, &format!("FROM {from}\n{extra}\n"));
}

fn swarm_state() -> String {
    stdout(&docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]))
        .trim()
        .to_string()
}

/// Removes everything the test made, whatever happened.
struct Guard {
    left_swarm: bool,
    /// `swarm init` made docker_gwbridge; `swarm leave` keeps it.
    remove_gwbridge: bool,
    tags: Vec<String>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = sc_env(&["down", "--volumes", "--yes"], Some("swarm-e2e-1"), true);
        let _ = sc_env(&["down", "--volumes", "--yes"], None, false);
        for t in &self.tags {
            let _ = docker(&["rmi", t]);
        }
        if self.left_swarm {
            let o = docker(&["swarm", "leave", "--force"]);
            eprintln!("docker swarm leave --force: {}{}", stdout(&o), stderr(&o));
        }
        if self.remove_gwbridge {
            let _ = docker(&["network", "rm", "docker_gwbridge"]);
        }
    }
}

fn service_tasks(v: &serde_json::Value, service: &str) -> String {
    v["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["service"] == service))
        .map(|s| s["tasks"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// The image a Swarm service runs (its pinned reference).
fn service_image(service: &str) -> String {
    docker_ok(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        &format!("{PROJECT}_{service}"),
    ])
    .trim()
    .to_string()
}

#[test]
fn swarm_target_deploy_scale_auto_rollback_manual_rollback() {
    let mut guard = Guard {
        left_swarm: false,
        remove_gwbridge: false,
        tags: vec![],
    };
    let state = swarm_state();
    if state != "active" {
        // Refused clearly while the engine is not a swarm manager.
        let o = swarm(&["status"], "swarm-e2e-1");
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).contains("docker swarm init --advertise-addr 127.0.0.1"),
            "{}",
            stderr(&o)
        );
        guard.remove_gwbridge = !docker(&["network", "inspect", "docker_gwbridge"])
            .status
            .success();
        docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        guard.left_swarm = true;
    }
    let _ = sc_env(&["down", "--volumes", "--yes"], Some("swarm-e2e-1"), true);

    // Secrets and the Debian-based infrastructure images (cached when present).
    ok(sc_env(&["setup"], None, false), "setup");

    // The service images stackctl builds for this checkout (cached when
    // built): never another test's tags, which may hold a broken image.
    let o = sc_env(&["--json", "build"], None, false);
    succeeded(&o, "build");
    let built: serde_json::Value =
        serde_json::from_str(&stdout(&o)).expect("build --json prints JSON on stdout");
    let base = built["images"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["service"] == "api-gateway"))
        .and_then(|i| i["image"].as_str())
        .and_then(|r| r.rsplit_once(':'))
        .map(|(_, tag)| tag.to_string())
        .unwrap_or_else(|| panic!("api-gateway in the build report: {built}"));
    eprintln!("service images: {REPO}/*:{base}");
    // Three revisions of the test's own: 1 and 2 differ by a label (new image
    // ids, so every service rolls), 3 is 2 except FAILING, which exits at start.
    for s in SERVICES {
        let from = format!("{REPO}/{s}:{base}");
        for rev in ["1", "2"] {
            let tag = format!("{REPO}/{s}:swarm-e2e-{rev}");
            build_image(
                &from,
                &tag,
                &format!("LABEL io.stackctl.test=swarm-e2e-{rev}"),
            );
            guard.tags.push(tag);
        }
        let tag3 = format!("{REPO}/{s}:swarm-e2e-3");
        if *s == FAILING {
            build_image(
                &format!("{REPO}/{s}:swarm-e2e-2"),
                &tag3,
                // Its own health probe as the entrypoint: nothing listens, it exits 1.
                &format!("ENTRYPOINT [\"/app/{s}\", \"healthcheck\"]"),
            );
        } else {
            docker_ok(&["tag", &format!("{REPO}/{s}:swarm-e2e-2"), &tag3]);
        }
        guard.tags.push(tag3);
    }

    // 1. Deploy revision 1.
    let t = Instant::now();
    let out = ok(swarm(&["deploy"], "swarm-e2e-1"), "deploy revision 1");
    let deploy_secs = t.elapsed().as_secs_f64();
    assert!(out.contains("revision 1 deployed"), "{out}");
    assert_eq!(
        service_image("api-gateway"),
        image_id(&format!("{REPO}/api-gateway:swarm-e2e-1")),
        "services run the image pinned by id, not a tag"
    );
    let again = ok(swarm(&["deploy"], "swarm-e2e-1"), "deploy again");
    assert!(again.contains("nothing to deploy"), "{again}");
    let st = ok(swarm(&["status"], "swarm-e2e-1"), "status");
    assert!(st.contains("match stack.toml"), "{st}");
    let h = swarm(&["--json", "health"], "swarm-e2e-1");
    assert_eq!(h.status.code(), Some(0), "health");
    let hv: serde_json::Value = serde_json::from_slice(&h.stdout).unwrap();
    assert_eq!(service_tasks(&hv, "postgres-user"), "1/1", "{hv}");

    // A real request: through the published Nginx port (on this node) to the
    // gateway and user-management, which reads PostgreSQL and Redis with
    // passwords from Swarm secrets.
    let c = https_client();
    let email = "swarm-e2e@example.com";
    let pw = "correct horse battery staple 42";
    let base_url = "https://127.0.0.1:18443/api/v1/user-management";
    // The gateway answers as soon as Nginx reaches it; retried only while the
    // path is not there yet (connection refused, 502, 503).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c
            .post(format!("{base_url}/auth/register"))
            .json(&serde_json::json!({"email": email, "password": pw}))
            .send();
        match r {
            Ok(r) if matches!(r.status().as_u16(), 200 | 201) => break,
            Ok(r) if !matches!(r.status().as_u16(), 502..=504) => {
                panic!("register through nginx: {} {:?}", r.status(), r.text())
            }
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no answer through nginx and the gateway: {other:?}"
                );
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    let r = c
        .post(format!("{base_url}/auth/login"))
        .json(&serde_json::json!({"email": email, "password": pw}))
        .send()
        .expect("login");
    assert_eq!(r.status().as_u16(), 200);
    let login: serde_json::Value = r.json().unwrap();
    assert!(login["access_token"].as_str().is_some(), "{login}");

    // 2. Scale a service to 2 tasks.
    let t = Instant::now();
    let out = ok(swarm(&["scale", "api-gateway=2"], "swarm-e2e-1"), "scale");
    let scale_secs = t.elapsed().as_secs_f64();
    assert!(out.contains("api-gateway scaled to 2"), "{out}");
    let h = stdout(&swarm(&["--json", "health"], "swarm-e2e-1"));
    let hv: serde_json::Value = serde_json::from_str(&h).unwrap();
    assert_eq!(service_tasks(&hv, "api-gateway"), "2/2", "{h}");
    let running = docker_ok(&[
        "service",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        "{{.CurrentState}}",
        &format!("{PROJECT}_api-gateway"),
    ]);
    assert_eq!(
        running.lines().filter(|l| l.starts_with("Running")).count(),
        2,
        "{running}"
    );
    let bad = swarm(&["scale", "postgres-user=2"], "swarm-e2e-1");
    assert_eq!(bad.status.code(), Some(2), "stateful services do not scale");

    // 3. A second good deploy: every service rolls to revision 2, start-first.
    let t = Instant::now();
    let out = ok(swarm(&["deploy"], "swarm-e2e-2"), "deploy revision 2");
    let deploy2_secs = t.elapsed().as_secs_f64();
    assert!(out.contains("revision 2 deployed"), "{out}");
    assert_eq!(
        service_image("security"),
        image_id(&format!("{REPO}/security:swarm-e2e-2"))
    );

    // 4. A failing image: Swarm rolls it back; deploy says so and fails.
    let t = Instant::now();
    let o = swarm(&["deploy"], "swarm-e2e-3");
    let auto_rollback_secs = t.elapsed().as_secs_f64();
    let err = stderr(&o);
    assert_ne!(o.status.code(), Some(0), "a failing rollout must fail");
    assert!(err.contains(FAILING), "names the service: {err}");
    assert!(err.contains("rolled"), "says Swarm rolled it back: {err}");
    assert_eq!(
        service_image(FAILING),
        image_id(&format!("{REPO}/{FAILING}:swarm-e2e-2")),
        "Swarm put revision 2's image back"
    );
    let h = swarm(&["health"], "swarm-e2e-2");
    assert_eq!(h.status.code(), Some(0), "healthy again after the rollback");

    // 5. Roll back by hand: revision 2 runs again, so back to revision 1.
    let t = Instant::now();
    let out = ok(swarm(&["rollback"], "swarm-e2e-2"), "rollback");
    let manual_rollback_secs = t.elapsed().as_secs_f64();
    assert!(out.contains("rolling back to revision 1"), "{out}");
    for s in ["security", FAILING, "api-gateway"] {
        assert_eq!(
            service_image(s),
            image_id(&format!("{REPO}/{s}:swarm-e2e-1")),
            "{s} runs revision 1's image"
        );
    }
    let st = swarm(&["status"], "swarm-e2e-1");
    assert_eq!(st.status.code(), Some(0), "revision 1 is what runs");
    // A rollback to a named revision: 2 again.
    let out = ok(
        swarm(&["rollback", "--to", "2"], "swarm-e2e-2"),
        "rollback --to 2",
    );
    assert!(out.contains("rolling back to revision 2"), "{out}");
    assert_eq!(
        service_image("security"),
        image_id(&format!("{REPO}/security:swarm-e2e-2"))
    );

    // 6. History lists every revision and how it ended.
    let hist = ok(swarm(&["history"], "swarm-e2e-2"), "history");
    for want in [
        "rolled back by Swarm",
        "rollback to 1",
        "rollback to 2",
        "deployed",
    ] {
        assert!(hist.contains(want), "history lacks `{want}`:\n{hist}");
    }
    let hj = stdout(&swarm(&["--json", "history"], "swarm-e2e-2"));
    let hv: serde_json::Value = serde_json::from_str(&hj).unwrap();
    let revs: Vec<u64> = hv
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revs, vec![1, 2, 3, 4, 5], "{hj}");

    // 7. Service logs.
    let logs = ok(
        swarm(&["logs", "--tail", "20", "user-management"], "swarm-e2e-2"),
        "logs",
    );
    assert!(logs.contains("user-management |"), "{logs}");

    // Other commands say they do not work against the swarm.
    let o = swarm(&["start"], "swarm-e2e-2");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does not work with --target swarm"));

    // 8. Down: nothing of the project is left on the swarm (nor of what
    // `setup` made for the local target under the same project).
    ok(
        sc_env(&["down", "--volumes", "--yes"], Some("swarm-e2e-2"), true),
        "down",
    );
    ok(
        sc_env(&["down", "--volumes", "--yes"], None, false),
        "local down",
    );
    let label = format!("label=io.stackctl.project={PROJECT}");
    for what in [
        &["service", "ls", "-q", "--filter", &label][..],
        &["secret", "ls", "-q", "--filter", &label][..],
        &["config", "ls", "-q", "--filter", &label][..],
        &["network", "ls", "-q", "--filter", &label][..],
        &["volume", "ls", "-q", "--filter", &label][..],
    ] {
        let left = docker_ok(what);
        assert!(left.trim().is_empty(), "docker {}: {left}", what.join(" "));
    }

    eprintln!(
        "SWARM TIMINGS: deploy {deploy_secs:.1}s, scale {scale_secs:.1}s, second deploy {deploy2_secs:.1}s, Swarm auto-rollback {auto_rollback_secs:.1}s, manual rollback {manual_rollback_secs:.1}s"
    );
}
