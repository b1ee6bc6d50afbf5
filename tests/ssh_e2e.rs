//! From CI to a production host over SSH: `DOCKER_HOST=ssh://…` set-up,
//! build, deploy and a rollback from another checkout (an operator's laptop
//! holding only stack.toml and the secrets), against an OpenSSH server this
//! test starts on loopback in front of this machine's engine.
//!
//! The "remote" host is this machine, reached only through sshd, so what a
//! real remote host needs is checked: every file a container mounts (the
//! rendered Nginx and PostgreSQL configs, the TLS key, the database
//! password) is put on the daemon's host by stackctl under
//! /var/lib/stackctl/PROJECT, not read from the checkout; and the service
//! image comes from the registry CI pushed it to (the one on loopback that
//! scripts/test-setup.sh starts), not from the checkout's build.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Instant;

const PROJECT: &str = "stackctl-ssh-e2e";
const HTTPS: u16 = 38643;
const REGISTRY: &str = "127.0.0.1:5000/ssh-e2e";

/// A checkout of examples/minimal (the service crate by absolute path),
/// pushing to the loopback registry; with the secrets of `from` when given.
fn checkout(from: Option<&Path>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let stack = std::fs::read_to_string(repo().join("examples/minimal/stack.toml"))
        .unwrap()
        .replace(
            "path = \"../../services/analytics\"",
            &format!("path = \"{}\"", repo().join("services/analytics").display()),
        )
        .replace(
            "tag = \"dev\"",
            &format!("tag = \"dev\"\nregistry = \"{REGISTRY}\""),
        )
        // Infrastructure built from Debian packages (no registry image can be pulled here).
        .replace(
            "[infra.nginx]\n",
            "[infra.nginx]\nbuild = \"debian\"\nimage = \"stackctl/nginx:1.22-bookworm\"\n",
        )
        + "\n[infra.postgres]\nbuild = \"debian\"\nimage = \"stackctl/postgres:15-bookworm\"\n";
    std::fs::write(dir.path().join("stack.toml"), stack).unwrap();
    if let Some(from) = from {
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        for e in std::fs::read_dir(from.join("secrets")).unwrap().flatten() {
            std::fs::copy(e.path(), dir.path().join("secrets").join(e.file_name())).unwrap();
        }
    }
    dir
}

fn image(tag: &str) -> String {
    format!("{REGISTRY}/analytics-only/analytics:{tag}")
}

