//! The Debian image builder's engine side: inspect, import the base, load an
//! image's layer on top of it, build, clean up. [`crate::images::ensure`] is
//! the entry point (it decides what to build); these are public for tests
//! and tools.

use std::collections::HashMap;

use super::Engine;
use crate::engine::qp::{
    BuildImageOptions, CreateImageOptions, ListContainersOptions, RemoveImageOptions,
};
use crate::engine::ApiError as BollardError;
use anyhow::{anyhow, bail, Context, Result};
use futures::StreamExt;

use crate::images::layer::{self, Layer};
use crate::images::recipe::{Base, Recipe};
use crate::images::rootfs::BaseTree;
use crate::images::{BASE_LABEL, KIND_LABEL, RECIPE_LABEL, ROOTFS_REPO};

/// The parts of an image inspect this module uses.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    pub id: String,
    pub size: u64,
    pub labels: HashMap<String, String>,
    /// The diff ids of its layers, bottom first.
    pub layers: Vec<String>,
}

fn engine_hint(e: &BollardError) -> &'static str {
    let s = e.to_string().to_ascii_lowercase();
    if s.contains("no space left on device") {
        "\n  hint: the engine's disk is full: free space under the Docker root (docker system df), then run again"
    } else if s.contains("connect") || s.contains("no such file") || s.contains("permission denied")
    {
        "\n  hint: is the Docker engine running, and may this user open /var/run/engine.docker.sock?"
    } else {
        ""
    }
}

/// Inspect `reference`; `None` when the engine has no such image.
pub async fn inspect(engine: &Engine, reference: &str) -> Result<Option<ImageFacts>> {
    match engine.docker.inspect_image(reference).await {
        Ok(img) => Ok(Some(ImageFacts {
            id: img.id.unwrap_or_default(),
            size: img.size.unwrap_or(0).max(0) as u64,
            labels: img.config.and_then(|c| c.labels).unwrap_or_default(),
            layers: img.root_fs.and_then(|r| r.layers).unwrap_or_default(),
        })),
        Err(e) if crate::engine::is_not_found(&e) => Ok(None),
        Err(e) => Err(anyhow!(
            "cannot inspect image {reference}: {e}{}",
            engine_hint(&e)
        )),
    }
}

/// The shared base image of a suite: `stackctl/rootfs:<suite>-<hash16>`.
pub fn base_tag(base: &Base) -> String {
    format!("{ROOTFS_REPO}:{}-{}", base.suite, &base.hash()[..16])
}

/// An image's rootfs (the base plus its packages layer):
/// `stackctl/rootfs:<name>-<rootfs hash16>`.
pub fn layer_tag(recipe: &Recipe) -> String {
    format!(
        "{ROOTFS_REPO}:{}-{}",
        recipe.name,
        &recipe.rootfs_hash()[..16]
    )
}

/// The imported base: its tag and the diff id of its one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    pub tag: String,
    pub diff_id: String,
    /// The base tree's build id (the image's `io.stackctl.base-build` label).
    pub build: String,
}

/// Make sure the base tree is an image in the engine (imported from this
/// very tree: its build id is in a label); its tag and layer.
pub async fn ensure_base_image(
    engine: &Engine,
    base: &Base,
    tree: &BaseTree,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<BaseImage> {
    let tag = base_tag(base);
    if let Some(img) = inspect(engine, &tag).await? {
        if img.labels.get(BASE_LABEL) == Some(&tree.id) && img.layers.len() == 1 {
            progress(&format!("base: image {tag} present"));
            return Ok(BaseImage {
                tag,
                diff_id: img.layers[0].clone(),
                build: tree.id.clone(),
            });
        }
    }
    import_tree(engine, base, tree, &tag, progress).await?;
    let img = inspect(engine, &tag)
        .await?
        .ok_or_else(|| anyhow!("importing the base as {tag} ended without an image"))?;
    let diff_id = img
        .layers
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("the imported base {tag} has no layer"))?;
    Ok(BaseImage {
        tag,
        diff_id,
        build: tree.id.clone(),
    })
}

