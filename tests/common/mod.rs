//! Shared helpers for the integration tests: run the real binary in a
//! temporary project, and the broken-stack cases every error test uses.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stackctl"));
    c.env("NO_COLOR", "1")
        .env("IMAGE_TAG", "snapshot")
        .env_remove("STACKCTL_FILE")
        .env_remove("STACKCTL_ENV");
    c
}

pub struct Project {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
}

impl Project {
    /// A temp project holding `stack` as stack.toml, with an empty crate
    /// (just a Cargo.toml) at every `path = "..."` it names.
    pub fn new(stack: &str) -> Project {
        Project::at(".", stack)
    }

    /// The stack at `rel/stack.toml` inside the temp project; crate paths that
    /// stay inside the project get a Cargo.toml.
    pub fn at(rel: &str, stack: &str) -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join(rel);
        std::fs::create_dir_all(&home).expect("mkdir");
        std::fs::write(home.join("stack.toml"), stack).expect("write stack.toml");
        for line in stack.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix("path = \"") {
                let p = rest.split('"').next().unwrap_or_default();
                let d = home.join(p);
                if !p.starts_with("../nowhere") {
                    std::fs::create_dir_all(&d).expect("mkdir crate");
                    std::fs::write(d.join("Cargo.toml"), "[package]\nname = \"x\"\n")
                        .expect("write Cargo.toml");
                }
            }
            // A component's Dockerfile build context: a copy of the repo's, when it has one.
            if let Some(rest) = t.strip_prefix("context = \"") {
                let p = rest.split('"').next().unwrap_or_default();
                let src = repo().join(rel).join(p);
                let dst = home.join(p);
                std::fs::create_dir_all(&dst).expect("mkdir context");
                match std::fs::read_dir(&src) {
                    Ok(entries) => {
                        for e in entries.flatten().filter(|e| e.path().is_file()) {
                            std::fs::copy(e.path(), dst.join(e.file_name())).expect("copy context");
                        }
                    }
                    Err(_) => std::fs::write(dst.join("Dockerfile"), "FROM scratch\n")
                        .expect("write Dockerfile"),
                }
            }
        }
        Project { dir, home }
    }

    /// The directory holding stack.toml.
    pub fn path(&self) -> &Path {
        &self.home
    }

    pub fn run(&self, args: &[&str]) -> Output {
        bin()
            .current_dir(self.path())
            .args(args)
            .output()
            .expect("run stackctl")
    }
}

