//! An image's own layer: its packages installed on top of the shared base.
//!
//! The base tree is the lower directory of an overlay mount; `apt-get install
//! --no-install-recommends` runs in a chroot of the merged view (the base's
//! apt lists bind-mounted read-only, the host's resolver, a private /dev and
//! /proc, services kept from starting), the recipe's prune list is applied,
//! and the overlay's upper directory — exactly what the packages changed —
//! becomes a Docker layer (overlay whiteouts turned into `.wh.` entries),
//! cached as `<name>-<rootfs hash>-<base id>.layer.tar` with its sha256.
//! Independent images do this in parallel, each in its own overlay.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::recipe::Recipe;
use super::rootfs::{self, io_hint, BaseTree, WorkDir};

/// A layer tarball and its diff id (`sha256:<hex>` of the uncompressed tar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub path: PathBuf,
    pub diff_id: String,
}

/// Where the layer of `recipe` on `tree` is cached.
pub fn layer_path(recipe: &Recipe, tree: &BaseTree) -> PathBuf {
    rootfs::cache_dir().join(format!(
        "{}-{}-{}.layer.tar",
        recipe.name,
        &recipe.rootfs_hash()[..16],
        &tree.id[..tree.id.len().min(8)]
    ))
}

fn digest_path(layer: &Path) -> PathBuf {
    layer.with_extension("sha256")
}

/// The cached layer of the recipe on this base, if there is one.
pub fn cached_layer(recipe: &Recipe, tree: &BaseTree) -> Option<Layer> {
    let path = layer_path(recipe, tree);
    let diff_id = std::fs::read_to_string(digest_path(&path)).ok()?;
    let diff_id = diff_id.trim().to_string();
    (path.is_file() && diff_id.starts_with("sha256:")).then_some(Layer { path, diff_id })
}