/// An OpenSSH server on 127.0.0.1 with keys made for this test; stopped
/// when dropped.
struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Sshd {
    fn start() -> Sshd {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let keygen = tool("ssh-keygen");
        for key in ["host_key", "id"] {
            check(
                Command::new(&keygen)
                    .args(["-q", "-t", "ed25519", "-N", ""])
                    .arg("-f")
                    .arg(d.join(key)),
                "ssh-keygen",
            );
        }
        // The deploy key is root's (who may open the daemon's socket) and
        // nobody's (who may log in but not open it).
        for user in ["root", "nobody"] {
            std::fs::copy(d.join("id.pub"), d.join(format!("authorized_keys.{user}")))
                .expect("authorized_keys");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host_pub}"),
        )
        .expect("known_hosts");
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys.%u\nPidFile {d}/sshd.pid\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nAllowTcpForwarding local\nAllowStreamLocalForwarding local\nX11Forwarding no\nLogLevel VERBOSE\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).expect("sshd_config");
        // sshd's privilege-separation directory.
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let log = std::fs::File::create(d.join("sshd.log")).expect("sshd.log");
        let child = Command::new(tool("sshd"))
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stderr(log)
            .spawn()
            .expect("start sshd");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed().as_secs() < 10,
                "sshd did not listen: {}",
                std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Sshd { dir, port, child }
    }

    fn host(&self, user: &str) -> String {
        format!("ssh://{user}@127.0.0.1:{}", self.port)
    }

    /// What a CI job puts in its ssh options: the deploy key and the
    /// host's known key, never a prompt.
    fn opts(&self) -> String {
        let d = self.dir.path().display();
        format!("-i {d}/id -o UserKnownHostsFile={d}/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// stackctl in `dir` against the daemon behind `sshd`, as root there.
fn over_ssh(sshd: &Sshd, dir: &Path, tag: &str, args: &[&str]) -> Output {
    let mut c = bin();
    c.current_dir(dir)
        .env("DOCKER_HOST", sshd.host("root"))
        .env("STACKCTL_SSH_OPTS", sshd.opts())
        .env("STACKCTL_PROJECT", PROJECT)
        .env("IMAGE_TAG", tag)
        .env("PORT_NGINX_80", "38680")
        .env("PORT_NGINX_443", HTTPS.to_string())
        .args(args);
    run_logged(
        &mut c,
        &format!("{} (over ssh, IMAGE_TAG={tag})", args.join(" ")),
    )
}

fn ok(sshd: &Sshd, dir: &Path, tag: &str, args: &[&str]) -> String {
    succeeded(
        &over_ssh(sshd, dir, tag, args),
        &format!("stackctl {}", args.join(" ")),
    )
}

fn host_dir() -> PathBuf {
    Path::new("/var/lib/stackctl").join(PROJECT)
}

fn cleanup() {
    remove_project_containers(PROJECT);
    let vols = docker_ok(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=io.stackctl.project={PROJECT}"),
    ]);
    for v in vols.lines().filter(|l| !l.is_empty()) {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", v])
            .output();
    }
    let _ = std::fs::remove_dir_all(host_dir());
    for tag in ["ssh-v1", "ssh-v2"] {
        let _ = Command::new("docker").args(["rmi", &image(tag)]).output();
    }
}

struct Cleanup;
impl Drop for Cleanup {
    fn drop(&mut self) {
        cleanup();
    }
}

/// The image the analytics container runs, by id.
fn running_image() -> String {
    docker_ok(&[
        "inspect",
        "-f",
        "{{.Image}}",
        &format!("{PROJECT}-analytics-1"),
    ])
    .trim()
    .to_string()
}

/// No ssh process of stackctl's is left once its command has returned.
fn no_tunnel_left() {
    let o = Command::new("pgrep")
        .args(["-af", "stackctl-ssh-"])
        .output()
        .expect("pgrep");
    assert!(
        stdout(&o).trim().is_empty(),
        "an ssh tunnel outlived its command: {}",
        stdout(&o)
    );
}

#[test]
fn deploys_and_rolls_back_over_ssh() {
    cleanup();
    let _cleanup = Cleanup;
    let sshd = Sshd::start();
    let ci_dir = checkout(None);
    let ci = ci_dir.path().to_path_buf();

    // No key for that user; a user who may log in but not open the
    // daemon's socket: each a clear error (exit 30), not a hang or a trace.
    for (user, says) in [
        ("daemon", "Permission denied"),
        ("nobody", "may that user open the socket"),
    ] {
        let mut c = bin();
        c.current_dir(&ci)
            .env("DOCKER_HOST", sshd.host(user))
            .env("STACKCTL_SSH_OPTS", sshd.opts())
            .args(["status"]);
        let t = Instant::now();
        let o = run_logged(&mut c, &format!("status (over ssh as {user})"));
        assert_eq!(o.status.code(), Some(30), "unreachable daemon: exit 30");
        let said = stderr(&o);
        assert!(
            said.contains(&format!("ssh://{user}@127.0.0.1:{}", sshd.port)) && said.contains(says),
            "{said}"
        );
        assert!(!said.contains("panicked"), "{said}");
        eprintln!("{user}: refused in {:.1} s", t.elapsed().as_secs_f64());
    }
    no_tunnel_left();

    // CI, on its own runner (this machine's engine): set up, build and push
    // the images for this commit (the service's by commit, the Debian-built
    // ones by recipe hash).
    let mut c = bin();
    c.current_dir(&ci)
        .env("IMAGE_TAG", "ssh-v1")
        .args(["setup"]);
    succeeded(&run_logged(&mut c, "setup (CI's engine)"), "setup");
    let mut c = bin();
    c.current_dir(&ci)
        .env("IMAGE_TAG", "ssh-v1")
        .args(["build", "--push"]);
    let pushed = succeeded(
        &run_logged(&mut c, "build --push (CI's engine)"),
        "build --push",
    );
    let debian = [
        "stackctl/nginx:1.22-bookworm",
        "stackctl/postgres:15-bookworm",
    ];
    for d in debian {
        assert!(
            pushed.contains(&format!("pushed {REGISTRY}/{d}-")),
            "{d} pushed under its recipe hash: {pushed}"
        );
    }
    let v1 = image_id(&image("ssh-v1"));
    // The production host has no copy of any of them: the deploy's set-up
    // and the deploy itself must pull them.
    docker_ok(&["rmi", &image("ssh-v1")]);
    for d in debian {
        let tags = docker_ok(&[
            "image",
            "inspect",
            "-f",
            "{{range .RepoTags}}{{.}} {{end}}",
            d,
        ]);
        for t in tags.split_whitespace() {
            docker_ok(&["rmi", t]);
        }
    }

    // CI, deploying over SSH: set up (secrets here, the Debian images
    // there), then deploy without building.
    let t = Instant::now();
    let out = ok(&sshd, &ci, "ssh-v1", &["setup"]);
    for d in debian {
        assert!(
            out.contains(&format!("pulled {d} from {REGISTRY}")),
            "{d} pulled, not built: {out}"
        );
    }
    let out = ok(
        &sshd,
        &ci,
        "ssh-v1",
        &["deploy", "--no-build", "--watch", "2s"],
    );
    assert!(
        out.contains(&format!("pulled {}", image("ssh-v1"))),
        "{out}"
    );
    assert!(out.contains("revision 1 is live"), "{out}");
    eprintln!(
        "setup + pull + deploy over ssh: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    no_tunnel_left();
    assert_eq!(running_image(), v1, "the pulled image is the one CI built");

    // Every file a container mounts is on the daemon's host, none in the checkout.
    let mounts = docker_ok(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{if eq .Type \"bind\"}}{{.Source}}\n{{end}}{{end}}",
        &format!("{PROJECT}-nginx-1"),
        &format!("{PROJECT}-postgres-analytics-1"),
        &format!("{PROJECT}-analytics-1"),
    ]);
    let binds: Vec<&str> = mounts.lines().filter(|l| !l.is_empty()).collect();
    assert!(binds.len() >= 5, "{mounts}");
    for b in &binds {
        assert!(
            b.starts_with(host_dir().to_str().unwrap()),
            "{b} is not under {}",
            host_dir().display()
        );
        assert!(Path::new(b).is_file(), "{b} is missing on the host");
    }
    assert!(
        binds
            .iter()
            .any(|b| b.ends_with("/deploy/nginx/nginx.conf")),
        "{mounts}"
    );
    let key = host_dir().join(format!("run/{PROJECT}-nginx-1/nginx-tls-key"));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o444, "a secret is readable in its container");
    assert_eq!(
        mode(&host_dir().join("run")),
        0o700,
        "secrets are root's on the host"
    );
    assert_eq!(
        std::fs::read(&key).unwrap(),
        std::fs::read(ci.join("secrets/nginx-tls-key")).unwrap(),
        "the checkout's secret, put on the host"
    );
    let helpers = docker_ok(&["ps", "-aq", "--filter", "label=io.stackctl.role=files"]);
    assert!(
        helpers.trim().is_empty(),
        "the file helper containers are removed"
    );

    // Through Nginx (its rendered config, its TLS key) to the service and
    // its database (the password secret): the service's own answer, not
    // Nginx's 502.
    let client = https_client();
    let r = client
        .get(format!("https://127.0.0.1:{HTTPS}/usage/daily"))
        .send()
        .expect("https through nginx");
    let status = r.status().as_u16();
    let body = r.text().unwrap_or_default();
    assert_eq!(status, 200, "the service answers through Nginx: {body}");
    assert!(body.contains("\"days\""), "{body}");
    let health = ok(&sshd, &ci, "ssh-v1", &["health"]);
    assert!(!health.contains("unhealthy"), "{health}");

    // Revision 2: a changed image.
    docker_build_text(
        &image("ssh-v2"),
        &format!("FROM {}\nLABEL e2e.change=\"ssh-v2\"\n", image("ssh-v1")),
    );
    let out = ok(
        &sshd,
        &ci,
        "ssh-v2",
        &["deploy", "--no-build", "--watch", "2s"],
    );
    assert!(out.contains("revision 2 is live"), "{out}");
    assert_eq!(running_image(), image_id(&image("ssh-v2")));

    // 3 a.m., from a laptop: only stack.toml and the secrets, no deploy/,
    // no .stackctl/, no images built there.
    let laptop = checkout(Some(&ci));
    let history = ok(&sshd, laptop.path(), "ssh-v2", &["history"]);
    assert!(
        history.contains('2') && history.contains("deploy"),
        "{history}"
    );
    let t = Instant::now();
    let out = ok(&sshd, laptop.path(), "ssh-v2", &["rollback"]);
    eprintln!(
        "rollback over ssh from another checkout: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(out.contains("revision 3"), "{out}");
    assert_eq!(
        running_image(),
        v1,
        "the rollback put revision 1's image back"
    );
    let health = ok(&sshd, laptop.path(), "ssh-v2", &["health"]);
    assert!(!health.contains("unhealthy"), "{health}");
    no_tunnel_left();
    eprintln!(
        "sshd saw:\n{}",
        sshd.log()
            .lines()
            .filter(|l| l.contains("Accepted") || l.contains("forward"))
            .take(8)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let _ = ok(&sshd, &ci, "ssh-v1", &["down", "--volumes", "--yes"]);
}
