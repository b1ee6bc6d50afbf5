//! Revisions of a stack on a swarm: each deploy or rollback is one, stored in
//! the swarm itself as a Swarm config (`<project>-revision-<N>`) holding every
//! service's spec as applied, with its pinned image. `history` lists them;
//! `rollback` applies one again, by the image recorded, never by a tag.

use super::LABEL_OBJECT;
use crate::engine::models::ServiceSpec;
use crate::engine::{Engine, LABEL_PROJECT};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

pub const LABEL_REVISION: &str = "io.stackctl.revision";
/// How many revisions are kept (older ones, and objects only they use, go).
pub const KEEP: usize = 10;

/// One service as a revision applied it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Planned {
    /// Name in stack.toml.
    pub name: String,
    /// Name of the Swarm service.
    pub service: String,
    /// The image as stack.toml names it (repo:tag).
    pub image: String,
    /// The reference the service runs: a digest or an image id.
    pub pinned: String,
    /// sha256 of `spec`.
    pub hash: String,
    /// The spec without the revision and hash labels.
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmRevision {
    pub revision: u64,
    /// RFC 3339, UTC.
    pub created: String,
    pub status: SwarmStatus,
    pub message: String,
    /// Set when this revision rolled the stack back to an earlier one.
    pub rollback_of: Option<u64>,
    /// The image tag of the deploy.
    pub tag: String,
    /// Services this revision created, updated or removed.
    pub changed: Vec<String>,
    /// Seconds until every changed service converged (or failed).
    pub seconds: f64,
    pub services: Vec<Planned>,
}

/// How a Swarm deploy ended; stored as the words shown here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwarmStatus {
    /// Every changed service converged.
    #[serde(rename = "deployed")]
    Deployed,
    /// Swarm's update failure action put a service back on its previous spec.
    #[serde(rename = "rolled back by Swarm")]
    RolledBackBySwarm,
    /// A service did not converge within the wait.
    #[serde(rename = "failed")]
    Failed,
}

impl SwarmStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SwarmStatus::Deployed => "deployed",
            SwarmStatus::RolledBackBySwarm => "rolled back by Swarm",
            SwarmStatus::Failed => "failed",
        }
    }
}

impl std::fmt::Display for SwarmStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

fn record_name(project: &str, n: u64) -> String {
    format!("{project}-revision-{n}")
}

/// Every stored revision of the project, oldest first, with its config id.
pub async fn load(engine: &Engine, project: &str) -> Result<Vec<(String, SwarmRevision)>> {
    let configs = engine
        .configs(&[(LABEL_PROJECT, project), (LABEL_OBJECT, "revision")])
        .await?;
    let mut out = Vec::new();
    for c in configs {
        match serde_json::from_slice::<SwarmRevision>(&c.data) {
            Ok(r) => out.push((c.id, r)),
            Err(e) => {
                return Err(Error::Engine {
                    what: format!("read revision record {}", c.name),
                    message: e.to_string(),
                    hint: "the record was not written by this stackctl; remove it with `docker config rm` if it is not needed".into(),
                })
            }
        }
    }
    out.sort_by_key(|(_, r)| r.revision);
    Ok(out)
}

/// Store a revision (Swarm configs are immutable: one per revision).
pub async fn store(engine: &Engine, project: &str, stack: &str, r: &SwarmRevision) -> Result<()> {
    let json = serde_json::to_vec(r).map_err(|e| Error::Other(e.into()))?;
    let mut labels = super::spec::object_labels(project, stack, "revision");
    labels.insert(LABEL_REVISION.into(), r.revision.to_string());
    let name = record_name(project, r.revision);
    engine.create_config(&name, labels, &json).await?;
    Ok(())
}

/// Drop all but the newest [`KEEP`] revisions; the ones kept.
pub async fn prune(
    engine: &Engine,
    revs: Vec<(String, SwarmRevision)>,
) -> Result<Vec<SwarmRevision>> {
    let cut = revs.len().saturating_sub(KEEP);
    let mut kept = Vec::new();
    for (i, (id, r)) in revs.into_iter().enumerate() {
        if i < cut {
            engine.remove_config(&id).await?;
        } else {
            kept.push(r);
        }
    }
    Ok(kept)
}

/// Parse `--to`: `3`, `r3` or `rev3`.
pub fn parse_rev(s: &str) -> Option<u64> {
    s.trim()
        .trim_start_matches("rev")
        .trim_start_matches('r')
        .parse()
        .ok()
}

