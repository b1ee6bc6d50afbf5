//! Images built from Debian packages when no registry is reachable.
//!
//! A [`Recipe`] is data: a tag, packages, a prune list and a build context.
//! The built-in ones are `images/<name>/` (PostgreSQL, Redis, Nginx,
//! Prometheus, the exporters, Alertmanager, PgBouncer); a component's own
//! package list is [`Recipe::packages`]. Every image is made in three stages,
//! through the Docker Engine API (never the docker CLI):
//!
//! 1. the shared base of the suite: debootstrap minbase (signatures checked)
//!    plus ca-certificates and wget, upgraded from the update and security
//!    pockets, slimmed; kept unpacked under /var/tmp/stackctl-rootfs/ and
//!    imported once as `stackctl/rootfs:<suite>-<hash>`
//!    (`POST /images/create?fromSrc=-`);
//! 2. the image's packages on top of it: `apt-get install` in a chroot of an
//!    overlay over the base tree; the overlay's upper directory is the image's
//!    own layer, cached as a tarball and loaded on top of the base
//!    (`POST /images/load`) as `stackctl/rootfs:<name>-<hash>`;
//! 3. the final image, built `FROM` that with the recipe's Dockerfile and
//!    files (`POST /build`, the context streamed from memory).
//!
//! Every final image carries `io.stackctl.recipe=<sha256 of its recipe>`;
//! [`ensure`] returns at once when the tag already has the current recipe.
//! [`ensure_all`] builds the base once, then every image in parallel.

pub mod host;
pub mod layer;
mod progress;
pub mod recipe;
pub mod rootfs;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use anyhow::{anyhow, Result};

use crate::engine::{debian, Engine};

pub use progress::Display;
pub use recipe::{builtin_tags, Base, Recipe};

/// The label holding the recipe hash on every image stackctl builds here.
pub const RECIPE_LABEL: &str = "io.stackctl.recipe";
/// The label naming the recipe (postgres, redis, ..., `base` on the base).
pub const KIND_LABEL: &str = "io.stackctl.image-kind";
/// The label holding the build id of the base tree an image was made on.
pub const BASE_LABEL: &str = "io.stackctl.base-build";
/// Repository of the base and per-image rootfs images.
pub const ROOTFS_REPO: &str = "stackctl/rootfs";

/// What [`ensure`] found or built.
#[derive(Debug, Clone)]
pub struct Ensured {
    /// The recipe's name (`postgres`, `node-exporter`, `pkg-worker-…`).
    pub name: String,
    pub tag: String,
    pub image_id: String,
    /// Image size in bytes, as the engine reports it.
    pub size: u64,
    /// false when the image with the current recipe was already there.
    pub built: bool,
    /// The recipe hash (also in the image's `io.stackctl.recipe` label).
    pub recipe: String,
    /// Wall time of this call.
    pub seconds: f64,
}

/// The sha256 of a recipe: see [`Recipe::hash`].
pub fn recipe_hash(recipe: &Recipe) -> String {
    recipe.hash()
}

/// One async lock per key (an image tag, a base hash) in this process:
/// whoever waited finds what the other built.
fn lock_for(key: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: LazyLock<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let mut map = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(key.to_string()).or_default().clone()
}

/// How many images install their packages at once (`STACKCTL_IMAGE_JOBS`,
/// default 6: apt and dpkg wait on the mirror and the disk as much as on
/// the CPU).
fn jobs() -> &'static tokio::sync::Semaphore {
    static JOBS: LazyLock<tokio::sync::Semaphore> = LazyLock::new(|| {
        let n = std::env::var("STACKCTL_IMAGE_JOBS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(6);
        tokio::sync::Semaphore::new(n)
    });
    &JOBS
}

/// The image when its tag already carries the recipe's hash.
async fn up_to_date(
    engine: &Engine,
    recipe: &Recipe,
    hash: &str,
    start: Instant,
) -> Result<(Option<Ensured>, Option<debian::ImageFacts>)> {
    let existing = debian::inspect(engine, &recipe.tag).await?;
    if let Some(img) = &existing {
        if img.labels.get(RECIPE_LABEL).map(String::as_str) == Some(hash) {
            return Ok((
                Some(Ensured {
                    name: recipe.name.clone(),
                    tag: recipe.tag.clone(),
                    image_id: img.id.clone(),
                    size: img.size,
                    built: false,
                    recipe: hash.to_string(),
                    seconds: start.elapsed().as_secs_f64(),
                }),
                existing,
            ));
        }
    }
    Ok((None, existing))
}

/// A suite's base tree and the image imported from it.
type Prepared = (rootfs::BaseTree, debian::BaseImage);

