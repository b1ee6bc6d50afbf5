//! `stackctl setup`: host tools, daemon and disk checks, secrets, networks,
//! volumes, infrastructure images. Idempotent: a second run changes nothing.

use super::stackenv::StackEnv;
use crate::error::{Error, Result};
use crate::images::{self, Recipe};
use crate::model::{SecretKind, Stack};
use crate::ui::Ui;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub const MIN_FREE_GB: u64 = 2;

pub fn secrets_dir(stack: &Stack) -> std::path::PathBuf {
    stack.root.join("secrets")
}

fn random_password(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut r = rand::thread_rng();
    (0..len)
        .map(|_| ALPHABET[r.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Write a secret file atomically (0600 until `set_owners`): a new one never
/// replaces one that exists (a second `setup` racing this one keeps whichever
/// file landed first); with `replace`, a derived one takes the old one's place.
fn write_secret(path: &Path, bytes: &[u8], replace: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("secret"),
        std::process::id()
    ));
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)))
        .map_err(err)?;
    if replace {
        return std::fs::rename(&tmp, path).map_err(err);
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Create every missing secret; never overwrite one. Returns the names created.
pub fn ensure_secrets(stack: &Stack, ui: &Ui) -> Result<Vec<String>> {
    let dir = secrets_dir(stack);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Write {
        path: dir.clone(),
        source,
    })?;
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    let mut created = Vec::new();
    // Plain values first; the ACL and certificate derive from others.
    let mut order: Vec<&crate::model::Secret> = stack.secrets.iter().collect();
    order.sort_by_key(|s| matches!(s.generate, SecretKind::RedisAcl | SecretKind::TlsCert));
    for s in order {
        let path = dir.join(&s.name);
        if path.exists() {
            continue;
        }
        let bytes: Vec<u8> = match s.generate {
            SecretKind::Password => random_password(32).into_bytes(),
            SecretKind::HexKey => {
                use rand::RngCore;
                let mut k = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut k);
                hex::encode(k).into_bytes()
            }
            SecretKind::TlsKey => rcgen::KeyPair::generate()
                .map_err(|e| Error::Other(anyhow::anyhow!("generate TLS key: {e}")))?
                .serialize_pem()
                .into_bytes(),
            SecretKind::TlsCert => {
                let key_name = s.from.clone().unwrap_or_else(|| format!("{}-key", s.name));
                let key_path = dir.join(&key_name);
                let pem = std::fs::read_to_string(&key_path).map_err(|source| Error::Read {
                    path: key_path.clone(),
                    source,
                })?;
                let key = rcgen::KeyPair::from_pem(&pem)
                    .map_err(|e| Error::Other(anyhow::anyhow!("TLS key {key_name}: {e}")))?;
                let host = stack
                    .nginx
                    .as_ref()
                    .map(|n| n.server_name.clone())
                    .unwrap_or_else(|| "localhost".into());
                let mut names = vec![host.clone()];
                if host != "localhost" {
                    names.push("localhost".into());
                }
                let params = rcgen::CertificateParams::new(names)
                    .map_err(|e| Error::Other(anyhow::anyhow!("certificate for {host}: {e}")))?;
                params
                    .self_signed(&key)
                    .map_err(|e| Error::Other(anyhow::anyhow!("self-sign certificate: {e}")))?
                    .pem()
                    .into_bytes()
            }
            // Derived from stack.toml and the passwords: rewritten below
            // whenever either changed.
            SecretKind::RedisAcl => continue,
            SecretKind::File => {
                ui.warn(format!(
                    "secret `{}` must be provided by you: put it in {}",
                    s.name,
                    path.display()
                ));
                continue;
            }
        };
        write_secret(&path, &bytes, false)?;
        created.push(s.name.clone());
    }
    created.extend(refresh_redis_acl(stack)?);
    set_owners(stack, &dir)?;
    Ok(created)
}

/// The Redis ACL file: the administrator (`default`, with the password its
/// secret's `from` names: health check, backups) and one user per
/// service or component that uses Redis, each with its own password and the access
/// stack.toml gives it. Passwords appear only as SHA-256 hashes.
pub fn redis_acl(stack: &Stack, dir: &Path, from: &str) -> Result<String> {
    let hash = |secret: &str| -> Result<String> {
        use sha2::{Digest, Sha256};
        let pw = crate::engine::create::read_secret(dir, secret)?;
        Ok(hex::encode(Sha256::digest(
            String::from_utf8_lossy(&pw).trim().as_bytes(),
        )))
    };
    let mut acl = format!("user default on #{} ~* &* +@all\n", hash(from)?);
    let services = stack.services.iter().filter_map(|s| s.redis.as_ref());
    for a in services.chain(stack.components.iter().filter_map(|c| c.redis.as_ref())) {
        acl.push_str(&format!(
            "user {} on #{} {}\n",
            a.user,
            hash(&a.password_secret)?,
            a.rules()
        ));
    }
    Ok(acl)
}

