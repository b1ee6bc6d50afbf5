//! Revisions: what each deploy put live, kept on the Docker host (so every
//! operator and CI see the same history) with a local copy.
//!
//! On the host a revision is one created, never started container per
//! service, `<project>-rev<N>-<service>`, made from the service's image by
//! id. The container holds the image (the engine will not delete or prune an
//! image a container uses) and its labels carry the record: the revision's
//! metadata and the exact create bodies of the service's containers. The
//! local copy is `.stackctl/revisions/<project>/<N>.json`.

use crate::engine::create::Desired;
use crate::engine::models::ContainerCreateBody;
use crate::engine::{Engine, LABEL_PROJECT};
use crate::error::{Error, Result};
use crate::model::containers::{Kind, LABEL_SERVICE};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// What a stackctl-owned container that is not part of the running stack is for.
pub const LABEL_ROLE: &str = "io.stackctl.role";
pub const LABEL_REVISION: &str = "io.stackctl.revision";
const LABEL_RECORD: &str = "io.stackctl.record";
const LABEL_UNITS: &str = "io.stackctl.units";

/// One container of a revision, exactly as it is created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unit {
    pub service: String,
    pub replica: u32,
    pub name: String,
    pub kind: Kind,
    pub stateful: bool,
    pub image: String,
    pub image_id: String,
    pub hash: String,
    /// Networks (host names), the first one the container is created on.
    pub networks: Vec<String>,
    pub alias: String,
    /// More host names (a component's aliases).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_aliases: Vec<String>,
    pub probe: Option<Vec<String>>,
    pub grace_secs: u64,
    pub depends_on: Vec<String>,
    pub secrets: Vec<String>,
    pub body: ContainerCreateBody,
}

impl Unit {
    pub fn from_desired(project: &str, d: &Desired, image_id: &str) -> Unit {
        Unit {
            service: d.spec.name.clone(),
            replica: d.replica,
            name: d.name.clone(),
            kind: d.spec.kind,
            stateful: d.spec.stateful,
            image: d.image.clone(),
            image_id: image_id.to_string(),
            hash: d.hash.clone(),
            networks: d
                .spec
                .networks
                .iter()
                .map(|n| crate::engine::network_name(project, n))
                .collect(),
            alias: d.spec.name.clone(),
            more_aliases: d.spec.aliases.clone(),
            probe: d.spec.probe_cmd(),
            grace_secs: (d.spec.stop_grace_period.millis() / 1000).max(1),
            depends_on: d.spec.depends_on.clone(),
            secrets: d.spec.secrets.clone(),
            body: d.body.clone(),
        }
    }

    pub fn is_app(&self) -> bool {
        self.kind == Kind::App
    }
}

/// One service at one revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRev {
    /// The reference it was deployed as (repo:tag).
    pub image: String,
    /// The image id: what a rollback runs, never re-resolving a tag.
    pub image_id: String,
    /// The registry digest, when the image was pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The immutable per-revision tag.
    pub revision_tag: String,
    pub units: Vec<Unit>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalRevision {
    pub id: u32,
    /// RFC 3339, UTC.
    pub time: String,
    pub kind: RevisionKind,
    /// The revision a rollback went back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<String>,
    pub config_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    pub project: String,
    pub by: String,
    pub services: BTreeMap<String, ServiceRev>,
}

/// What made a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevisionKind {
    Deploy,
    /// `stackctl rollback`.
    Rollback,
    /// A deploy that failed and went back by itself.
    AutoRollback,
}

impl std::fmt::Display for RevisionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RevisionKind::Deploy => "deploy",
            RevisionKind::Rollback => "rollback",
            RevisionKind::AutoRollback => "auto-rollback",
        })
    }
}

/// Metadata of a revision without the services (one label on each container).
#[derive(Serialize, Deserialize)]
struct Meta {
    id: u32,
    time: String,
    kind: RevisionKind,
    from: Option<u32>,
    git: Option<String>,
    config_hash: String,
    environment: Option<String>,
    project: String,
    by: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    image_id: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    revision_tag: String,
}

pub fn local_dir(root: &std::path::Path, project: &str) -> PathBuf {
    root.join(".stackctl").join("revisions").join(project)
}

pub fn revision_container(project: &str, id: u32, service: &str) -> String {
    format!("{project}-rev{id}-{service}")
}

/// The immutable tag of a service image at a revision.
pub fn revision_tag(image: &str, project: &str, id: u32) -> String {
    let repo = match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    };
    format!("{repo}:{project}-r{id}")
}

