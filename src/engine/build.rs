//! Building an image from an in-memory tar context through the Engine API,
//! draining the build stream (a failed build answers 200 with the error
//! inside) and naming the step that failed; and assembling a one-layer
//! image without the builder (the services' `FROM scratch` images).

use super::Engine;
use crate::error::{Error, Result};
use bollard::query_parameters::BuildImageOptions;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// A build context assembled in memory: path -> (mode, bytes), sorted.
#[derive(Default)]
pub struct Context {
    files: std::collections::BTreeMap<String, (u32, Vec<u8>)>,
}

impl Context {
    /// The paths in the context, sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Each path with its bytes, sorted.
    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files
            .iter()
            .map(|(p, (_, b))| (p.as_str(), b.as_slice()))
    }

    pub fn add(&mut self, path: &str, mode: u32, bytes: Vec<u8>) {
        self.files.insert(path.to_string(), (mode, bytes));
    }

    /// sha256 over every path, mode and content: equal inputs, equal hash.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for (p, (m, b)) in &self.files {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
            h.update(m.to_le_bytes());
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
        hex::encode(h.finalize())
    }

    /// A deterministic tar: fixed owner and time, sorted entries.
    pub fn tar(&self) -> Result<Vec<u8>> {
        self.tar_with(|_| 0o755)
    }

    /// [`Self::tar`] with the directory `private` and those under it
    /// readable by their owner (root) only.
    pub fn tar_private(&self, private: &str) -> Result<Vec<u8>> {
        let under = format!("{private}/");
        self.tar_with(|d| {
            if d == private || d.starts_with(&under) {
                0o700
            } else {
                0o755
            }
        })
    }

    fn tar_with(&self, dir_mode: impl Fn(&str) -> u32) -> Result<Vec<u8>> {
        let mut t = tar::Builder::new(Vec::new());
        let mut dirs = std::collections::BTreeSet::new();
        for path in self.files.keys() {
            let mut acc = String::new();
            for part in path
                .split('/')
                .collect::<Vec<_>>()
                .iter()
                .rev()
                .skip(1)
                .rev()
            {
                acc = if acc.is_empty() {
                    part.to_string()
                } else {
                    format!("{acc}/{part}")
                };
                dirs.insert(acc.clone());
            }
        }
        let io = |e: std::io::Error| Error::Other(anyhow::anyhow!("build context: {e}"));
        for d in dirs {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(dir_mode(&d));
            h.set_size(0);
            h.set_mtime(0);
            h.set_cksum();
            t.append_data(&mut h, format!("{d}/"), std::io::empty())
                .map_err(io)?;
        }
        for (p, (mode, bytes)) in &self.files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(*mode);
            h.set_size(bytes.len() as u64);
            h.set_mtime(0);
            h.set_cksum();
            t.append_data(&mut h, p, bytes.as_slice()).map_err(io)?;
        }
        t.into_inner().map_err(io)
    }
}

/// Build `context` as `tags[0]` (and tag it with the rest), the Dockerfile
/// at `dockerfile` inside the context; `step` is told every "Step N/M"
/// line. Returns the image id.
pub async fn build_file(
    engine: &Engine,
    service: &str,
    context: &Context,
    dockerfile: &str,
    tags: &[String],
    labels: HashMap<String, String>,
    step: &(dyn Fn(&str) + Sync),
) -> Result<String> {
    let tar = context.tar()?;
    let opts = BuildImageOptions {
        dockerfile: dockerfile.into(),
        t: tags.first().cloned(),
        rm: true,
        forcerm: true,
        labels: Some(labels),
        ..Default::default()
    };
    let mut stream = engine
        .docker
        .build_image(opts, None, Some(bollard::body_full(tar.into())));
    let mut current = String::new();
    let mut log = String::new();
    let mut id = None;
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| Error::Build {
            service: service.into(),
            step: step_suffix(&current),
            message: e.to_string(),
            hint: "check the daemon's disk space and the rendered Dockerfile".into(),
        })?;
        if let Some(s) = info.stream.as_deref() {
            log.push_str(s);
            for line in s.lines() {
                if line.starts_with("Step ") {
                    current = line.trim().to_string();
                    step(&current);
                }
                if let Some(rest) = line.strip_prefix("Successfully built ") {
                    id = Some(rest.trim().to_string());
                }
            }
        }
        if let Some(aux) = info.aux.as_ref().and_then(|a| a.id.clone()) {
            id = Some(aux);
        }
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(Error::Build {
                service: service.into(),
                step: step_suffix(&current),
                message: format!("{err}\n{}", tail.join("\n")),
                hint: "fix the failing step (the rendered Dockerfile is under deploy/services/)"
                    .into(),
            });
        }
    }
    let id = id.ok_or_else(|| Error::Build {
        service: service.into(),
        step: step_suffix(&current),
        message: "the daemon reported no image id".into(),
        hint: "see the daemon's log".into(),
    })?;
    for t in tags.iter().skip(1) {
        engine.tag(&id, t).await?;
    }
    Ok(id)
}

