//! Rendering the repo's stack.toml and every example: snapshots of every
//! file, determinism, and each file checked by the real tool that reads it.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The stacks whose artifacts are snapshotted: (name, path under the repo).
fn stacks() -> Vec<(&'static str, &'static str)> {
    vec![
        ("repo", "."),
        ("minimal", "examples/minimal"),
        ("registry-images", "examples/registry-images"),
        ("components", "examples/components"),
    ]
}

/// A temp copy of the stack at the same relative place, rendered to deploy/.
fn rendered(rel: &str, extra: &[&str]) -> (Project, PathBuf) {
    let text = std::fs::read_to_string(repo().join(rel).join("stack.toml")).unwrap();
    let p = Project::at(rel, &text);
    let mut args = extra.to_vec();
    args.push("render");
    let o = p.run(&args);
    assert_eq!(o.status.code(), Some(0), "render {rel}: {}", stderr(&o));
    let out = p.path().join("deploy");
    (p, out)
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                m.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    m
}

#[test]
fn snapshots_of_every_rendered_file() {
    let mut written = std::collections::BTreeSet::new();
    for (name, rel) in stacks() {
        let (_p, out) = rendered(rel, &[]);
        let all = files(&out);
        assert!(all.contains_key("docker-compose.yml"), "{name}");
        for (path, bytes) in all {
            // The CA bundle is the host's own, copied as is.
            if path.starts_with("certs/") {
                continue;
            }
            let snap = format!("{name}__{}", path.replace(['/', '.'], "_"));
            written.insert(snap.clone());
            insta::assert_snapshot!(snap, String::from_utf8(bytes).expect("utf-8"));
        }
    }
    reject_orphan_snapshots("render", &written);
}

#[test]
fn the_repo_stack_renders_every_part_of_the_original() {
    let (_p, out) = rendered(".", &[]);
    let compose = std::fs::read_to_string(out.join("docker-compose.yml")).unwrap();
    let v: serde_norway::Value = serde_norway::from_str(&compose).unwrap();
    let services = v["services"].as_mapping().unwrap();
    for s in [
        "api-gateway",
        "ai-assistant",
        "1c-integration",
        "user-management",
        "analytics",
        "security",
        "postgres-ai",
        "postgres-1c",
        "postgres-user",
        "postgres-analytics",
        "postgres-security",
        "redis",
        "nginx",
        "prometheus",
        "grafana",
        "node-exporter",
        "elasticsearch",
        "kibana",
        "filebeat",
    ] {
        assert!(
            services.contains_key(s),
            "{s} missing from docker-compose.yml"
        );
    }
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        assert_eq!(svc["cap_drop"][0].as_str(), Some("ALL"), "{name}");
        assert_eq!(
            svc["security_opt"][0].as_str(),
            Some("no-new-privileges:true"),
            "{name}"
        );
        // A fork bomb stops at the container's limit (PostgreSQL's, with
        // max_connections = 100, has room for a process per connection).
        assert_eq!(svc["pids_limit"].as_u64(), Some(1024), "{name}");
        // One-shot jobs run to completion instead of being health-checked.
        let job = name.starts_with("job-");
        assert_eq!(svc["restart"].as_str() == Some("no"), job, "{name}");
        assert!(
            job || svc["healthcheck"]["test"].is_sequence(),
            "{name} has no health check"
        );
        assert!(
            svc["deploy"]["resources"]["limits"]["memory"].is_string(),
            "{name}"
        );
        assert!(
            svc["deploy"]["resources"]["reservations"]["memory"].is_string(),
            "{name}"
        );
        if let Some(deps) = svc["depends_on"].as_mapping() {
            for (dep, d) in deps {
                let want = if dep.as_str().unwrap().starts_with("job-") {
                    "service_completed_successfully"
                } else {
                    "service_healthy"
                };
                assert_eq!(d["condition"].as_str(), Some(want), "{name}");
            }
        }
        // Secrets are files, never values in the environment.
        if let Some(env) = svc["environment"].as_mapping() {
            for (k, val) in env {
                let k = k.as_str().unwrap();
                assert!(
                    !k.contains("PASSWORD") || k.ends_with("_FILE"),
                    "{name}: {k} inline"
                );
                let _ = val;
            }
        }
    }
    let gw = &services["api-gateway"];
    assert_eq!(gw["user"].as_str(), Some("1001:1001"));
    assert_eq!(gw["read_only"].as_bool(), Some(true));
    assert_eq!(gw["tmpfs"][0].as_str(), Some("/tmp"));
    assert_eq!(
        gw["deploy"]["resources"]["reservations"]["memory"].as_str(),
        Some("128M"),
        "50 % of 256M"
    );
    assert_eq!(
        gw["environment"]["SERVICE_URL_USER_MANAGEMENT"].as_str(),
        Some("http://user-management:8002")
    );
    assert_eq!(
        services["ai-assistant"]["deploy"]["resources"]["reservations"]["cpus"].as_str(),
        Some("0.5")
    );
    assert_eq!(v["networks"]["backend"]["internal"].as_bool(), Some(true));
    for s in v["secrets"].as_mapping().unwrap().values() {
        assert!(s["file"].as_str().unwrap().contains("/secrets}/"), "{s:?}");
    }
    let env = std::fs::read_to_string(out.join(".env")).unwrap();
    assert!(
        env.contains("COMPOSE_PROJECT_NAME=ai-assistants-1c\n"),
        "{env}"
    );
    let staging = std::fs::read_to_string(out.join(".env.staging")).unwrap();
    assert!(
        staging.contains("PORT_NGINX_80=8080\n")
            && staging.contains("COMPOSE_PROFILES=onec-simulator,monitoring\n"),
        "{staging}"
    );
    let prod = std::fs::read_to_string(out.join(".env.production")).unwrap();
    assert!(
        !prod.contains("onec-simulator"),
        "production drops the simulator: {prod}"
    );
    let sql = std::fs::read_to_string(out.join("postgres/postgres-user/init.sql")).unwrap();
    assert!(sql.contains("user_management_db"));
}