/// A command-line tool the checks need: on PATH or in the lint venv .ci/run makes.
pub fn tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("STACKCTL_LINT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/stackctl-lint"));
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    dirs.push(venv.join("bin"));
    dirs.push(PathBuf::from("/usr/sbin"));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` is not installed: run .ci/run once (it installs every checker), or install it and put it on PATH")
}

/// Run a checker; panic with its output unless it succeeds.
pub fn check(cmd: &mut Command, what: &str) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let out = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\n{out}",
        o.status.code()
    );
    out
}

/// stackctl in the repository, under its own project name (so a developer's
/// stack is untouched), with the tag strategy of stack.toml.
pub fn in_project(project: &str) -> Command {
    let mut c = bin();
    c.current_dir(repo())
        .env_remove("IMAGE_TAG")
        .env("STACKCTL_PROJECT", project);
    c
}

/// Run a stackctl command and echo it, its time, exit code and output into
/// the test's log; `shown` is how the command line reads there.
pub fn run_logged(c: &mut Command, shown: &str) -> Output {
    let t = std::time::Instant::now();
    let o = c.output().expect("run stackctl");
    eprintln!(
        "$ stackctl {shown}  ({:.1}s, exit {:?})\n{}{}",
        t.elapsed().as_secs_f64(),
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    o
}

/// Assert a run exited 0; its stdout and stderr together.
pub fn succeeded(o: &Output, what: &str) -> String {
    assert_eq!(o.status.code(), Some(0), "{what} failed");
    format!("{}{}", stdout(o), stderr(o))
}

/// An HTTPS client for a stack's Nginx on loopback (self-signed certificate).
pub fn https_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// The docker CLI (for checks from outside stackctl); its stdout, or panic.
pub fn docker_ok(args: &[&str]) -> String {
    let o = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        o.status.success(),
        "docker {}: {}{}",
        args.join(" "),
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// `docker build` of a Dockerfile given as text, without a context.
pub fn docker_build_text(tag: &str, dockerfile: &str) {
    use std::io::Write;
    use std::process::Stdio;
    let mut c = Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker build");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(dockerfile.as_bytes())
        .expect("write Dockerfile");
    let o = c.wait_with_output().expect("docker build");
    assert!(o.status.success(), "docker build {tag}: {}", stderr(&o));
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A small valid stack the error cases mutate.
pub const BASE: &str = r#"[stack]
name = "demo"

[networks.backend]
internal = true

[networks.frontend]

[services.api]
path = "services/api"
port = 3000
public = true
networks = ["frontend", "backend"]
depends_on = ["users"]

[services.users]
path = "services/users"
port = 8002
networks = ["backend"]
postgres = { database = "users_db" }
healthcheck = { interval = "10s" }
resources = { memory = "256M", cpus = 0.5 }

[monitoring]
enabled = false

[logging]
enabled = false
"#;

/// One broken input: how to break BASE, the exit code, the line and column
/// the error must name, and a phrase the message must contain.
pub struct Case {
    pub name: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    pub code: i32,
    pub line: usize,
    pub column: usize,
    pub says: &'static str,
}

impl Case {
    pub fn stack(&self) -> String {
        assert!(
            BASE.contains(self.from),
            "case {}: `{}` not in BASE",
            self.name,
            self.from
        );
        BASE.replacen(self.from, self.to, 1)
    }
}

pub const CASES: &[Case] = &[
    Case {
        name: "syntax",
        from: "port = 3000",
        to: "port = = 3000",
        code: 10,
        line: 11,
        column: 8,
        says: "",
    },
    Case {
        name: "unknown_key",
        from: "port = 3000",
        to: "prot = 3000",
        code: 11,
        line: 11,
        column: 1,
        says: "did you mean `port`",
    },
    Case {
        name: "bad_duration",
        from: "interval = \"10s\"",
        to: "interval = \"10 parsecs\"",
        code: 12,
        line: 21,
        column: 28,
        says: "invalid duration",
    },
    Case {
        name: "bad_memory",
        from: "memory = \"256M\"",
        to: "memory = \"lots\"",
        code: 13,
        line: 22,
        column: 24,
        says: "invalid memory size",
    },
    Case {
        name: "invalid_value",
        from: "port = 3000",
        to: "port = \"three thousand\"",
        code: 14,
        line: 11,
        column: 8,
        says: "invalid type",
    },
    Case {
        name: "unknown_dependency",
        from: "depends_on = [\"users\"]",
        to: "depends_on = [\"userz\"]",
        code: 16,
        line: 14,
        column: 15,
        says: "depends on `userz`",
    },
    Case {
        name: "dependency_cycle",
        from: "networks = [\"backend\"]\npostgres",
        to: "networks = [\"backend\"]\ndepends_on = [\"api\"]\npostgres",
        code: 17,
        line: 20,
        column: 15,
        says: "api -> users -> api",
    },
    Case {
        name: "duplicate_port",
        from: "port = 8002",
        to: "port = 3000",
        code: 18,
        line: 18,
        column: 8,
        says: "port 3000 is used by both",
    },
    Case {
        name: "undefined_network",
        from: "networks = [\"backend\"]\npostgres",
        to: "networks = [\"backnet\"]\npostgres",
        code: 19,
        line: 19,
        column: 13,
        says: "network `backnet`",
    },
    Case {
        name: "missing_crate_path",
        from: "path = \"services/users\"",
        to: "path = \"../nowhere/users\"",
        code: 20,
        line: 17,
        column: 8,
        says: "no crate at",
    },
    Case {
        name: "unknown_secret",
        from: "port = 8002",
        to: "port = 8002\nsecrets = [\"api-key\"]",
        code: 22,
        line: 19,
        column: 12,
        says: "secret `api-key`",
    },
    Case {
        name: "missing_key",
        from: "port = 8002\n",
        to: "",
        code: 15,
        line: 16,
        column: 1,
        says: "has no `port`",
    },
];

/// Fail on snapshot files of `test_file` (`tests/snapshots/<test_file>__*.snap`)
/// that no snapshot of this run wrote: a renamed or removed output leaves
/// none behind. `written` holds the snapshot names asserted, without the
/// `<test_file>__` prefix.
pub fn reject_orphan_snapshots(test_file: &str, written: &std::collections::BTreeSet<String>) {
    let prefix = format!("{test_file}__");
    let orphans: Vec<String> = std::fs::read_dir(repo().join("tests/snapshots"))
        .expect("tests/snapshots")
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter_map(|f| {
            f.strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".snap"))
                .map(str::to_string)
        })
        .filter(|n| !written.contains(n))
        .collect();
    assert!(
        orphans.is_empty(),
        "snapshots no test writes any more (delete them): {}",
        orphans
            .iter()
            .map(|o| format!("tests/snapshots/{prefix}{o}.snap"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The id of a local image (`docker image inspect`), or panic.
pub fn image_id(reference: &str) -> String {
    docker_ok(&["image", "inspect", "-f", "{{.Id}}", reference])
        .trim()
        .to_string()
}

/// Remove every container of a project (running or not: the stack, its
/// revision records, its lock), as a test's fresh start or clean-up.
pub fn remove_project_containers(project: &str) {
    let ids = docker_ok(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=io.stackctl.project={project}"),
    ]);
    for id in ids.lines().filter(|l| !l.is_empty()) {
        let _ = Command::new("docker").args(["rm", "-f", id]).output();
    }
}