pub fn now_rfc3339() -> String {
    // Seconds since the epoch as UTC calendar time, without a date crate.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".into());
    format!("{user}@{}", hostname())
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Every revision of a project: the host's records, plus local ones the
/// host lost (marked by `host == false`), oldest first.
pub async fn list(
    engine: &Engine,
    root: &std::path::Path,
    project: &str,
) -> Result<Vec<(LocalRevision, bool)>> {
    let mut by_id: BTreeMap<u32, LocalRevision> = BTreeMap::new();
    for c in engine
        .containers(&[(LABEL_PROJECT, project), (LABEL_ROLE, "revision")])
        .await?
    {
        let labels = c.labels.unwrap_or_default();
        let (Some(meta), Some(units), Some(service)) = (
            labels.get(LABEL_RECORD),
            labels.get(LABEL_UNITS),
            labels.get(LABEL_SERVICE),
        ) else {
            continue;
        };
        let (Ok(meta), Ok(units)) = (
            serde_json::from_str::<Meta>(meta),
            serde_json::from_str::<Vec<Unit>>(units),
        ) else {
            continue;
        };
        let r = by_id.entry(meta.id).or_insert_with(|| LocalRevision {
            id: meta.id,
            time: meta.time.clone(),
            kind: meta.kind,
            from: meta.from,
            git: meta.git.clone(),
            config_hash: meta.config_hash.clone(),
            environment: meta.environment.clone(),
            project: meta.project.clone(),
            by: meta.by.clone(),
            services: BTreeMap::new(),
        });
        r.services.insert(
            service.clone(),
            ServiceRev {
                image: meta.image,
                image_id: meta.image_id,
                digest: meta.digest,
                revision_tag: meta.revision_tag,
                units,
            },
        );
    }
    let mut out: Vec<(LocalRevision, bool)> = Vec::new();
    let dir = local_dir(root, project);
    let mut local: BTreeMap<u32, LocalRevision> = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            if let Ok(bytes) = std::fs::read(e.path()) {
                if let Ok(r) = serde_json::from_slice::<LocalRevision>(&bytes) {
                    local.insert(r.id, r);
                }
            }
        }
    }
    let ids: std::collections::BTreeSet<u32> = by_id.keys().chain(local.keys()).copied().collect();
    for id in ids {
        match by_id.remove(&id) {
            Some(r) => out.push((r, true)),
            None => out.push((local.remove(&id).expect("id from one of the maps"), false)),
        }
    }
    Ok(out)
}

/// Record a revision: tag its images immutably, create the holder
/// containers with the record on the host, write the local copy.
pub async fn record(engine: &Engine, root: &std::path::Path, rev: &LocalRevision) -> Result<()> {
    for (service, s) in &rev.services {
        engine.tag(&s.image_id, &s.revision_tag).await?;
        let meta = Meta {
            id: rev.id,
            time: rev.time.clone(),
            kind: rev.kind,
            from: rev.from,
            git: rev.git.clone(),
            config_hash: rev.config_hash.clone(),
            environment: rev.environment.clone(),
            project: rev.project.clone(),
            by: rev.by.clone(),
            image: s.image.clone(),
            image_id: s.image_id.clone(),
            digest: s.digest.clone(),
            revision_tag: s.revision_tag.clone(),
        };
        let name = revision_container(&rev.project, rev.id, service);
        let labels = HashMap::from([
            (LABEL_PROJECT.to_string(), rev.project.clone()),
            (LABEL_ROLE.to_string(), "revision".to_string()),
            (LABEL_REVISION.to_string(), rev.id.to_string()),
            (LABEL_SERVICE.to_string(), service.clone()),
            (
                LABEL_RECORD.to_string(),
                serde_json::to_string(&meta).unwrap_or_default(),
            ),
            (
                LABEL_UNITS.to_string(),
                serde_json::to_string(&s.units).unwrap_or_default(),
            ),
        ]);
        // Never started: a record, and what keeps the image on the host.
        // Ok(false): already recorded (a recovery re-recording the same revision).
        engine
            .create_holder(&name, &s.image_id, "stackctl-revision-record", labels)
            .await
            .map_err(|e| Error::engine(format!("record revision {} ({name})", rev.id), e))?;
    }
    let dir = local_dir(root, &rev.project);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Write {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(format!("{}.json", rev.id));
    let tmp = dir.join(format!(".{}.json.tmp", rev.id));
    std::fs::write(&tmp, serde_json::to_vec_pretty(rev).unwrap_or_default())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|source| Error::Write { path, source })?;
    Ok(())
}

/// Keep the newest `keep` revisions (and always `protect`); forget the
/// others: their holder containers, per-revision tags and local copies.
/// Returns the ids forgotten.
pub async fn prune(
    engine: &Engine,
    root: &std::path::Path,
    project: &str,
    keep: u32,
    protect: &[u32],
) -> Result<Vec<u32>> {
    let all = list(engine, root, project).await?;
    let n = all.len();
    let mut gone = Vec::new();
    for (i, (r, _)) in all.iter().enumerate() {
        if i + (keep as usize) >= n || protect.contains(&r.id) {
            continue;
        }
        for (service, s) in &r.services {
            let _ = engine
                .remove(&revision_container(project, r.id, service))
                .await;
            // Untag only; the image stays while anything else uses it.
            engine.remove_image(&s.revision_tag, true).await;
        }
        let _ = std::fs::remove_file(local_dir(root, project).join(format!("{}.json", r.id)));
        gone.push(r.id);
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_tags_keep_the_repository_and_registry_port() {
        assert_eq!(
            revision_tag("ai/api-gateway:abc123", "p", 3),
            "ai/api-gateway:p-r3"
        );
        assert_eq!(
            revision_tag("127.0.0.1:5000/ai/api-gateway:x", "p-staging", 12),
            "127.0.0.1:5000/ai/api-gateway:p-staging-r12"
        );
        assert_eq!(
            revision_tag("127.0.0.1:5000/ai/gw", "p", 1),
            "127.0.0.1:5000/ai/gw:p-r1"
        );
    }

    #[test]
    fn calendar_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
