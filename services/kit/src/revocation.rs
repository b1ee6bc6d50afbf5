//! The shared revocation list in Redis: every key under [`PREFIX`]
//! (`revoked:`), written by user-management and security, read by the
//! api-gateway and security on every request, so a revocation is refused
//! everywhere at once (no cache in between).
//!
//! | key | value | written by | meaning |
//! |---|---|---|---|
//! | `revoked:jti:<jti>` | token `exp` | security (`POST /revocations`) | one access token |
//! | `revoked:sid:<sid>` | `1` | user-management | every access token of a session (refresh-token family): logout, refresh-token reuse, a session revoked by its owner, the other sessions on a password change |
//! | `revoked:user:<id>` | unix ms | user-management | every access token of the user issued before that instant: force logout, disable, password reset, role change, delete |
//! | `revoked:apikey:<id>` | `1` | security (`DELETE /api-keys/{id}`) | an API key (the gateway caches verified keys) |
//!
//! Every key has a TTL: as long as a token it names can still be accepted
//! (access-token lifetime + the verifiers' 30 s leeway + a margin), or, for
//! API keys, longer than any cache of a verified key. None of them may be
//! evicted before its TTL: Redis must run `maxmemory-policy noeviction` or a
//! `volatile-*` policy only if every cache key also has a TTL and the cache
//! keys are what gets evicted (see docs/service-contract.md).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;

use crate::auth::Claims;

/// The prefix of every revocation key.
pub const PREFIX: &str = "revoked:";

/// How long past a token's lifetime its revocation is kept: the verifiers'
/// leeway (30 s) plus a margin for clock skew.
pub const MARGIN: Duration = Duration::from_secs(90);

/// How long an API key stays listed after its revocation (longer than any
/// cache of a verified key, e.g. the gateway's `API_KEY_CACHE_SECS`).
pub const API_KEY_TTL: Duration = Duration::from_secs(24 * 3600);

pub fn jti_key(jti: &str) -> String {
    format!("{PREFIX}jti:{jti}")
}
pub fn sid_key(sid: &str) -> String {
    format!("{PREFIX}sid:{sid}")
}
pub fn user_key(user: &str) -> String {
    format!("{PREFIX}user:{user}")
}
pub fn api_key_key(id: &str) -> String {
    format!("{PREFIX}apikey:{id}")
}

/// When a token was issued, in unix milliseconds: its `iat_ms` claim, else
/// the start of its `iat` second (so a cutoff in that second refuses it).
pub fn issued_ms(claims: &Claims) -> i64 {
    claims.iat_ms.unwrap_or(claims.iat.saturating_mul(1000))
}

/// Now, in unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Why a token is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    Token,
    Session,
    User,
}

/// Reads and writes the revocation list. Cheap to clone.
#[derive(Clone)]
pub struct Revocations {
    conn: ConnectionManager,
    timeout: Duration,
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::IoError, "revocation list timed out"))
}

impl Revocations {
    /// Over a connection to the shared Redis; each call gives up after
    /// 500 ms (the callers then fail closed).
    pub fn new(conn: ConnectionManager) -> Self {
        Revocations {
            conn,
            timeout: Duration::from_millis(500),
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> redis::RedisResult<T> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }

    /// Whether an access token is revoked (one `MGET`).
    pub async fn check_token(&self, claims: &Claims) -> redis::RedisResult<Option<Revoked>> {
        let mut keys = vec![user_key(&claims.sub)];
        if !claims.jti.is_empty() {
            keys.push(jti_key(&claims.jti));
        }
        if let Some(sid) = claims.sid.as_deref().filter(|s| !s.is_empty()) {
            keys.push(sid_key(sid));
        }
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&keys);
        let values: Vec<Option<String>> = self.run(cmd).await?;
        if let Some(Some(cutoff)) = values.first() {
            let cutoff: i64 = cutoff.parse().unwrap_or(i64::MAX);
            if issued_ms(claims) < cutoff {
                return Ok(Some(Revoked::User));
            }
        }
        for (key, v) in keys.iter().zip(&values).skip(1) {
            if v.is_some() {
                return Ok(Some(if key.starts_with(&format!("{PREFIX}jti:")) {
                    Revoked::Token
                } else {
                    Revoked::Session
                }));
            }
        }
        Ok(None)
    }

    /// Whether the API key `id` was revoked.
    pub async fn api_key_revoked(&self, id: &str) -> redis::RedisResult<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(api_key_key(id));
        let n: i64 = self.run(cmd).await?;
        Ok(n > 0)
    }

    async fn set(&self, key: String, value: String, ttl: Duration) -> redis::RedisResult<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        self.run(cmd).await
    }

    /// One access token, until `exp` (unix seconds) plus [`MARGIN`].
    pub async fn revoke_token(&self, jti: &str, exp: i64) -> redis::RedisResult<()> {
        let left = (exp - now_ms() / 1000).max(0) as u64;
        self.set(
            jti_key(jti),
            exp.to_string(),
            Duration::from_secs(left) + MARGIN,
        )
        .await
    }

    /// Every access token of these sessions, for `access_ttl` plus [`MARGIN`].
    pub async fn revoke_sessions(
        &self,
        sids: &[String],
        access_ttl: Duration,
    ) -> redis::RedisResult<()> {
        if sids.is_empty() {
            return Ok(());
        }
        let ttl = (access_ttl + MARGIN).as_millis() as u64;
        let mut pipe = redis::pipe();
        for sid in sids {
            pipe.cmd("SET")
                .arg(sid_key(sid))
                .arg("1")
                .arg("PX")
                .arg(ttl)
                .ignore();
        }
        let mut conn = self.conn.clone();
        tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut conn))
            .await
            .unwrap_or_else(|_| Err(timed_out()))
    }

    /// Every access token of `user` issued before now, for `access_ttl`
    /// plus [`MARGIN`]. Returns the cutoff (unix ms).
    pub async fn revoke_user(&self, user: &str, access_ttl: Duration) -> redis::RedisResult<i64> {
        let cutoff = now_ms();
        self.set(user_key(user), cutoff.to_string(), access_ttl + MARGIN)
            .await?;
        Ok(cutoff)
    }

    /// An API key, for [`API_KEY_TTL`].
    pub async fn revoke_api_key(&self, id: &str) -> redis::RedisResult<()> {
        self.set(api_key_key(id), "1".into(), API_KEY_TTL).await
    }
}