/// `POST /images/create?fromSrc=-` with `tar -c` of the tree streamed as the body.
async fn import_tree(
    engine: &Engine,
    base: &Base,
    tree: &BaseTree,
    tag: &str,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let (repo, version) = tag.rsplit_once(':').expect("base tags have a version");
    progress(&format!(
        "base: importing {} as {tag}",
        tree.rootfs().display()
    ));
    let mut child = tokio::process::Command::new("tar")
        .arg("--numeric-owner")
        .arg("--one-file-system")
        .arg("-cf")
        .arg("-")
        .arg("-C")
        .arg(tree.rootfs())
        .arg(".")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run tar (apt-get install tar)")?;
    let stdout = child.stdout.take().context("tar's output")?;
    let options = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.to_string()),
        tag: Some(version.to_string()),
        message: Some(format!(
            "stackctl: debootstrap --variant={} {} + {}",
            base.variant,
            base.suite,
            base.packages.join(",")
        )),
        changes: vec![
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            format!("LABEL {KIND_LABEL}=base {BASE_LABEL}={}", tree.id),
        ],
        ..Default::default()
    };
    let mut stream = engine.docker.create_image(
        Some(options),
        Some(crate::engine::body_try_stream(crate::engine::read_stream(
            stdout,
        ))),
        None,
    );
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                    bail!("importing the base as {tag} failed: {detail}");
                }
            }
            Err(e) => bail!(
                "importing the base {} as {tag} failed: {e}{}",
                tree.rootfs().display(),
                engine_hint(&e)
            ),
        }
    }
    let status = child.wait().await.context("waiting for tar")?;
    if !status.success() {
        bail!("tar of {} failed ({status})", tree.rootfs().display());
    }
    Ok(())
}

/// The recipe's rootfs image when the engine has it (the base plus its
/// packages layer: the tag's hash pins both recipes).
pub async fn existing_layer_image(engine: &Engine, recipe: &Recipe) -> Result<Option<String>> {
    let tag = layer_tag(recipe);
    Ok(inspect(engine, &tag)
        .await?
        .filter(|img| img.layers.len() == 2)
        .map(|_| tag))
}

/// Make sure the recipe's rootfs (the base plus its packages layer) is an
/// image on top of `base`; its tag.
pub async fn ensure_layer_image(
    engine: &Engine,
    recipe: &Recipe,
    base: &BaseImage,
    tree: &BaseTree,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<String> {
    let tag = layer_tag(recipe);
    if let Some(img) = inspect(engine, &tag).await? {
        if img.layers.len() == 2 && img.layers[0] == base.diff_id {
            progress(&format!("layer: image {tag} present"));
            return Ok(tag);
        }
    }
    let (layer, _) = layer::ensure_layer(recipe, tree, progress).await?;
    load_layer(engine, recipe, base, &layer, &tag, progress).await?;
    Ok(tag)
}

/// The `docker save` form of an image made of the base's layer and `layer`:
/// manifest.json, the config, and the new layer only (the engine has the
/// base's, so `docker load` does not read it).
pub fn image_config(recipe: &Recipe, base: &BaseImage, layer: &Layer) -> serde_json::Value {
    serde_json::json!({
        "architecture": docker_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Labels": {
                KIND_LABEL: recipe.name,
                BASE_LABEL: base.build,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [base.diff_id, layer.diff_id]},
        "history": [
            {"created": "1970-01-01T00:00:00Z", "created_by": format!("stackctl: base {}", base.tag)},
            {"created": "1970-01-01T00:00:00Z", "created_by": format!(
                "stackctl: apt-get install --no-install-recommends {}",
                recipe.package_set().join(" ")
            )},
        ],
    })
}

/// The engine's name for this machine's architecture.
pub fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

fn tar_entry_header(name: &str, size: u64) -> Result<Vec<u8>> {
    let mut header = tar::Header::new_gnu();
    header.set_path(name).context("tar entry name")?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    Ok(header.as_bytes().to_vec())
}

fn padding(size: u64) -> Vec<u8> {
    vec![0u8; ((512 - size % 512) % 512) as usize]
}