/// Make sure the recipe's layer on `tree` is cached; build it when it is not.
/// Returns it and whether it was built now.
pub async fn ensure_layer(
    recipe: &Recipe,
    tree: &BaseTree,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(Layer, bool)> {
    if let Some(layer) = cached_layer(recipe, tree) {
        progress(&format!("layer: cached {}", layer.path.display()));
        return Ok((layer, false));
    }
    let work = WorkDir::new(&recipe.name)?;
    let upper = work.path.join("upper");
    let merged = work.path.join("merged");
    let ovl_work = work.path.join("work");
    for d in [&upper, &merged, &ovl_work] {
        std::fs::create_dir_all(d)
            .map_err(|e| io_hint(e, &format!("cannot create {}", d.display())))?;
    }
    {
        let mut mounts = Mounts::default();
        mounts.mount(
            &[
                "-t",
                "overlay",
                "overlay",
                "-o",
                &format!(
                    "lowerdir={},upperdir={},workdir={}",
                    tree.rootfs().display(),
                    upper.display(),
                    ovl_work.display()
                ),
            ],
            &merged,
        )?;
        install(recipe, tree, &merged, &mut mounts, progress).await?;
        // Everything but the overlay itself: the prune list must not see them.
        mounts.unmount_all_but_first();
        progress("layer: pruning");
        rootfs::prune_paths(&merged, &recipe.prune)?;
        for f in [
            "usr/sbin/policy-rc.d",
            "etc/dpkg/dpkg.cfg.d/stackctl-build",
            "etc/apt/apt.conf.d/stackctl-build",
        ] {
            let _ = std::fs::remove_file(merged.join(f));
        }
    }
    let upper_for_walk = upper.clone();
    tokio::task::spawn_blocking(move || whiteouts_to_docker(&upper_for_walk))
        .await
        .context("converting the overlay's whiteouts")??;
    progress("layer: writing the layer tarball");
    let path = layer_path(recipe, tree);
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    let diff_id = match write_layer(&upper, &partial).await {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::write(digest_path(&path), format!("{diff_id}\n"))
        .map_err(|e| io_hint(e, "cannot write the layer's digest"))?;
    std::fs::rename(&partial, &path)
        .map_err(|e| io_hint(e, &format!("cannot move the layer to {}", path.display())))?;
    drop(work);
    prune_other_layers(recipe, &path);
    Ok((Layer { path, diff_id }, true))
}

/// apt-get install in a chroot of the merged view.
async fn install(
    recipe: &Recipe,
    tree: &BaseTree,
    root: &Path,
    mounts: &mut Mounts,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    // A private /dev (the base's is empty: the engine provides one at run time).
    let dev = root.join("dev");
    mounts.mount(&["-t", "tmpfs", "-o", "mode=0755,nosuid", "tmpfs"], &dev)?;
    make_dev_nodes(&dev)?;
    mounts.mount(&["-t", "proc", "proc"], &root.join("proc"))?;
    // The lists the base was installed from, read-only: parallel builds share them.
    let lists = root.join("var/lib/apt/lists");
    mounts.bind_ro(&tree.lists(), &lists)?;
    // The build host's resolver, for the mirror.
    let resolv = root.join("etc/resolv.conf");
    if Path::new("/etc/resolv.conf").exists() && resolv.exists() {
        mounts.bind_ro(Path::new("/etc/resolv.conf"), &resolv)?;
    }
    rootfs::write_policy_rc_d(root)?;
    // Faster unpacking (the tree is thrown away on failure anyway); docs and
    // man pages are never unpacked.
    std::fs::write(
        root.join("etc/dpkg/dpkg.cfg.d/stackctl-build"),
        "force-unsafe-io\npath-exclude=/usr/share/doc/*\npath-exclude=/usr/share/man/*\npath-exclude=/usr/share/info/*\npath-exclude=/usr/share/locale/*\n",
    )
    .map_err(|e| io_hint(e, "cannot write the dpkg build settings"))?;
    let packages = recipe.package_set();
    progress(&format!("layer: apt-get install {}", packages.join(" ")));
    let mut args = vec!["apt-get"];
    args.extend(rootfs::APT_QUIET);
    args.extend(["--no-install-recommends", "install"]);
    args.extend(packages.iter().map(String::as_str));
    let keep = |l: &str| {
        (l.starts_with("Unpacking ") || l.starts_with("Setting up ") || l.starts_with("Fetched "))
            .then(|| format!("layer: {l}"))
    };
    let first = rootfs::run_logged(rootfs::chroot_command(root, &args), progress, &keep).await;
    let Err((status, tail)) = first else {
        return Ok(());
    };
    let low = tail.to_ascii_lowercase();
    let stale = low.contains("404")
        || low.contains("unable to locate package")
        || low.contains("failed to fetch")
        || low.contains("has no installation candidate");
    if !stale {
        return Err(install_error(recipe, &packages, &status, &tail));
    }
    // The cached lists are older than the mirror: fetch fresh ones for this
    // image only (into its own layer, pruned below) and try once more.
    progress("layer: the cached apt lists are stale; apt-get update");
    mounts.unmount(&lists);
    let update = rootfs::chroot_command(root, &["apt-get", "-q", "update"]);
    if let Err((status, tail)) = rootfs::run_logged(update, progress, &keep).await {
        return Err(install_error(recipe, &["update".into()], &status, &tail));
    }
    match rootfs::run_logged(rootfs::chroot_command(root, &args), progress, &keep).await {
        Ok(()) => Ok(()),
        Err((status, tail)) => Err(install_error(recipe, &packages, &status, &tail)),
    }
}

fn install_error(recipe: &Recipe, packages: &[String], status: &str, tail: &str) -> anyhow::Error {
    let lines: Vec<&str> = tail.lines().collect();
    let low = tail.to_ascii_lowercase();
    let hint = if low.contains("unable to locate package")
        || low.contains("has no installation candidate")
    {
        format!(
            "a package of {} is not in Debian {}: check the names (apt-cache policy NAME)",
            recipe.tag, recipe.suite
        )
    } else if low.contains("no space left") {
        "the disk is full: free space under the cache directory (df -h /var/tmp), then run again"
            .into()
    } else if low.contains("failed to fetch")
        || low.contains("could not resolve")
        || low.contains("temporary failure")
    {
        "the Debian mirror is unreachable: check the network or proxy (the mirror comes from the host's apt sources)".into()
    } else {
        "see the output above".into()
    };
    anyhow!(
        "apt-get install {} for {} failed ({status}):\n{}\n  hint: {hint}",
        packages.join(" "),
        recipe.tag,
        lines[lines.len().saturating_sub(15)..].join("\n")
    )
}

/// null, zero, full, random, urandom, tty and the usual links.
fn make_dev_nodes(dev: &Path) -> Result<()> {
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = dev.join(name);
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).context("device path")?;
        // SAFETY: a valid NUL-terminated path; mknod has no other preconditions.
        let rc = unsafe {
            libc::mknod(
                c.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        };
        if rc != 0 {
            return Err(io_hint(
                std::io::Error::last_os_error(),
                &format!("cannot create {}", p.display()),
            ));
        }
        // mknod honours the umask.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666));
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, dev.join(name));
    }
    for d in ["pts", "shm"] {
        let _ = std::fs::create_dir_all(dev.join(d));
    }
    Ok(())
}

/// The mounts of one build, unmounted (lazily, last first) when dropped.
#[derive(Default)]
struct Mounts {
    points: Vec<PathBuf>,
}

