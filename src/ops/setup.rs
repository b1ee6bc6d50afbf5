//! `stackctl setup`: host tools, daemon and disk checks, secrets, networks,
//! volumes, infrastructure images. Idempotent: a second run changes nothing.

use crate::error::{Error, Result};
use crate::images::{self, Recipe};
use crate::model::Stack;
use crate::runtime::debian_recipes;
use crate::runtime::secrets::ensure_secrets;
use crate::runtime::stackenv::StackEnv;
use crate::ui::Ui;
use std::path::Path;

pub const MIN_FREE_GB: u64 = 2;

/// Free space of the file system holding `path`, in bytes.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// The host tools the Debian images need (debootstrap, the archive keyring),
/// checked before anything else when the stack has such images and the
/// suite's base rootfs is not cached yet: installed through apt-get when
/// allowed, else the exact command to run (exit 33).
pub async fn prepare_host(stack: &Stack, ui: &Ui) -> Result<Vec<String>> {
    let recipes = debian_recipes(stack, &crate::model::containers(stack))?;
    prepare_host_for(&recipes, ui).await
}

/// [`prepare_host`] for the images of `recipes` only.
async fn prepare_host_for(recipes: &[Recipe], ui: &Ui) -> Result<Vec<String>> {
    let uncached = recipes
        .iter()
        .any(|r| images::rootfs::cached_base(&r.base()).is_none());
    if !uncached {
        return Ok(Vec::new());
    }
    let say = |m: &str| ui.info(format!("→ {m}"));
    let installed = images::host::prepare(&say)
        .await
        .map_err(|e| Error::Build {
            service: "the Debian-based images".into(),
            step: " (host tools)".into(),
            message: e.message,
            hint: e.hint,
        })?;
    if !installed.is_empty() {
        ui.ok(format!("installed {}", installed.join(", ")));
    }
    Ok(installed)
}

/// Every Debian-built image the stack uses, made (the base once, then in
/// parallel, with progress) or found; the tags built now. The same recipes
/// as stackenv's ensure_infra_images (`start`, `deploy`), so nothing is left
/// for it to do after setup.
async fn build_debian_images(env: &StackEnv<'_>, ui: &Ui) -> Result<Vec<String>> {
    let ensured = images::ensure_all(
        &env.engine,
        debian_recipes(env.stack, &env.containers)?,
        images::Display::from_ui(ui),
    )
    .await
    .map_err(|e| Error::Build {
        service: "the Debian-based images".into(),
        step: String::new(),
        message: format!("{e:#}"),
        hint: "see the message; `stackctl images -v` shows each step".into(),
    })?;
    let mut built: Vec<String> = Vec::new();
    for e in ensured.iter().filter(|e| e.built) {
        ui.ok(format!(
            "built {} ({:.0} MB) in {:.0} s",
            e.tag,
            e.size as f64 / 1e6,
            e.seconds
        ));
        built.push(e.tag.clone());
    }
    Ok(built)
}

/// Where a Debian-built image is kept in the stack's registry: its tag's
/// repository under the registry, tagged with its tag and recipe hash
/// (`REGISTRY/stackctl/nginx:bookworm-<12 hex>`), so a pulled image is the
/// one this checkout's recipe makes.
pub fn registry_ref(registry: &str, recipe: &Recipe) -> String {
    let (repo, tag) = recipe
        .tag
        .rsplit_once(':')
        .unwrap_or((recipe.tag.as_str(), "latest"));
    format!(
        "{}/{repo}:{tag}-{}",
        registry.trim_end_matches('/'),
        &recipe.hash()[..12]
    )
}

/// The Debian-built images of the stack the daemon has (made from the
/// current recipes), tagged for the registry: what `build --push` pushes
/// beside the services', so a fresh clone's `setup` pulls instead of
/// building. The ones it lacks are named in a warning.
pub async fn tag_debian_for_registry(
    env: &StackEnv<'_>,
    registry: &str,
    ui: &Ui,
) -> Result<Vec<super::build::Built>> {
    let mut out = Vec::new();
    for r in debian_recipes(env.stack, &env.containers)? {
        let Some(img) = env.engine.image(&r.tag).await? else {
            ui.warn(format!(
                "{} is not built here (run `stackctl setup` first to push it too)",
                r.tag
            ));
            continue;
        };
        if !has_recipe_image(env, &r).await? {
            ui.warn(format!(
                "{} is outdated here (run `stackctl setup` first to push it too)",
                r.tag
            ));
            continue;
        }
        let reference = registry_ref(registry, &r);
        env.engine.tag(&r.tag, &reference).await?;
        out.push(super::build::Built {
            service: r.name.clone(),
            reference,
            id: img.id.unwrap_or_default(),
            size: img.size.unwrap_or_default() as u64,
            built: false,
            seconds: 0.0,
        });
    }
    Ok(out)
}

/// Whether the daemon has `recipe`'s image, made from this recipe.
async fn has_recipe_image(env: &StackEnv<'_>, recipe: &Recipe) -> Result<bool> {
    Ok(env.engine.image(&recipe.tag).await?.is_some_and(|i| {
        i.config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(images::RECIPE_LABEL).cloned())
            == Some(recipe.hash())
    }))
}

