//! user-management settings (on top of [`kit::Config`]).

use std::time::Duration;

use kit::config::{ConfigError, Env, Secret};

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Cost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Cost {
    /// OWASP's recommendation for argon2id: m=19 MiB, t=2, p=1.
    fn default() -> Self {
        Argon2Cost {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    /// `JWT_ISSUER` (default `user-management`): the `iss` claim.
    pub issuer: String,
    /// `JWT_AUDIENCE` (default `ai-assistants-1c`): the `aud` claim.
    pub audience: String,
    /// `ACCESS_TOKEN_TTL` seconds (default 900).
    pub access_ttl: Duration,
    /// `REFRESH_TOKEN_TTL` seconds (default 30 days).
    pub refresh_ttl: Duration,
    /// `LOCKOUT_THRESHOLD` failed logins (default 5).
    pub lockout_threshold: i32,
    /// `LOCKOUT_MINUTES` (default 15; fractions allowed).
    pub lockout_duration: Duration,
    /// `ALLOW_REGISTRATION` (default true): open self-registration.
    pub allow_registration: bool,
    /// `ADMIN_EMAIL` (default `admin@localhost`).
    pub admin_email: String,
    /// `ADMIN_PASSWORD` secret (`ADMIN_PASSWORD_FILE`).
    pub admin_password: Option<Secret<String>>,
    /// `JWT_SIGNING_KEY_SECRET` secret: encrypts private signing keys at rest.
    pub key_encryption_secret: Option<Secret<String>>,
    /// `SERVICE_URL_SECURITY`: where logout reports revoked access tokens.
    pub security_url: Option<String>,
    /// `ARGON2_MEMORY_KIB`, `ARGON2_ITERATIONS`, `ARGON2_PARALLELISM`.
    pub argon2: Argon2Cost,
    /// `ARGON2_MAX_CONCURRENT`: hashes running at once (default: twice the
    /// CPUs, at most a quarter of the memory limit's worth, 1..=16).
    pub argon2_max_concurrent: usize,
    /// `ARGON2_QUEUE_TIMEOUT` seconds (default 2): how long a login waits
    /// for a hashing slot before 503 + `Retry-After`.
    pub argon2_queue_wait: Duration,
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Env::process())
    }

    pub fn from_source(env: &Env) -> Result<Self, ConfigError> {
        let d = Argon2Cost::default();
        let lockout_minutes: f64 = env.parse_or("LOCKOUT_MINUTES", 15.0)?;
        if !(lockout_minutes.is_finite() && lockout_minutes >= 0.0) {
            return Err(ConfigError::Invalid {
                name: "LOCKOUT_MINUTES".into(),
                reason: "expected a non-negative number".into(),
            });
        }
        let allow: String = env.parse_or("ALLOW_REGISTRATION", "true".to_string())?;
        let allow_registration = match allow.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => {
                return Err(ConfigError::Invalid {
                    name: "ALLOW_REGISTRATION".into(),
                    reason: "expected true or false".into(),
                })
            }
        };
        let argon2 = Argon2Cost {
            memory_kib: env.parse_or("ARGON2_MEMORY_KIB", d.memory_kib)?,
            iterations: env.parse_or("ARGON2_ITERATIONS", d.iterations)?,
            parallelism: env.parse_or("ARGON2_PARALLELISM", d.parallelism)?,
        };
        let argon2_max_concurrent = env.parse_or(
            "ARGON2_MAX_CONCURRENT",
            crate::password::default_permits(argon2),
        )?;
        if argon2_max_concurrent == 0 {
            return Err(ConfigError::Invalid {
                name: "ARGON2_MAX_CONCURRENT".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(Settings {
            issuer: env
                .var("JWT_ISSUER")
                .unwrap_or_else(|| kit::config::DEFAULT_JWT_ISSUER.into()),
            audience: env
                .var("JWT_AUDIENCE")
                .unwrap_or_else(|| kit::config::DEFAULT_JWT_AUDIENCE.into()),
            access_ttl: env.duration_secs_or("ACCESS_TOKEN_TTL", Duration::from_secs(900))?,
            refresh_ttl: env
                .duration_secs_or("REFRESH_TOKEN_TTL", Duration::from_secs(30 * 24 * 3600))?,
            lockout_threshold: env.parse_or("LOCKOUT_THRESHOLD", 5)?,
            lockout_duration: Duration::from_secs_f64(lockout_minutes * 60.0),
            allow_registration,
            admin_email: env
                .var("ADMIN_EMAIL")
                .unwrap_or_else(|| "admin@localhost".into()),
            admin_password: env.secret("ADMIN_PASSWORD")?,
            key_encryption_secret: env.secret("JWT_SIGNING_KEY_SECRET")?,
            security_url: env.service_url("security"),
            argon2,
            argon2_max_concurrent,
            argon2_queue_wait: env
                .duration_secs_or("ARGON2_QUEUE_TIMEOUT", Duration::from_secs(2))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = Settings::from_source(&Env::from_pairs::<[(&str, &str); 0], _, _>([])).unwrap();
        assert_eq!(s.access_ttl, Duration::from_secs(900));
        assert_eq!(s.lockout_threshold, 5);
        assert_eq!(s.lockout_duration, Duration::from_secs(900));
        assert!(s.allow_registration);
        assert_eq!(s.admin_email, "admin@localhost");
        assert!(s.admin_password.is_none());
        assert_eq!(s.argon2, Argon2Cost::default());
    }

    #[test]
    fn overrides_and_redaction() {
        let dir = std::env::temp_dir().join(format!("um-settings-{}", uuid::Uuid::new_v4()));
        std::fs::write(&dir, "Very-Secret-Pw1\n").unwrap();
        let s = Settings::from_source(&Env::from_pairs([
            ("ADMIN_PASSWORD_FILE", dir.to_str().unwrap()),
            ("ADMIN_EMAIL", "root@example.org"),
            ("ALLOW_REGISTRATION", "false"),
            ("LOCKOUT_MINUTES", "0.5"),
            ("SERVICE_URL_SECURITY", "http://security:8004/"),
        ]))
        .unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(
            s.admin_password.as_ref().unwrap().expose(),
            "Very-Secret-Pw1"
        );
        assert!(!format!("{s:?}").contains("Very-Secret-Pw1"));
        assert!(!s.allow_registration);
        assert_eq!(s.lockout_duration, Duration::from_secs(30));
        assert_eq!(s.security_url.as_deref(), Some("http://security:8004"));
        assert!(
            Settings::from_source(&Env::from_pairs([("ALLOW_REGISTRATION", "maybe")])).is_err()
        );
    }
}
