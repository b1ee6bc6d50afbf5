//! The deploy lock, on the Docker host: a created (never started) container
//! named `<project>-lock`. The engine creates a name at most once, so two
//! deploys from anywhere cannot both hold it; its labels name the holder.

use crate::engine::{Engine, LABEL_PROJECT};
use crate::error::{Error, Result};
use crate::runtime::revision::{hostname, now_rfc3339, operator, LABEL_ROLE};
use crate::ui::Ui;
use std::collections::HashMap;

const LABEL_HOLDER: &str = "io.stackctl.lock.holder";
const LABEL_HOST: &str = "io.stackctl.lock.host";
const LABEL_PID: &str = "io.stackctl.lock.pid";
const LABEL_SINCE: &str = "io.stackctl.lock.since";
const LABEL_EXPIRES: &str = "io.stackctl.lock.expires";
const LABEL_WHAT: &str = "io.stackctl.lock.what";

pub fn lock_name(project: &str) -> String {
    format!("{project}-lock")
}

/// Who holds a lock, and whether it is provably stale.
#[derive(Debug, Clone)]
pub struct Holder {
    pub who: String,
    pub host: String,
    pub pid: u32,
    pub since: String,
    pub what: String,
    pub expires: u64,
}

impl Holder {
    pub fn describe(&self) -> String {
        format!(
            "{} (pid {} on {}, {} since {})",
            self.who, self.pid, self.host, self.what, self.since
        )
    }

    /// Stale: its time is up, or its process on this host is gone.
    pub fn stale(&self) -> Option<String> {
        let now = epoch();
        if now > self.expires {
            return Some(format!("it expired {} s ago", now - self.expires));
        }
        if self.host == hostname() && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
        {
            return Some(format!("process {} on this host is gone", self.pid));
        }
        None
    }
}

fn epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub async fn holder(engine: &Engine, project: &str) -> Result<Option<Holder>> {
    let Some(c) = engine.container(&lock_name(project)).await? else {
        return Ok(None);
    };
    let l = c.config.and_then(|c| c.labels).unwrap_or_default();
    let get = |k: &str| l.get(k).cloned().unwrap_or_default();
    Ok(Some(Holder {
        who: get(LABEL_HOLDER),
        host: get(LABEL_HOST),
        pid: get(LABEL_PID).parse().unwrap_or(0),
        since: get(LABEL_SINCE),
        what: get(LABEL_WHAT),
        expires: get(LABEL_EXPIRES).parse().unwrap_or(0),
    }))
}

/// A held lock; release it with [`Lock::release`].
pub struct Lock {
    name: String,
}

impl Lock {
    /// Take the lock for `what` (deploy, rollback), or say who holds it. A
    /// provably stale lock (a killed deploy) is taken over with a warning.
    /// `image` is any image on the host (the lock container is never started).
    pub async fn acquire(
        engine: &Engine,
        project: &str,
        what: &str,
        image: &str,
        ttl: std::time::Duration,
        ui: &Ui,
    ) -> Result<Lock> {
        let name = lock_name(project);
        for _ in 0..3 {
            let labels = HashMap::from([
                (LABEL_PROJECT.to_string(), project.to_string()),
                (LABEL_ROLE.to_string(), "lock".to_string()),
                (LABEL_HOLDER.to_string(), operator()),
                (LABEL_HOST.to_string(), hostname()),
                (LABEL_PID.to_string(), std::process::id().to_string()),
                (LABEL_SINCE.to_string(), now_rfc3339()),
                (
                    LABEL_EXPIRES.to_string(),
                    (epoch() + ttl.as_secs()).to_string(),
                ),
                (LABEL_WHAT.to_string(), what.to_string()),
            ]);
            match engine
                .create_holder(&name, image, "stackctl-lock", labels)
                .await
            {
                Ok(true) => return Ok(Lock { name }),
                Ok(false) => {
                    let Some(h) = holder(engine, project).await? else {
                        continue; // released meanwhile: try again
                    };
                    if let Some(why) = h.stale() {
                        ui.warn(format!(
                            "taking over a stale deploy lock of {}: {why}; this run recovers what it left",
                            h.describe()
                        ));
                        engine.remove(&name).await?;
                        continue;
                    }
                    return Err(Error::Locked {
                        project: project.to_string(),
                        holder: h.describe(),
                        hint: "wait for it to finish; if that deploy is dead on another host, `stackctl lock release` clears the lock".into(),
                    });
                }
                Err(e) => return Err(Error::engine("take the deploy lock", e)),
            }
        }
        Err(Error::engine(
            "take the deploy lock",
            "it changed hands three times while trying",
        ))
    }

    pub async fn release(self, engine: &Engine) -> Result<()> {
        engine.remove(&self.name).await
    }
}
