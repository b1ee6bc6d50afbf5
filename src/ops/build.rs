//! `stackctl build [SERVICE…] [--push]`: one static `cargo build` for all
//! services, then each `FROM scratch` image assembled (one layer: the CA
//! bundle and the binary, with the rendered Dockerfile's metadata) and
//! loaded through the Engine API, in parallel, skipped when its inputs hash
//! to an existing image.

use crate::engine::build::{self as ebuild, Context};
use crate::engine::LABEL_INPUTS;
use crate::error::{Error, Result};
use crate::model::containers::{LABEL_SERVICE, LABEL_STACK};
use crate::model::{Service, Stack, TagStrategy};
use crate::render::templates::TARGET;
use crate::runtime::stackenv::StackEnv;
use crate::ui::Ui;
use futures::StreamExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

/// Every label an image stackctl builds carries (the Dockerfile's and the build's).
const OWN_LABELS: [&str; 9] = [
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    "org.opencontainers.image.source",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.created",
    LABEL_STACK,
    LABEL_SERVICE,
    LABEL_INPUTS,
];

pub struct Built {
    pub service: String,
    pub reference: String,
    pub id: String,
    pub size: u64,
    pub built: bool,
    pub seconds: f64,
}

/// The services named (all when none), or a usage error naming the unknown one.
/// Components built from a Dockerfile are named like services.
pub fn select<'s>(stack: &'s Stack, names: &[String]) -> Result<Vec<&'s Service>> {
    if names.is_empty() {
        return Ok(stack.services.iter().collect());
    }
    let built = super::build_components::selected(stack, names);
    names
        .iter()
        .filter(|n| !built.iter().any(|c| &c.name == *n))
        .map(|n| {
            stack.service(n).ok_or_else(|| {
                Error::usage(
                    format!("no service `{n}` in this stack"),
                    format!(
                        "choose from: {}",
                        stack
                            .services
                            .iter()
                            .map(|s| s.name.as_str())
                            .chain(
                                super::build_components::selected(stack, &[])
                                    .iter()
                                    .map(|c| c.name.as_str())
                            )
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
        })
        .collect()
}

pub fn target_dir(stack: &Stack) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                stack.root.join(p)
            }
        })
        .or_else(|| workspace_target(&cargo_dir(stack)))
        .unwrap_or_else(|| stack.root.join("target"))
}

/// Where cargo runs: in the first service's crate, so its workspace is
/// found wherever stack.toml is (a stack beside the workspace, not in it,
/// names its crates by path).
fn cargo_dir(stack: &Stack) -> std::path::PathBuf {
    stack
        .services
        .first()
        .map(|s| stack.root.join(&s.path))
        .filter(|d| d.is_dir())
        .unwrap_or_else(|| stack.root.clone())
}

/// The target directory of the cargo workspace stack.toml sits in: a stack
/// in a subdirectory (examples/) builds crates of the workspace above it.
fn workspace_target(root: &std::path::Path) -> Option<PathBuf> {
    let o = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v["target_directory"].as_str().map(PathBuf::from)
}

/// `cargo build --release` of the packages, static, for the scratch images.
pub fn cargo_build(stack: &Stack, services: &[&Service], ui: &Ui) -> Result<()> {
    let mut packages: Vec<&str> = services.iter().map(|s| s.package.as_str()).collect();
    packages.sort();
    packages.dedup();
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(cargo_dir(stack))
        .args(["build", "--release", "--target", TARGET]);
    for p in &packages {
        cmd.args(["-p", p]);
    }
    let flags = std::env::var("RUSTFLAGS").unwrap_or_default();
    cmd.env(
        "RUSTFLAGS",
        format!("{flags} -C target-feature=+crt-static").trim(),
    );
    if ui.quiet || ui.json {
        cmd.arg("--quiet");
    }
    // Run from cargo (`cargo run`, a test), stackctl inherits the variables
    // cargo sets for the crate it runs; build scripts of the services'
    // dependencies (ring's, through cc) rerun when those change, and with them
    // everything above. The services' build sees the environment of a shell.
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(is_cargo_crate_var) {
            cmd.env_remove(k);
        }
    }
    ui.info(format!(
        "cargo build --release --target {TARGET} ({} packages, static)",
        packages.len()
    ));
    let status = cmd.status().map_err(|e| {
        Error::usage(
            format!("cannot run cargo: {e}"),
            "install the Rust toolchain (rustup) and put cargo on PATH",
        )
    })?;
    if !status.success() {
        return Err(Error::Build {
            service: packages.join(", "),
            step: " at cargo build".into(),
            message: format!("cargo exited with {status}"),
            hint: "fix the compile errors above".into(),
        });
    }
    Ok(())
}