/// `POST /images/load` of the image archive, the layer streamed from its file.
async fn load_layer(
    engine: &Engine,
    recipe: &Recipe,
    base: &BaseImage,
    layer: &Layer,
    tag: &str,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let file = tokio::fs::File::open(&layer.path)
        .await
        .with_context(|| format!("cannot open the layer {}", layer.path.display()))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    progress(&format!(
        "layer: loading {} ({:.0} MB) as {tag}",
        layer.path.display(),
        len as f64 / 1e6
    ));
    let config = serde_json::to_vec(&image_config(recipe, base, layer))?;
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [tag],
        "Layers": ["base/layer.tar", "layer/layer.tar"],
    }]))?;
    let mut head = Vec::new();
    for (name, bytes) in [("manifest.json", &manifest), ("config.json", &config)] {
        head.extend(tar_entry_header(name, bytes.len() as u64)?);
        head.extend_from_slice(bytes);
        head.extend(padding(bytes.len() as u64));
    }
    head.extend(tar_entry_header("layer/layer.tar", len)?);
    let mut tail = padding(len);
    tail.extend(vec![0u8; 1024]);
    let body = futures::stream::iter([Ok::<_, std::io::Error>(head.into())])
        .chain(crate::engine::read_stream(file))
        .chain(futures::stream::iter([Ok(tail.into())]));
    let options = crate::engine::qp::ImportImageOptions {
        quiet: true,
        ..Default::default()
    };
    let mut stream = engine.docker.import_image_stream(options, body, None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                    bail!("loading the layer of {tag} failed: {detail}");
                }
            }
            Err(e) => bail!(
                "loading the layer {} as {tag} failed: {e}{}",
                layer.path.display(),
                engine_hint(&e)
            ),
        }
    }
    match inspect(engine, tag).await? {
        Some(img) if img.layers.len() == 2 && img.layers[1] == layer.diff_id => Ok(()),
        Some(_) => bail!("loading the layer as {tag} gave an image with other layers"),
        None => bail!("loading the layer as {tag} ended without an image"),
    }
}

/// The build context (Dockerfile first, then the files), as a tar in memory.
pub fn context_tar(recipe: &Recipe) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for f in &recipe.files {
        let mut header = tar::Header::new_gnu();
        header.set_size(f.contents.len() as u64);
        header.set_mode(f.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, &f.name, &f.contents[..])
            .with_context(|| format!("adding {} to the build context", f.name))?;
    }
    builder.into_inner().context("finishing the build context")
}

/// `POST /build` FROM the base; the stream is drained and an `errorDetail`
/// becomes an error naming the step that failed. The new image id.
pub async fn build_final(
    engine: &Engine,
    recipe: &Recipe,
    tag: &str,
    base: &str,
    hash: &str,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<String> {
    let context = context_tar(recipe)?;
    // The kind label comes from the rootfs image's config: every LABEL the
    // build adds is one more step (a container commit).
    let labels = HashMap::from([(RECIPE_LABEL.to_string(), hash.to_string())]);
    let options = BuildImageOptions {
        dockerfile: "Dockerfile".into(),
        t: Some(tag.to_string()),
        rm: true,
        forcerm: true,
        labels: Some(labels),
        buildargs: Some(HashMap::from([("BASE".to_string(), base.to_string())])),
        ..Default::default()
    };
    progress(&format!("building FROM {base}"));
    let mut stream = engine.docker.build_image(
        options,
        None,
        Some(crate::engine::body_full(context.into())),
    );
    let mut step = String::from("(before the first step)");
    let mut recent: Vec<String> = Vec::new();
    let mut image_id = None;
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(info) => info,
            Err(BollardError::DockerStreamError { error }) => {
                return Err(build_error(tag, &step, &error, &recent));
            }
            Err(e) => bail!("building {tag} failed at {step}: {e}{}", engine_hint(&e)),
        };
        if let Some(msg) = info.error_detail.and_then(|d| d.message) {
            return Err(build_error(tag, &step, &msg, &recent));
        }
        if let Some(text) = info.stream {
            for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                if line.starts_with("Step ") {
                    step = line.to_string();
                    recent.clear();
                    progress(line);
                } else if !line.starts_with(" --->")
                    && !line.starts_with("--->")
                    && !line.starts_with("Removing intermediate container")
                {
                    recent.push(line.to_string());
                    if recent.len() > 20 {
                        recent.remove(0);
                    }
                }
            }
        }
        if let Some(id) = info.aux.and_then(|a| a.id) {
            image_id = Some(id);
        }
    }
    match image_id {
        Some(id) => Ok(id),
        None => match inspect(engine, tag).await? {
            Some(img) if img.labels.get(RECIPE_LABEL).map(String::as_str) == Some(hash) => {
                Ok(img.id)
            }
            _ => bail!("building {tag} ended without an image (last step: {step})"),
        },
    }
}

