//! The shared base root file system of a Debian suite: debootstrap minbase
//! (signatures checked) plus what every image needs, upgraded from the update
//! and security pockets, slimmed, and kept unpacked under the cache directory
//! (`/var/tmp/stackctl-rootfs/base-<suite>-<hash>/`, with the apt lists it was
//! installed from beside it). Each image adds its packages on top of it (see
//! [`super::layer`]); the base is debootstrapped once.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::recipe::Base;

/// Where the base rootfs, the image layers (and the work directories) live.
pub const CACHE_DIR: &str = "/var/tmp/stackctl-rootfs";

/// The cache directory: `STACKCTL_ROOTFS_CACHE`, else [`CACHE_DIR`].
pub fn cache_dir() -> PathBuf {
    std::env::var_os("STACKCTL_ROOTFS_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CACHE_DIR))
}

/// Where builds do their work: a tmpfs (/dev/shm) when it has room (dpkg's
/// many fsyncs cost nothing there), else the cache directory.
/// `STACKCTL_ROOTFS_SCRATCH` overrides.
pub fn scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("STACKCTL_ROOTFS_SCRATCH").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    let is_tmpfs = std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == "/dev/shm" && f[2] == "tmpfs"
        })
    });
    if is_tmpfs && statvfs_free(shm).is_some_and(|b| b >= SCRATCH_MIN_BYTES) {
        return shm.join("stackctl-rootfs");
    }
    cache_dir()
}

/// The room a tmpfs needs to be used for builds (several images at once).
pub const SCRATCH_MIN_BYTES: u64 = 6 << 30;

fn statvfs_free(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// The keyring debootstrap checks Debian's Release signatures with when the
/// host's apt source names none.
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The package that provides [`DEBIAN_KEYRING`].
pub const KEYRING_PACKAGE: &str = "debian-archive-keyring";

/// An apt source for the suite: the mirror debootstrap downloads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub uri: String,
    pub keyring: Option<PathBuf>,
    /// The file it was read from, for messages.
    pub source: PathBuf,
}

/// The host's apt source files, in the order apt reads them (deb822
/// `.sources` files first, then `sources.list`, then `.list` files).
fn source_files() -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    candidates.extend(
        files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "sources"))
            .cloned(),
    );
    candidates.push(PathBuf::from("/etc/apt/sources.list"));
    candidates.extend(
        files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "list"))
            .cloned(),
    );
    candidates
}

/// The host's apt source for `suite`, if it has one.
pub fn find_source(suite: &str) -> Option<Mirror> {
    for path in source_files() {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let found = if path.extension().is_some_and(|e| e == "sources") {
            parse_deb822(&text, suite)
        } else {
            parse_one_line(&text, suite)
        };
        if let Some((uri, keyring)) = found {
            return Some(Mirror {
                uri,
                keyring: keyring.map(PathBuf::from),
                source: path,
            });
        }
    }
    None
}

/// The mirror debootstrap downloads `suite` from, read from the host's apt sources.
pub fn find_mirror(suite: &str) -> Result<Mirror> {
    find_source(suite).ok_or_else(|| {
        anyhow!(
            "no apt source for Debian {suite} found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list\n  \
             hint: add one, e.g. /etc/apt/sources.list.d/debian.sources with\n  \
             Types: deb / URIs: http://deb.debian.org/debian / Suites: {suite} / Components: main"
        )
    })
}

