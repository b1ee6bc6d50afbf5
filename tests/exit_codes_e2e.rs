//! The exit codes of the README's table that no other test reaches, each
//! from the real binary, with the message that goes with it: 5 (a file
//! cannot be written), 23 (duplicate container name), 31 (a daemon too old:
//! a fake one on a unix socket of this test), 35 (not every container is
//! healthy), 42 (an unknown revision), 44 (the engine cannot run the plan),
//! 45 (what runs differs from stack.toml), 33 (an image build step fails),
//! 43 (a one-shot job fails) and 7 (declined at the prompt, on a terminal
//! that `script` gives it).
//! 33 for a missing host tool is asserted by setup_dayone, 30/32/36/37/38/
//! 39/40/41 by the other e2e tests.
//! The real engine is only asked (nothing is started), under a project name
//! of this test's own.

mod common;
use common::*;
use std::io::{Read, Write};
use std::process::Output;

const PROJECT: &str = "stackctl-exit-codes";

fn run(p: &Project, args: &[&str]) -> Output {
    let mut c = bin();
    c.current_dir(p.path())
        .env("STACKCTL_PROJECT", PROJECT)
        .args(args);
    run_logged(&mut c, &args.join(" "))
}

fn exits(o: &Output, code: i32, says: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert!(err.contains(says), "says `{says}`: {err}");
    assert!(err.contains("hint:"), "says how to fix it: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_file_that_cannot_be_written_exits_5() {
    let p = Project::new(BASE);
    let o = run(&p, &["render", "-o", "/proc/stackctl-cannot-write-here"]);
    exits(&o, 5, "cannot write /proc/stackctl-cannot-write-here");
}

#[test]
fn two_containers_of_one_name_exit_23() {
    let p = Project::new(&format!(
        "{BASE}\n[components.api]\nimage = \"busybox:1\"\nnetworks = [\"backend\"]\n"
    ));
    let o = run(&p, &["validate"]);
    exits(
        &o,
        23,
        "`api` names both a container of [services] and one of [components]",
    );
}

/// A daemon that answers every request with API version 1.24 (Docker 1.12).
fn old_daemon(socket: &std::path::Path) {
    let listener = std::os::unix::net::UnixListener::bind(socket).expect("bind");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(8) {
            let mut s = stream;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = r#"{"Version":"1.12.6","ApiVersion":"1.24","MinAPIVersion":"1.12","Os":"linux","Arch":"amd64"}"#;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nApi-Version: 1.24\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

#[test]
fn a_daemon_too_old_exits_31() {
    let p = Project::new(BASE);
    let socket = p.path().join("old-docker.sock");
    old_daemon(&socket);
    let mut c = bin();
    c.current_dir(p.path())
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .args(["status"]);
    let o = run_logged(&mut c, "status (against a daemon speaking API 1.24)");
    exits(&o, 31, "1.24");
}

/// A stack of one container whose image is on this host (made here, never
/// run), and that image, removed by the caller.
fn idle_stack() -> (Project, &'static str) {
    let image = "stackctl-exit-codes/idle:1";
    docker_build_text(
        image,
        "FROM scratch\nLABEL io.stackctl.test=\"exit-codes\"\n",
    );
    let p = Project::new(&format!(
        "[stack]\nname = \"exitcodes\"\n\n[networks.backend]\ninternal = true\n\n[components.idle]\nimage = \"{image}\"\nnetworks = [\"backend\"]\ncommand = [\"idle\"]\n\n[infra.nginx]\nenabled = false\n\n[monitoring]\nenabled = false\n\n[logging]\nenabled = false\n"
    ));
    (p, image)
}

fn remove_image(image: &str) {
    let _ = std::process::Command::new("docker")
        .args(["rmi", image])
        .output();
}

#[test]
fn a_stack_that_is_not_running_is_unhealthy_35() {
    let (p, image) = idle_stack();
    let o = run(&p, &["health"]);
    remove_image(image);
    exits(&o, 35, "1 of 1 containers are not healthy");
    assert!(
        stdout(&o).contains("stackctl-exit-codes-idle-1  missing"),
        "the table names it: {}",
        stdout(&o)
    );
}

#[test]
fn a_stack_that_differs_from_what_runs_exits_45() {
    // Its one container was never created: `status` says so in its table
    // and exits 45 (not 1, nor 0).
    let (p, image) = idle_stack();
    let o = run(&p, &["status"]);
    remove_image(image);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(45), "{out}{}", stderr(&o));
    assert!(
        out.contains(&format!("{PROJECT}-idle-1")) && out.contains("missing"),
        "the table names it: {out}"
    );
    assert!(out.contains("0 of 1 match stack.toml"), "{out}");
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn an_unknown_revision_exits_42() {
    let p = Project::new(BASE);
    let o = run(&p, &["rollback", "--to", "99"]);
    exits(&o, 42, "no deploy history on this host");
}

#[test]
fn a_plan_the_engine_cannot_run_exits_44() {
    let p = Project::new(BASE);
    let o = run(&p, &["validate", "--against-engine"]);
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(44), "{all}");
    assert!(
        all.contains("image demo/api:snapshot is missing"),
        "each problem listed: {all}"
    );
}

#[test]
fn a_failing_image_build_step_exits_33() {
    // A component built from its own Dockerfile whose second step cannot
    // run: the error names the step and the daemon's reason.
    let p = Project::new(
        "[stack]\nname = \"exitbuild\"\n\n[networks.backend]\ninternal = true\n\n[components.worker]\ncontext = \"worker\"\nnetworks = [\"backend\"]\n\n[infra.nginx]\nenabled = false\n\n[monitoring]\nenabled = false\n\n[logging]\nenabled = false\n",
    );
    std::fs::create_dir_all(p.path().join("worker")).expect("mkdir worker");
    std::fs::write(
        p.path().join("worker/Dockerfile"),
        "FROM scratch\nCOPY not-in-the-context /worker\n",
    )
    .expect("write Dockerfile");
    let o = run(&p, &["build"]);
    exits(&o, 33, "COPY not-in-the-context");
    assert!(
        stderr(&o).contains("worker"),
        "names the component: {}",
        stderr(&o)
    );
}

/// A static binary (built here with rustc) that fails as a migration does
/// when given `migrate`, and otherwise idles like a service.
fn failing_migration_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let src = dir.join("worker.rs");
    std::fs::write(
        &src,
        r#"fn main() {
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        eprintln!("migrate: relation \"users\" already exists");
        std::process::exit(3);
    }
    std::thread::sleep(std::time::Duration::from_secs(3600));
}
"#,
    )
    .expect("write worker.rs");
    let out = dir.join("worker");
    let o = std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args([
            "--edition",
            "2021",
            "-C",
            "opt-level=1",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .output()
        .expect("run rustc");
    assert!(o.status.success(), "rustc: {}", stderr(&o));
    out
}

#[test]
fn a_failing_job_exits_43() {
    let image = "exitjob/worker:snapshot";
    let p = Project::new(
        "[stack]\nname = \"exitjob\"\n\n[networks.backend]\ninternal = true\n\n[services.worker]\npath = \"services/worker\"\nport = 8080\nnetworks = [\"backend\"]\n\n[jobs.migrate]\nservice = \"worker\"\ncommand = [\"migrate\"]\n\n[infra.nginx]\nenabled = false\n\n[monitoring]\nenabled = false\n\n[logging]\nenabled = false\n",
    );
    let ctx = p.path().join("image");
    std::fs::create_dir_all(&ctx).expect("mkdir image");
    failing_migration_binary(&ctx);
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY worker /worker\nENTRYPOINT [\"/worker\"]\n",
    )
    .expect("write Dockerfile");
    docker_ok(&["build", "-q", "-t", image, &ctx.display().to_string()]);
    let setup = run(&p, &["setup"]);
    let start = run(&p, &["start"]);
    let down = run(&p, &["down", "--volumes", "--yes"]);
    remove_image(image);
    succeeded(&setup, "setup");
    exits(&start, 43, "job migrate failed");
    let err = stderr(&start);
    assert!(
        err.contains("exit code 3"),
        "gives the job's exit code: {err}"
    );
    assert!(
        err.contains("relation \"users\" already exists"),
        "shows the job's last log lines: {err}"
    );
    assert_eq!(down.status.code(), Some(0), "down: {}", stderr(&down));
    let left = docker_ok(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=io.stackctl.project={PROJECT}"),
    ]);
    assert!(
        left.trim().is_empty(),
        "down removed every container: {left}"
    );
}

