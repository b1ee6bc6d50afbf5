//! The host tools building the Debian images needs (debootstrap, the Debian
//! archive keyring), installed through apt-get when stackctl may do so (root,
//! a Debian or Ubuntu host, apt-get present, `STACKCTL_NO_INSTALL` unset);
//! otherwise the exact command to run.

use std::path::Path;

use super::recipe::SUITE;
use super::rootfs;

/// A host tool that is missing, and the Debian package providing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub what: String,
    pub package: &'static str,
}

/// Why stackctl does not install the missing packages itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `STACKCTL_NO_INSTALL` is set.
    NotAllowed,
    NotRoot,
    /// Not Debian or Ubuntu (or no apt-get).
    NoApt(String),
}

/// What [`prepare`] could not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    pub message: String,
    pub hint: String,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n  hint: {}", self.message, self.hint)
    }
}

/// The tools a base rootfs build needs that this host lacks.
pub fn missing_tools() -> Vec<Missing> {
    let mut out = Vec::new();
    if rootfs::find_program("debootstrap").is_none() {
        out.push(Missing {
            what: "debootstrap".into(),
            package: "debootstrap",
        });
    }
    let keyring = rootfs::keyring_for(rootfs::find_source(SUITE).as_ref());
    if !keyring.is_file() {
        out.push(Missing {
            what: format!("the Debian archive keyring ({})", keyring.display()),
            package: rootfs::KEYRING_PACKAGE,
        });
    }
    out
}