/// The first `Types: deb` stanza listing `suite` in `Suites`: (URI, Signed-By).
pub fn parse_deb822(text: &str, suite: &str) -> Option<(String, Option<String>)> {
    let mut stanza: Vec<(String, String)> = Vec::new();
    let mut stanzas = Vec::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if !stanza.is_empty() {
                stanzas.push(std::mem::take(&mut stanza));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            // A continuation line (e.g. an inline key for Signed-By).
            if let Some(last) = stanza.last_mut() {
                last.1.push('\n');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            stanza.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    for st in stanzas {
        let get = |key: &str| st.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        if get("enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            continue;
        }
        if !get("types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb")) {
            continue;
        }
        if !get("suites").is_some_and(|s| s.split_whitespace().any(|s| s == suite)) {
            continue;
        }
        let Some(uri) = get("uris").and_then(|u| u.split_whitespace().next()) else {
            continue;
        };
        // Only a path is usable as --keyring (an inline key block is not).
        let keyring = get("signed-by")
            .filter(|k| k.starts_with('/') && !k.contains('\n'))
            .map(str::to_string);
        return Some((uri.to_string(), keyring));
    }
    None
}

/// The first `deb [options] URI suite components` line for `suite`.
pub fn parse_one_line(text: &str, suite: &str) -> Option<(String, Option<String>)> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim_start();
        let mut keyring = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let (o, after) = opts.split_once(']')?;
            for opt in o.split_whitespace() {
                if let Some(k) = opt.strip_prefix("signed-by=") {
                    keyring = Some(k.to_string());
                }
            }
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(s)) = (words.next(), words.next()) else {
            continue;
        };
        if s == suite {
            return Some((uri.to_string(), keyring));
        }
    }
    None
}

/// Effective uid of this process, from /proc/self/status.
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `name` on `PATH` (the usual system directories when PATH is unset).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The keyring debootstrap verifies the mirror with: the one the host's apt
/// source names (`Signed-By`), else Debian's.
pub fn keyring_for(mirror: Option<&Mirror>) -> PathBuf {
    mirror
        .and_then(|m| m.keyring.clone())
        .filter(|k| k.is_file())
        .unwrap_or_else(|| PathBuf::from(DEBIAN_KEYRING))
}

/// debootstrap must be installed, the keyring present, and we must be root:
/// the error says how to fix it.
pub fn preflight(
    debootstrap: Option<PathBuf>,
    keyring: &Path,
    euid: Option<u32>,
    what: &str,
) -> Result<PathBuf> {
    let debootstrap = debootstrap.ok_or_else(|| {
        anyhow!(
            "debootstrap is not installed; it builds the Debian rootfs of {what}\n  \
             hint: apt-get install debootstrap (`stackctl setup` installs it when run as root)"
        )
    })?;
    if !keyring.is_file() {
        bail!(
            "the Debian archive keyring {} is missing: debootstrap cannot check the mirror's signatures for {what}\n  \
             hint: apt-get install {KEYRING_PACKAGE} (`stackctl setup` installs it when run as root)",
            keyring.display()
        );
    }
    if euid != Some(0) {
        bail!(
            "building the rootfs of {what} needs root: debootstrap creates device nodes, chroots and sets file owners\n  \
             hint: run stackctl as root (sudo stackctl ...), or build the images once as root"
        );
    }
    Ok(debootstrap)
}

/// Free space a rootfs build needs (debootstrap's tree, its package cache and
/// the tarball; postgres, the largest, peaks near 700 MB).
pub const MIN_FREE_BYTES: u64 = 1_500_000_000;

/// Bytes available to us on the file system holding `path` (`df -Pk`).
fn free_bytes(path: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .arg("-Pk")
        .arg(path)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    parse_df_available(&String::from_utf8_lossy(&out.stdout))
}

/// The "Available" column (KiB) of `df -Pk` output, in bytes.
pub fn parse_df_available(text: &str) -> Option<u64> {
    let line = text.lines().nth(1)?;
    let kib: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(kib * 1024)
}

/// A base rootfs unpacked in the cache: `rootfs/` (what the base image is
/// made of and every image's overlay lower directory), `lists/` (the apt
/// lists the base was installed from) and `id` (a random build id: an image
/// layer is only valid on top of the very tree it was computed against).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseTree {
    pub dir: PathBuf,
    pub id: String,
    pub suite: String,
}

impl BaseTree {
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    pub fn lists(&self) -> PathBuf {
        self.dir.join("lists")
    }
}

/// The cache directory of a base: `base-<suite>-<hash16>`.
pub fn base_dir(base: &Base) -> PathBuf {
    cache_dir().join(format!("base-{}-{}", base.suite, &base.hash()[..16]))
}

