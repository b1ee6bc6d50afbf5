//! Infrastructure images built from Debian packages when no registry is reachable.
//!
//! Each image (postgres, redis, nginx, prometheus) is made in two stages, both
//! through the Docker Engine API (never the docker CLI):
//!
//! 1. a minbase Debian rootfs with the recipe's packages, made by debootstrap,
//!    slimmed, cached as a tarball under /var/tmp/stackctl-rootfs/ (one per
//!    package set) and imported as `stackctl/rootfs:<kind>-<hash>`
//!    (`POST /images/create?fromSrc=-`);
//! 2. the final image, built `FROM` that base with the recipe's Dockerfile and
//!    entrypoint (`POST /build`, the context streamed from memory).
//!
//! Every final image carries `io.stackctl.recipe=<sha256 of its recipe>`;
//! [`ensure`] returns at once when the tag already has the current recipe.

pub mod docker;
pub mod recipe;
pub mod rootfs;

use std::time::Instant;

use anyhow::Result;

pub use recipe::Recipe;

/// The label holding the recipe hash on every image stackctl builds here.
pub const RECIPE_LABEL: &str = "io.stackctl.recipe";
/// The label naming the kind (postgres, redis, ...).
pub const KIND_LABEL: &str = "io.stackctl.image-kind";
/// Repository of the imported rootfs base images.
pub const ROOTFS_REPO: &str = "stackctl/rootfs";

static BUILD_LOCKS: [tokio::sync::Mutex<()>; 4] = [
    tokio::sync::Mutex::const_new(()),
    tokio::sync::Mutex::const_new(()),
    tokio::sync::Mutex::const_new(()),
    tokio::sync::Mutex::const_new(()),
];

/// The infrastructure images the stack uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InfraKind {
    Postgres,
    Redis,
    Nginx,
    Prometheus,
}

impl InfraKind {
    /// The kind an image reference names (`stackctl/redis:7-bookworm` → Redis).
    /// Only the exact tags stackctl builds are recognised.
    pub fn from_tag(image: &str) -> Option<InfraKind> {
        let image = image.strip_prefix("docker.io/").unwrap_or(image);
        InfraKind::all().into_iter().find(|k| k.tag() == image)
    }

    /// The fixed tag of the image (stack.toml refers to these).
    pub fn tag(self) -> &'static str {
        match self {
            InfraKind::Postgres => "stackctl/postgres:15-bookworm",
            InfraKind::Redis => "stackctl/redis:7-bookworm",
            InfraKind::Nginx => "stackctl/nginx:1.22-bookworm",
            InfraKind::Prometheus => "stackctl/prometheus:2-bookworm",
        }
    }

    pub fn all() -> [InfraKind; 4] {
        [
            InfraKind::Postgres,
            InfraKind::Redis,
            InfraKind::Nginx,
            InfraKind::Prometheus,
        ]
    }

    /// Short lower-case name (also the `images/<name>/` directory).
    pub fn name(self) -> &'static str {
        match self {
            InfraKind::Postgres => "postgres",
            InfraKind::Redis => "redis",
            InfraKind::Nginx => "nginx",
            InfraKind::Prometheus => "prometheus",
        }
    }
}

/// What [`ensure`] found or built.
#[derive(Debug, Clone)]
pub struct Ensured {
    pub kind: InfraKind,
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

/// The sha256 of the kind's recipe: suite, package list, pruned paths,
/// Dockerfile, entrypoint and every other context file.
pub fn recipe_hash(kind: InfraKind) -> String {
    Recipe::of(kind).hash()
}

/// Make sure `kind.tag()` exists with the current recipe; build it when it
/// does not (debootstrap only when the rootfs tarball for the package set is
/// not cached). `progress` receives one line per step.
pub async fn ensure(
    docker: &bollard::Docker,
    kind: InfraKind,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Ensured> {
    let start = Instant::now();
    let recipe = Recipe::of(kind);
    let hash = recipe.hash();
    let tag = kind.tag();

    let existing = docker::inspect(docker, tag).await?;
    if let Some(img) = &existing {
        if img.labels.get(RECIPE_LABEL) == Some(&hash) {
            return Ok(already_there(kind, img, hash, start));
        }
        progress(&format!(
            "recipe changed ({} -> {}), rebuilding",
            img.labels
                .get(RECIPE_LABEL)
                .map(|h| &h[..h.len().min(12)])
                .unwrap_or("none"),
            &hash[..12]
        ));
    } else {
        progress("not present, building");
    }

    // One build per kind at a time in this process; whoever waited finds the
    // image the other built.
    let _guard = BUILD_LOCKS[kind as usize].lock().await;
    let existing = docker::inspect(docker, tag).await?;
    if let Some(img) = &existing {
        if img.labels.get(RECIPE_LABEL) == Some(&hash) {
            return Ok(already_there(kind, img, hash, start));
        }
    }

    // Long imports and builds: no 2-minute request timeout for these calls.
    let long = docker
        .clone()
        .with_timeout(std::time::Duration::from_secs(3 * 3600));

    let base = docker::ensure_base(&long, &recipe, progress).await?;
    let image_id = docker::build_final(&long, &recipe, tag, &base, &hash, progress).await?;
    let built = docker::inspect(docker, tag).await?.ok_or_else(|| {
        anyhow::anyhow!("{tag} was built ({image_id}) but the engine does not know the tag")
    })?;
    if let Some(old) = existing {
        if old.id != built.id {
            docker::remove_if_unused(docker, &old.id, progress).await;
        }
    }
    docker::remove_stale_bases(docker, &recipe, &base, progress).await;
    docker::remove_dangling(docker, &recipe, progress).await;
    let seconds = start.elapsed().as_secs_f64();
    progress(&format!(
        "built {} ({:.1} MB) in {seconds:.1}s",
        short_id(&built.id),
        built.size as f64 / 1e6
    ));
    Ok(Ensured {
        kind,
        tag: tag.to_string(),
        image_id: built.id,
        size: built.size,
        built: true,
        recipe: hash,
        seconds,
    })
}

fn already_there(
    kind: InfraKind,
    img: &docker::ImageFacts,
    recipe: String,
    start: Instant,
) -> Ensured {
    Ensured {
        kind,
        tag: kind.tag().to_string(),
        image_id: img.id.clone(),
        size: img.size,
        built: false,
        recipe,
        seconds: start.elapsed().as_secs_f64(),
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
    fn tags_round_trip() {
        for k in InfraKind::all() {
            assert_eq!(InfraKind::from_tag(k.tag()), Some(k));
            assert_eq!(
                InfraKind::from_tag(&format!("docker.io/{}", k.tag())),
                Some(k)
            );
        }
        assert_eq!(InfraKind::from_tag("postgres:15"), None);
        assert_eq!(InfraKind::from_tag("stackctl/postgres:16-bookworm"), None);
        assert_eq!(InfraKind::from_tag("stackctl/postgres"), None);
    }

    #[test]
    fn ensure_can_be_spawned() {
        fn assert_send<T: Send>(_: T) {}
        // Connecting is lazy: nothing talks to an engine here.
        let docker = bollard::Docker::connect_with_http(
            "http://127.0.0.1:9",
            5,
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap();
        let progress = |_: &str| {};
        assert_send(ensure(&docker, InfraKind::Redis, &progress));
    }

    #[test]
    fn recipe_hash_matches_the_recipe() {
        for k in InfraKind::all() {
            assert_eq!(recipe_hash(k), Recipe::of(k).hash());
        }
    }
}