/// A digest of what each secret holds, for the containers' config hash: the
/// file, or for a Redis ACL what [`refresh_redis_acl`] writes before the
/// containers are staged (so a hash made earlier, or by `status`, which
/// writes nothing, already sees it). Secrets not there yet are left out.
pub fn secret_digests(stack: &Stack) -> std::collections::HashMap<String, Vec<u8>> {
    use sha2::{Digest, Sha256};
    let dir = secrets_dir(stack);
    stack
        .secrets
        .iter()
        .filter_map(|s| {
            let bytes = match s.generate {
                SecretKind::RedisAcl => {
                    redis_acl(stack, &dir, s.from.as_deref().unwrap_or_default())
                        .ok()?
                        .into_bytes()
                }
                _ => std::fs::read(dir.join(&s.name)).ok()?,
            };
            Some((s.name.clone(), Sha256::digest(&bytes).to_vec()))
        })
        .collect()
}

/// Write every Redis ACL secret again when stack.toml or a password changed
/// since (`setup`, and staging for `start`, `deploy` and Swarm, call this).
/// Returns the names written. An ACL whose passwords are missing is left to
/// `setup` (the containers' secret check says so).
pub fn refresh_redis_acl(stack: &Stack) -> Result<Vec<String>> {
    let dir = secrets_dir(stack);
    let mut written = Vec::new();
    for s in stack
        .secrets
        .iter()
        .filter(|s| s.generate == SecretKind::RedisAcl)
    {
        let acl = redis_acl(stack, &dir, s.from.as_deref().unwrap_or_default())?;
        let path = dir.join(&s.name);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(acl.as_str()) {
            continue;
        }
        write_secret(&path, acl.as_bytes(), true)?;
        written.push(s.name.clone());
    }
    if !written.is_empty() {
        set_owners(stack, &dir)?;
    }
    Ok(written)
}

/// Who may read each secret file when it is bind-mounted as is (docker-compose
/// does that): a secret an app reads belongs to the app's uid, group root,
/// mode 0640, so both the service (uid 1001) and root-started entrypoints
/// without capabilities (Redis, PostgreSQL) can read it; any other stays
/// root's, 0600. stackctl's own containers get private 0444 copies instead.
pub fn set_owners(stack: &Stack, dir: &Path) -> Result<()> {
    let containers = crate::model::containers(stack);
    for s in &stack.secrets {
        let path = dir.join(&s.name);
        if !path.exists() {
            continue;
        }
        let uid = containers
            .iter()
            .filter(|c| c.secrets.contains(&s.name))
            .filter_map(|c| c.user.as_deref())
            .filter_map(|u| u.split(':').next().and_then(|x| x.parse::<u32>().ok()))
            .find(|uid| *uid != 0);
        let (owner, mode) = match uid {
            Some(u) => (u, 0o640),
            None => (0, 0o600),
        };
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|e| Error::Other(e.into()))?;
        // SAFETY: a valid NUL-terminated path; chown has no other preconditions.
        if unsafe { libc::chown(c.as_ptr(), owner, 0) } != 0 {
            return Err(Error::Write {
                path: path.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(
            |source| Error::Write {
                path: path.clone(),
                source,
            },
        )?;
    }
    Ok(())
}

/// Free space of the file system holding `path`, in bytes.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// The Debian-built images the stack's containers use, as recipes.
pub fn debian_recipes(
    stack: &Stack,
    containers: &[crate::model::containers::ContainerSpec],
) -> Result<Vec<Recipe>> {
    let mut out: Vec<Recipe> = Vec::new();
    for c in containers {
        let crate::model::containers::Image::Infra { image, local: true } = &c.image else {
            continue;
        };
        if out.iter().any(|r| r.tag == *image) {
            continue;
        }
        // A component may list its own packages; infrastructure uses the built-in recipes.
        let packages: &[String] = match stack.component(&c.name).map(|k| &k.source) {
            Some(crate::model::ComponentSource::Debian { packages, .. }) => packages,
            _ => &[],
        };
        let recipe = Recipe::resolve(image, packages).map_err(|e| {
            Error::usage(
                format!("{}: {e}", c.name),
                "use a built-in Debian image tag, or a registry image",
            )
        })?;
        out.push(recipe);
    }
    // A component built from its own Dockerfile may start FROM a built-in
    // Debian image (no registry could give it one).
    for comp in &stack.components {
        let crate::model::ComponentSource::Dockerfile {
            context,
            dockerfile,
        } = &comp.source
        else {
            continue;
        };
        let text =
            std::fs::read_to_string(stack.root.join(context).join(dockerfile)).unwrap_or_default();
        for from in dockerfile_bases(&text) {
            if let Some(r) = Recipe::builtin(&from) {
                if !out.iter().any(|o| o.tag == r.tag) {
                    out.push(r);
                }
            }
        }
    }
    Ok(out)
}

/// The images a Dockerfile's FROM lines name (not build stages or ARGs).
pub fn dockerfile_bases(text: &str) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
        let Some(image) = rest.first() else { continue };
        if !image.contains('$') && !stages.iter().any(|s| s == image) {
            out.push(image.to_string());
        }
        if let [_, as_, name] = rest.as_slice() {
            if as_.eq_ignore_ascii_case("AS") {
                stages.push(name.to_string());
            }
        }
    }
    out
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
    let tag = super::image_tag(env.stack);
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