/// The base tree when it is complete in the cache.
pub fn cached_base(base: &Base) -> Option<BaseTree> {
    let dir = base_dir(base);
    let id = std::fs::read_to_string(dir.join("id")).ok()?;
    let id = id.trim().to_string();
    (!id.is_empty() && dir.join("rootfs/etc/os-release").exists()).then_some(BaseTree {
        dir,
        id,
        suite: base.suite.clone(),
    })
}

fn new_id() -> String {
    use sha2::{Digest, Sha256};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let r: u64 = rand::random();
    hex::encode(Sha256::digest(format!(
        "{nanos} {} {r}",
        std::process::id()
    )))[..16]
        .to_string()
}

/// Make sure the suite's base tree is in the cache; debootstrap it when it is
/// not. Returns it and whether it was built now.
pub async fn ensure_base_tree(
    base: &Base,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(BaseTree, bool)> {
    if let Some(tree) = cached_base(base) {
        progress(&format!("base: cached {}", tree.dir.display()));
        return Ok((tree, false));
    }
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)
        .map_err(|e| io_hint(e, &format!("cannot create {}", cache.display())))?;
    let what = format!("the shared Debian {} base", base.suite);
    let mirror = find_source(&base.suite);
    let keyring = keyring_for(mirror.as_ref());
    let debootstrap = preflight(
        find_program("debootstrap"),
        &keyring,
        effective_uid(),
        &what,
    )?;
    let mirror = match mirror {
        Some(m) => m,
        None => find_mirror(&base.suite)?,
    };
    if let Some(free) = free_bytes(&cache) {
        if free < MIN_FREE_BYTES {
            bail!(
                "the disk is full: {:.0} MB free under {}, building the Debian images needs about {:.0} MB\n  \
                 hint: free space on that file system (df -h {}), then run again",
                free as f64 / 1e6,
                cache.display(),
                MIN_FREE_BYTES as f64 / 1e6,
                cache.display()
            );
        }
    }
    let work = WorkDir::new(&format!("base-{}", base.suite))?;
    let target = work.path.join("rootfs");
    run_debootstrap(&debootstrap, base, &mirror, &keyring, &target, progress).await?;
    let mut sources = vec![(base.suite.clone(), mirror.clone())];
    for pocket in UPDATE_POCKETS {
        let suite = format!("{}-{pocket}", base.suite);
        if let Some(m) = find_source(&suite) {
            sources.push((suite, m));
        }
    }
    configure_base(&target, &sources, progress).await?;
    // The apt lists stay beside the tree (each image installs from them), not in it.
    let lists = target.join("var/lib/apt/lists");
    std::fs::rename(&lists, work.path.join("lists"))
        .map_err(|e| io_hint(e, "cannot move the apt lists out of the base"))?;
    std::fs::create_dir_all(lists.join("partial"))
        .map_err(|e| io_hint(e, "cannot recreate the apt lists directory"))?;
    progress("base: slimming (docs, man pages, locales, apt caches)");
    unmount_under(&target);
    slim(&target, &base.prune)?;
    let id = new_id();
    std::fs::write(work.path.join("id"), format!("{id}\n"))
        .map_err(|e| io_hint(e, "cannot write the base's id"))?;
    let dir = base_dir(base);
    // Into the cache (from a tmpfs: a copy), then renamed into place at once.
    let staged = cache.join(format!(
        ".{}.{}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staged);
    progress("base: keeping the tree in the cache");
    copy_tree(&work.path, &staged).await?;
    if std::fs::rename(&staged, &dir).is_err() {
        // Another process finished first: use its tree (ours is removed).
        let _ = std::fs::remove_dir_all(&staged);
        if let Some(tree) = cached_base(base) {
            return Ok((tree, false));
        }
        bail!("cannot move the base rootfs to {}", dir.display());
    }
    prune_other_bases(base, &dir);
    Ok((
        BaseTree {
            dir,
            id,
            suite: base.suite.clone(),
        },
        true,
    ))
}

/// `cp -a` (hard links, owners, modes, devices kept): the work may be on a tmpfs.
async fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| anyhow!("cannot run cp: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(to);
        let err = String::from_utf8_lossy(&out.stderr);
        if err.to_ascii_lowercase().contains("no space left") {
            bail!("copying the base rootfs to {} failed: the disk is full\n  hint: free space on that file system (df -h /var/tmp), then run again", to.display());
        }
        bail!(
            "copying the base rootfs to {} failed: {}",
            to.display(),
            err.trim()
        );
    }
    Ok(())
}

/// Bases of other hashes (an older stackctl's) and the per-kind tarballs of
/// the layout before the shared base are no longer needed.
fn prune_other_bases(base: &Base, keep: &Path) {
    let Ok(rd) = std::fs::read_dir(cache_dir()) else {
        return;
    };
    let prefix = format!("base-{}-", base.suite);
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let p = entry.path();
        if p == keep {
            continue;
        }
        let old_base = name
            .strip_prefix(&prefix)
            .is_some_and(|h| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()));
        if old_base && !still_mounted_under(&p) {
            let _ = std::fs::remove_dir_all(&p);
        } else if is_legacy_tarball(&name) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// `<kind>-<16 hex>.tar`: a rootfs tarball of the layout before the shared base.
fn is_legacy_tarball(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".tar") else {
        return false;
    };
    let Some((kind, hash)) = stem.rsplit_once('-') else {
        return false;
    };
    ["postgres", "redis", "nginx", "prometheus"].contains(&kind)
        && hash.len() == 16
        && hash.chars().all(|c| c.is_ascii_hexdigit())
}

