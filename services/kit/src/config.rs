//! Configuration from environment variables and `*_FILE` secret files.
//!
//! Secrets are read from `NAME` or, preferably, from the file named by
//! `NAME_FILE` (trailing newline trimmed). Secret values are wrapped in
//! [`Secret`] whose `Debug`/`Display` never show the value.

use std::fmt;
use std::time::Duration;

use crate::identity::InternalAuthKey;

/// `iss` of the stack's access tokens unless `JWT_ISSUER` says otherwise.
pub const DEFAULT_JWT_ISSUER: &str = "user-management";
/// `aud` of the stack's access tokens unless `JWT_AUDIENCE` says otherwise.
pub const DEFAULT_JWT_AUDIENCE: &str = "ai-assistants-1c";

/// Errors while reading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name} has an invalid value: {reason}")]
    Invalid { name: String, reason: String },
    #[error("cannot read secret file {path} (from {name}): {source}")]
    SecretFile {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("required setting {0} is missing")]
    Missing(String),
}

/// A secret value: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }
    /// Access the secret value. Never log the result.
    pub fn expose(&self) -> &T {
        &self.0
    }
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where configuration values come from. [`Env::process`] reads the real
/// process environment; tests use [`Env::from_pairs`].
#[derive(Clone)]
pub struct Env {
    vars: Option<std::collections::HashMap<String, String>>,
}

impl Env {
    /// The process environment.
    pub fn process() -> Self {
        Env { vars: None }
    }

