//! `DOCKER_HOST=ssh://[user@]host[:port][/path/to/docker.sock]`: one OpenSSH
//! connection for the command's life, forwarding a private local socket to
//! the daemon's socket on that host (`ssh -L`), which stackctl then speaks
//! to as to a local daemon.
//!
//! Why not bollard's `ssh` feature: it opens an SSH master per pooled HTTP
//! connection, needs the docker CLI on the far host (`docker system
//! dial-stdio`) and (0.21) drops a `:port`. The system `ssh` reads the
//! user's `~/.ssh/config`, agent and known hosts as every other tool does;
//! `STACKCTL_SSH_OPTS` adds options (`-i KEY -o UserKnownHostsFile=FILE`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where an `ssh://` DOCKER_HOST points.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// `user@host` or `host`, as ssh takes it.
    pub destination: String,
    pub port: Option<u16>,
    /// The daemon's socket on that host.
    pub socket: String,
}

pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Parse `ssh://[user@]host[:port][/socket]`.
pub fn parse(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("ssh://")
        .ok_or_else(|| format!("{url} is not an ssh:// address"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) if !u.is_empty() => (Some(u), h),
        Some(_) => return Err(format!("{url}: empty user name before @")),
        None => (None, authority),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url}: unclosed [ in the host"))?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url}: no host name"));
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{url}: `{p}` is not a port number"))
        })
        .transpose()?;
    Ok(Target {
        destination: match user {
            Some(u) => format!("{u}@{host}"),
            None => host.to_string(),
        },
        port,
        socket: if path.is_empty() || path == "/" {
            DEFAULT_SOCKET.to_string()
        } else {
            path.to_string()
        },
    })
}

/// A running `ssh -N -L`; closed (and its socket removed) when dropped.
pub struct Tunnel {
    child: Child,
    dir: PathBuf,
    /// The local end: a unix socket only this user can open.
    pub socket: PathBuf,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The ssh command line for `target`, the local socket at `local`.
pub fn command(target: &Target, local: &std::path::Path, extra: &str) -> Command {
    let mut c = Command::new("ssh");
    c.args(extra.split_whitespace());
    c.args([
        "-N",
        "-T",
        "-o",
        "ExitOnForwardFailure=yes",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-L",
    ]);
    c.arg(format!("{}:{}", local.display(), target.socket));
    if let Some(p) = target.port {
        c.args(["-p", &p.to_string()]);
    }
    c.arg("--").arg(&target.destination);
    c
}

/// Open the tunnel and wait (up to `wait`) until its local socket exists.
pub async fn open(target: &Target, wait: Duration) -> Result<Tunnel, String> {
    use std::os::unix::fs::DirBuilderExt;
    use std::os::unix::process::CommandExt;
    let dir = std::env::temp_dir().join(format!(
        "stackctl-ssh-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let socket = dir.join("docker.sock");
    let log = dir.join("ssh.log");
    let stderr =
        std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let extra = std::env::var("STACKCTL_SSH_OPTS").unwrap_or_default();
    let mut cmd = command(target, &socket, &extra);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: prctl is async-signal-safe; the tunnel ends with stackctl,
    // even when stackctl is killed before it can drop it.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "cannot run ssh ({e}); install the OpenSSH client (apt-get install openssh-client)"
            ));
        }
    };
    let mut tunnel = Tunnel { child, dir, socket };
    let t0 = Instant::now();
    loop {
        if tunnel.socket.exists() {
            return Ok(tunnel);
        }
        if let Ok(Some(status)) = tunnel.child.try_wait() {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "ssh {} exited ({status}) before forwarding {}: {}",
                target.destination,
                target.socket,
                said.trim()
            ));
        }
        if t0.elapsed() > wait {
            return Err(format!(
                "ssh {} did not forward {} within {} s",
                target.destination,
                target.socket,
                wait.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_user_host_port_and_socket() {
        assert_eq!(
            parse("ssh://deploy@prod.example.com").unwrap(),
            Target {
                destination: "deploy@prod.example.com".into(),
                port: None,
                socket: DEFAULT_SOCKET.into()
            }
        );
        let t = parse("ssh://root@127.0.0.1:2222/run/user/1000/docker.sock").unwrap();
        assert_eq!(t.destination, "root@127.0.0.1");
        assert_eq!(t.port, Some(2222));
        assert_eq!(t.socket, "/run/user/1000/docker.sock");
        let t = parse("ssh://[::1]:22").unwrap();
        assert_eq!((t.destination.as_str(), t.port), ("::1", Some(22)));
        assert_eq!(parse("ssh://prod").unwrap().destination, "prod");
        for bad in [
            "ssh://",
            "ssh://@host",
            "ssh://host:x",
            "ssh://host:0",
            "tcp://h",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_forwards_the_socket_with_the_port_and_extra_options() {
        let t = parse("ssh://deploy@prod:2222").unwrap();
        let c = command(&t, std::path::Path::new("/tmp/x/docker.sock"), "-i /k/id");
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = args.join(" ");
        assert!(line.starts_with("-i /k/id -N -T"), "{line}");
        assert!(
            line.contains("-L /tmp/x/docker.sock:/var/run/docker.sock"),
            "{line}"
        );
        assert!(line.ends_with("-p 2222 -- deploy@prod"), "{line}");
        assert!(line.contains("ExitOnForwardFailure=yes"), "{line}");
    }
}