#[test]
fn declining_at_the_prompt_exits_7_and_changes_nothing() {
    // `down --volumes` asks on a terminal (here the pseudo-terminal of
    // util-linux's `script`, fed "no"): nothing is removed, exit 7.
    let p = Project::new(
        "[stack]\nname = \"exitdecline\"\n\n[networks.backend]\ninternal = true\n\n[components.keeper]\nimage = \"stackctl-exit-codes/keeper:1\"\nnetworks = [\"backend\"]\nvolumes = [\"kept-data:/data\"]\n\n[infra.nginx]\nenabled = false\n\n[monitoring]\nenabled = false\n\n[logging]\nenabled = false\n",
    );
    let volume = format!("{PROJECT}_kept-data");
    docker_ok(&[
        "volume",
        "create",
        "--label",
        &format!("io.stackctl.project={PROJECT}"),
        &volume,
    ]);
    let cmd = format!("{} down --volumes", env!("CARGO_BIN_EXE_stackctl"));
    let mut c = std::process::Command::new("script");
    c.args(["-qec", &cmd, "/dev/null"])
        .current_dir(p.path())
        .env("NO_COLOR", "1")
        .env("STACKCTL_PROJECT", PROJECT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("run script (util-linux)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"no\n")
        .expect("answer");
    let o = child.wait_with_output().expect("script");
    let kept = std::process::Command::new("docker")
        .args(["volume", "inspect", &volume])
        .output()
        .expect("docker")
        .status
        .success();
    let _ = std::process::Command::new("docker")
        .args(["volume", "rm", &volume])
        .output();
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(7), "{all}");
    assert!(all.contains("type `yes`"), "it asked: {all}");
    assert!(all.contains("kept everything"), "{all}");
    assert!(kept, "the volume is still there");
}
