//! Day one on a fresh machine: `stackctl setup` with debootstrap absent from
//! PATH either installs it through apt-get (here a fake that records its
//! arguments and installs nothing) or stops with the exact command to run,
//! a documented exit code and no stack trace. The engine is never reached:
//! the host is prepared first.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{bin, stderr, stdout, Project};

/// A stack with one Debian-built image (and a crate service, as every stack has).
const STACK: &str = r#"
[stack]
name = "dayone"
tag = "dev"

[networks.backend]
internal = true

[services.analytics]
path = "services/analytics"
port = 8003
networks = ["backend"]
redis = true

[infra.redis]
build = "debian"
image = "stackctl/redis:7-bookworm"

[infra.nginx]
enabled = false

[monitoring]
enabled = false

[logging]
enabled = false
"#;

/// The exit code of a missing host tool: the image build cannot start
/// (README: 33, an image build failed).
const EXIT_HOST_TOOL: i32 = 33;

struct DayOne {
    project: Project,
    bin_dir: PathBuf,
    calls: PathBuf,
    cache: PathBuf,
}

impl DayOne {
    fn new() -> DayOne {
        let project = Project::new(STACK);
        let bin_dir = project.path().join("fake-bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        let calls = project.path().join("apt-get.calls");
        // apt-get that records its arguments and installs nothing.
        let fake = format!(
            "#!/bin/sh\necho \"DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*\" >> '{}'\nexit 0\n",
            calls.display()
        );
        let apt = bin_dir.join("apt-get");
        std::fs::write(&apt, fake).unwrap();
        std::fs::set_permissions(&apt, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The shell the fake needs, and nothing else (no debootstrap).
        let cache = project.path().join("rootfs-cache");
        DayOne {
            project,
            bin_dir,
            calls,
            cache,
        }
    }

    fn setup(&self, no_install: bool) -> Output {
        let mut c = bin();
        c.current_dir(self.project.path())
            .arg("setup")
            .env("PATH", path_without_debootstrap(&self.bin_dir))
            .env("STACKCTL_ROOTFS_CACHE", &self.cache)
            .env("RUST_BACKTRACE", "1")
            // Never reach an engine, whatever happens.
            .env("DOCKER_HOST", "unix:///nonexistent/stackctl-dayone.sock");
        if no_install {
            c.env("STACKCTL_NO_INSTALL", "1");
        } else {
            c.env_remove("STACKCTL_NO_INSTALL");
        }
        let o = c.output().expect("run stackctl setup");
        eprintln!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            o.status.code(),
            stdout(&o),
            stderr(&o)
        );
        o
    }

    fn apt_calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// The fake's directory, then every system directory that holds no debootstrap
/// (so /bin/sh and the usual tools stay reachable).
fn path_without_debootstrap(fake: &Path) -> String {
    let mut dirs = vec![fake.to_path_buf()];
    for d in ["/usr/local/bin", "/usr/bin", "/bin"] {
        if !Path::new(d).join("debootstrap").exists() {
            dirs.push(PathBuf::from(d));
        }
    }
    std::env::join_paths(dirs)
        .unwrap()
        .to_string_lossy()
        .to_string()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn is_debian_like() -> bool {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    os.lines().any(|l| {
        (l.starts_with("ID=") || l.starts_with("ID_LIKE="))
            && (l.contains("debian") || l.contains("ubuntu"))
    })
}

fn assert_no_trace(o: &Output) {
    let all = format!("{}{}", stdout(o), stderr(o));
    assert!(
        !all.contains("panicked")
            && !all.contains("stack backtrace")
            && !all.contains("RUST_BACKTRACE"),
        "no stack trace:\n{all}"
    );
}

#[test]
fn setup_stops_with_the_install_command_when_it_may_not_install() {
    let d = DayOne::new();
    let o = d.setup(true);
    assert_eq!(o.status.code(), Some(EXIT_HOST_TOOL));
    let err = stderr(&o);
    assert!(err.contains("debootstrap is not installed"), "{err}");
    assert!(
        err.contains("apt-get install -y --no-install-recommends debootstrap"),
        "the exact command: {err}"
    );
    assert!(
        err.contains("STACKCTL_NO_INSTALL"),
        "says why it did not install: {err}"
    );
    assert_no_trace(&o);
    assert!(
        d.apt_calls().is_empty(),
        "apt-get is not run: {:?}",
        d.apt_calls()
    );
    assert!(!d.cache.exists(), "nothing was built");
}

#[test]
fn setup_installs_debootstrap_through_apt_get_as_root_on_debian() {
    if !is_root() || !is_debian_like() {
        eprintln!("skipped: needs root on Debian/Ubuntu (stackctl installs only there)");
        return;
    }
    let d = DayOne::new();
    let o = d.setup(false);
    let calls = d.apt_calls();
    assert!(
        calls.iter().any(|c| c
            == "DEBIAN_FRONTEND=noninteractive install -y --no-install-recommends debootstrap"),
        "asks apt-get for debootstrap: {calls:?}"
    );
    let err = stderr(&o);
    assert!(
        err.contains("installing debootstrap")
            && err.contains("apt-get install -y --no-install-recommends debootstrap"),
        "says what it installs: {err}"
    );
    // The fake installed nothing: setup says so and stops, cleanly.
    assert_eq!(o.status.code(), Some(EXIT_HOST_TOOL));
    assert!(err.contains("still missing"), "{err}");
    assert_no_trace(&o);
    assert!(!d.cache.exists(), "nothing was built");
}
