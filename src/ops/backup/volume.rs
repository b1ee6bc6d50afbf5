//! Named volumes of components with `backup` on.
//!
//! Archived through the engine's archive endpoint, which needs nothing in
//! the component's image (it works for `FROM scratch` too) and works on a
//! stopped container. Restored by a one-off helper container that unpacks
//! the archive into a staging volume and then swaps the volume's content:
//! the old content is moved aside first and put back if the copy fails, so
//! a failed restore leaves the volume as it was.

use super::Entry;
use crate::error::{Error, Result};
use crate::model::containers::{Image, Source};
use crate::model::Component;
use crate::runtime::stackenv::StackEnv;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::path::Path;
use tokio::io::AsyncWriteExt;

/// Where the helper mounts the volume being restored and the staging volume.
const TARGET: &str = "/stackctl-volume";
const STAGING: &str = "/stackctl-staging";
/// How long a helper may take to copy a volume.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1800);

/// A component's named volumes: (the stack's volume name, the mount path).
pub fn of(c: &Component) -> Vec<(String, String)> {
    c.mounts
        .iter()
        .filter_map(|m| match &m.source {
            Source::Volume { name } => Some((name.clone(), m.target.clone())),
            _ => None,
        })
        .collect()
}

/// The archive's file name in the backup directory.
pub fn file_name(component: &str, volume: &str) -> String {
    format!("{component}.{volume}.tar")
}

/// Stream the archive of `target` in `container` into `path` (created new,
/// mode 0600), hashed on the way: (size, sha256).
pub async fn archive(
    env: &StackEnv<'_>,
    container: &str,
    target: &str,
    path: &Path,
    pb: &indicatif::ProgressBar,
) -> Result<(u64, String)> {
    let write_err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(write_err)?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stream = std::pin::pin!(env.engine.download(container, target));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        pb.inc(chunk.len() as u64);
        out.write_all(&chunk).await.map_err(write_err)?;
    }
    out.flush().await.map_err(write_err)?;
    out.get_ref().sync_all().await.map_err(write_err)?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// The directory name the archive's entries start with: the last
/// component of the path it was taken from.
fn top_dir(entry: &Entry) -> Option<String> {
    let path = entry.path.as_deref()?;
    let name = Path::new(path).file_name()?.to_str()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// Images the helper may run, best first: the component's own (when it
/// has a shell), then the stack's images built from Debian packages.
async fn helper_images(env: &StackEnv<'_>, comp: &Component) -> Vec<String> {
    let mut out = Vec::new();
    let own = crate::engine::container_name(&env.project, &comp.name, 1);
    if let Ok(Some(i)) = env.engine.container(&own).await {
        if let Some(image) = i.image {
            out.push(image);
        }
    }
    for c in &env.containers {
        if let Image::Infra { image, local: true } = &c.image {
            if !out.contains(image) && matches!(env.engine.image(image).await, Ok(Some(_))) {
                out.push(image.clone());
            }
        }
    }
    out
}

/// The helper's shell script: `$1` is the archive's top directory.
const SWAP: &str = r#"set -e
v=/stackctl-volume; new="/stackctl-staging/$1"
[ -d "$new" ] || { echo "the archive holds no $1/ directory" >&2; exit 3; }
rm -rf "$v/.stackctl-old"; mkdir "$v/.stackctl-old"
find "$v" -mindepth 1 -maxdepth 1 ! -name .stackctl-old -exec mv {} "$v/.stackctl-old/" \;
if cp -a "$new/." "$v/"; then
  rm -rf "$v/.stackctl-old"
else
  find "$v" -mindepth 1 -maxdepth 1 ! -name .stackctl-old -exec rm -rf {} +
  find "$v/.stackctl-old" -mindepth 1 -maxdepth 1 -exec mv {} "$v/" \;
  rmdir "$v/.stackctl-old"
  echo "copying into the volume failed; its old content is back" >&2
  exit 4
fi
sync"#;

/// Exit codes of a shell that could not run the script's tools.
fn missing_tool(code: i64) -> bool {
    code == 126 || code == 127
}

/// Replace the content of the component's volume with the archive `f`
/// (verified already). The component must be stopped by the caller.
pub async fn restore(
    env: &StackEnv<'_>,
    comp: &Component,
    volume: &str,
    dir: &Path,
    f: &Entry,
) -> Result<()> {
    let what = format!("restoring {} into volume {volume}", f.file);
    let fail = |code: i64, message: String| Error::DataCommand {
        what: what.clone(),
        code,
        message,
    };
    let top = top_dir(f).ok_or_else(|| {
        super::invalid(
            dir,
            format!("{}: the manifest gives no volume path", f.file),
        )
    })?;
    let target = crate::engine::volume_name(&env.project, volume);
    let staging = format!("{}-restore-staging", env.project);
    let helper = format!("{}-restore-{}", env.project, comp.name);
    let _ = env.engine.remove(&helper).await;
    env.engine.remove_volume(&staging).await?;
    let images = helper_images(env, comp).await;
    let mut uploaded = false;
    let mut tried = Vec::new();
    let mut result = Err(fail(-1, "no image to run the restore helper".into()));
    for image in &images {
        env.engine
            .create(&helper, helper_body(env, image, &target, &staging, &top))
            .await?;
        if !uploaded {
            let file = tokio::fs::File::open(dir.join(&f.file))
                .await
                .map_err(|source| Error::Read {
                    path: dir.join(&f.file),
                    source,
                })?;
            let r = env
                .engine
                .upload(&helper, STAGING, crate::engine::read_stream(file))
                .await;
            if let Err(e) = r {
                result = Err(e);
                break;
            }
            uploaded = true;
        }
        let run = env.engine.run_to_exit(&helper, HELPER_TIMEOUT).await;
        let tail = env.engine.tail(&helper, 20).await.trim().to_string();
        let _ = env.engine.remove(&helper).await;
        result = match run {
            Ok(Some(0)) => Ok(()),
            Ok(Some(code)) if missing_tool(code) => {
                tried.push(image.clone());
                continue;
            }
            Ok(Some(code)) => Err(fail(code, tail)),
            Ok(None) => Err(fail(-1, format!("not done after {HELPER_TIMEOUT:?}"))),
            // An image without a shell cannot even start the script.
            Err(_) => {
                tried.push(image.clone());
                continue;
            }
        };
        break;
    }
    let _ = env.engine.remove(&helper).await;
    let _ = env.engine.remove_volume(&staging).await;
    if tried.len() == images.len() {
        return Err(Error::MissingImage {
            image: format!(
                "an image with a shell, find, mv and cp to restore volume {volume} with (tried: {})",
                tried.join(", ")
            ),
            hint: "run `stackctl setup` (it builds the stack's Debian images), then restore again".into(),
        });
    }
    result
}

fn helper_body(
    env: &StackEnv<'_>,
    image: &str,
    target: &str,
    staging: &str,
    top: &str,
) -> crate::engine::models::ContainerCreateBody {
    use crate::engine::models::{ContainerCreateBody, HostConfig};
    let mut labels = std::collections::HashMap::new();
    labels.insert(
        crate::model::containers::LABEL_STACK.to_string(),
        env.stack.name.clone(),
    );
    labels.insert(
        crate::engine::LABEL_PROJECT.to_string(),
        env.project.clone(),
    );
    ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            SWAP.into(),
            "sh".into(),
            top.to_string(),
        ]),
        cmd: Some(vec![]),
        user: Some("0:0".into()),
        labels: Some(labels),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            binds: Some(vec![
                format!("{target}:{TARGET}"),
                format!("{staging}:{STAGING}"),
            ]),
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}