impl Mounts {
    fn mount(&mut self, args: &[&str], target: &Path) -> Result<()> {
        let out = std::process::Command::new("mount")
            .args(args)
            .arg(target)
            .output()
            .context("cannot run mount")?;
        if !out.status.success() {
            bail!(
                "mount {} {} failed: {}\n  hint: building the Debian images needs root and overlayfs (modprobe overlay)",
                args.join(" "),
                target.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.points.push(target.to_path_buf());
        Ok(())
    }

    fn bind_ro(&mut self, source: &Path, target: &Path) -> Result<()> {
        let src = source.to_string_lossy().to_string();
        self.mount(&["--bind", &src], target)?;
        // A read-only bind needs a remount on older util-linux.
        let _ = std::process::Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(target)
            .status();
        Ok(())
    }

    fn unmount(&mut self, target: &Path) {
        if let Some(i) = self.points.iter().rposition(|p| p == target) {
            umount(&self.points.remove(i));
        }
    }

    fn unmount_all_but_first(&mut self) {
        while self.points.len() > 1 {
            if let Some(p) = self.points.pop() {
                umount(&p);
            }
        }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        while let Some(p) = self.points.pop() {
            umount(&p);
        }
    }
}

fn umount(p: &Path) {
    let ok = std::process::Command::new("umount")
        .arg(p)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(p)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Turn overlayfs' whiteouts in an upper directory into Docker's layer form:
/// a deleted path (a 0:0 character device) becomes an empty `.wh.<name>`,
/// an opaque directory gets a `.wh..wh..opq` entry.
pub fn whiteouts_to_docker(upper: &Path) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut stack = vec![upper.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if is_opaque(&dir) {
            std::fs::write(dir.join(".wh..wh..opq"), b"")
                .map_err(|e| io_hint(e, &format!("cannot mark {} opaque", dir.display())))?;
        }
        let rd = std::fs::read_dir(&dir)
            .map_err(|e| io_hint(e, &format!("cannot read {}", dir.display())))?;
        for entry in rd.flatten() {
            let p = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_char_device() && meta.rdev() == 0 {
                std::fs::remove_file(&p)
                    .map_err(|e| io_hint(e, &format!("cannot remove {}", p.display())))?;
                let wh = dir.join(format!(".wh.{}", entry.file_name().to_string_lossy()));
                std::fs::write(&wh, b"")
                    .map_err(|e| io_hint(e, &format!("cannot write {}", wh.display())))?;
            }
        }
    }
    Ok(())
}

fn is_opaque(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let name = c"trusted.overlay.opaque";
    let mut buf = [0u8; 4];
    // SAFETY: valid NUL-terminated strings and a writable buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    n > 0 && buf[0] == b'y'
}

/// Tar the upper directory (numeric owners, hard links kept), hashing the
/// stream as it is written: the layer's diff id.
async fn write_layer(upper: &Path, out: &Path) -> Result<String> {
    let mut child = tokio::process::Command::new("tar")
        .arg("--numeric-owner")
        .arg("--one-file-system")
        .arg("-cf")
        .arg("-")
        .arg("-C")
        .arg(upper)
        .arg(".")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run tar (apt-get install tar)")?;
    let mut stdout = child.stdout.take().context("tar's output")?;
    let mut file = tokio::fs::File::create(out)
        .await
        .map_err(|e| io_hint(e, &format!("cannot create {}", out.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = stdout
            .read(&mut buf)
            .await
            .context("reading tar's output")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .await
            .map_err(|e| io_hint(e, &format!("cannot write {}", out.display())))?;
    }
    file.flush().await.ok();
    let output = child.wait_with_output().await.context("waiting for tar")?;
    if !output.status.success() {
        bail!(
            "writing the layer {} failed: {}",
            out.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Layers of this recipe for other package sets or bases are no longer needed.
fn prune_other_layers(recipe: &Recipe, keep: &Path) {
    let Ok(rd) = std::fs::read_dir(rootfs::cache_dir()) else {
        return;
    };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let p = entry.path();
        if p == keep || p == digest_path(keep) {
            continue;
        }
        if is_layer_of(&recipe.name, &name) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `<name>-<16 hex>-<8 hex>.layer.tar` (or its `.sha256`).
pub fn is_layer_of(recipe_name: &str, file: &str) -> bool {
    let Some(rest) = file
        .strip_prefix(recipe_name)
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    let stem = rest
        .strip_suffix(".layer.tar")
        .or_else(|| rest.strip_suffix(".layer.sha256"));
    let Some((h, id)) = stem.and_then(|s| s.split_once('-')) else {
        return false;
    };
    h.len() == 16
        && h.chars().all(|c| c.is_ascii_hexdigit())
        && !id.is_empty()
        && id.chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_files_of_a_recipe() {
        assert!(is_layer_of(
            "postgres",
            "postgres-0123456789abcdef-01234567.layer.tar"
        ));
        assert!(is_layer_of(
            "postgres",
            "postgres-0123456789abcdef-01234567.layer.sha256"
        ));
        assert!(!is_layer_of(
            "postgres",
            "postgres-exporter-0123456789abcdef-01234567.layer.tar"
        ));
        assert!(!is_layer_of("postgres", "postgres-0123456789abcdef.tar"));
    }

    #[test]
    fn whiteouts_become_docker_entries() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("etc");
        std::fs::create_dir_all(&d).unwrap();
        let dev = d.join("gone");
        let c = std::ffi::CString::new(dev.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path; creating a 0:0 character device needs root.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) };
        if rc != 0 {
            eprintln!("skipped: mknod needs root");
            return;
        }
        std::fs::write(d.join("kept"), "x").unwrap();
        whiteouts_to_docker(dir.path()).unwrap();
        assert!(!dev.exists());
        assert!(d.join(".wh.gone").is_file());
        assert!(d.join("kept").is_file());
    }
}