fn build_error(tag: &str, step: &str, error: &str, recent: &[String]) -> anyhow::Error {
    let output = if recent.is_empty() {
        String::new()
    } else {
        format!("\n  output of that step:\n    {}", recent.join("\n    "))
    };
    let hint = if error
        .to_ascii_lowercase()
        .contains("no space left on device")
    {
        "\n  hint: the disk is full: free space under the Docker root, then run again"
    } else {
        ""
    };
    anyhow!("building {tag} failed at {step}: {error}{output}{hint}")
}

/// Remove stackctl's stale rootfs images: this recipe's rootfs images of
/// other package sets (and the per-kind bases of the layout before the
/// shared base), and bases of this suite other than `keep_base`. Never forced:
/// the engine refuses (and we keep) one that a container or a child image uses.
pub async fn remove_stale_bases(
    engine: &Engine,
    recipe: &Recipe,
    keep: &[&str],
    progress: &(dyn Fn(&str) + Sync),
) {
    let filters = HashMap::from([("reference".to_string(), vec![format!("{ROOTFS_REPO}:*")])]);
    let images = match engine.images(filters).await {
        Ok(images) => images,
        Err(e) => {
            progress(&format!("cannot list old rootfs images: {e}"));
            return;
        }
    };
    for img in images {
        for tag in img.repo_tags {
            if keep.contains(&tag.as_str()) || !is_stale_rootfs_tag(&tag, recipe) {
                continue;
            }
            match engine
                .docker
                .remove_image(
                    &tag,
                    Some(RemoveImageOptions {
                        force: false,
                        noprune: false,
                        ..Default::default()
                    }),
                    None,
                )
                .await
            {
                Ok(_) => progress(&format!("removed the stale {tag}")),
                Err(e) => progress(&format!("kept the stale {tag}: {e}")),
            }
        }
    }
}

/// `stackctl/rootfs:<recipe name>-<16 hex>` or `stackctl/rootfs:<suite>-<16 hex>`.
pub fn is_stale_rootfs_tag(tag: &str, recipe: &Recipe) -> bool {
    let Some(version) = tag
        .strip_prefix(ROOTFS_REPO)
        .and_then(|t| t.strip_prefix(':'))
    else {
        return false;
    };
    [recipe.name.as_str(), recipe.suite.as_str()]
        .iter()
        .any(|prefix| {
            version
                .strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|h| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()))
        })
}

/// Remove untagged images of this kind that nothing uses (left by a build
/// that raced another process, or an interrupted one). Never forced.
pub async fn remove_dangling(engine: &Engine, recipe: &Recipe, progress: &(dyn Fn(&str) + Sync)) {
    for kind in [recipe.name.as_str(), "base"] {
        remove_dangling_kind(engine, kind, progress).await;
    }
}

async fn remove_dangling_kind(engine: &Engine, kind: &str, progress: &(dyn Fn(&str) + Sync)) {
    let filters = HashMap::from([
        ("dangling".to_string(), vec!["true".to_string()]),
        ("label".to_string(), vec![format!("{KIND_LABEL}={kind}")]),
    ]);
    let images = match engine.images(filters).await {
        Ok(images) => images,
        Err(e) => {
            progress(&format!("cannot list untagged {kind} images: {e}"));
            return;
        }
    };
    for img in images {
        if img.containers > 0 {
            continue;
        }
        let options = RemoveImageOptions {
            force: false,
            noprune: false,
            ..Default::default()
        };
        match engine
            .docker
            .remove_image(&img.id, Some(options), None)
            .await
        {
            Ok(_) => progress(&format!("removed the untagged image {}", img.id)),
            Err(e) => progress(&format!("kept the untagged image {}: {e}", img.id)),
        }
    }
}