/// Take from the stack's registry (where CI's `build --push` put them) the
/// Debian-built images the daemon lacks, in parallel, each tagged as its
/// recipe's image; the recipes still to build here. A registry that does
/// not have one is no error: it is built.
async fn pull_debian_images(
    env: &StackEnv<'_>,
    recipes: Vec<Recipe>,
    ui: &Ui,
) -> Result<(Vec<Recipe>, Vec<String>)> {
    let mut todo = Vec::new();
    for r in recipes {
        if !has_recipe_image(env, &r).await? {
            todo.push(r);
        }
    }
    let Some(registry) = env.stack.registry.clone().filter(|r| !r.is_empty()) else {
        return Ok((todo, Vec::new()));
    };
    let creds = super::push::credentials(&registry);
    let pulls = futures::future::join_all(todo.iter().map(|r| {
        let reference = registry_ref(&registry, r);
        let creds = creds.clone();
        async move {
            let t = std::time::Instant::now();
            let pulled = env.engine.pull(&reference, creds).await;
            (reference, pulled, t.elapsed().as_secs_f64())
        }
    }))
    .await;
    let mut still = Vec::new();
    let mut pulled = Vec::new();
    for (r, (reference, result, secs)) in todo.into_iter().zip(pulls) {
        match result {
            Ok(()) => {
                env.engine.tag(&reference, &r.tag).await?;
                if has_recipe_image(env, &r).await? {
                    ui.ok(format!("pulled {} from {registry} in {secs:.1} s", r.tag));
                    pulled.push(r.tag.clone());
                    continue;
                }
                ui.warn(format!(
                    "{reference} is not made from this checkout's recipe; building {} here",
                    r.tag
                ));
            }
            Err(e) => ui.detail(format!("{}: not in {registry} ({e}); building it", r.tag)),
        }
        still.push(r);
    }
    Ok((still, pulled))
}

pub async fn setup(stack: &Stack, ui: &Ui) -> Result<i32> {
    // With a registry the images may come from it and need no host tools:
    // the host is prepared after the pull, for what is left to build.
    let pull_first = stack.registry.as_ref().is_some_and(|r| !r.is_empty());
    let mut installed = if pull_first {
        Vec::new()
    } else {
        prepare_host(stack, ui).await?
    };
    let env = StackEnv::connect(stack).await?;
    ui.ok(format!(
        "Docker Engine {} (API {}) at {}",
        env.engine.server_version, env.engine.api_version, env.engine.host
    ));
    let info = env.engine.info().await?;
    let root = info
        .docker_root_dir
        .unwrap_or_else(|| "/var/lib/docker".into());
    if let Some(free) = free_bytes(Path::new(&root)).or_else(|| free_bytes(Path::new("/"))) {
        let gb = free / (1 << 30);
        if gb < MIN_FREE_GB {
            return Err(Error::usage(
                format!(
                    "only {gb} GiB free under {root}; the stack needs at least {MIN_FREE_GB} GiB"
                ),
                "free disk space (`stackctl clean`, docker image prune) and run setup again",
            ));
        }
        ui.ok(format!("{gb} GiB free under {root}"));
    }
    let secrets = ensure_secrets(stack, ui)?;
    let nets = env.ensure_networks().await?;
    let vols = env.ensure_volumes().await?;
    let mut pulled = Vec::new();
    if pull_first {
        let (left, p) =
            pull_debian_images(&env, debian_recipes(stack, &env.containers)?, ui).await?;
        pulled = p;
        installed = prepare_host_for(&left, ui).await?;
    }
    let built = build_debian_images(&env, ui).await?;
    let mut changes = Vec::new();
    if !pulled.is_empty() {
        ui.ok(format!(
            "{} images pulled instead of built ({})",
            pulled.len(),
            pulled.join(", ")
        ));
    }
    if !installed.is_empty() {
        changes.push(format!("host packages ({})", installed.join(", ")));
    }
    if !secrets.is_empty() {
        changes.push(format!(
            "{} secrets ({})",
            secrets.len(),
            secrets.join(", ")
        ));
    }
    if !nets.is_empty() {
        changes.push(format!("{} networks", nets.len()));
    }
    if !vols.is_empty() {
        changes.push(format!("{} volumes", vols.len()));
    }
    if !built.is_empty() {
        changes.push(format!("{} images ({})", built.len(), built.join(", ")));
    }
    let skipped = env.missing_optional().await?;
    for (c, image) in &skipped {
        ui.warn(format!(
            "{c} needs {image}, which is not on this host and no built-in Debian recipe makes it: `start` skips it until the image is loaded (docker load) or a registry is reachable"
        ));
    }
    if ui.json {
        ui.print_json(&serde_json::json!({
            "host_packages_installed": installed,
            "secrets_created": secrets, "networks_created": nets, "volumes_created": vols, "images_built": built,
            "skipped": skipped.iter().map(|(c, i)| serde_json::json!({"container": c, "image": i})).collect::<Vec<_>>(),
        }));
    } else if changes.is_empty() {
        ui.ok("nothing to do: secrets, networks, volumes and images are all in place");
    } else {
        ui.ok(format!("created {}", changes.join(", ")));
    }
    Ok(0)
}

