//! Argon2id password hashing (PHC strings) and the password policy.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use kit::ApiError;

use crate::settings::Argon2Cost;

fn hasher(cost: Argon2Cost) -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
        .map_err(|e| anyhow::anyhow!("invalid argon2 parameters: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hash on the blocking pool (argon2 is deliberately slow).
pub async fn hash(password: String, cost: Argon2Cost) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        hasher(cost)?
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
    })
    .await?
}

/// Verify against a stored PHC string (its own parameters are used).
pub async fn verify(password: String, phc: String) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let parsed =
            PasswordHash::new(&phc).map_err(|e| anyhow::anyhow!("stored hash invalid: {e}"))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await?
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

    #[test]
    fn policy() {
        assert!(check_policy("short1", "a@b.c").is_err());
        assert!(check_policy("onlyletterspassword", "a@b.c").is_err());
        assert!(check_policy("1234567890123", "a@b.c").is_err());
        assert!(check_policy("a-good-passphrase", "a@b.c").is_ok());
        assert!(check_policy("Me@example.org", "me@example.org").is_err());
    }
}
