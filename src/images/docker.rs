//! The Engine API side: inspect, import the rootfs, build, clean up.
//! [`super::ensure`] is the entry point; these are public for tests and tools.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    BuildImageOptions, CreateImageOptions, ListContainersOptions, ListImagesOptions,
    RemoveImageOptions,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::recipe::Recipe;
use super::{rootfs, KIND_LABEL, RECIPE_LABEL, ROOTFS_REPO};

/// The parts of an image inspect this module uses.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    pub id: String,
    pub size: u64,
    pub labels: HashMap<String, String>,
}

fn engine_hint(e: &BollardError) -> &'static str {
    let s = e.to_string().to_ascii_lowercase();
    if s.contains("no space left on device") {
        "\n  hint: the engine's disk is full: free space under the Docker root (docker system df), then run again"
    } else if s.contains("connect") || s.contains("no such file") || s.contains("permission denied")
    {
        "\n  hint: is the Docker engine running, and may this user open /var/run/docker.sock?"
    } else {
        ""
    }
}

/// Inspect `reference`; `None` when the engine has no such image.
pub async fn inspect(docker: &Docker, reference: &str) -> Result<Option<ImageFacts>> {
    match docker.inspect_image(reference).await {
        Ok(img) => Ok(Some(ImageFacts {
            id: img.id.unwrap_or_default(),
            size: img.size.unwrap_or(0).max(0) as u64,
            labels: img.config.and_then(|c| c.labels).unwrap_or_default(),
        })),
        Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(anyhow!(
            "cannot inspect image {reference}: {e}{}",
            engine_hint(&e)
        )),
    }
}

/// The base image tag of a recipe: one per kind and rootfs hash.
pub fn base_tag(recipe: &Recipe) -> String {
    format!(
        "{ROOTFS_REPO}:{}-{}",
        recipe.kind.name(),
        &recipe.rootfs_hash()[..16]
    )
}

/// Make sure the recipe's rootfs is an image in the engine; its tag.
pub async fn ensure_base(
    docker: &Docker,
    recipe: &Recipe,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<String> {
    let tag = base_tag(recipe);
    if inspect(docker, &tag).await?.is_some() {
        progress(&format!("rootfs: image {tag} present"));
        return Ok(tag);
    }
    let (tarball, _) = rootfs::ensure_tarball(recipe, progress).await?;
    import(docker, &tarball, &tag, recipe, progress).await?;
    Ok(tag)
}

/// `POST /images/create?fromSrc=-` with the tarball streamed as the body.
async fn import(
    docker: &Docker,
    tarball: &Path,
    tag: &str,
    recipe: &Recipe,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<()> {
    let (repo, version) = tag.rsplit_once(':').expect("base tags have a version");
    let file = tokio::fs::File::open(tarball)
        .await
        .with_context(|| format!("cannot open the rootfs tarball {}", tarball.display()))?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    progress(&format!(
        "rootfs: importing {} ({:.0} MB) as {tag}",
        tarball.display(),
        len as f64 / 1e6
    ));
    let body = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf.into()), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    let options = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.to_string()),
        tag: Some(version.to_string()),
        message: Some(format!(
            "stackctl: debootstrap --variant={} {} + {}",
            recipe.variant,
            recipe.suite,
            recipe.package_set().join(",")
        )),
        changes: vec![
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            format!("LABEL {KIND_LABEL}={}", recipe.kind.name()),
        ],
        ..Default::default()
    };
    let mut stream = docker.create_image(Some(options), Some(bollard::body_try_stream(body)), None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                    bail!("importing the rootfs as {tag} failed: {detail}");
                }
            }
            Err(e) => bail!(
                "importing the rootfs {} as {tag} failed: {e}{}",
                tarball.display(),
                engine_hint(&e)
            ),
        }
    }
    if inspect(docker, tag).await?.is_none() {
        bail!("importing the rootfs as {tag} ended without an image");
    }
    Ok(())
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
            .append_data(&mut header, f.name, f.contents)
            .with_context(|| format!("adding {} to the build context", f.name))?;
    }
    builder.into_inner().context("finishing the build context")
}

/// `POST /build` FROM the base; the stream is drained and an `errorDetail`
/// becomes an error naming the step that failed. The new image id.
pub async fn build_final(
    docker: &Docker,
    recipe: &Recipe,
    tag: &str,
    base: &str,
    hash: &str,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<String> {
    let context = context_tar(recipe)?;
    let labels = HashMap::from([
        (RECIPE_LABEL.to_string(), hash.to_string()),
        (KIND_LABEL.to_string(), recipe.kind.name().to_string()),
    ]);
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
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
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
        None => match inspect(docker, tag).await? {
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

/// Remove this kind's base images of other package sets. Never forced: the
/// engine refuses (and we keep) one that a container or a child image uses.
pub async fn remove_stale_bases(
    docker: &Docker,
    recipe: &Recipe,
    keep: &str,
    progress: &(dyn Fn(&str) + Sync),
) {
    let pattern = format!("{ROOTFS_REPO}:{}-*", recipe.kind.name());
    let filters = HashMap::from([("reference".to_string(), vec![pattern])]);
    let images = match docker
        .list_images(Some(ListImagesOptions {
            filters: Some(filters),
            ..Default::default()
        }))
        .await
    {
        Ok(images) => images,
        Err(e) => {
            progress(&format!("rootfs: cannot list old base images: {e}"));
            return;
        }
    };
    for img in images {
        for tag in img.repo_tags {
            if tag == keep || !tag.starts_with(ROOTFS_REPO) {
                continue;
            }
            match docker
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
                Ok(_) => progress(&format!("rootfs: removed the stale base {tag}")),
                Err(e) => progress(&format!("rootfs: kept the stale base {tag}: {e}")),
            }
        }
    }
}

/// Remove untagged images of this kind that nothing uses (left by a build
/// that raced another process, or an interrupted one). Never forced.
pub async fn remove_dangling(docker: &Docker, recipe: &Recipe, progress: &(dyn Fn(&str) + Sync)) {
    let filters = HashMap::from([
        ("dangling".to_string(), vec!["true".to_string()]),
        (
            "label".to_string(),
            vec![format!("{KIND_LABEL}={}", recipe.kind.name())],
        ),
    ]);
    let images = match docker
        .list_images(Some(ListImagesOptions {
            filters: Some(filters),
            ..Default::default()
        }))
        .await
    {
        Ok(images) => images,
        Err(e) => {
            progress(&format!(
                "cannot list untagged {} images: {e}",
                recipe.kind.name()
            ));
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
        match docker.remove_image(&img.id, Some(options), None).await {
            Ok(_) => progress(&format!("removed the untagged image {}", img.id)),
            Err(e) => progress(&format!("kept the untagged image {}: {e}", img.id)),
        }
    }
}

/// Remove the image a rebuild replaced, unless a container (running or not) uses it.
pub async fn remove_if_unused(docker: &Docker, id: &str, progress: &(dyn Fn(&str) + Sync)) {
    let filters = HashMap::from([("ancestor".to_string(), vec![id.to_string()])]);
    let used = docker
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
    match docker
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
    use crate::images::InfraKind;

    #[test]
    fn context_holds_the_recipe_files_with_modes() {
        let recipe = Recipe::of(InfraKind::Postgres);
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
    fn base_tag_names_kind_and_rootfs() {
        let r = Recipe::of(InfraKind::Redis);
        let t = base_tag(&r);
        assert!(t.starts_with("stackctl/rootfs:redis-"));
        assert_eq!(t.len(), "stackctl/rootfs:redis-".len() + 16);
    }
}