/// Remove the image a rebuild replaced, unless a container (running or not) uses it.
pub async fn remove_if_unused(engine: &Engine, id: &str, progress: &(dyn Fn(&str) + Sync)) {
    let filters = HashMap::from([("ancestor".to_string(), vec![id.to_string()])]);
    let used = engine
        .docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await;
    match used {
        Ok(list) if list.is_empty() => {}
        Ok(list) => {
            progress(&format!(
                "keeping the previous image {id}: {} container(s) use it",
                list.len()
            ));
            return;
        }
        Err(e) => {
            progress(&format!("keeping the previous image {id}: {e}"));
            return;
        }
    }
    // Never force: the engine itself refuses an image a container uses.
    match engine
        .docker
        .remove_image(
            id,
            Some(RemoveImageOptions {
                force: false,
                noprune: false,
                ..Default::default()
            }),
            None,
        )
        .await
    {
        Ok(_) => progress(&format!("removed the previous image {id}")),
        Err(e) => progress(&format!("kept the previous image {id}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_holds_the_recipe_files_with_modes() {
        let recipe = Recipe::named("postgres").unwrap();
        let bytes = context_tar(&recipe).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().to_string();
            seen.push((path, entry.header().mode().unwrap()));
        }
        assert_eq!(
            seen,
            vec![
                ("Dockerfile".to_string(), 0o644),
                ("docker-entrypoint.sh".to_string(), 0o755)
            ]
        );
    }

    #[test]
    fn tags_name_base_and_layer() {
        let r = Recipe::named("redis").unwrap();
        let t = layer_tag(&r);
        assert!(t.starts_with("stackctl/rootfs:redis-"));
        assert_eq!(t.len(), "stackctl/rootfs:redis-".len() + 16);
        let b = base_tag(&r.base());
        assert!(b.starts_with("stackctl/rootfs:bookworm-"), "{b}");
        assert_eq!(
            base_tag(&Recipe::named("postgres").unwrap().base()),
            b,
            "one base for all"
        );
    }

    #[test]
    fn stale_tags_are_only_this_recipes_or_bases() {
        let pg = Recipe::named("postgres").unwrap();
        assert!(is_stale_rootfs_tag(
            "stackctl/rootfs:postgres-0123456789abcdef",
            &pg
        ));
        assert!(is_stale_rootfs_tag(
            "stackctl/rootfs:bookworm-0123456789abcdef",
            &pg
        ));
        assert!(!is_stale_rootfs_tag(
            "stackctl/rootfs:postgres-exporter-0123456789abcdef",
            &pg
        ));
        assert!(!is_stale_rootfs_tag("stackctl/postgres:15-bookworm", &pg));
        assert!(!is_stale_rootfs_tag(
            "other/rootfs:postgres-0123456789abcdef",
            &pg
        ));
    }

    #[test]
    fn the_load_archive_config_stacks_the_layer_on_the_base() {
        let r = Recipe::named("redis").unwrap();
        let base = BaseImage {
            tag: "stackctl/rootfs:bookworm-0123456789abcdef".into(),
            diff_id: "sha256:aa".into(),
            build: "b1".into(),
        };
        let layer = Layer {
            path: "/x.layer.tar".into(),
            diff_id: "sha256:bb".into(),
        };
        let c = image_config(&r, &base, &layer);
        assert_eq!(
            c["rootfs"]["diff_ids"],
            serde_json::json!(["sha256:aa", "sha256:bb"])
        );
        assert_eq!(c["config"]["Labels"][KIND_LABEL], "redis");
        assert_eq!(c["history"].as_array().unwrap().len(), 2);
        assert_eq!(tar_entry_header("config.json", 3).unwrap().len(), 512);
        assert_eq!(padding(512).len(), 0);
        assert_eq!(padding(3).len(), 509);
    }
}
