//! Every broken stack.toml gives a file:line:column error, a hint, and its own
//! exit code, through the library and through the real binary.

mod common;
use common::*;
use stackctl::error::ModelErrorKind;
use stackctl::model;
use std::collections::HashSet;
use std::path::Path;

#[test]
fn base_stack_is_valid() {
    let p = Project::new(BASE);
    let o = p.run(&["validate"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 services"), "{}", stderr(&o));
}

#[test]
fn each_error_names_its_place_in_the_library() {
    for case in CASES {
        let p = Project::new(&case.stack());
        let file = p.path().join("stack.toml");
        let e = match model::load(&file, None) {
            Err(stackctl::Error::Model(e)) => e,
            other => panic!("case {}: expected a model error, got {other:?}", case.name),
        };
        assert_eq!(e.kind.exit_code(), case.code, "case {}: {e}", case.name);
        assert_eq!(
            (e.line, e.column),
            (case.line, case.column),
            "case {}: {e}",
            case.name
        );
        assert!(e.to_string().contains(case.says), "case {}: {e}", case.name);
        assert!(
            !e.hint.is_empty() || case.name == "bad_duration" || case.name == "bad_memory",
            "case {} has no hint",
            case.name
        );
        assert!(
            e.to_string().contains("e.g.")
                || !matches!(
                    e.kind,
                    ModelErrorKind::BadDuration | ModelErrorKind::BadMemory
                ),
            "case {}: {e}",
            case.name
        );
    }
}

#[test]
fn each_error_exits_with_its_own_code_from_the_binary() {
    let mut codes = HashSet::new();
    for case in CASES {
        let p = Project::new(&case.stack());
        let o = p.run(&["validate"]);
        let err = stderr(&o);
        assert_eq!(
            o.status.code(),
            Some(case.code),
            "case {}: {err}",
            case.name
        );
        let place = format!("stack.toml:{}:{}:", case.line, case.column);
        assert!(
            err.contains(&place),
            "case {}: `{place}` missing in: {err}",
            case.name
        );
        assert!(err.contains("error:"), "case {}: {err}", case.name);
        assert!(!err.contains("panicked"), "case {}: {err}", case.name);
        codes.insert(case.code);
    }
    assert_eq!(codes.len(), CASES.len(), "exit codes must be distinct");
}

#[test]
fn unknown_environment_is_an_error_with_the_choices() {
    let stack = format!("{BASE}\n[environments.staging.services.api]\nreplicas = 2\n");
    let p = Project::new(&stack);
    let o = p.run(&["--env", "prod", "validate"]);
    assert_eq!(o.status.code(), Some(21));
    assert!(
        stderr(&o).contains("choose one of: staging"),
        "{}",
        stderr(&o)
    );
    let ok = p.run(&["--env", "staging", "validate"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
}

#[test]
fn an_overlay_naming_an_unknown_service_points_at_the_overlay() {
    let stack = format!("{BASE}\n[environments.staging.services.apx]\nreplicas = 2\n");
    let p = Project::new(&stack);
    let o = p.run(&["validate"]);
    assert_eq!(o.status.code(), Some(16), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("overrides service `apx`"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("stack.toml:30:1:"), "{}", stderr(&o));
}

#[test]
fn a_job_cannot_gate_a_service_its_own_service_depends_on() {
    // api depends on users: a job in api waits for users, so users cannot
    // wait for the job.
    let stack = BASE.replacen(
        "[monitoring]",
        "[jobs.migrate]\nservice = \"api\"\ncommand = [\"migrate\"]\nbefore = [\"users\"]\n\n[monitoring]",
        1,
    );
    let p = Project::new(&stack);
    let o = p.run(&["validate"]);
    assert_eq!(o.status.code(), Some(17), "{}", stderr(&o));
    assert!(stderr(&o).contains("stack.toml:27:11:"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("each would wait for the other"),
        "{}",
        stderr(&o)
    );
    // Gating its own service (the default) is fine.
    let ok = BASE.replacen(
        "[monitoring]",
        "[jobs.migrate]\nservice = \"users\"\ncommand = [\"migrate\"]\nbefore = [\"users\", \"api\"]\n\n[monitoring]",
        1,
    );
    let o = Project::new(&ok).run(&["validate"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn overlay_changes_only_what_it_names() {
    let stack = format!("{BASE}\n[environments.staging.services.users]\nresources = {{ memory = \"1G\" }}\nenv = {{ DEBUG_SQL = \"1\" }}\n");
    let f = Path::new("stack.toml");
    let base = model::load_str(&stack, f, Path::new("."), None, false).unwrap();
    let st = model::load_str(&stack, f, Path::new("."), Some("staging"), false).unwrap();
    let (b, s) = (base.service("users").unwrap(), st.service("users").unwrap());
    assert_eq!(s.resources.memory.to_string(), "1G");
    assert_eq!(
        s.resources.reserve_memory.to_string(),
        "512M",
        "reservation follows the new limit"
    );
    assert_eq!(
        s.resources.cpus, b.resources.cpus,
        "cpus not named: unchanged"
    );
    assert_eq!(s.healthcheck, b.healthcheck);
    assert_eq!(s.env.get("DEBUG_SQL").map(String::as_str), Some("1"));
    assert_eq!(
        st.service("api").unwrap().port,
        base.service("api").unwrap().port
    );
}

#[test]
fn no_stack_file_and_missing_file_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let o = bin()
        .current_dir(dir.path())
        .arg("validate")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("no stack.toml found"));
    let o = bin()
        .current_dir(dir.path())
        .args(["-f", "nope.toml", "validate"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("nope.toml"));
}

#[test]
fn stack_file_is_found_from_a_subdirectory() {
    let p = Project::new(BASE);
    let sub = p.path().join("services/api");
    let o = bin().current_dir(&sub).arg("validate").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn json_errors_are_machine_readable() {
    let p = Project::new(&CASES[1].stack());
    let o = p.run(&["--json", "validate"]);
    assert_eq!(o.status.code(), Some(11));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json on stdout");
    assert_eq!(v["error"]["code"], 11);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("stack.toml:11:1"));
}

/// Bad component definitions: each refused by `validate` with its place,
/// a message naming the component and its exit code, before the engine
/// could refuse it later.
#[test]
fn bad_component_definitions_are_refused_at_their_place() {
    let cases: &[(&str, &str, i32, &str)] = &[
        (
            "user with three parts",
            "image = \"redis:7\"\nuser = \"root:wheel:extra\"",
            14,
            "is not USER or USER:GROUP",
        ),
        (
            "unknown preset",
            "preset = \"kafka\"",
            14,
            "unknown preset `kafka`",
        ),
        ("no source", "port = 80", 15, "has no image"),
        (
            "published port without container side",
            "image = \"redis:7\"\nports = [\"6379\"]",
            14,
            "is not HOST:CONTAINER",
        ),
        (
            "published port with a bad address",
            "image = \"redis:7\"\nports = [\"localhost:6379:6379\"]",
            14,
            "no valid IP address",
        ),
        (
            "relative volume target",
            "image = \"redis:7\"\nvolumes = [\"data:var/lib\"]",
            14,
            "not an absolute path",
        ),
        (
            "unknown network",
            "image = \"redis:7\"\nnetworks = [\"nowhere\"]",
            19,
            "network `nowhere`",
        ),
        (
            "undeclared secret",
            "image = \"redis:7\"\nsecrets = [\"nope\"]",
            22,
            "secret `nope`",
        ),
        (
            "unknown dependency",
            "image = \"redis:7\"\ndepends_on = [\"ghost\"]",
            16,
            "depends on `ghost`",
        ),
        (
            "two sources",
            "image = \"redis:7\"\ncontext = \"worker\"",
            14,
            "both a Dockerfile",
        ),
        (
            "missing Dockerfile",
            "context = \"worker\"\ndockerfile = \"Dockerfile.prod\"",
            20,
            "no Dockerfile",
        ),
        (
            "packages without debian",
            "image = \"x:1\"\npackages = [\"curl\"]",
            14,
            "only used with build",
        ),
        (
            "debian without a recipe",
            "build = \"debian\"\nimage = \"stackctl/nothing:1\"",
            14,
            "no built-in Debian recipe",
        ),
        (
            "volume shared by replicas",
            "image = \"redis:7\"\nvolumes = [\"data:/data\"]\nreplicas = 2",
            14,
            "share one data directory",
        ),
        (
            "health check with two probes",
            "image = \"redis:7\"\nport = 6379\nhealthcheck = { http = \"/\", shell = \"true\" }",
            14,
            "exactly one of http",
        ),
        (
            "unknown key",
            "image = \"redis:7\"\nimagee = \"x\"",
            11,
            "imagee",
        ),
        (
            "backup without a volume",
            "image = \"redis:7\"\nbackup = true",
            14,
            "no named volume to archive",
        ),
        (
            "unknown backup mode",
            "image = \"redis:7\"\nvolumes = [\"data:/data\"]\nbackup = \"hourly\"",
            14,
            "is not a backup mode",
        ),
        (
            "alias that is no host name",
            "image = \"redis:7\"\naliases = [\"Cache_1\"]",
            14,
            "not a usable host name",
        ),
        (
            "alias taken by another container",
            "image = \"redis:7\"\naliases = [\"users\"]",
            23,
            "already a name of `users`",
        ),
    ];
    for (name, body, code, says) in cases {
        let stack = format!("{BASE}\n[components.cache]\n{body}\n");
        let p = Project::new(&stack);
        let o = p.run(&["validate"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(*code), "{name}: {err}");
        assert!(err.contains(says), "{name}: `{says}` missing in: {err}");
        assert!(err.contains("stack.toml:"), "{name}: no location in: {err}");
        assert!(err.contains("hint:"), "{name}: no hint in: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    // A cycle through a component and a service.
    let stack = format!(
        "{}\n[components.cache]\nimage = \"redis:7\"\ndepends_on = [\"api\"]\n",
        BASE.replace(
            "depends_on = [\"users\"]",
            "depends_on = [\"users\", \"cache\"]"
        )
    );
    let o = Project::new(&stack).run(&["validate"]);
    assert_eq!(o.status.code(), Some(17), "{}", stderr(&o));
    assert!(stderr(&o).contains("cycle"), "{}", stderr(&o));
    // And a good one passes, its published port on loopback.
    let stack = format!(
        "{BASE}\n[components.cache]\nimage = \"redis:7\"\nport = 6379\nports = [\"16379:6379\"]\nuser = \"999:999\"\nvolumes = [\"cache-data:/data\"]\nbackup = \"live\"\naliases = [\"kv\"]\nhealthcheck = {{ command = [\"redis-cli\", \"ping\"] }}\n"
    );
    let p = Project::new(&stack);
    let o = p.run(&["validate"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = p.run(&["render"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let compose = std::fs::read_to_string(p.path().join("deploy/docker-compose.yml")).unwrap();
    assert!(
        compose.contains("127.0.0.1:${PORT_CACHE_6379:-16379}:6379"),
        "{compose}"
    );
    // The alias on each of its networks.
    assert!(compose.contains("aliases:\n        - kv"), "{compose}");
    let o = p.run(&["config", "--format", "json"]);
    let config: serde_json::Value = serde_json::from_slice(&o.stdout).expect("config json");
    let cache = config["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "cache")
        .expect("cache in config");
    assert_eq!(cache["backup"], "live", "{cache}");
    assert_eq!(cache["aliases"][0], "kv", "{cache}");
}

/// A service's Redis access: refused at the `redis` value with its reason,
/// and a good one lands in the resolved stack with its own password secret.
#[test]
fn bad_redis_access_is_refused_at_its_place() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "pattern with a space",
            r#"redis = { keys = ["users: *"] }"#,
            "pattern `users: *`",
        ),
        (
            "empty pattern",
            r#"redis = { read = [""] }"#,
            "read pattern ``",
        ),
        (
            "rule instead of a command",
            r#"redis = { commands = ["+get"] }"#,
            "`+get` is not a Redis command",
        ),
        (
            "unknown key",
            r#"redis = { key = ["users:*"] }"#,
            "did you mean `keys`",
        ),
        (
            "category among the dangerous",
            r#"redis = { dangerous = ["@dangerous"] }"#,
            "`@dangerous` in `dangerous` is not a Redis command",
        ),
    ];
    for (name, line, says) in cases {
        let stack = BASE.replace("port = 8002", &format!("port = 8002\n{line}"));
        let o = Project::new(&stack).run(&["validate"]);
        let err = stderr(&o);
        let code = if *name == "unknown key" { 11 } else { 14 };
        assert_eq!(o.status.code(), Some(code), "{name}: {err}");
        assert!(err.contains(says), "{name}: `{says}` missing in: {err}");
        assert!(
            err.contains("stack.toml:19:"),
            "{name}: not at the redis line: {err}"
        );
        assert!(err.contains("hint:"), "{name}: {err}");
    }
    let stack = BASE.replace(
        "port = 8002",
        "port = 8002\nredis = { keys = [\"users:*\"], read = [\"revoked:*\"], commands = [\"get\", \"@hash\"] }",
    );
    let o = Project::new(&stack).run(&["config", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let users = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "users")
        .unwrap();
    assert_eq!(users["redis"]["user"], "users");
    assert_eq!(users["redis"]["password_secret"], "redis-users-password");
    assert_eq!(users["redis"]["read"][0], "revoked:*");
    let secrets: Vec<&str> = v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        secrets.contains(&"redis-users-password") && secrets.contains(&"redis-acl"),
        "{secrets:?}"
    );

    // A component has its own user the same way, wired as a service's.
    let stack = format!(
        "{BASE}\n[components.worker]\nimage = \"example/worker:1\"\nredis = {{ keys = [\"jobs:*\"], commands = [\"@list\"] }}\n"
    );
    let p = Project::new(&stack);
    let o = p.run(&["render"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let compose = std::fs::read_to_string(p.path().join("deploy/docker-compose.yml")).unwrap();
    let worker: String = compose
        .lines()
        .skip_while(|l| *l != "  worker:")
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .collect::<Vec<_>>()
        .join("\n");
    for want in [
        "REDIS_USERNAME: worker",
        "REDIS_PASSWORD_FILE: /run/secrets/redis-worker-password",
        "redis-worker-password",
    ] {
        assert!(worker.contains(want), "{want} missing in {worker}");
    }
    // Without Redis in the stack, a component's `redis` is refused at its line.
    let stack = format!(
        "{BASE}\n[infra.redis]\nenabled = false\n\n[components.worker]\nimage = \"example/worker:1\"\nredis = true\n"
    );
    let o = Project::new(&stack).run(&["validate"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(14), "{err}");
    assert!(
        err.contains("component `worker` uses Redis, but [infra.redis] is disabled"),
        "{err}"
    );
}

/// The infrastructure is presets over the component type: a
/// `[components.NAME]` table named after one of its containers changes that
/// container (any field), and what it cannot do is refused at its place.
#[test]
fn a_component_table_changes_an_infrastructure_container() {
    let stack = format!(
        "{BASE}\n[components.nginx]\nports = [\"127.0.0.1:8080:80\"]\n\n[components.postgres-users]\nimage = \"postgres:16.4\"\nresources = {{ memory = \"1G\" }}\nenv = {{ TZ = \"UTC\" }}\n"
    );
    let p = Project::new(&stack);
    let o = p.run(&["render"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let compose = std::fs::read_to_string(p.path().join("deploy/docker-compose.yml")).unwrap();
    let block = |name: &str| {
        let start = compose
            .find(&format!("\n  {name}:\n"))
            .unwrap_or_else(|| panic!("no {name} in {compose}"));
        // Up to the next key at the same indentation.
        let rest = &compose[start + 1..];
        let end = rest
            .match_indices("\n  ")
            .find(|(i, _)| !rest[i + 3..].starts_with(' '))
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        rest[..end].to_string()
    };
    let nginx = block("nginx");
    assert!(
        nginx.contains("127.0.0.1:"),
        "nginx bound to loopback: {nginx}"
    );
    assert!(
        !nginx.contains(":443"),
        "the override replaces the ports: {nginx}"
    );
    let pg = block("postgres-users");
    assert!(pg.contains("image: postgres:16.4"), "{pg}");
    assert!(pg.contains("TZ: UTC"), "{pg}");
    assert!(
        pg.contains("POSTGRES_DB: users_db"),
        "preset env kept: {pg}"
    );
    assert!(pg.contains("pg_isready"), "preset health check kept: {pg}");

    let cases: &[(&str, &str)] = &[
        (
            "[components.nginx]\npreset = \"alertmanager\"",
            "takes no preset",
        ),
        (
            "[components.postgres-users]\nbackup = true",
            "already in every backup",
        ),
        (
            "[components.postgres-users]\nenabled = false",
            "cannot switch off",
        ),
        (
            "[components.nginx]\nports = [\"80\"]",
            "is not HOST:CONTAINER",
        ),
    ];
    for (body, says) in cases {
        let stack = format!("{BASE}\n{body}\n");
        let o = Project::new(&stack).run(&["validate"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(14), "{body}: {err}");
        assert!(err.contains(says), "{body}: `{says}` missing in: {err}");
        assert!(err.contains("stack.toml:"), "{body}: no location in: {err}");
        assert!(err.contains("hint:"), "{body}: no hint in: {err}");
    }
}
