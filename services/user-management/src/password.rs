//! Argon2id password hashing (PHC strings) and the password policy.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::sync::Arc;
use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, Version};
use kit::ApiError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::settings::Argon2Cost;

fn hasher(cost: Argon2Cost) -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
        .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// The longest password accepted anywhere (bytes): longer ones are refused
/// with 400 before any hashing.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// 400 `password_too_long` for a password over [`MAX_PASSWORD_BYTES`].
pub fn check_length(password: &str) -> Result<(), ApiError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "password_too_long",
            format!("password must be at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Runs Argon2 on the blocking pool, at most `permits` at once: each hash
/// holds `memory_kib` of RAM (19 MiB by default), so an unbounded burst of
/// logins would exceed the container's memory. A caller waits at most
/// `wait` for a slot, then gets 503 `busy` with `Retry-After`.
#[derive(Clone)]
pub struct Hasher {
    slots: Arc<Semaphore>,
    permits: usize,
    wait: Duration,
}

impl Hasher {
    pub fn new(permits: usize, wait: Duration) -> Self {
        let permits = permits.max(1);
        Hasher {
            slots: Arc::new(Semaphore::new(permits)),
            permits,
            wait,
        }
    }

    /// How many hashes may run at once.
    pub fn permits(&self) -> usize {
        self.permits
    }

    /// Hashes running now.
    pub fn busy(&self) -> usize {
        self.permits - self.slots.available_permits()
    }

    async fn slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => {
                tracing::warn!(
                    permits = self.permits,
                    "password hashing saturated; request refused"
                );
                Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "too many logins at once; retry shortly",
                )
                .with_retry_after(1))
            }
        }
    }

    /// Hash a new password (Argon2id with `cost`).
    pub async fn hash(&self, password: String, cost: Argon2Cost) -> Result<String, ApiError> {
        check_length(&password)?;
        let permit = self.slot().await?;
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash_now(&password, cost)
        })
        .await
        .map_err(ApiError::internal)?;
        out.map_err(ApiError::internal)
    }

    /// Verify against a stored PHC string (its own parameters are used).
    pub async fn verify(&self, password: String, phc: String) -> Result<bool, ApiError> {
        check_length(&password)?;
        let permit = self.slot().await?;
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verify_now(&password, &phc)
        })
        .await
        .map_err(ApiError::internal)?;
        out.map_err(ApiError::internal)
    }
}

/// The default number of concurrent hashes: twice the CPUs this process
/// may use, but no more than a quarter of the memory limit (the cgroup's,
/// else the host's available memory) allows, within 1..=16.
pub fn default_permits(cost: Argon2Cost) -> usize {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let per_hash = (cost.memory_kib as u64).max(8) * 1024 * cost.parallelism.max(1) as u64;
    let by_memory = memory_limit()
        .map(|limit| (limit / 4 / per_hash) as usize)
        .unwrap_or(usize::MAX);
    (2 * cpus).min(by_memory).clamp(1, 16)
}

/// The memory this process may use: the cgroup (v2, then v1) limit, else
/// `MemAvailable`.
fn memory_limit() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    if let Some(v) = read("/sys/fs/cgroup/memory.max") {
        if let Ok(n) = v.trim().parse::<u64>() {
            return Some(n);
        }
    }
    if let Some(v) = read("/sys/fs/cgroup/memory/memory.limit_in_bytes") {
        if let Ok(n) = v.trim().parse::<u64>() {
            if n < (1 << 60) {
                return Some(n);
            }
        }
    }
    read("/proc/meminfo")?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

fn hash_now(password: &str, cost: Argon2Cost) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    hasher(cost)?
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
}

fn verify_now(password: &str, phc: &str) -> anyhow::Result<bool> {
    let parsed = PasswordHash::new(phc).map_err(|e| anyhow::anyhow!("stored hash invalid: {e}"))?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

/// Hash on the blocking pool, outside any [`Hasher`] bound (start-up only:
/// the first admin, the dummy hash).
pub async fn hash(password: String, cost: Argon2Cost) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || hash_now(&password, cost)).await?
}

/// Verify on the blocking pool, outside any [`Hasher`] bound.
pub async fn verify(password: String, phc: String) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || verify_now(&password, &phc)).await?
}

/// A hash of a random password, used to spend the same time on unknown
/// e-mails as on known ones (no user enumeration by timing).
pub async fn dummy_hash(cost: Argon2Cost) -> anyhow::Result<String> {
    hash(uuid::Uuid::new_v4().to_string(), cost).await
}

/// 10..=256 characters, not only letters or only digits, not the e-mail.
pub fn check_policy(password: &str, email: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if n < 10 {
        return Err(weak("password must be at least 10 characters long"));
    }
    if n > 256 {
        return Err(weak("password must be at most 256 characters long"));
    }
    let has_alpha = password.chars().any(|c| c.is_alphabetic());
    let has_other = password.chars().any(|c| !c.is_alphabetic());
    if !(has_alpha && has_other) {
        return Err(weak(
            "password must mix letters with digits or other characters",
        ));
    }
    if password.eq_ignore_ascii_case(email) {
        return Err(weak("password must not be the e-mail address"));
    }
    Ok(())
}

fn weak(msg: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "weak_password",
        msg,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify_argon2id() {
        let cost = Argon2Cost {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        let h = hash("correct horse 1".into(), cost).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{h}");
        assert!(verify("correct horse 1".into(), h.clone()).await.unwrap());
        assert!(!verify("wrong horse 1".into(), h).await.unwrap());
    }

    #[tokio::test]
    async fn hasher_bounds_concurrency_and_refuses_when_full() {
        let cost = Argon2Cost {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        let h = Hasher::new(1, Duration::from_millis(50));
        let held = h.slot().await.unwrap();
        assert_eq!(h.busy(), 1);
        let e = h.hash("correct horse 1".into(), cost).await.unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(1));
        drop(held);
        let phc = h.hash("correct horse 1".into(), cost).await.unwrap();
        assert!(h.verify("correct horse 1".into(), phc).await.unwrap());
        let long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        let e = h.verify(long, String::new()).await.unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        assert_eq!(e.code, "password_too_long");
        assert!((1..=16).contains(&default_permits(Argon2Cost::default())));
    }

    #[test]
    fn policy() {
        assert!(check_policy("short1", "a@b.c").is_err());
        assert!(check_policy("onlyletterspassword", "a@b.c").is_err());
        assert!(check_policy("1234567890123", "a@b.c").is_err());
        assert!(check_policy("a-good-passphrase", "a@b.c").is_ok());
        assert!(check_policy("Me@example.org", "me@example.org").is_err());
    }
}