/// Run a command, passing the lines `keep` selects to `progress` and keeping
/// the last 40 of all; Err((status text, tail)) when it fails.
pub async fn run_logged(
    mut cmd: Command,
    progress: &(dyn Fn(&str) + Sync),
    keep: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<(), (String, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let program = format!("{:?}", cmd.as_std().get_program());
    let mut child = cmd
        .spawn()
        .map_err(|e| (format!("cannot start {program}: {e}"), String::new()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for reader in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut tail: VecDeque<String> = VecDeque::new();
    while let Some(line) = rx.recv().await {
        if let Some(l) = keep(&line) {
            progress(&l);
        }
        tail.push_back(line);
        if tail.len() > 40 {
            tail.pop_front();
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| (format!("waiting for {program}: {e}"), String::new()))?;
    if status.success() {
        return Ok(());
    }
    Err((status.to_string(), Vec::from(tail).join("\n")))
}

async fn run_debootstrap(
    debootstrap: &Path,
    base: &Base,
    mirror: &Mirror,
    keyring: &Path,
    target: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let packages = base.packages.join(",");
    let mut cmd = Command::new(debootstrap);
    cmd.arg("--force-check-gpg")
        .arg(format!("--keyring={}", keyring.display()))
        .arg(format!("--variant={}", base.variant))
        .arg(format!("--include={packages}"))
        .arg("--components=main")
        .arg(&base.suite)
        .arg(target)
        .arg(&mirror.uri)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C");
    progress(&format!(
        "base: debootstrap --variant={} {} from {} (from {}), packages {packages}, signatures checked with {}",
        base.variant,
        base.suite,
        mirror.uri,
        mirror.source.display(),
        keyring.display()
    ));
    // debootstrap's progress lines are "I: ..."; pass them on.
    let keep = |line: &str| {
        (line.starts_with("I: ") || line.starts_with("W: ") || line.starts_with("E: "))
            .then(|| format!("base: {line}"))
    };
    let Err((status, tail)) = run_logged(cmd, progress, &keep).await else {
        return Ok(());
    };
    let hint = classify_debootstrap_failure(&tail, mirror);
    // The real reason is often in the target's debootstrap.log.
    let log = std::fs::read_to_string(target.join("debootstrap/debootstrap.log"))
        .map(|l| {
            let lines: Vec<&str> = l.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        })
        .unwrap_or_default();
    let log_hint = if log.is_empty() {
        String::new()
    } else {
        format!("\n  debootstrap.log (last lines):\n{log}")
    };
    let disk = classify_debootstrap_failure(&log, mirror);
    let lines: Vec<&str> = tail.lines().collect();
    bail!(
        "debootstrap of the Debian {} base failed ({status}):\n{}{log_hint}\n  hint: {}",
        base.suite,
        lines[lines.len().saturating_sub(15)..].join("\n"),
        if hint.is_empty() { disk } else { hint }
    )
}

/// has apt sources for them).
pub const UPDATE_POCKETS: [&str; 2] = ["updates", "security"];

/// The image's apt sources in deb822 form: the release and its update pockets.
pub fn sources_deb822(sources: &[(String, Mirror)], root: &Path) -> String {
    let mut out = String::from("# Written by stackctl from the build host's apt sources.\n");
    for (suite, m) in sources {
        out.push_str(&format!(
            "\nTypes: deb\nURIs: {}\nSuites: {suite}\nComponents: main\n",
            m.uri
        ));
        if let Some(k) = &m.keyring {
            // Only a keyring that exists inside the image can be named.
            if root.join(k.strip_prefix("/").unwrap_or(k)).is_file() {
                out.push_str(&format!("Signed-By: {}\n", k.display()));
            }
        }
    }
    out
}

/// A command run inside `root` by chroot, with apt's non-interactive settings.
pub fn chroot_command(root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .args(args)
        .env_clear()
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C")
        .env("HOME", "/root")
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    cmd
}

/// apt-get arguments that never ask: keep changed configuration files.
pub const APT_QUIET: [&str; 6] = [
    "-q",
    "-y",
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
];

/// No service starts while an image is built.
pub const POLICY_RC_D: &str =
    "#!/bin/sh\n# stackctl: no service starts while building an image\nexit 101\n";

pub fn write_policy_rc_d(root: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let policy = root.join("usr/sbin/policy-rc.d");
    std::fs::write(&policy, POLICY_RC_D).map_err(|e| io_hint(e, "cannot write policy-rc.d"))?;
    std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| io_hint(e, "cannot chmod policy-rc.d"))?;
    Ok(policy)
}

/// Write the base's apt sources (the release and its update pockets), fetch
/// the lists and apply the pockets' fixes (`apt-get upgrade` in a chroot).
async fn configure_base(
    root: &Path,
    sources: &[(String, Mirror)],
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let apt = root.join("etc/apt");
    std::fs::write(
        apt.join("sources.list.d/debian.sources"),
        sources_deb822(sources, root),
    )
    .map_err(|e| io_hint(e, "cannot write the rootfs' apt sources"))?;
    let _ = std::fs::remove_file(apt.join("sources.list"));
    let policy = write_policy_rc_d(root)?;
    let unsafe_io = root.join("etc/dpkg/dpkg.cfg.d/stackctl-build");
    std::fs::write(&unsafe_io, "force-unsafe-io\n")
        .map_err(|e| io_hint(e, "cannot write the dpkg build settings"))?;
    let proc_dir = root.join("proc");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(&proc_dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let pockets: Vec<&str> = sources.iter().skip(1).map(|(s, _)| s.as_str()).collect();
    let mut steps: Vec<Vec<&str>> = vec![vec!["apt-get", "-q", "update"]];
    if pockets.is_empty() {
        progress(
            "base: no update/security sources on this host; packages stay at the release versions",
        );
    } else {
        progress(&format!(
            "base: apt-get upgrade from {}",
            pockets.join(", ")
        ));
        let mut upgrade = vec!["apt-get"];
        upgrade.extend(APT_QUIET);
        upgrade.push("upgrade");
        steps.push(upgrade);
    }
    steps.push(vec!["apt-get", "clean"]);
    let mut result = Ok(());
    for args in steps {
        let keep = |l: &str| {
            (l.starts_with("Unpacking ") || l.contains(" upgraded, ") || l.starts_with("Fetched "))
                .then(|| format!("base: {l}"))
        };
        if let Err((status, tail)) = run_logged(chroot_command(root, &args), progress, &keep).await
        {
            let hint = classify_debootstrap_failure(&tail, &sources[sources.len() - 1].1);
            let lines: Vec<&str> = tail.lines().collect();
            result = Err(anyhow!(
                "`{}` in the new base rootfs failed ({status}):\n{}{}",
                args.join(" "),
                lines[lines.len().saturating_sub(15)..].join("\n"),
                if hint.is_empty() {
                    String::new()
                } else {
                    format!("\n  hint: {hint}")
                }
            ));
            break;
        }
    }
    if mounted {
        let _ = std::process::Command::new("umount").arg(&proc_dir).status();
    }
    let _ = std::fs::remove_file(&policy);
    let _ = std::fs::remove_file(&unsafe_io);
    result
}

/// A hint for the usual ways debootstrap fails.
pub fn classify_debootstrap_failure(output: &str, mirror: &Mirror) -> String {
    let o = output.to_ascii_lowercase();
    if o.contains("no space left on device") {
        return format!(
            "the disk is full: free space on the file system holding {CACHE_DIR} (df -h /var/tmp), then run again"
        );
    }
    if o.contains("failed getting release file")
        || o.contains("couldn't download")
        || o.contains("could not resolve")
        || o.contains("temporary failure in name resolution")
        || o.contains("connection refused")
        || o.contains("failed to connect")
        || o.contains("unable to connect")
        || o.contains("failed to fetch")
    {
        return format!(
            "the Debian mirror {} (from {}) is unreachable: check the network or proxy, or point that file at a reachable mirror",
            mirror.uri,
            mirror.source.display()
        );
    }
    if o.contains("release signed by unknown key") || o.contains("invalid release signature") {
        return "the mirror's Release file fails signature checks: apt-get install debian-archive-keyring".into();
    }
    if o.contains("couldn't find these debs") {
        return "a package of the recipe is not in the mirror: check the names in the recipe's packages (images/<name>/packages, or the component's list)".into();
    }
    String::new()
}

/// Map an I/O error to a message with a fix (disk full gets its own).
pub fn io_hint(e: std::io::Error, what: &str) -> anyhow::Error {
    if e.raw_os_error() == Some(28) {
        anyhow!("{what}: the disk is full\n  hint: free space on the file system holding {CACHE_DIR} (df -h /var/tmp), then run again")
    } else if e.kind() == std::io::ErrorKind::PermissionDenied {
        anyhow!("{what}: {e}\n  hint: run stackctl as root")
    } else {
        anyhow!("{what}: {e}")
    }
}

/// Lazily unmount whatever debootstrap left mounted inside `dir` (proc, sys on failure).
pub fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    let Ok(dir) = dir.canonicalize() else {
        return;
    };
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&dir))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub fn still_mounted_under(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return false;
    };
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|p| Path::new(p).starts_with(dir))
}