/// A variable cargo sets for one crate's build, run or test (not a setting
/// of the user's: CARGO_HOME, CARGO_TARGET_DIR, CARGO_PROFILE_* stay).
fn is_cargo_crate_var(k: &str) -> bool {
    matches!(
        k,
        "CARGO_MANIFEST_DIR"
            | "CARGO_MANIFEST_PATH"
            | "CARGO_MANIFEST_LINKS"
            | "CARGO_CRATE_NAME"
            | "CARGO_BIN_NAME"
            | "CARGO_PRIMARY_PACKAGE"
            | "CARGO_TARGET_TMPDIR"
            | "CARGO_RUSTC_CURRENT_DIR"
            | "OUT_DIR"
    ) || [
        "CARGO_PKG_",
        "CARGO_BIN_EXE_",
        "CARGO_CFG_",
        "CARGO_FEATURE_",
    ]
    .iter()
    .any(|p| k.starts_with(p))
}

/// Whether the registry's images for this tag are this checkout's: the
/// stack has a registry and either IMAGE_TAG names the tag, or the tag is
/// the commit (`tag = "git"`) and nothing tracked is changed. Then `build`
/// pulls what CI pushed for it instead of compiling.
fn registry_has_this_commit(stack: &Stack) -> bool {
    if stack.registry.as_deref().is_none_or(str::is_empty) {
        return false;
    }
    if std::env::var("IMAGE_TAG").is_ok_and(|t| !t.is_empty()) {
        return true;
    }
    matches!(stack.tag, crate::model::TagStrategy::Git)
        && std::process::Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(&stack.root)
            .output()
            .is_ok_and(|o| o.status.success() && o.stdout.is_empty())
}

fn git(stack: &Stack, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new("git")
        .args(args)
        .current_dir(&stack.root)
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The references an image built from `inputs` gets: `repo:tag`, and
/// `repo:latest` too with the hash tag strategy.
pub fn image_refs(stack: &Stack, name: &str, inputs: &str) -> Vec<String> {
    let repo = stack.image_repo(name);
    let mut refs = vec![format!("{repo}:{}", tag_for(stack, inputs))];
    if matches!(stack.tag, TagStrategy::Hash) {
        refs.push(format!("{repo}:latest"));
    }
    refs
}

/// The images stackctl built for `name` of this stack from exactly `inputs`
/// (by their labels), or derived from such an image.
pub async fn built_with(
    env: &StackEnv<'_>,
    name: &str,
    inputs: &str,
) -> Result<Vec<crate::engine::models::ImageSummary>> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            format!("{LABEL_INPUTS}={inputs}"),
            format!("{LABEL_SERVICE}={name}"),
            format!("{LABEL_STACK}={}", env.stack.name),
        ],
    )]);
    env.engine.images(filters).await
}

/// An image's size in bytes as the engine reports it (0 when it says none).
pub async fn image_size(env: &StackEnv<'_>, id: &str) -> Result<u64> {
    Ok(env
        .engine
        .image(id)
        .await?
        .and_then(|i| i.size)
        .unwrap_or(0) as u64)
}

/// The bytes of the context file whose path ends with `suffix`.
fn ctx_file(ctx: &Context, suffix: &str) -> Vec<u8> {
    ctx.files()
        .find(|(p, _)| p.ends_with(suffix))
        .map(|(_, b)| b.to_vec())
        .unwrap_or_default()
}