/// The suite's base tree and image, made once (per process, under a lock).
async fn prepare_base(
    engine: &Engine,
    base: &Base,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Prepared> {
    let lock = lock_for(&format!("base {}", base.hash()));
    let _guard = lock.lock().await;
    let (tree, _) = rootfs::ensure_base_tree(base, progress).await?;
    let image = debian::ensure_base_image(engine, base, &tree, progress).await?;
    Ok((tree, image))
}

/// Make sure `recipe.tag` exists with the current recipe; build it when it
/// does not (debootstrap only when the suite's base is not cached).
/// `progress` receives one line per step.
pub async fn ensure(
    engine: &Engine,
    recipe: &Recipe,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Ensured> {
    let start = Instant::now();
    let hash = recipe.hash();
    let (done, existing) = up_to_date(engine, recipe, &hash, start).await?;
    if let Some(e) = done {
        return Ok(e);
    }
    say_why(existing.as_ref(), &hash, progress);
    let long = long_running(engine);
    let prepared = match debian::existing_layer_image(&long, recipe).await? {
        Some(_) => None,
        None => Some(prepare_base(&long, &recipe.base(), progress).await?),
    };
    build_on(&long, recipe, prepared.as_ref(), start, progress).await
}

fn say_why(existing: Option<&debian::ImageFacts>, hash: &str, progress: &(dyn Fn(&str) + Sync)) {
    match existing {
        Some(img) => progress(&format!(
            "recipe changed ({} -> {}), rebuilding",
            img.labels
                .get(RECIPE_LABEL)
                .map(|h| &h[..h.len().min(12)])
                .unwrap_or("none"),
            &hash[..12]
        )),
        None => progress("not present, building"),
    }
}

/// Long imports and builds: no 2-minute request timeout for these calls.
fn long_running(engine: &Engine) -> Engine {
    engine.with_timeout(std::time::Duration::from_secs(3 * 3600))
}

/// Build the recipe's rootfs image (unless the engine has it; then the base
/// is not needed) and its final image.
async fn build_on(
    engine: &Engine,
    recipe: &Recipe,
    prepared: Option<&Prepared>,
    start: Instant,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Ensured> {
    let hash = recipe.hash();
    let tag = &recipe.tag;
    let lock = lock_for(tag);
    let _guard = lock.lock().await;
    let (done, existing) = up_to_date(engine, recipe, &hash, start).await?;
    if let Some(e) = done {
        return Ok(e);
    }
    let rootfs_tag = match debian::existing_layer_image(engine, recipe).await? {
        Some(t) => {
            progress(&format!("layer: image {t} present"));
            t
        }
        None => {
            let (tree, base) =
                prepared.ok_or_else(|| anyhow!("the shared base of {tag} was not prepared"))?;
            let _permit = jobs().acquire().await;
            debian::ensure_layer_image(engine, recipe, base, tree, progress).await?
        }
    };
    let image_id = debian::build_final(engine, recipe, tag, &rootfs_tag, &hash, progress).await?;
    let built = debian::inspect(engine, tag).await?.ok_or_else(|| {
        anyhow!("{tag} was built ({image_id}) but the engine does not know the tag")
    })?;
    if let Some(old) = existing {
        if old.id != built.id {
            debian::remove_if_unused(engine, &old.id, progress).await;
        }
    }
    let base_tag = debian::base_tag(&recipe.base());
    debian::remove_stale_bases(engine, recipe, &[&rootfs_tag, &base_tag], progress).await;
    debian::remove_dangling(engine, recipe, progress).await;
    let seconds = start.elapsed().as_secs_f64();
    progress(&format!(
        "built {} ({:.1} MB) in {seconds:.1}s",
        short_id(&built.id),
        built.size as f64 / 1e6
    ));
    Ok(Ensured {
        name: recipe.name.clone(),
        tag: tag.clone(),
        image_id: built.id,
        size: built.size,
        built: true,
        recipe: hash,
        seconds,
    })
}

/// Make sure every recipe's image exists with its current recipe: the ones
/// present are only inspected; for the others the shared base is made once,
/// then they are built in parallel, each with its own progress line. The
/// result follows the order of `recipes` (one entry per distinct tag). When
/// some fail, the others still finish and the error names every failure.
pub async fn ensure_all(
    engine: &Engine,
    recipes: Vec<Recipe>,
    display: Display,
) -> Result<Vec<Ensured>> {
    let start = Instant::now();
    let mut unique: Vec<Recipe> = Vec::new();
    for r in recipes {
        if !unique.iter().any(|u| u.tag == r.tag) {
            unique.push(r);
        }
    }
    let checks = futures::future::join_all(unique.iter().map(|r| {
        let hash = r.hash();
        async move { up_to_date(engine, r, &hash, start).await }
    }))
    .await;
    let mut results: Vec<Option<Ensured>> = Vec::new();
    let mut todo: Vec<(usize, Option<debian::ImageFacts>)> = Vec::new();
    for (i, c) in checks.into_iter().enumerate() {
        let (done, existing) = c?;
        if done.is_none() {
            todo.push((i, existing));
        }
        results.push(done);
    }
    if todo.is_empty() {
        return Ok(results.into_iter().flatten().collect());
    }
    // The longest builds first: they start before the job slots fill up.
    todo.sort_by_key(|(i, _)| build_order(&unique[*i]));
    let reporter = progress::Reporter::new(display);
    let long = long_running(engine);
    // Only images whose rootfs image is missing need the shared base.
    let layers = futures::future::join_all(
        todo.iter()
            .map(|(i, _)| debian::existing_layer_image(&long, &unique[*i])),
    )
    .await;
    let mut need_base = Vec::new();
    for l in layers {
        need_base.push(l?.is_none());
    }
    let mut bases: Vec<(Base, Result<Prepared, String>)> = Vec::new();
    for ((i, _), need) in todo.iter().zip(&need_base) {
        let base = unique[*i].base();
        if !*need || bases.iter().any(|(b, _)| *b == base) {
            continue;
        }
        let line = reporter.line(&debian::base_tag(&base));
        let made = prepare_base(&long, &base, &|m: &str| line.say(m)).await;
        match &made {
            Ok(_) => line.finish(&format!("ready ({:.0} s)", line.elapsed())),
            Err(e) => line.fail(&format!("{e:#}")),
        }
        bases.push((base, made.map_err(|e| format!("{e:#}"))));
    }
    let builds = todo.iter().map(|(i, existing)| {
        let recipe = &unique[*i];
        let line = reporter.line(&recipe.tag);
        let base = bases
            .iter()
            .find(|(b, _)| *b == recipe.base())
            .map(|(_, r)| r.clone());
        let long = &long;
        async move {
            let progress = |m: &str| line.say(m);
            say_why(existing.as_ref(), &recipe.hash(), &progress);
            let result = match base {
                Some(Ok(prepared)) => {
                    build_on(long, recipe, Some(&prepared), start, &progress).await
                }
                Some(Err(e)) => Err(anyhow!("the shared base could not be made: {e}")),
                None => build_on(long, recipe, None, start, &progress).await,
            };
            match &result {
                Ok(e) => line.finish(&format!(
                    "built ({:.0} MB) in {:.0} s",
                    e.size as f64 / 1e6,
                    line.elapsed()
                )),
                Err(e) => line.fail(&format!("{e:#}")),
            }
            (*i, result)
        }
    });
    let mut failures = Vec::new();
    for (i, r) in futures::future::join_all(builds).await {
        match r {
            Ok(e) => results[i] = Some(e),
            Err(e) => failures.push(format!("{}: {e:#}", unique[i].tag)),
        }
    }
    reporter.done();
    if !failures.is_empty() {
        return Err(anyhow!(
            "{} of {} images could not be built:\n{}",
            failures.len(),
            todo.len(),
            failures.join("\n")
        ));
    }
    Ok(results.into_iter().flatten().collect())
}

/// A scheduling hint: the built-in images with the most to install first.
fn build_order(recipe: &Recipe) -> u8 {
    match recipe.name.as_str() {
        "postgres" => 0,
        "prometheus" => 1,
        "alertmanager" => 2,
        "pgbouncer" => 3,
        "node-exporter" | "postgres-exporter" | "redis-exporter" | "nginx-exporter" => 4,
        _ => 5,
    }
}

fn short_id(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_lookup_finds_every_builtin_tag() {
        for tag in builtin_tags() {
            assert_eq!(Recipe::builtin(tag).map(|r| r.tag), Some(tag.to_string()));
            assert!(Recipe::builtin(&format!("docker.io/{tag}")).is_some());
        }
        assert!(Recipe::builtin("postgres:15").is_none());
    }

    #[test]
    fn ensure_can_be_spawned() {
        fn assert_send<T: Send>(_: T) {}
        // Connecting is lazy: nothing talks to an engine here.
        let engine = Engine::unconnected("http://127.0.0.1:9");
        let progress = |_: &str| {};
        let recipe = Recipe::named("redis").unwrap();
        assert_send(ensure(&engine, &recipe, &progress));
        assert_send(ensure_all(&engine, Recipe::builtins(), Display::Silent));
    }

    #[test]
    fn recipe_hash_matches_the_recipe() {
        for r in Recipe::builtins() {
            assert_eq!(recipe_hash(&r), r.hash());
        }
    }
}