/// `pattern` matches `name`, where `*` matches any run of characters.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn remove_path(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Files of the build host that debootstrap copies into the rootfs, and what
/// the image gets instead (part of the rootfs hash).
pub const HOST_FILES: [(&str, &str); 2] =
    [("etc/resolv.conf", ""), ("etc/hostname", "localhost\n")];

/// Remove the prune paths under `root` (the `*` may only be in the last
/// component); a missing path is not an error.
pub fn prune_paths(root: &Path, prune: &[String]) -> Result<()> {
    for pattern in prune {
        let rel = pattern.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|c| c == "..") {
            bail!("bad prune path {pattern:?}");
        }
        let (dir, last) = match rel.rsplit_once('/') {
            Some((d, l)) => (root.join(d), l),
            None => (root.to_path_buf(), rel),
        };
        if !last.contains('*') {
            remove_path(&dir.join(last))
                .map_err(|e| io_hint(e, &format!("cannot remove {}", dir.join(last).display())))?;
            continue;
        }
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in rd.flatten() {
            let name = entry.file_name();
            if glob_match(last, &name.to_string_lossy()) {
                remove_path(&entry.path()).map_err(|e| {
                    io_hint(e, &format!("cannot remove {}", entry.path().display()))
                })?;
            }
        }
    }
    Ok(())
}