/// One file of an assembled image's layer, with its owner.
pub struct LayerFile {
    pub path: String,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub bytes: Vec<u8>,
}

/// The layer of an assembled image: its files (and their parent
/// directories, root's), sorted, fixed times. Deterministic.
fn layer_tar(files: &[LayerFile]) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| Error::Other(anyhow::anyhow!("image layer: {e}"));
    let mut t = tar::Builder::new(Vec::new());
    // A directory belongs to the owner of the file it was made for (as
    // `COPY --chown` makes it).
    let mut dirs = std::collections::BTreeMap::new();
    for f in files {
        let mut acc = String::new();
        let parts: Vec<&str> = f.path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            acc = if acc.is_empty() {
                part.to_string()
            } else {
                format!("{acc}/{part}")
            };
            dirs.entry(acc.clone()).or_insert((f.uid, f.gid));
        }
    }
    let header = |kind, mode, size, (uid, gid)| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(0);
        h.set_cksum();
        h
    };
    for (d, owner) in dirs {
        let mut h = header(tar::EntryType::Directory, 0o755, 0, owner);
        t.append_data(&mut h, format!("{d}/"), std::io::empty())
            .map_err(io)?;
    }
    let mut sorted: Vec<&LayerFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for f in sorted {
        let mut h = header(
            tar::EntryType::Regular,
            f.mode,
            f.bytes.len() as u64,
            (f.uid, f.gid),
        );
        t.append_data(&mut h, &f.path, f.bytes.as_slice())
            .map_err(io)?;
    }
    t.into_inner().map_err(io)
}

/// A one-layer image (what a `FROM scratch` Dockerfile of COPYs and
/// metadata makes) without the builder: the layer and `config` (the image
/// config's `architecture`, `os`, `created` and `config`; the layer's
/// `rootfs` is added here) loaded as one `docker save` archive through
/// `POST /images/load`, under every tag in `tags`. The builder creates and
/// commits a container per Dockerfile step; this is one upload. Returns the
/// image id.
pub async fn assemble(
    engine: &Engine,
    service: &str,
    files: &[LayerFile],
    mut config: serde_json::Value,
    tags: &[String],
) -> Result<String> {
    let failed = |message: String| Error::Build {
        service: service.into(),
        step: " assembling the image".into(),
        message,
        hint: "check the daemon's disk space".into(),
    };
    let layer = layer_tar(files)?;
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    config["rootfs"] = serde_json::json!({ "type": "layers", "diff_ids": [diff_id] });
    config["history"] = serde_json::json!([{
        "created": config["created"].clone(),
        "created_by": format!("stackctl: {}", files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>().join(", ")),
    }]);
    let config = serde_json::to_vec(&config).map_err(|e| failed(e.to_string()))?;
    let id = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "config.json",
        "RepoTags": tags,
        "Layers": ["layer/layer.tar"],
    }]))
    .map_err(|e| failed(e.to_string()))?;
    let mut archive = tar::Builder::new(Vec::new());
    for (name, bytes) in [
        ("manifest.json", &manifest),
        ("config.json", &config),
        ("layer/layer.tar", &layer),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        archive
            .append_data(&mut h, name, bytes.as_slice())
            .map_err(|e| failed(e.to_string()))?;
    }
    let archive = archive.into_inner().map_err(|e| failed(e.to_string()))?;
    let options = bollard::query_parameters::ImportImageOptions {
        quiet: true,
        ..Default::default()
    };
    let mut stream = engine
        .docker
        .import_image(options, bollard::body_full(archive.into()), None);
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| failed(e.to_string()))?;
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            return Err(failed(err));
        }
    }
    Ok(id)
}

fn step_suffix(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" at {s}")
    }
}

#[cfg(test)]
mod tests {
    use super::Context;

    #[test]
    fn context_hash_and_tar_are_deterministic() {
        let mut a = Context::default();
        a.add("Dockerfile", 0o644, b"FROM scratch\n".to_vec());
        a.add("target/x/release/bin", 0o755, vec![1, 2, 3]);
        let mut b = Context::default();
        b.add("target/x/release/bin", 0o755, vec![1, 2, 3]);
        b.add("Dockerfile", 0o644, b"FROM scratch\n".to_vec());
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.tar().unwrap(), b.tar().unwrap());
        b.add("Dockerfile", 0o644, b"FROM scratch \n".to_vec());
        assert_ne!(a.hash(), b.hash());
        let bytes = a.tar().unwrap();
        let mut ar = tar::Archive::new(bytes.as_slice());
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "target/",
                "target/x/",
                "target/x/release/",
                "Dockerfile",
                "target/x/release/bin"
            ]
        );
    }
}
