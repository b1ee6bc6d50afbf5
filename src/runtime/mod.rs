//! What the engine commands (`ops/`) and the Swarm target (`swarm/`)
//! share, apart from any one command: the connected stack ([`stackenv`]),
//! its image tag, its secrets on disk ([`secrets`]), the Debian-built images
//! it needs, revision records ([`revision`]) and the deploy lock ([`lock`]).

use crate::error::{Error, Result};
use crate::images::Recipe;
use crate::model::{self, Stack};
use std::path::Path;

pub mod lock;
pub mod revision;
pub mod secrets;
pub mod stackenv;

/// The tag compose files default to: $IMAGE_TAG, else the strategy's value.
pub fn image_tag(stack: &Stack) -> String {
    if let Ok(t) = std::env::var("IMAGE_TAG") {
        if !t.is_empty() {
            return t;
        }
    }
    match &stack.tag {
        model::TagStrategy::Literal(t) => t.clone(),
        model::TagStrategy::Git => git_short_sha(&stack.root).unwrap_or_else(|| "latest".into()),
        model::TagStrategy::Hash => "latest".into(),
    }
}

pub(crate) fn git_short_sha(root: &Path) -> Option<String> {
    git_rev(root, &["rev-parse", "--short=12", "HEAD"])
}

/// The commit checked out at `root` (full hash), when it is a git checkout.
pub(crate) fn git_commit(root: &Path) -> Option<String> {
    git_rev(root, &["rev-parse", "HEAD"])
}

fn git_rev(root: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
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