/// Remove the prune paths, neutralise the build host's files and empty /dev,
/// /proc, /sys (the engine provides them).
pub fn slim(root: &Path, prune: &[String]) -> Result<()> {
    prune_paths(root, prune)?;
    // debootstrap copies the build host's resolver and name in: the engine
    // mounts its own over both at run time, so keep only neutral files.
    for (file, contents) in HOST_FILES {
        let p = root.join(file);
        if p.parent().is_some_and(Path::is_dir) {
            std::fs::write(&p, contents)
                .map_err(|e| io_hint(e, &format!("cannot write {}", p.display())))?;
        }
    }
    for d in ["dev", "proc", "sys"] {
        let dir = root.join(d);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for entry in rd.flatten() {
                remove_path(&entry.path()).map_err(|e| {
                    io_hint(e, &format!("cannot remove {}", entry.path().display()))
                })?;
            }
        }
    }
    Ok(())
}

/// A scratch directory under the cache dir, removed (after unmounting anything
/// left inside) when dropped, on success and on failure alike.
pub struct WorkDir {
    pub path: PathBuf,
}

impl WorkDir {
    pub fn new(what: &str) -> Result<WorkDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = scratch_root().join(format!("work-{what}-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|e| io_hint(e, &format!("cannot create {}", path.display())))?;
        Ok(WorkDir { path })
    }
}
impl Drop for WorkDir {
    fn drop(&mut self) {
        unmount_under(&self.path);
        // Never recurse into a live /proc or /sys.
        if let Ok(canon) = self.path.canonicalize() {
            if still_mounted_under(&canon) {
                eprintln!(
                    "warning: {} still has mounts inside; not removing it (umount them, then rm -rf it)",
                    self.path.display()
                );
                return;
            }
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_picks_the_suite_stanza() {
        let text = "Types: deb\n# comment\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://deb.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(
            parse_deb822(text, "bookworm"),
            Some((
                "http://deb.example/debian".into(),
                Some("/usr/share/keyrings/debian-archive-keyring.gpg".into())
            ))
        );
        assert_eq!(
            parse_deb822(text, "bookworm-security"),
            Some(("http://deb.example/debian-security".into(), None))
        );
        assert_eq!(parse_deb822(text, "trixie"), None);
        let disabled = "Enabled: no\nTypes: deb\nURIs: http://a/\nSuites: bookworm\n";
        assert_eq!(parse_deb822(disabled, "bookworm"), None);
        let src_only = "Types: deb-src\nURIs: http://a/\nSuites: bookworm\n";
        assert_eq!(parse_deb822(src_only, "bookworm"), None);
    }

    #[test]
    fn one_line_sources() {
        let text = "# deb http://old/ bookworm main\ndeb-src http://src/ bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main contrib\n";
        assert_eq!(
            parse_one_line(text, "bookworm"),
            Some(("http://m/debian".into(), Some("/k.gpg".into())))
        );
        assert_eq!(
            parse_one_line("deb http://m/ bookworm main", "bookworm"),
            Some(("http://m/".into(), None))
        );
        assert_eq!(parse_one_line(text, "trixie"), None);
    }

    #[test]
    fn image_sources_list_every_pocket() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/share/keyrings")).unwrap();
        std::fs::write(dir.path().join("usr/share/keyrings/k.gpg"), "k").unwrap();
        let m = |uri: &str, k: Option<&str>| Mirror {
            uri: uri.into(),
            keyring: k.map(PathBuf::from),
            source: "/etc/apt/sources.list.d/debian.sources".into(),
        };
        let text = sources_deb822(
            &[
                (
                    "bookworm".into(),
                    m("http://a/debian", Some("/usr/share/keyrings/k.gpg")),
                ),
                (
                    "bookworm-security".into(),
                    m("http://a/debian-security", Some("/nope.gpg")),
                ),
            ],
            dir.path(),
        );
        assert!(text.contains("URIs: http://a/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n"), "{text}");
        assert!(
            text.contains(
                "URIs: http://a/debian-security\nSuites: bookworm-security\nComponents: main\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains("/nope.gpg"),
            "a keyring missing in the image is not named"
        );
        assert_eq!(
            parse_deb822(&text, "bookworm-security").map(|s| s.0),
            Some("http://a/debian-security".into())
        );
    }

    #[test]
    fn preflight_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = dir.path().join("k.gpg");
        std::fs::write(&keyring, "k").unwrap();
        let e = preflight(None, &keyring, Some(0), "stackctl/redis:7-bookworm")
            .unwrap_err()
            .to_string();
        assert!(e.contains("apt-get install debootstrap"), "{e}");
        let e = preflight(
            Some("/usr/sbin/debootstrap".into()),
            &dir.path().join("missing.gpg"),
            Some(0),
            "the base",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("keyring") && e.contains("apt-get install debian-archive-keyring"),
            "{e}"
        );
        let e = preflight(
            Some("/usr/sbin/debootstrap".into()),
            &keyring,
            Some(1000),
            "stackctl/redis:7-bookworm",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs root") && e.contains("sudo"), "{e}");
        assert_eq!(
            preflight(Some("/usr/sbin/debootstrap".into()), &keyring, Some(0), "t").unwrap(),
            PathBuf::from("/usr/sbin/debootstrap")
        );
    }

    #[test]
    fn legacy_tarballs_are_recognised() {
        assert!(is_legacy_tarball("postgres-0123456789abcdef.tar"));
        assert!(!is_legacy_tarball("postgres-exporter-0123456789abcdef.tar"));
        assert!(!is_legacy_tarball(
            "postgres-0123456789abcdef-01234567.layer.tar"
        ));
    }

    #[test]
    fn df_output() {
        let text = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n/dev/vda         263174212 31034964 64853232      33% /\n";
        assert_eq!(parse_df_available(text), Some(64853232 * 1024));
        assert_eq!(parse_df_available("garbage"), None);
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("*.bin", "pkgcache.bin"));
        assert!(!glob_match("*.bin", "pkgcache.bin.x"));
        assert!(glob_match("*-old", "config.dat-old"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxc"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn slim_removes_only_the_listed_paths() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in [
            "usr/share/doc/a",
            "usr/share/man/man1",
            "var/cache/apt",
            "dev",
            "etc",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("usr/share/doc/a/copyright"), "x").unwrap();
        std::fs::write(r.join("var/cache/apt/pkgcache.bin"), "x").unwrap();
        std::fs::write(r.join("var/cache/apt/keep.txt"), "x").unwrap();
        std::fs::write(r.join("dev/null"), "x").unwrap();
        std::fs::write(r.join("etc/passwd"), "x").unwrap();
        let prune: Vec<String> = [
            "usr/share/doc/*",
            "/usr/share/man/*",
            "var/cache/apt/*.bin",
            "missing/path",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        slim(r, &prune).unwrap();
        assert!(r.join("usr/share/doc").is_dir());
        assert!(!r.join("usr/share/doc/a").exists());
        assert!(!r.join("usr/share/man/man1").exists());
        assert!(!r.join("var/cache/apt/pkgcache.bin").exists());
        assert!(r.join("var/cache/apt/keep.txt").exists());
        assert!(!r.join("dev/null").exists());
        assert!(r.join("dev").is_dir());
        assert!(r.join("etc/passwd").exists());
        assert_eq!(
            std::fs::read_to_string(r.join("etc/hostname")).unwrap(),
            "localhost\n"
        );
        assert_eq!(
            std::fs::read_to_string(r.join("etc/resolv.conf")).unwrap(),
            ""
        );
        assert!(slim(r, &["../etc".to_string()]).is_err());
    }

    #[test]
    fn failure_hints() {
        let m = Mirror {
            uri: "http://deb.example/debian".into(),
            keyring: None,
            source: "/etc/apt/sources.list.d/debian.sources".into(),
        };
        assert!(
            classify_debootstrap_failure("E: Failed getting release file http://x", &m)
                .contains("unreachable")
        );
        assert!(
            classify_debootstrap_failure("tar: write error: No space left on device", &m)
                .contains("disk is full")
        );
        assert!(
            classify_debootstrap_failure("E: Couldn't find these debs: foo", &m)
                .contains("packages")
        );
    }
}