    /// A fixed set of variables (for tests).
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Env {
            vars: Some(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// A non-empty variable.
    pub fn var(&self, name: &str) -> Option<String> {
        let v = match &self.vars {
            Some(m) => m.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        v.filter(|s| !s.is_empty())
    }

    /// Parse a variable, or return `default` when unset.
    pub fn parse_or<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.var(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
                name: name.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// A duration in seconds (fractions allowed), or `default`.
    pub fn duration_secs_or(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.var(name) {
            None => Ok(default),
            Some(v) => {
                let secs: f64 = v.trim().parse().map_err(|_| ConfigError::Invalid {
                    name: name.to_string(),
                    reason: "expected a number of seconds".into(),
                })?;
                if !(secs.is_finite() && secs >= 0.0) {
                    return Err(ConfigError::Invalid {
                        name: name.to_string(),
                        reason: "expected a non-negative number of seconds".into(),
                    });
                }
                Ok(Duration::from_secs_f64(secs))
            }
        }
    }

    /// Read a secret: the file named by `NAME_FILE` wins over `NAME`.
    /// Returns `Ok(None)` when neither is set; an error when the file is
    /// unreadable. A single trailing newline (`\n` or `\r\n`) is trimmed.
    pub fn secret(&self, name: &str) -> Result<Option<Secret<String>>, ConfigError> {
        let file_var = format!("{name}_FILE");
        if let Some(path) = self.var(&file_var) {
            let raw = std::fs::read_to_string(&path).map_err(|source| ConfigError::SecretFile {
                name: file_var.clone(),
                path: path.clone(),
                source,
            })?;
            let trimmed = raw
                .strip_suffix("\r\n")
                .or_else(|| raw.strip_suffix('\n'))
                .unwrap_or(&raw);
            return Ok(Some(Secret(trimmed.to_string())));
        }
        Ok(self.var(name).map(Secret))
    }

    /// `SERVICE_URL_<NAME>` for an app service (`1c-integration` →
    /// `SERVICE_URL_1C_INTEGRATION`), without a trailing slash.
    pub fn service_url(&self, service: &str) -> Option<String> {
        let var = format!(
            "SERVICE_URL_{}",
            service.to_ascii_uppercase().replace('-', "_")
        );
        self.var(&var).map(|u| u.trim_end_matches('/').to_string())
    }
}

/// Read a secret from the process environment (`NAME_FILE` or `NAME`).
pub fn secret(name: &str) -> Result<Option<Secret<String>>, ConfigError> {
    Env::process().secret(name)
}

/// `SERVICE_URL_<NAME>` from the process environment.
pub fn service_url(service: &str) -> Option<String> {
    Env::process().service_url(service)
}

/// Percent-encode everything but RFC 3986 unreserved characters (for URL
/// user-info parts such as passwords).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The common configuration of every service (see docs/service-contract.md).
#[derive(Clone, Debug)]
pub struct Config {
    /// `SERVICE_NAME` (falls back to the default given by the caller).
    pub service_name: String,
    /// `PORT`.
    pub port: u16,
    /// `DATABASE_URL`, or composed from `DATABASE_HOST/PORT/NAME/USER` and
    /// the `DATABASE_PASSWORD` secret. `None` when the service has no DB.
    pub database_url: Option<Secret<String>>,
    /// `REDIS_URL` with `REDIS_USERNAME` and the `REDIS_PASSWORD` secret
    /// inserted when given.
    pub redis_url: Option<Secret<String>>,
    /// `REDIS_KEY_PREFIX` (default `<SERVICE_NAME>:`): every Redis key the
    /// service owns starts with it (its ACL user may touch nothing else but
    /// the shared `revoked:` list).
    pub redis_key_prefix: String,
    /// `JWKS_URL`.
    pub jwks_url: Option<String>,
    /// `JWT_ISSUER` (default `user-management`): the `iss` tokens must carry.
    pub jwt_issuer: String,
    /// `JWT_AUDIENCE` (default `ai-assistants-1c`): the `aud` tokens must carry.
    pub jwt_audience: String,
    /// `INTERNAL_AUTH_KEY_FILE`: the per-stack key of the gateway's identity
    /// proofs (see [`crate::identity`]).
    pub internal_auth_key: Option<InternalAuthKey>,
    /// `SHUTDOWN_TIMEOUT` seconds (default 10).
    pub shutdown_timeout: Duration,
    /// `REQUEST_TIMEOUT` seconds (default 30).
    pub request_timeout: Duration,
    /// `BODY_LIMIT_BYTES` (default 2 MiB).
    pub body_limit: usize,
    /// `DB_CONNECT_TIMEOUT` seconds: how long to retry the first DB/Redis
    /// connection (default 60).
    pub connect_timeout: Duration,
}

impl Config {
    /// Load from the process environment.
    pub fn from_env(default_service_name: &str, default_port: u16) -> Result<Self, ConfigError> {
        Self::from_source(&Env::process(), default_service_name, default_port)
    }

    /// Load from any [`Env`].
    pub fn from_source(
        env: &Env,
        default_service_name: &str,
        default_port: u16,
    ) -> Result<Self, ConfigError> {
        let service_name = env
            .var("SERVICE_NAME")
            .unwrap_or_else(|| default_service_name.to_string());
        let port = env.parse_or("PORT", default_port)?;
        let internal_auth_key = match env.secret("INTERNAL_AUTH_KEY")? {
            Some(s) => Some(
                InternalAuthKey::new(&s).map_err(|reason| ConfigError::Invalid {
                    name: "INTERNAL_AUTH_KEY_FILE".into(),
                    reason,
                })?,
            ),
            None => None,
        };
        Ok(Config {
            redis_key_prefix: env
                .var("REDIS_KEY_PREFIX")
                .unwrap_or_else(|| format!("{service_name}:")),
            service_name,
            port,
            database_url: database_url(env)?,
            redis_url: redis_url(env)?,
            jwks_url: env.var("JWKS_URL"),
            jwt_issuer: env
                .var("JWT_ISSUER")
                .unwrap_or_else(|| DEFAULT_JWT_ISSUER.into()),
            jwt_audience: env
                .var("JWT_AUDIENCE")
                .unwrap_or_else(|| DEFAULT_JWT_AUDIENCE.into()),
            internal_auth_key,
            shutdown_timeout: env.duration_secs_or("SHUTDOWN_TIMEOUT", Duration::from_secs(10))?,
            request_timeout: env.duration_secs_or("REQUEST_TIMEOUT", Duration::from_secs(30))?,
            body_limit: env.parse_or("BODY_LIMIT_BYTES", 2 * 1024 * 1024)?,
            connect_timeout: env.duration_secs_or("DB_CONNECT_TIMEOUT", Duration::from_secs(60))?,
        })
    }

    /// A verifier for `JWKS_URL` requiring `JWT_ISSUER` and `JWT_AUDIENCE`
    /// (`None` without `JWKS_URL`). Call `spawn_refresh` on it.
    pub fn verifier(&self) -> Option<crate::Verifier> {
        self.jwks_url.as_ref().map(|u| {
            crate::Verifier::from_url(u.clone())
                .with_issuer(self.jwt_issuer.clone())
                .with_audience(self.jwt_audience.clone())
        })
    }

    /// The database URL, or a clear error when the service needs one.
    pub fn require_database_url(&self) -> Result<&str, ConfigError> {
        self.database_url
            .as_ref()
            .map(|s| s.expose().as_str())
            .ok_or_else(|| {
                ConfigError::Missing("DATABASE_URL (or DATABASE_HOST and DATABASE_NAME)".into())
            })
    }
}

/// `DATABASE_URL`, else composed from the five `DATABASE_*` parts.
pub fn database_url(env: &Env) -> Result<Option<Secret<String>>, ConfigError> {
    if let Some(url) = env.secret("DATABASE_URL")? {
        return Ok(Some(url));
    }
    let Some(host) = env.var("DATABASE_HOST") else {
        return Ok(None);
    };
    let port: u16 = env.parse_or("DATABASE_PORT", 5432)?;
    let name = env
        .var("DATABASE_NAME")
        .ok_or_else(|| ConfigError::Missing("DATABASE_NAME".into()))?;
    let user = env
        .var("DATABASE_USER")
        .unwrap_or_else(|| "postgres".into());
    let userinfo = match env.secret("DATABASE_PASSWORD")? {
        Some(pw) => format!("{}:{}", percent_encode(&user), percent_encode(pw.expose())),
        None => percent_encode(&user),
    };
    Ok(Some(Secret(format!(
        "postgres://{userinfo}@{host}:{port}/{}",
        percent_encode(&name)
    ))))
}

/// `REDIS_URL`, with `REDIS_USERNAME` (the service's ACL user; the
/// `default` user when unset) and the `REDIS_PASSWORD` secret inserted as
/// user-info when the URL carries none.
pub fn redis_url(env: &Env) -> Result<Option<Secret<String>>, ConfigError> {
    let Some(url) = env.var("REDIS_URL") else {
        return Ok(None);
    };
    let user = env.var("REDIS_USERNAME");
    let pw = env.secret("REDIS_PASSWORD")?;
    if user.is_none() && pw.is_none() {
        return Ok(Some(Secret(url)));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(ConfigError::Invalid {
            name: "REDIS_URL".into(),
            reason: "expected redis://host:port/db".into(),
        });
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    if rest[..authority_end].contains('@') {
        // The URL already carries credentials: keep them.
        return Ok(Some(Secret(url)));
    }
    let userinfo = match (&user, &pw) {
        (Some(u), Some(p)) => format!("{}:{}", percent_encode(u), percent_encode(p.expose())),
        (None, Some(p)) => format!(":{}", percent_encode(p.expose())),
        (Some(u), None) => percent_encode(u),
        (None, None) => unreachable!("handled above"),
    };
    Ok(Some(Secret(format!("{scheme}://{userinfo}@{rest}"))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn secret_file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    #[test]
    fn secret_prefers_file_and_trims_newline() {
        let f = secret_file("s3cr3t\n");
        let env = Env::from_pairs([
            ("TOKEN", "plain"),
            ("TOKEN_FILE", f.path().to_str().unwrap()),
        ]);
        assert_eq!(env.secret("TOKEN").unwrap().unwrap().expose(), "s3cr3t");
        let env = Env::from_pairs([("TOKEN", "plain")]);
        assert_eq!(env.secret("TOKEN").unwrap().unwrap().expose(), "plain");
        let env = Env::from_pairs::<[(&str, &str); 0], _, _>([]);
        assert!(env.secret("TOKEN").unwrap().is_none());
    }

    #[test]
    fn secret_keeps_inner_newlines_and_fails_on_missing_file() {
        let f = secret_file("a\nb\r\n");
        let env = Env::from_pairs([("K_FILE", f.path().to_str().unwrap())]);
        assert_eq!(env.secret("K").unwrap().unwrap().expose(), "a\nb");
        let env = Env::from_pairs([("K_FILE", "/nonexistent/secret")]);
        let err = env.secret("K").unwrap_err().to_string();
        assert!(err.contains("K_FILE"), "{err}");
    }

    #[test]
    fn database_url_is_composed_and_encoded() {
        let f = secret_file("p@ss:w/rd\n");
        let env = Env::from_pairs([
            ("DATABASE_HOST", "postgres-user"),
            ("DATABASE_PORT", "5433"),
            ("DATABASE_NAME", "user_management_db"),
            ("DATABASE_USER", "user_management"),
            ("DATABASE_PASSWORD_FILE", f.path().to_str().unwrap()),
        ]);
        let cfg = Config::from_source(&env, "svc", 8000).unwrap();
        assert_eq!(
            cfg.database_url.unwrap().expose(),
            "postgres://user_management:p%40ss%3Aw%2Frd@postgres-user:5433/user_management_db"
        );
    }

    #[test]
    fn database_url_overrides_parts() {
        let env = Env::from_pairs([
            ("DATABASE_URL", "postgres://a:b@127.0.0.1/x"),
            ("DATABASE_HOST", "ignored"),
        ]);
        let cfg = Config::from_source(&env, "svc", 8000).unwrap();
        assert_eq!(
            cfg.database_url.unwrap().expose(),
            "postgres://a:b@127.0.0.1/x"
        );
        let env = Env::from_pairs([("DATABASE_HOST", "h")]);
        assert!(Config::from_source(&env, "svc", 1).is_err());
    }

    #[test]
    fn redis_password_is_inserted() {
        let f = secret_file("r p\n");
        let env = Env::from_pairs([
            ("REDIS_URL", "redis://redis:6379/0"),
            ("REDIS_PASSWORD_FILE", f.path().to_str().unwrap()),
        ]);
        assert_eq!(
            redis_url(&env).unwrap().unwrap().expose(),
            "redis://:r%20p@redis:6379/0"
        );
        let env = Env::from_pairs([("REDIS_URL", "redis://redis:6379/0")]);
        assert_eq!(
            redis_url(&env).unwrap().unwrap().expose(),
            "redis://redis:6379/0"
        );
    }

    #[test]
    fn redis_username_is_inserted() {
        let f = secret_file("s3:cr3t\n");
        let env = Env::from_pairs([
            ("REDIS_URL", "redis://redis:6379/0"),
            ("REDIS_USERNAME", "api-gateway"),
            ("REDIS_PASSWORD_FILE", f.path().to_str().unwrap()),
        ]);
        assert_eq!(
            redis_url(&env).unwrap().unwrap().expose(),
            "redis://api-gateway:s3%3Acr3t@redis:6379/0"
        );
        let env = Env::from_pairs([
            ("REDIS_URL", "redis://redis:6379/0"),
            ("REDIS_USERNAME", "security"),
        ]);
        assert_eq!(
            redis_url(&env).unwrap().unwrap().expose(),
            "redis://security@redis:6379/0"
        );
    }

    #[test]
    fn prefix_issuer_audience_and_internal_key() {
        let f = secret_file("00112233445566778899aabbccddeeff\n");
        let env = Env::from_pairs([
            ("SERVICE_NAME", "1c-integration"),
            ("INTERNAL_AUTH_KEY_FILE", f.path().to_str().unwrap()),
        ]);
        let cfg = Config::from_source(&env, "x", 1).unwrap();
        assert_eq!(cfg.redis_key_prefix, "1c-integration:");
        assert_eq!(cfg.jwt_issuer, "user-management");
        assert_eq!(cfg.jwt_audience, "ai-assistants-1c");
        assert!(cfg.internal_auth_key.is_some());
        assert!(!format!("{cfg:?}").contains("00112233"));
        let env = Env::from_pairs([
            ("REDIS_KEY_PREFIX", "gw:"),
            ("JWT_ISSUER", "um"),
            ("JWT_AUDIENCE", "stack-b"),
        ]);
        let cfg = Config::from_source(&env, "x", 1).unwrap();
        assert_eq!(
            (
                cfg.redis_key_prefix.as_str(),
                cfg.jwt_issuer.as_str(),
                cfg.jwt_audience.as_str()
            ),
            ("gw:", "um", "stack-b")
        );
        assert!(cfg.internal_auth_key.is_none());
        let short = secret_file("abc");
        let env = Env::from_pairs([("INTERNAL_AUTH_KEY_FILE", short.path().to_str().unwrap())]);
        let err = Config::from_source(&env, "x", 1).unwrap_err().to_string();
        assert!(err.contains("INTERNAL_AUTH_KEY_FILE"), "{err}");
    }

    #[test]
    fn defaults_and_debug_redacts() {
        let f = secret_file("hunter2");
        let env = Env::from_pairs([
            ("PORT", "8002"),
            ("SERVICE_NAME", "user-management"),
            ("SHUTDOWN_TIMEOUT", "2.5"),
            ("DATABASE_URL_FILE", f.path().to_str().unwrap()),
        ]);
        let cfg = Config::from_source(&env, "x", 1).unwrap();
        assert_eq!(cfg.port, 8002);
        assert_eq!(cfg.service_name, "user-management");
        assert_eq!(cfg.shutdown_timeout, Duration::from_millis(2500));
        assert_eq!(cfg.request_timeout, Duration::from_secs(30));
        assert_eq!(cfg.database_url.as_ref().unwrap().expose(), "hunter2");
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("[redacted]"));
        let bad = Env::from_pairs([("PORT", "http")]);
        assert!(Config::from_source(&bad, "x", 1).is_err());
    }

    #[test]
    fn service_url_naming() {
        let env = Env::from_pairs([
            ("SERVICE_URL_1C_INTEGRATION", "http://1c-integration:8001/"),
            ("SERVICE_URL_SECURITY", "http://security:8004"),
        ]);
        assert_eq!(
            env.service_url("1c-integration").unwrap(),
            "http://1c-integration:8001"
        );
        assert_eq!(env.service_url("security").unwrap(), "http://security:8004");
        assert!(env.service_url("analytics").is_none());
    }
}
