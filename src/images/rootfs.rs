//! A minbase Debian rootfs made by debootstrap, slimmed and cached as a tarball
//! under /var/tmp/stackctl-rootfs/, one per package set.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::recipe::Recipe;

/// Where rootfs tarballs (and debootstrap's work directories) live.
pub const CACHE_DIR: &str = "/var/tmp/stackctl-rootfs";

/// An apt source for the suite: the mirror debootstrap downloads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub uri: String,
    pub keyring: Option<PathBuf>,
    /// The file it was read from, for messages.
    pub source: PathBuf,
}

/// The tarball of a recipe's rootfs.
pub fn tarball_path(recipe: &Recipe) -> PathBuf {
    Path::new(CACHE_DIR).join(format!(
        "{}-{}.tar",
        recipe.kind.name(),
        &recipe.rootfs_hash()[..16]
    ))
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
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// debootstrap must be installed and we must be root: the error says how to fix it.
pub fn preflight(debootstrap: Option<PathBuf>, euid: Option<u32>, tag: &str) -> Result<PathBuf> {
    let debootstrap = debootstrap.ok_or_else(|| {
        anyhow!(
            "debootstrap is not installed; it builds the Debian rootfs of {tag}\n  \
             hint: apt-get install debootstrap"
        )
    })?;
    if euid != Some(0) {
        bail!(
            "building the {tag} image's rootfs needs root: debootstrap creates device nodes, chroots and sets file owners\n  \
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

/// Make sure the recipe's rootfs tarball exists; build it when it does not.
/// Returns the tarball path and whether debootstrap ran.
pub async fn ensure_tarball(
    recipe: &Recipe,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(PathBuf, bool)> {
    let tarball = tarball_path(recipe);
    if tarball.is_file() {
        progress(&format!("rootfs: cached {}", tarball.display()));
        return Ok((tarball, false));
    }
    std::fs::create_dir_all(CACHE_DIR)
        .map_err(|e| io_hint(e, &format!("cannot create {CACHE_DIR}")))?;
    let debootstrap = preflight(
        find_program("debootstrap"),
        effective_uid(),
        recipe.kind.tag(),
    )?;
    if let Some(free) = free_bytes(Path::new(CACHE_DIR)) {
        if free < MIN_FREE_BYTES {
            bail!(
                "the disk is full: {:.0} MB free under {CACHE_DIR}, building the {} rootfs needs about {:.0} MB\n  \
                 hint: free space on that file system (df -h /var/tmp), then run again",
                free as f64 / 1e6,
                recipe.kind.tag(),
                MIN_FREE_BYTES as f64 / 1e6
            );
        }
    }
    let mirror = find_mirror(recipe.suite)?;
    let work = WorkDir::new(recipe)?;
    let target = work.path.join("rootfs");
    run_debootstrap(&debootstrap, recipe, &mirror, &target, progress).await?;
    let mut sources = vec![(recipe.suite.to_string(), mirror.clone())];
    for pocket in UPDATE_POCKETS {
        let suite = format!("{}-{pocket}", recipe.suite);
        if let Some(m) = find_source(&suite) {
            sources.push((suite, m));
        }
    }
    upgrade(&target, &sources, progress).await?;
    progress("rootfs: slimming (docs, man pages, locales, apt lists)");
    unmount_under(&target);
    slim(&target, &recipe.prune)?;
    progress("rootfs: writing tarball");
    let partial = work.path.join("rootfs.tar");
    write_tar(&target, &partial).await?;
    std::fs::rename(&partial, &tarball).map_err(|e| {
        io_hint(
            e,
            &format!("cannot move the rootfs tarball to {}", tarball.display()),
        )
    })?;
    drop(work);
    prune_other_tarballs(recipe, &tarball);
    Ok((tarball, true))
}

async fn run_debootstrap(
    debootstrap: &Path,
    recipe: &Recipe,
    mirror: &Mirror,
    target: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let packages = recipe.package_set().join(",");
    let mut cmd = Command::new(debootstrap);
    cmd.arg(format!("--variant={}", recipe.variant))
        .arg(format!("--include={packages}"))
        .arg("--components=main");
    if let Some(k) = &mirror.keyring {
        if k.is_file() {
            cmd.arg(format!("--keyring={}", k.display()));
        }
    }
    cmd.arg(recipe.suite)
        .arg(target)
        .arg(&mirror.uri)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    progress(&format!(
        "rootfs: debootstrap --variant={} {} from {} (from {}), packages {packages}",
        recipe.variant,
        recipe.suite,
        mirror.uri,
        mirror.source.display()
    ));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", debootstrap.display()))?;
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
        // debootstrap's progress lines are "I: ..."; pass them on.
        if line.starts_with("I: ") || line.starts_with("W: ") || line.starts_with("E: ") {
            progress(&format!("rootfs: {}", line));
        }
        tail.push_back(line);
        if tail.len() > 40 {
            tail.pop_front();
        }
    }
    let status = child.wait().await.context("waiting for debootstrap")?;
    if status.success() {
        return Ok(());
    }
    let tail: Vec<String> = tail.into_iter().collect();
    let text = tail.join("\n");
    let hint = classify_debootstrap_failure(&text, mirror);
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
    bail!(
        "debootstrap of the {} rootfs failed ({status}):\n{}{log_hint}\n  hint: {}",
        recipe.kind.tag(),
        tail[tail.len().saturating_sub(15)..].join("\n"),
        if hint.is_empty() { disk } else { hint }
    )
}

/// The pockets whose fixes are applied on top of the release (when the host
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

/// Apply the update and security pockets inside the new rootfs (`apt-get
/// upgrade` in a chroot, services kept from starting by policy-rc.d), and
/// leave the image with apt sources for all of them.
async fn upgrade(
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
    if sources.len() < 2 {
        progress("rootfs: no update/security sources on this host; packages stay at the release versions");
        return Ok(());
    }
    let policy = root.join("usr/sbin/policy-rc.d");
    std::fs::write(
        &policy,
        "#!/bin/sh\n# stackctl: no service starts while building an image\nexit 101\n",
    )
    .map_err(|e| io_hint(e, "cannot write policy-rc.d"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&policy, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io_hint(e, "cannot chmod policy-rc.d"))?;
    }
    let proc_dir = root.join("proc");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(&proc_dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let pockets: Vec<&str> = sources.iter().skip(1).map(|(s, _)| s.as_str()).collect();
    progress(&format!(
        "rootfs: apt-get upgrade from {}",
        pockets.join(", ")
    ));
    let mut result = Ok(());
    for args in [
        vec!["apt-get", "-q", "update"],
        vec![
            "apt-get",
            "-q",
            "-y",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
            "upgrade",
        ],
        vec!["apt-get", "clean"],
    ] {
        let out = Command::new("chroot")
            .arg(root)
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .output()
            .await;
        match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                for line in text
                    .lines()
                    .filter(|l| l.starts_with("Unpacking ") || l.contains(" upgraded, "))
                {
                    progress(&format!("rootfs: {line}"));
                }
            }
            Ok(o) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                let hint = classify_debootstrap_failure(&text, &sources[1].1);
                result = Err(anyhow!(
                    "`{}` in the new rootfs failed ({}):\n{tail}{}",
                    args.join(" "),
                    o.status,
                    if hint.is_empty() {
                        String::new()
                    } else {
                        format!("\n  hint: {hint}")
                    }
                ));
                break;
            }
            Err(e) => {
                result = Err(anyhow!("cannot run chroot {}: {e}", root.display()));
                break;
            }
        }
    }
    if mounted {
        let _ = std::process::Command::new("umount").arg(&proc_dir).status();
    }
    let _ = std::fs::remove_file(&policy);
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
        return "a package of the recipe is not in the mirror: check the names in images/<kind>/packages".into();
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
fn unmount_under(dir: &Path) {
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

fn still_mounted_under(dir: &Path) -> bool {
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

/// Remove the recipe's prune paths (the `*` may only be in the last component),
/// and empty /dev, /proc, /sys (the engine provides them).
pub fn slim(root: &Path, prune: &[String]) -> Result<()> {
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

/// Tar the rootfs with numeric owners (GNU tar keeps hard links, devices and modes).
async fn write_tar(root: &Path, out: &Path) -> Result<()> {
    let output = Command::new("tar")
        .arg("--numeric-owner")
        .arg("--one-file-system")
        .arg("-cf")
        .arg(out)
        .arg("-C")
        .arg(root)
        .arg(".")
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run tar (apt-get install tar)")?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        if err.to_ascii_lowercase().contains("no space left") {
            bail!("writing the rootfs tarball {} failed: the disk is full\n  hint: free space on the file system holding {CACHE_DIR} (df -h /var/tmp), then run again", out.display());
        }
        bail!(
            "writing the rootfs tarball {} failed: {}",
            out.display(),
            err.trim()
        );
    }
    Ok(())
}

/// Older tarballs of the same kind (another package set) are no longer needed.
fn prune_other_tarballs(recipe: &Recipe, keep: &Path) {
    let prefix = format!("{}-", recipe.kind.name());
    let Ok(rd) = std::fs::read_dir(CACHE_DIR) else {
        return;
    };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let p = entry.path();
        if name.starts_with(&prefix) && name.ends_with(".tar") && p != keep {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A scratch directory under the cache dir, removed (after unmounting anything
/// debootstrap left inside) when dropped, on success and on failure alike.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn new(recipe: &Recipe) -> Result<WorkDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = Path::new(CACHE_DIR).join(format!(
            "work-{}-{}-{nanos:x}",
            recipe.kind.name(),
            std::process::id()
        ));
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
        let e = preflight(None, Some(0), "stackctl/redis:7-bookworm")
            .unwrap_err()
            .to_string();
        assert!(e.contains("apt-get install debootstrap"), "{e}");
        let e = preflight(
            Some("/usr/sbin/debootstrap".into()),
            Some(1000),
            "stackctl/redis:7-bookworm",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs root") && e.contains("sudo"), "{e}");
        assert_eq!(
            preflight(Some("/usr/sbin/debootstrap".into()), Some(0), "t").unwrap(),
            PathBuf::from("/usr/sbin/debootstrap")
        );
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