#[test]
fn rendering_is_deterministic() {
    let (p, out) = rendered(".", &[]);
    let first = files(&out);
    let o = p.run(&["render"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("(0 changed)"), "{}", stderr(&o));
    std::fs::remove_dir_all(&out).unwrap();
    let o = p.run(&["render"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(first, files(&out), "a fresh render differs from the first");
    let j1 = p.run(&["--json", "render"]);
    let j2 = p.run(&["--json", "render"]);
    let h = |o: &std::process::Output| {
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["config_hash"].clone()
    };
    assert_eq!(h(&j1), h(&j2));
}

#[test]
fn an_environment_render_is_a_whole_stack() {
    let (_p, out) = rendered(".", &["--env", "production"]);
    let compose = std::fs::read_to_string(out.join("docker-compose.yml")).unwrap();
    let v: serde_norway::Value = serde_norway::from_str(&compose).unwrap();
    assert_eq!(
        v["services"]["api-gateway"]["deploy"]["replicas"].as_u64(),
        Some(2)
    );
    assert!(v["services"].get("onec-simulator").is_none());
    assert!(!out.join("docker-compose.staging.yml").exists());
    let nginx = std::fs::read_to_string(out.join("nginx/nginx.conf")).unwrap();
    assert!(nginx.contains("rate=50r/s") && nginx.contains("server_name ai1c.example.com;"));
}

#[test]
fn a_project_template_overrides_the_built_in_one() {
    let text = std::fs::read_to_string(repo().join("examples/minimal/stack.toml")).unwrap();
    let p = Project::new(&text.replace("../../services/analytics", "services/analytics"));
    std::fs::create_dir_all(p.path().join("templates")).unwrap();
    std::fs::write(
        p.path().join("templates/postgres-init.sql.tera"),
        "-- ours: {{ pg.database }}\n",
    )
    .unwrap();
    let o = p.run(&["render"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let sql = std::fs::read_to_string(p.path().join("deploy/postgres/postgres-analytics/init.sql"))
        .unwrap();
    assert_eq!(sql, "-- ours: analytics_db\n");
    // A broken template is a clear error, not a panic.
    std::fs::write(p.path().join("templates/redis.conf.tera"), "{% if %}").unwrap();
    let o = p.run(&["render"]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("templates/"), "{}", stderr(&o));
}

fn compose_sets(out: &Path) -> Vec<Vec<String>> {
    let mut sets = vec![vec!["-f".to_string(), "docker-compose.yml".to_string()]];
    for e in ["staging", "production"] {
        if out.join(format!("docker-compose.{e}.yml")).exists() {
            sets.push(
                [
                    "--env-file",
                    &format!(".env.{e}"),
                    "-f",
                    "docker-compose.yml",
                    "-f",
                    &format!("docker-compose.{e}.yml"),
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            );
        }
    }
    sets
}

#[test]
fn docker_compose_accepts_every_compose_file() {
    let dc = tool("docker-compose");
    for (name, rel) in stacks() {
        let (_p, out) = rendered(rel, &[]);
        for set in compose_sets(&out) {
            let mut cmd = Command::new(&dc);
            cmd.current_dir(&out).args(&set).args(["config", "-q"]);
            check(
                &mut cmd,
                &format!("{name}: docker-compose {} config", set.join(" ")),
            );
        }
        // The merged staging file really moves the ports and drops logging.
        if name == "repo" {
            let mut cmd = Command::new(&dc);
            cmd.current_dir(&out)
                .args(&compose_sets(&out)[1])
                .arg("config");
            let merged = check(&mut cmd, "staging config");
            assert!(
                merged.contains("published: 8080") && !merged.contains("published: 80\n"),
                "{merged}"
            );
        }
    }
}

#[test]
fn compose_files_match_the_compose_spec_schema() {
    let cj = tool("check-jsonschema");
    for (name, rel) in stacks() {
        let (_p, out) = rendered(rel, &[]);
        let mut cmd = Command::new(&cj);
        cmd.current_dir(&out)
            .args(["--builtin-schema", "vendor.compose-spec"]);
        for f in files(&out)
            .keys()
            .filter(|f| f.starts_with("docker-compose"))
        {
            cmd.arg(f);
        }
        check(&mut cmd, &format!("{name}: check-jsonschema compose-spec"));
    }
}

#[test]
fn hadolint_finds_no_errors_in_the_dockerfiles() {
    let h = tool("hadolint");
    let (_p, out) = rendered(".", &[]);
    let dockerfiles: Vec<String> = files(&out)
        .into_keys()
        .filter(|f| f.ends_with("/Dockerfile") || f.ends_with("/Dockerfile.multistage"))
        .collect();
    assert_eq!(dockerfiles.len(), 14, "{dockerfiles:?}");
    let mut cmd = Command::new(&h);
    cmd.current_dir(&out)
        .args(["--failure-threshold", "error"])
        .args(&dockerfiles);
    check(&mut cmd, "hadolint");
}

/// Filebeat reads the log files read-only and asks the Docker API proxy
/// (HAProxy, whose config `haproxy -c` accepts) for metadata: only the proxy
/// mounts the socket, and it shares its internal network with Filebeat alone.
#[test]
fn only_the_docker_api_proxy_holds_the_socket() {
    let (p, out) = rendered(".", &[]);
    let cfg = out.join("components/docker-api/haproxy.cfg");
    let said = check(
        Command::new(tool("haproxy")).arg("-c").arg("-f").arg(&cfg),
        "haproxy -c",
    );
    assert!(said.contains("valid"), "{said}");
    let o = p.run(&["config", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let comps = v["components"].as_array().unwrap();
    let socket_holders: Vec<&str> = comps
        .iter()
        .filter(|c| c["mounts"].to_string().contains("docker.sock"))
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(socket_holders, ["docker-api"]);
    let on_api_net: Vec<&str> = comps
        .iter()
        .filter(|c| c["networks"].to_string().contains("\"docker-api\""))
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(on_api_net, ["docker-api", "filebeat"]);
    let net = v["networks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "docker-api")
        .unwrap();
    assert_eq!(net["internal"], true);
    let fb = std::fs::read_to_string(out.join("filebeat/filebeat.yml")).unwrap();
    assert!(!fb.contains("docker.sock"), "{fb}");
    assert_eq!(
        fb.matches("host: \"tcp://docker-api:2375\"").count(),
        2,
        "{fb}"
    );
}

/// Elasticsearch and Kibana always ask for a login: security on, the
/// administrator's password from its file, Kibana and Filebeat each with
/// their own user whose password is read from a file at start (never in
/// the environment Docker records), Filebeat's role writes logs only.
#[test]
fn elasticsearch_and_kibana_need_a_login() {
    let (p, out) = rendered(".", &[]);
    let o = p.run(&["config", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let comp = |name: &str| {
        v["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    let es = comp("elasticsearch");
    assert_eq!(es["env"]["xpack.security.enabled"], "true");
    assert_eq!(
        es["env"]["ELASTIC_PASSWORD_FILE"],
        "/run/secrets/elasticsearch-password"
    );
    let start = es["command"][0].as_str().unwrap();
    assert!(
        start.contains(
            "useradd kibana -p \"$(cat /run/secrets/kibana-es-password)\" -r kibana_system"
        ),
        "{start}"
    );
    assert!(start.contains("useradd filebeat -p \"$(cat /run/secrets/filebeat-es-password)\" -r stackctl_logs_writer"), "{start}");
    assert!(
        es["healthcheck"].to_string().contains("-u \\\"elastic:"),
        "{}",
        es["healthcheck"]
    );
    let kibana = comp("kibana");
    assert_eq!(kibana["env"]["ELASTICSEARCH_USERNAME"], "kibana");
    for c in [&es, &kibana, &comp("filebeat")] {
        let env = c["env"].as_object().unwrap();
        assert!(
            env.keys()
                .all(|k| !k.contains("PASSWORD") || k.ends_with("_FILE")),
            "{}: a password in its environment: {env:?}",
            c["name"]
        );
    }
    let fb = std::fs::read_to_string(out.join("filebeat/filebeat.yml")).unwrap();
    assert!(
        fb.contains("username: \"filebeat\"") && fb.contains("password: \"${ES_PASSWORD}\""),
        "{fb}"
    );
    let roles = std::fs::read_to_string(out.join("elasticsearch/roles.yml")).unwrap();
    let writer = roles
        .split("stackctl_logs_writer:")
        .nth(1)
        .expect("the writer role");
    for wide in ["\"all\"", "\"read\"", "\"delete", "\"manage\"", "\"write\""] {
        assert!(
            !writer.contains(wide),
            "the writer role grants {wide}: {roles}"
        );
    }
}

#[test]
fn nginx_accepts_the_rendered_config() {
    let nginx = tool("nginx");
    let (p, out) = rendered(".", &[]);
    let certs = p.path().join("throwaway-certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (cert, key) = (certs.join("cert.pem"), certs.join("key.pem"));
    check(
        Command::new(tool("openssl"))
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        "openssl",
    );
    let conf = std::fs::read_to_string(out.join("nginx/nginx.conf"))
        .unwrap()
        .replace("/run/secrets/nginx-tls-cert", cert.to_str().unwrap())
        .replace("/run/secrets/nginx-tls-key", key.to_str().unwrap())
        .replace(
            "pid /tmp/nginx.pid;",
            &format!("pid {};", p.path().join("nginx.pid").display()),
        );
    let test_conf = p.path().join("nginx-test.conf");
    std::fs::write(&test_conf, conf).unwrap();
    let mut cmd = Command::new(nginx);
    cmd.arg("-t").arg("-c").arg(&test_conf);
    let said = check(&mut cmd, "nginx -t");
    assert!(said.contains("test is successful"), "{said}");
}

#[test]
fn promtool_accepts_the_prometheus_config_and_rules() {
    let promtool = tool("promtool");
    for (name, rel) in [
        ("repo", "."),
        ("registry-images", "examples/registry-images"),
    ] {
        let (_p, out) = rendered(rel, &[]);
        check(
            Command::new(&promtool).current_dir(&out).args([
                "check",
                "config",
                "prometheus/prometheus.yml",
            ]),
            &format!("{name}: promtool check config"),
        );
        let rules = check(
            Command::new(&promtool).current_dir(&out).args([
                "check",
                "rules",
                "prometheus/alerts.yml",
            ]),
            &format!("{name}: promtool check rules"),
        );
        assert!(rules.contains("SUCCESS"), "{rules}");
    }
}

#[test]
fn grafana_dashboard_and_filebeat_config_parse() {
    let (_p, out) = rendered(".", &[]);
    let d: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("grafana/dashboards/stack.json")).unwrap())
            .unwrap();
    let titles: Vec<&str> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for t in [
        "Request rate",
        "Error rate (5xx share)",
        "Latency p99",
        "Memory (resident)",
    ] {
        assert!(titles.contains(&t), "{titles:?}");
    }
    for f in [
        "filebeat/filebeat.yml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/stackctl.yml",
    ] {
        let _: serde_norway::Value =
            serde_norway::from_str(&std::fs::read_to_string(out.join(f)).unwrap())
                .unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    let _: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("filebeat/ilm-policy.json")).unwrap())
            .unwrap();
}

#[test]
fn amtool_accepts_the_alertmanager_config_with_and_without_a_receiver() {
    let amtool = tool("amtool");
    let (_p, out) = rendered(".", &[]);
    let said = check(
        Command::new(&amtool)
            .current_dir(&out)
            .args(["check-config", "components/alertmanager/alertmanager.yml"]),
        "amtool check-config (no receiver)",
    );
    assert!(said.contains("SUCCESS"), "{said}");
    // A webhook receiver set in stack.toml reaches the rendered config.
    let text = std::fs::read_to_string(repo().join("stack.toml"))
        .unwrap()
        .replace(
            "settings = { webhook_url = \"\" }",
            "settings = { webhook_url = \"http://alerts.internal:8080/hook\" }",
        );
    let p = Project::at(".", &text);
    let o = p.run(&["render"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let conf = p
        .path()
        .join("deploy/components/alertmanager/alertmanager.yml");
    let said = check(
        Command::new(&amtool).arg("check-config").arg(&conf),
        "amtool check-config (webhook)",
    );
    assert!(
        said.contains("1 receivers") || said.contains("2 receivers"),
        "{said}"
    );
    let yml = std::fs::read_to_string(&conf).unwrap();
    assert!(
        yml.contains("receiver: webhook") && yml.contains("http://alerts.internal:8080/hook"),
        "{yml}"
    );
}

#[test]
fn prometheus_scrapes_every_component_and_alerts_to_alertmanager() {
    let (_p, out) = rendered(".", &[]);
    let prom = std::fs::read_to_string(out.join("prometheus/prometheus.yml")).unwrap();
    for (job, port) in [
        ("node-exporter", 9100),
        ("postgres-exporter", 9187),
        ("redis-exporter", 9121),
        ("nginx-exporter", 9113),
        ("alertmanager", 9093),
    ] {
        assert!(
            prom.contains(&format!("job_name: {job}\n"))
                && prom.contains(&format!("names: [\"{job}\"]"))
                && prom.contains(&format!("port: {port}\n")),
            "{job} is scraped on {port}:\n{prom}"
        );
    }
    assert!(prom.contains("targets: [\"alertmanager:9093\"]"), "{prom}");
    let rules = std::fs::read_to_string(out.join("prometheus/alerts.yml")).unwrap();
    assert!(
        rules.contains("absent(up{job=\"user-management\"} == 1)"),
        "a stopped service (no DNS target left) still raises ServiceDown:\n{rules}"
    );
    let nginx = std::fs::read_to_string(out.join("nginx/nginx.conf")).unwrap();
    assert!(
        nginx.contains("listen 8081;") && nginx.contains("stub_status;"),
        "{nginx}"
    );
    // The status port is never published.
    let compose = std::fs::read_to_string(out.join("docker-compose.yml")).unwrap();
    assert!(
        !compose.contains("8081:")
            && compose.contains("-nginx.scrape-uri=http://nginx:8081/stub_status"),
        "{compose}"
    );
}

#[test]
fn only_nginx_is_published_beyond_loopback() {
    for (name, rel) in stacks() {
        let (_p, out) = rendered(rel, &[]);
        let text = std::fs::read_to_string(out.join("docker-compose.yml")).unwrap();
        let mut listed = Vec::new();
        // Service keys are indented two spaces; their port entries are "    - ...".
        let mut svc = String::new();
        let mut in_ports = false;
        for line in text.lines() {
            if let Some(k) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
                if !k.starts_with(' ') {
                    svc = k.to_string();
                }
            }
            let key = line
                .strip_prefix("    ")
                .filter(|l| !l.starts_with([' ', '-']));
            if let Some(k) = key {
                in_ports = k == "ports:";
                continue;
            }
            let Some(p) = line.strip_prefix("    - ").filter(|_| in_ports) else {
                continue;
            };
            let p = p.trim_matches('\'');
            {
                let svc = svc.as_str();
                // "IP:${VAR:-HOST}:CONTAINER" or "${VAR:-HOST}:CONTAINER" (every interface).
                let bind = if p.starts_with("${") {
                    "0.0.0.0"
                } else {
                    p.split(':').next().unwrap()
                };
                listed.push(format!("{name}: {svc} {p} -> bound to {bind}"));
                if svc == "nginx" {
                    continue;
                }
                assert_eq!(
                    bind, "127.0.0.1",
                    "{name}: {svc} publishes {p} beyond loopback"
                );
            }
        }
        eprintln!("{}", listed.join("\n"));
        assert!(listed.iter().any(|l| l.contains(" nginx ")), "{listed:?}");
    }
}