/// The service's `FROM scratch` image as the rendered Dockerfile
/// (templates/Dockerfile.scratch.tera) describes it: the CA bundle, the
/// binary owned by the service's user, and the same metadata (labels,
/// environment, user, port, health check, entrypoint), plus `labels`. What
/// `docker build` of that Dockerfile makes, made without the builder
/// (tests/engine_e2e.rs compares the two).
pub fn scratch_image(
    stack: &Stack,
    s: &Service,
    ca: Vec<u8>,
    binary: Vec<u8>,
    labels: HashMap<String, String>,
) -> Result<(Vec<ebuild::LayerFile>, serde_json::Value)> {
    let app_dir = crate::model::containers::APP_DIR;
    let bin = format!("{app_dir}/{}", s.binary);
    let id = |v: Option<&str>| v.and_then(|x| x.parse::<u64>().ok());
    let mut owner = s.user.split(':');
    let (uid, gid) = match (id(owner.next()), owner.next()) {
        (Some(u), None) => (u, u),
        (Some(u), Some(g)) => match id(Some(g)) {
            Some(g) => (u, g),
            None => return Err(numeric_user(s)),
        },
        _ => return Err(numeric_user(s)),
    };
    let files = vec![
        ebuild::LayerFile {
            path: "etc/ssl/certs/ca-certificates.crt".into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            bytes: ca,
        },
        ebuild::LayerFile {
            path: bin.trim_start_matches('/').to_string(),
            mode: 0o755,
            uid,
            gid,
            bytes: binary,
        },
    ];
    let mut all = serde_json::Map::new();
    for (k, v) in [
        ("org.opencontainers.image.title", s.name.clone()),
        (
            "org.opencontainers.image.description",
            s.description.clone().unwrap_or_else(|| s.name.clone()),
        ),
        ("org.opencontainers.image.version", stack.version.clone()),
        (LABEL_STACK, stack.name.clone()),
        (LABEL_SERVICE, s.name.clone()),
    ] {
        all.insert(k.to_string(), v.into());
    }
    all.extend(labels.into_iter().map(|(k, v)| (k, v.into())));
    let ns = |d: crate::model::units::Duration| d.millis() * 1_000_000;
    let h = &s.healthcheck;
    let config = serde_json::json!({
        "architecture": crate::engine::debian::docker_arch(),
        "os": "linux",
        "created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "config": {
            "User": s.user,
            "Env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
                format!("SERVICE_NAME={}", s.name),
                format!("PORT={}", s.port),
            ],
            "ExposedPorts": { format!("{}/tcp", s.port): {} },
            "Healthcheck": {
                "Test": ["CMD", bin, "healthcheck"],
                "Interval": ns(h.interval),
                "Timeout": ns(h.timeout),
                "StartPeriod": ns(h.start_period),
                "Retries": h.retries,
            },
            "Entrypoint": [bin],
            "Labels": all,
        },
    });
    Ok((files, config))
}

fn numeric_user(s: &Service) -> Error {
    Error::usage(
        format!(
            "service `{}`: user `{}` is not numeric (a FROM scratch image has no /etc/passwd)",
            s.name, s.user
        ),
        "use uid:gid numbers, e.g. user = \"1001:1001\"",
    )
}

/// The tag of a service image: git short commit (+"-dirty"), the inputs' hash, or the literal.
pub fn tag_for(stack: &Stack, inputs_hash: &str) -> String {
    if let Ok(t) = std::env::var("IMAGE_TAG") {
        if !t.is_empty() {
            return t;
        }
    }
    match &stack.tag {
        TagStrategy::Literal(t) => t.clone(),
        TagStrategy::Hash => inputs_hash[..12].to_string(),
        TagStrategy::Git => crate::runtime::image_tag(stack),
    }
}