/// The command that installs `packages`.
pub fn install_command(packages: &[&str]) -> String {
    format!(
        "apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    )
}

/// Whether stackctl may install packages here, from the environment, the
/// effective uid, the os-release text and whether apt-get is on PATH.
pub fn may_install(
    no_install: Option<&str>,
    euid: Option<u32>,
    os_release: &str,
    has_apt: bool,
) -> Result<(), Refusal> {
    if no_install.is_some_and(|v| !v.is_empty() && v != "0") {
        return Err(Refusal::NotAllowed);
    }
    let field = |key: &str| {
        os_release
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(|v| v.trim().trim_matches('"').to_ascii_lowercase())
            .unwrap_or_default()
    };
    let id = field("ID");
    let like = field("ID_LIKE");
    let debian_like = ["debian", "ubuntu"]
        .iter()
        .any(|d| id == *d || like.split_whitespace().any(|l| l == *d));
    if !debian_like {
        let name = if id.is_empty() { "unknown".into() } else { id };
        return Err(Refusal::NoApt(format!(
            "this host is not Debian or Ubuntu ({name})"
        )));
    }
    if !has_apt {
        return Err(Refusal::NoApt("apt-get is not on PATH".into()));
    }
    if euid != Some(0) {
        return Err(Refusal::NotRoot);
    }
    Ok(())
}

fn refusal_error(missing: &[Missing], why: Refusal) -> HostError {
    let packages: Vec<&str> = missing.iter().map(|m| m.package).collect();
    let what: Vec<&str> = missing.iter().map(|m| m.what.as_str()).collect();
    let message = format!(
        "{} {} not installed (the base root file system of the Debian-built images is made with {})",
        what.join(" and "),
        if missing.len() == 1 { "is" } else { "are" },
        if missing.len() == 1 { "it" } else { "them" },
    );
    let cmd = install_command(&packages);
    let hint = match why {
        Refusal::NotAllowed => format!(
            "run `{cmd}` as root (stackctl does not install it: STACKCTL_NO_INSTALL is set), then run setup again"
        ),
        Refusal::NotRoot => format!(
            "run `sudo {cmd}` (or run `stackctl setup` as root, which installs it), then run setup again"
        ),
        Refusal::NoApt(reason) => format!(
            "{reason}: install {} with the system's package manager (on Debian/Ubuntu: `{cmd}`), then run setup again",
            packages.join(" and ")
        ),
    };
    HostError { message, hint }
}

/// Make sure the tools exist, installing them when allowed. `say` gets a
/// line for what is installed. Returns the packages installed.
pub async fn prepare(say: &(dyn Fn(&str) + Sync)) -> Result<Vec<String>, HostError> {
    let missing = missing_tools();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let os_release = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    let apt = rootfs::find_program("apt-get");
    let no_install = std::env::var("STACKCTL_NO_INSTALL").ok();
    if let Err(why) = may_install(
        no_install.as_deref(),
        rootfs::effective_uid(),
        &os_release,
        apt.is_some(),
    ) {
        return Err(refusal_error(&missing, why));
    }
    let apt = apt.expect("may_install checked apt-get");
    let packages: Vec<&str> = missing.iter().map(|m| m.package).collect();
    let what: Vec<&str> = missing.iter().map(|m| m.what.as_str()).collect();
    say(&format!(
        "installing {} (needed to build the Debian-based images): {}",
        what.join(" and "),
        install_command(&packages)
    ));
    let lists_empty = std::fs::read_dir("/var/lib/apt/lists")
        .map(|rd| {
            !rd.flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(true);
    let mut updated = false;
    if lists_empty {
        say("apt-get update (the package lists are empty)");
        apt_get(&apt, &["update"]).await?;
        updated = true;
    }
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&packages);
    if let Err(e) = apt_get(&apt, &args).await {
        if updated {
            return Err(e);
        }
        say("apt-get update (the install failed; the package lists may be stale)");
        apt_get(&apt, &["update"]).await?;
        apt_get(&apt, &args).await?;
    }
    let still = missing_tools();
    if !still.is_empty() {
        let what: Vec<&str> = still.iter().map(|m| m.what.as_str()).collect();
        return Err(HostError {
            message: format!(
                "`{}` succeeded, yet {} {} still missing",
                install_command(&packages),
                what.join(" and "),
                if still.len() == 1 { "is" } else { "are" }
            ),
            hint: "check that debootstrap is on PATH (/usr/sbin for root) and that the package installed cleanly (dpkg -L debootstrap)".into(),
        });
    }
    Ok(packages.iter().map(|p| p.to_string()).collect())
}

async fn apt_get(apt: &Path, args: &[&str]) -> Result<(), HostError> {
    let out = tokio::process::Command::new(apt)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| HostError {
            message: format!("cannot run {}: {e}", apt.display()),
            hint: "check that apt-get works on this host".into(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    Err(HostError {
        message: format!(
            "`apt-get {}` failed ({}):\n{}",
            args.join(" "),
            out.status,
            lines[lines.len().saturating_sub(12)..].join("\n")
        ),
        hint: format!(
            "fix the host's apt setup, or run `{}` yourself, then run setup again",
            install_command(&args.iter().skip(3).copied().collect::<Vec<_>>())
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
    const UBUNTU: &str = "ID=ubuntu\nID_LIKE=debian\n";
    const MINT: &str = "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n";
    const FEDORA: &str = "ID=fedora\n";

    #[test]
    fn who_may_install() {
        assert_eq!(may_install(None, Some(0), DEBIAN, true), Ok(()));
        assert_eq!(may_install(Some("0"), Some(0), UBUNTU, true), Ok(()));
        assert_eq!(may_install(None, Some(0), MINT, true), Ok(()));
        assert_eq!(
            may_install(Some("1"), Some(0), DEBIAN, true),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(
            may_install(None, Some(1000), DEBIAN, true),
            Err(Refusal::NotRoot)
        );
        assert!(matches!(
            may_install(None, Some(0), FEDORA, true),
            Err(Refusal::NoApt(r)) if r.contains("fedora")
        ));
        assert!(matches!(
            may_install(None, Some(0), DEBIAN, false),
            Err(Refusal::NoApt(r)) if r.contains("apt-get")
        ));
    }

    #[test]
    fn refusals_give_the_exact_command() {
        let m = vec![
            Missing {
                what: "debootstrap".into(),
                package: "debootstrap",
            },
            Missing {
                what: "the Debian archive keyring".into(),
                package: "debian-archive-keyring",
            },
        ];
        let e = refusal_error(&m, Refusal::NotAllowed);
        assert!(
            e.message
                .contains("debootstrap and the Debian archive keyring are not installed"),
            "{e}"
        );
        assert!(
            e.hint.contains(
                "`apt-get install -y --no-install-recommends debootstrap debian-archive-keyring`"
            ),
            "{e}"
        );
        let e = refusal_error(&m[..1], Refusal::NotRoot);
        assert!(
            e.hint
                .contains("`sudo apt-get install -y --no-install-recommends debootstrap`"),
            "{e}"
        );
    }
}
