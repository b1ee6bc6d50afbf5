//! Token-bucket rate limiting in Redis, shared by every gateway replica.
//!
//! Each bucket is a Redis hash `{tokens, ts}` under its own key. The Lua
//! script refills every bucket named in KEYS from Redis' own clock (so replica
//! clocks do not matter), then either takes `cost` tokens from all of them or
//! from none, and returns how long to wait when refused.

use redis::aio::ConnectionLike;

/// KEYS: bucket keys. ARGV: rate (tokens/s), burst, cost.
/// Returns `{allowed (0|1), retry_after_ms, remaining_tokens_floor}`.
pub const TOKEN_BUCKET_LUA: &str = r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = math.ceil(burst / rate) + 1
local wait = 0
local remaining = burst
local levels = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(v[1])
  local ts = tonumber(v[2])
  if tokens == nil or ts == nil then
    tokens = burst
    ts = now
  end
  local elapsed = now - ts
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(burst, tokens + elapsed * rate / 1000000)
  levels[i] = tokens
  if tokens < cost then
    local w = (cost - tokens) / rate
    if w > wait then wait = w end
  end
  if tokens < remaining then remaining = tokens end
end
if wait > 0 then
  return {0, math.ceil(wait * 1000), math.floor(remaining)}
end
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, 'tokens', tostring(levels[i] - cost), 'ts', tostring(now))
  redis.call('EXPIRE', key, ttl)
end
return {1, 0, math.floor(remaining - cost)}
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Milliseconds until a request would be admitted (0 when allowed).
    pub retry_after_ms: u64,
    pub remaining: u64,
}

impl Decision {
    /// `Retry-After` header value: whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_ms.div_ceil(1000).max(1)
    }
}

#[derive(Clone)]
pub struct RateLimiter {
    script: redis::Script,
    rate: f64,
    burst: f64,
    prefix: String,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RateLimiter {
    /// `rate` tokens per second refill, buckets hold `burst` tokens; keys are
    /// `<prefix>rl:<kind>:<id>`.
    pub fn new(rate: f64, burst: f64, prefix: impl Into<String>) -> Self {
        Self {
            script: redis::Script::new(TOKEN_BUCKET_LUA),
            rate: rate.max(0.001),
            burst: burst.max(1.0),
            prefix: prefix.into(),
        }
    }

    pub fn key(&self, kind: &str, id: &str) -> String {
        format!("{}rl:{kind}:{id}", self.prefix)
    }

    /// Takes one token from every named bucket (`(kind, id)` pairs), or none.
    pub async fn check<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        buckets: &[(&str, &str)],
    ) -> redis::RedisResult<Decision> {
        let mut inv = self.script.prepare_invoke();
        for (kind, id) in buckets {
            inv.key(self.key(kind, id));
        }
        inv.arg(self.rate).arg(self.burst).arg(1);
        let (allowed, retry_after_ms, remaining): (i64, i64, i64) = inv.invoke_async(conn).await?;
        Ok(Decision {
            allowed: allowed == 1,
            retry_after_ms: retry_after_ms.max(0) as u64,
            remaining: remaining.max(0) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let d = |ms| Decision {
            allowed: false,
            retry_after_ms: ms,
            remaining: 0,
        };
        assert_eq!(d(1).retry_after_secs(), 1);
        assert_eq!(d(1000).retry_after_secs(), 1);
        assert_eq!(d(1001).retry_after_secs(), 2);
        assert_eq!(d(0).retry_after_secs(), 1);
    }

    #[test]
    fn keys_are_prefixed() {
        let r = RateLimiter::new(10.0, 20.0, "gw:");
        assert_eq!(r.key("ip", "1.2.3.4"), "gw:rl:ip:1.2.3.4");
    }
}