pub async fn build(
    stack: &Stack,
    names: &[String],
    push: bool,
    no_cargo: bool,
    ui: &Ui,
) -> Result<i32> {
    let mut services = select(stack, names)?;
    let components = super::build_components::selected(stack, names);
    let started = Instant::now();
    let mut pulled = Vec::new();
    if !push && registry_has_this_commit(stack) {
        let env = StackEnv::connect(stack).await?;
        let mut missing = Vec::new();
        for s in &services {
            let reference = format!(
                "{}:{}",
                stack.image_repo(&s.name),
                crate::runtime::image_tag(stack)
            );
            if env.engine.image(&reference).await?.is_none() {
                missing.push(s.name.clone());
            }
        }
        let still = super::push::pull_missing(&env, &missing, ui).await?;
        pulled = missing.into_iter().filter(|m| !still.contains(m)).collect();
        services.retain(|s| !pulled.contains(&s.name));
    }
    let cargo_started = Instant::now();
    if !no_cargo && !services.is_empty() {
        cargo_build(stack, &services, ui)?;
    }
    let cargo_secs = cargo_started.elapsed().as_secs_f64();
    let env = StackEnv::connect(stack).await?;
    let artifacts = env.render()?;
    let target = target_dir(stack).join(TARGET).join("release");
    let ca = artifacts
        .files
        .get("certs/ca-certificates.crt")
        .cloned()
        .unwrap_or_default();
    let layout_out = crate::render::Layout::new(stack, Some(&env.out), String::new()).out_from_root;
    let revision = git(stack, &["rev-parse", "HEAD"]).unwrap_or_default();
    let source = git(stack, &["remote", "get-url", "origin"])
        .unwrap_or_else(|| stack.root.display().to_string());

    let mp = indicatif::MultiProgress::with_draw_target(if ui.quiet || ui.json || !ui.colors() {
        indicatif::ProgressDrawTarget::hidden()
    } else {
        indicatif::ProgressDrawTarget::stderr()
    });
    let style = indicatif::ProgressStyle::with_template("{spinner} {prefix:<18} {wide_msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());

    let jobs = services.iter().map(|s| {
        let bar = mp.add(
            indicatif::ProgressBar::new_spinner()
                .with_style(style.clone())
                .with_prefix(s.name.clone()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        let env = &env;
        let artifacts = &artifacts;
        let ca = &ca;
        let target = &target;
        let layout_out = &layout_out;
        let revision = &revision;
        let source = &source;
        async move {
            let t0 = Instant::now();
            let bin_path = target.join(&s.binary);
            let binary = std::fs::read(&bin_path).map_err(|e| Error::Build {
                service: s.name.clone(),
                step: String::new(),
                message: format!("cannot read {}: {e}", bin_path.display()),
                hint: "run `stackctl build` without --no-cargo, or check CARGO_TARGET_DIR".into(),
            })?;
            let dockerfile = artifacts
                .files
                .get(&format!("services/{}/Dockerfile", s.name))
                .cloned()
                .unwrap_or_default();
            let mut ctx = Context::default();
            ctx.add("Dockerfile", 0o644, dockerfile);
            ctx.add(
                &format!("target/{TARGET}/release/{}", s.binary),
                0o755,
                binary,
            );
            ctx.add(
                &format!("{layout_out}/certs/ca-certificates.crt"),
                0o644,
                ca.clone(),
            );
            let inputs = ctx.hash();
            let refs = image_refs(env.stack, &s.name, &inputs);
            // Cached: an image of this service with exactly these inputs exists.
            let existing = built_with(env, &s.name, &inputs).await?;
            // Only an image stackctl built itself: one derived from it
            // (`FROM` it, with another label or entrypoint) inherits the
            // inputs label but is not this build.
            let mut own: Vec<&crate::engine::models::ImageSummary> = Vec::new();
            for img in &existing {
                if !img.labels.keys().all(|k| OWN_LABELS.contains(&k.as_str())) {
                    continue;
                }
                let entry = env
                    .engine
                    .image(&img.id)
                    .await?
                    .and_then(|i| i.config)
                    .and_then(|c| c.entrypoint);
                if entry
                    == Some(vec![format!(
                        "{}/{}",
                        crate::model::containers::APP_DIR,
                        s.binary
                    )])
                {
                    own.push(img);
                }
            }
            own.sort_by_key(|i| i.created);
            let (id, built) = if let Some(img) = own.first() {
                bar.set_message("cached");
                for r in &refs {
                    env.engine.tag(&img.id, r).await?;
                }
                (img.id.clone(), false)
            } else {
                let labels = HashMap::from([
                    (LABEL_INPUTS.to_string(), inputs.clone()),
                    (LABEL_SERVICE.to_string(), s.name.clone()),
                    (LABEL_STACK.to_string(), env.stack.name.clone()),
                    (
                        "org.opencontainers.image.source".to_string(),
                        source.clone(),
                    ),
                    (
                        "org.opencontainers.image.revision".to_string(),
                        revision.clone(),
                    ),
                    (
                        "org.opencontainers.image.created".to_string(),
                        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    ),
                    (
                        "org.opencontainers.image.version".to_string(),
                        env.stack.version.clone(),
                    ),
                ]);
                bar.set_message("assembling");
                let ca = ctx_file(&ctx, "certs/ca-certificates.crt");
                let bin = ctx_file(&ctx, &format!("release/{}", s.binary));
                let (files, config) = scratch_image(env.stack, s, ca, bin, labels)?;
                let id = ebuild::assemble(&env.engine, &s.name, &files, config, &refs).await?;
                (id, true)
            };
            let size = image_size(env, &id).await?;
            bar.finish_with_message(if built { "built" } else { "cached" });
            Ok::<Built, Error>(Built {
                service: s.name.clone(),
                reference: refs[0].clone(),
                id,
                size,
                built,
                seconds: t0.elapsed().as_secs_f64(),
            })
        }
    });
    let results: Vec<Result<Built>> = futures::stream::iter(jobs)
        .buffer_unordered(4)
        .collect()
        .await;
    let _ = mp.clear();
    let mut done = Vec::new();
    for r in results {
        done.push(r?);
    }
    done.extend(super::build_components::build(&env, &components, ui).await?);
    for name in &pulled {
        let reference = format!(
            "{}:{}",
            stack.image_repo(name),
            crate::runtime::image_tag(stack)
        );
        if let Some(i) = env.engine.image(&reference).await? {
            done.push(Built {
                service: name.clone(),
                reference,
                id: i.id.unwrap_or_default(),
                size: i.size.unwrap_or_default() as u64,
                built: false,
                seconds: 0.0,
            });
        }
    }
    done.sort_by(|a, b| a.service.cmp(&b.service));
    if push {
        super::push::push(&env, &done, ui).await?;
        if let Some(registry) = stack.registry.as_deref().filter(|r| !r.is_empty()) {
            let debian = super::setup::tag_debian_for_registry(&env, registry, ui).await?;
            super::push::push(&env, &debian, ui).await?;
        }
    }
    report(&done, cargo_secs, started.elapsed().as_secs_f64(), ui);
    Ok(0)
}

fn report(done: &[Built], cargo_secs: f64, total: f64, ui: &Ui) {
    if ui.json {
        ui.print_json(&serde_json::json!({
            "images": done.iter().map(|b| serde_json::json!({
                "service": b.service, "image": b.reference, "id": b.id, "size": b.size, "built": b.built, "seconds": b.seconds,
            })).collect::<Vec<_>>(),
            "cargo_seconds": cargo_secs,
            "seconds": total,
        }));
        return;
    }
    if ui.quiet {
        return;
    }
    let w = done
        .iter()
        .map(|b| b.reference.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:<18} {:<w$} {:>8} {:>7} {:>7}",
        "SERVICE", "IMAGE", "SIZE", "STATUS", "TIME"
    );
    for b in done {
        println!(
            "{:<18} {:<w$} {:>6.1}MB {:>7} {:>6.2}s",
            b.service,
            b.reference,
            b.size as f64 / 1e6,
            if b.built { "built" } else { "cached" },
            b.seconds
        );
    }
    println!(
        "{} images ({} built, {} cached); cargo {:.1}s, total {:.1}s",
        done.len(),
        done.iter().filter(|b| b.built).count(),
        done.iter().filter(|b| !b.built).count(),
        cargo_secs,
        total
    );
}

#[cfg(test)]
mod tests {
    use super::is_cargo_crate_var;

    #[test]
    fn cargo_crate_variables_are_dropped_and_user_settings_kept() {
        for k in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_BIN_EXE_stackctl",
            "CARGO_CRATE_NAME",
            "CARGO_TARGET_TMPDIR",
            "OUT_DIR",
        ] {
            assert!(is_cargo_crate_var(k), "{k}");
        }
        for k in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_PROFILE_RELEASE_LTO",
            "CARGO_BUILD_JOBS",
            "CARGO_NET_OFFLINE",
            "RUSTFLAGS",
            "CC",
            "PATH",
        ] {
            assert!(!is_cargo_crate_var(k), "{k}");
        }
    }
}