/// `stackctl images`: every image the stack needs, built (Debian recipes),
/// present, or missing, in one table.
pub async fn images(stack: &Stack, ui: &Ui) -> Result<i32> {
    prepare_host(stack, ui).await?;
    let env = StackEnv::connect(stack).await?;
    build_debian_images(&env, ui).await?;
    list_images(&env, ui).await
}

/// Every image the stack's containers use, once: its reference and where it comes from.
fn stack_images(env: &StackEnv<'_>) -> Vec<(String, &'static str)> {
    let tag = crate::runtime::image_tag(env.stack);
    let mut out: Vec<(String, &'static str)> = Vec::new();
    for c in &env.containers {
        let image = crate::engine::create::image_ref(c, &tag);
        if out.iter().any(|(i, _)| *i == image) {
            continue;
        }
        let source = match &c.image {
            crate::model::containers::Image::App { .. } => "stackctl build",
            crate::model::containers::Image::Infra { local: true, .. } => "Debian packages",
            crate::model::containers::Image::Infra { local: false, .. } => "registry",
        };
        out.push((image, source));
    }
    out
}

/// The stack's images, each with its source and whether this host has it.
async fn list_images(env: &StackEnv<'_>, ui: &Ui) -> Result<i32> {
    let mut rows = Vec::new();
    for (image, source) in stack_images(env) {
        let found = env.engine.image(&image).await?;
        let state = match &found {
            Some(i) => format!("present, {:.1} MB", i.size.unwrap_or(0) as f64 / 1e6),
            None if source == "registry" => {
                "missing: not packaged by Debian; load it or reach a registry".to_string()
            }
            None => format!(
                "missing: run `{}`",
                if source == "stackctl build" {
                    "stackctl build"
                } else {
                    "stackctl images"
                }
            ),
        };
        rows.push((image, source, state, found.is_some()));
    }
    if ui.json {
        ui.print_json(&serde_json::json!(rows
            .iter()
            .map(|r| serde_json::json!({"image": r.0, "source": r.1, "state": r.2, "present": r.3}))
            .collect::<Vec<_>>()));
    } else {
        let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(5);
        for (image, source, state, _) in &rows {
            println!("{image:<w$}  {source:<16} {state}");
        }
    }
    Ok(0)
}

/// `stackctl images save FILE`: every image the stack needs, as one archive
/// another host loads with `stackctl images load FILE` (no registry needed).
/// A registry image this host lacks is left out with a warning; a missing
/// image stackctl makes is an error (make it first).
pub async fn save_images(stack: &Stack, file: &Path, ui: &Ui) -> Result<i32> {
    let env = StackEnv::connect(stack).await?;
    let mut present = Vec::new();
    for (image, source) in stack_images(&env) {
        if env.engine.image(&image).await?.is_some() {
            present.push(image);
        } else if source == "registry" {
            ui.warn(format!(
                "{image} is not on this host: left out of the archive"
            ));
        } else {
            return Err(Error::MissingImage {
                hint: format!(
                    "run `{}` first, then save again",
                    if source == "stackctl build" {
                        "stackctl build"
                    } else {
                        "stackctl setup"
                    }
                ),
                image,
            });
        }
    }
    let t = std::time::Instant::now();
    let size = env.engine.save_images(&present, file).await?;
    ui.ok(format!(
        "saved {} images ({:.0} MB) to {} in {:.1}s; on the other host: stackctl images load {}",
        present.len(),
        size as f64 / 1e6,
        file.display(),
        t.elapsed().as_secs_f64(),
        file.display()
    ));
    Ok(0)
}

/// `stackctl images load FILE`: an archive `images save` wrote, then the
/// stack's images listed with their state.
pub async fn load_images(stack: &Stack, file: &Path, ui: &Ui) -> Result<i32> {
    let env = StackEnv::connect(stack).await?;
    let t = std::time::Instant::now();
    env.engine.load_images(file).await?;
    ui.ok(format!(
        "loaded {} in {:.1}s",
        file.display(),
        t.elapsed().as_secs_f64()
    ));
    list_images(&env, ui).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_debian_image_is_kept_in_the_registry_under_its_recipe_hash() {
        let r = crate::images::Recipe::named("nginx").expect("built-in");
        assert_eq!(r.tag, "stackctl/nginx:1.22-bookworm");
        let reference = super::registry_ref("127.0.0.1:5000/team/", &r);
        assert_eq!(
            reference,
            format!(
                "127.0.0.1:5000/team/stackctl/nginx:1.22-bookworm-{}",
                &r.hash()[..12]
            )
        );
        let mut changed = r.clone();
        changed.packages.push("curl".into());
        assert_ne!(
            super::registry_ref("127.0.0.1:5000/team", &changed),
            reference,
            "another recipe, another reference"
        );
    }
}