/// The revision `rollback` returns to: `to`; else the newest deployed
/// revision that differs from what runs now (`running`: Swarm service ->
/// spec hash). After a good deploy that is the one before it; after a
/// deploy that failed or that Swarm rolled back half-way, the last good one;
/// after a clean Swarm rollback (the previous revision runs again), the one
/// before that.
pub fn target<'a>(
    revs: &'a [SwarmRevision],
    to: Option<&str>,
    running: &HashMap<String, String>,
) -> Result<&'a SwarmRevision> {
    let listed = || {
        revs.iter()
            .map(|r| r.revision.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if revs.is_empty() {
        return Err(Error::usage(
            "no revision of this stack is recorded on the swarm",
            "deploy first: stackctl --target swarm deploy",
        ));
    }
    if let Some(t) = to {
        let n = parse_rev(t).ok_or_else(|| {
            Error::usage(
                format!("`{t}` is not a revision number"),
                format!("choose one of: {}", listed()),
            )
        })?;
        return revs.iter().find(|r| r.revision == n).ok_or_else(|| {
            Error::usage(
                format!("revision {n} is not recorded (only the last {KEEP} are kept)"),
                format!(
                    "choose one of: {} (see `stackctl --target swarm history`)",
                    listed()
                ),
            )
        });
    }
    let runs = |r: &SwarmRevision| {
        r.services.len() == running.len()
            && r.services
                .iter()
                .all(|p| running.get(&p.service) == Some(&p.hash))
    };
    revs.iter()
        .rev()
        .filter(|r| r.status == SwarmStatus::Deployed)
        .find(|r| !runs(r))
        .ok_or_else(|| {
            Error::usage(
                "no earlier deployed revision differs from what runs now: there is nothing to roll back to",
                format!(
                    "recorded revisions: {} (`stackctl --target swarm history`); pick one with --to REV",
                    listed()
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(n: u64, status: SwarmStatus) -> SwarmRevision {
        SwarmRevision {
            revision: n,
            created: String::new(),
            status,
            message: String::new(),
            rollback_of: None,
            tag: "t".into(),
            changed: vec![],
            seconds: 0.0,
            services: vec![],
        }
    }

    fn planned(service: &str, hash: &str) -> Planned {
        Planned {
            name: service.into(),
            service: service.into(),
            image: String::new(),
            pinned: String::new(),
            hash: hash.into(),
            spec: ServiceSpec::default(),
        }
    }

    fn with(mut r: SwarmRevision, hashes: &[(&str, &str)]) -> SwarmRevision {
        r.services = hashes.iter().map(|(s, h)| planned(s, h)).collect();
        r
    }

    #[test]
    fn statuses_are_stored_as_the_words_earlier_records_hold() {
        for (status, word) in [
            (SwarmStatus::Deployed, "deployed"),
            (SwarmStatus::RolledBackBySwarm, "rolled back by Swarm"),
            (SwarmStatus::Failed, "failed"),
        ] {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{word}\""));
            assert_eq!(serde_json::from_str::<SwarmStatus>(&json).unwrap(), status);
            assert_eq!(status.to_string(), word);
        }
    }

    fn running(hashes: &[(&str, &str)]) -> HashMap<String, String> {
        hashes
            .iter()
            .map(|(s, h)| (s.to_string(), h.to_string()))
            .collect()
    }

    #[test]
    fn rollback_goes_to_the_last_good_revision_that_is_not_running() {
        let r1 = with(rev(1, SwarmStatus::Deployed), &[("a", "1"), ("b", "1")]);
        let r2 = with(rev(2, SwarmStatus::Deployed), &[("a", "2"), ("b", "2")]);
        // After a good deploy: the one before.
        let revs = vec![r1.clone(), r2.clone()];
        let now = running(&[("a", "2"), ("b", "2")]);
        assert_eq!(target(&revs, None, &now).unwrap().revision, 1);
        // Swarm rolled all of revision 3 back: revision 2 runs, so back to 1.
        let r3 = with(
            rev(3, SwarmStatus::RolledBackBySwarm),
            &[("a", "3"), ("b", "2")],
        );
        let revs = vec![r1.clone(), r2.clone(), r3];
        assert_eq!(target(&revs, None, &now).unwrap().revision, 1);
        // Half of revision 3 went through: back to 2.
        let mixed = running(&[("a", "2"), ("b", "3")]);
        assert_eq!(target(&revs, None, &mixed).unwrap().revision, 2);
        // --to picks any recorded revision.
        assert_eq!(target(&revs, Some("r2"), &now).unwrap().revision, 2);
        assert!(target(&revs, Some("9"), &now).is_err());
        assert!(target(&revs, Some("x"), &now).is_err());
        // Only one revision, and it runs: nothing to go back to.
        assert!(target(&[r1], None, &running(&[("a", "1"), ("b", "1")])).is_err());
        assert!(target(&[], None, &now).is_err());
    }
}
