//! Ed25519 signing keys: stored in PostgreSQL (private half AES-256-GCM
//! encrypted when `JWT_SIGNING_KEY_SECRET` is set, never served), published
//! as a JWKS, rotated on demand. Retired keys stay published until every
//! token they signed has expired, so a rotation logs nobody out.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

/// How long after its retirement a key stays published: the access-token
/// TTL plus this margin (clock skew, in-flight requests).
const PUBLISH_MARGIN: Duration = Duration::from_secs(300);

struct Ring {
    kid: String,
    encoding: EncodingKey,
    jwks: Value,
}

/// The signing keys of this service. Cheap to clone.
#[derive(Clone)]
pub struct Keys {
    ring: Arc<RwLock<Arc<Ring>>>,
    cipher: Option<Arc<Aes256Gcm>>,
    verifier: kit::Verifier,
    publish_for: Duration,
}

/// RFC 7638 JWK thumbprint of an Ed25519 public key (used as `kid`).
pub fn thumbprint(public: &[u8]) -> String {
    let x = URL_SAFE_NO_PAD.encode(public);
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// The public JWK of a key.
pub fn jwk(kid: &str, public: &[u8]) -> Value {
    json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(public),
        "kid": kid,
        "use": "sig",
        "alg": "EdDSA",
    })
}

fn cipher_from_secret(secret: &str) -> Aes256Gcm {
    let key = Sha256::digest(secret.as_bytes());
    Aes256Gcm::new_from_slice(&key).expect("32-byte key")
}

impl Keys {
    /// Make sure an active key exists (generating one on first start), then
    /// load the ring. `secret` is `JWT_SIGNING_KEY_SECRET`; the verifier
    /// requires `issuer` and `audience` (`JWT_ISSUER`, `JWT_AUDIENCE`).
    pub async fn init(
        pool: &PgPool,
        secret: Option<&str>,
        access_ttl: Duration,
        issuer: &str,
        audience: &str,
    ) -> anyhow::Result<Keys> {
        let cipher = secret.map(|s| Arc::new(cipher_from_secret(s)));
        if cipher.is_none() {
            tracing::warn!(
                "JWT_SIGNING_KEY_SECRET is not set: signing keys are stored unencrypted in the database"
            );
        }
        let keys = Keys {
            ring: Arc::new(RwLock::new(Arc::new(Ring {
                kid: String::new(),
                encoding: EncodingKey::from_secret(b"unused"),
                jwks: json!({"keys": []}),
            }))),
            cipher,
            verifier: kit::Verifier::from_jwks(&JwkSet { keys: vec![] })
                .with_issuer(issuer)
                .with_audience(audience),
            publish_for: access_ttl + PUBLISH_MARGIN,
        };
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('user_management.signing_keys'))")
            .execute(&mut *tx)
            .await?;
        let active: Option<String> =
            sqlx::query_scalar("SELECT kid FROM signing_keys WHERE retired_at IS NULL")
                .fetch_optional(&mut *tx)
                .await?;
        if active.is_none() {
            let kid = keys.insert_new(&mut tx).await?;
            tracing::info!(%kid, "generated the first signing key");
        }
        if let Some(c) = &keys.cipher {
            // Encrypt keys stored before a secret was configured.
            let plain =
                sqlx::query("SELECT kid, private_key FROM signing_keys WHERE NOT encrypted")
                    .fetch_all(&mut *tx)
                    .await?;
            for row in plain {
                let kid: String = row.get("kid");
                let seed: Vec<u8> = row.get("private_key");
                let (ct, nonce) = encrypt(c, &kid, &seed)?;
                sqlx::query(
                    "UPDATE signing_keys SET private_key = $2, nonce = $3, encrypted = TRUE WHERE kid = $1",
                )
                .bind(&kid)
                .bind(ct)
                .bind(nonce)
                .execute(&mut *tx)
                .await?;
                tracing::info!(%kid, "encrypted a stored signing key");
            }
        }
        tx.commit().await?;
        keys.reload(pool).await?;
        Ok(keys)
    }

    async fn insert_new(&self, tx: &mut sqlx::PgConnection) -> anyhow::Result<String> {
        let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let public = signing.verifying_key().to_bytes();
        let kid = thumbprint(&public);
        let seed = signing.to_bytes();
        let (private, nonce, encrypted) = match &self.cipher {
            Some(c) => {
                let (ct, nonce) = encrypt(c, &kid, &seed)?;
                (ct, Some(nonce), true)
            }
            None => (seed.to_vec(), None, false),
        };
        sqlx::query(
            "INSERT INTO signing_keys (kid, public_key, private_key, nonce, encrypted) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&kid)
        .bind(public.to_vec())
        .bind(private)
        .bind(nonce)
        .bind(encrypted)
        .execute(&mut *tx)
        .await?;
        Ok(kid)
    }

    /// Re-read the keys from the database (after a rotation, possibly by
    /// another replica).
    pub async fn reload(&self, pool: &PgPool) -> anyhow::Result<()> {
        let rows = sqlx::query(
            "SELECT kid, public_key, private_key, nonce, encrypted, retired_at IS NULL AS active
               FROM signing_keys
              WHERE retired_at IS NULL OR retired_at > now() - make_interval(secs => $1)
              ORDER BY created_at DESC",
        )
        .bind(self.publish_for.as_secs_f64())
        .fetch_all(pool)
        .await?;
        let mut published = Vec::new();
        let mut active = None;
        for row in rows {
            let kid: String = row.get("kid");
            let public: Vec<u8> = row.get("public_key");
            published.push(jwk(&kid, &public));
            if row.get::<bool, _>("active") {
                let stored: Vec<u8> = row.get("private_key");
                let seed = if row.get::<bool, _>("encrypted") {
                    let c = self.cipher.as_ref().ok_or_else(|| {
                        anyhow!("signing keys are encrypted but JWT_SIGNING_KEY_SECRET is not set")
                    })?;
                    let nonce: Vec<u8> = row
                        .get::<Option<Vec<u8>>, _>("nonce")
                        .ok_or_else(|| anyhow!("encrypted key {kid} has no nonce"))?;
                    decrypt(c, &kid, &stored, &nonce)?
                } else {
                    stored
                };
                let seed: [u8; 32] = seed
                    .try_into()
                    .map_err(|_| anyhow!("signing key {kid} has a bad length"))?;
                let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
                if signing.verifying_key().to_bytes().as_slice() != public.as_slice() {
                    bail!("signing key {kid}: private and public halves do not match");
                }
                let der = signing
                    .to_pkcs8_der()
                    .map_err(|e| anyhow!("encoding key {kid}: {e}"))?;
                let encoding = EncodingKey::from_ed_der(der.as_bytes());
                active = Some((kid, encoding));
            }
        }
        let (kid, encoding) = active.ok_or_else(|| anyhow!("no active signing key"))?;
        let jwks = json!({ "keys": published });
        let set: JwkSet = serde_json::from_value(jwks.clone()).context("building JWKS")?;
        self.verifier.set_jwks(&set);
        *self.ring.write().expect("ring lock") = Arc::new(Ring {
            kid,
            encoding,
            jwks,
        });
        Ok(())
    }

    /// Retire the active key and make a new one active. Returns the new kid.
    pub async fn rotate(&self, pool: &PgPool) -> anyhow::Result<String> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('user_management.signing_keys'))")
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE signing_keys SET retired_at = now() WHERE retired_at IS NULL")
            .execute(&mut *tx)
            .await?;
        let kid = self.insert_new(&mut tx).await?;
        // Keys nobody can hold a valid token for any more.
        sqlx::query(
            "DELETE FROM signing_keys WHERE retired_at < now() - make_interval(secs => $1)",
        )
        .bind(self.publish_for.as_secs_f64() + 86400.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.reload(pool).await?;
        tracing::info!(%kid, "signing key rotated");
        Ok(kid)
    }

    /// Sign `claims` with the active key (`kid` in the header).
    pub fn sign<T: serde::Serialize>(&self, claims: &T) -> anyhow::Result<String> {
        let ring = self.ring.read().expect("ring lock").clone();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(ring.kid.clone());
        jsonwebtoken::encode(&header, claims, &ring.encoding).context("signing token")
    }

    /// The active kid.
    pub fn active_kid(&self) -> String {
        self.ring.read().expect("ring lock").kid.clone()
    }

    /// `{"keys": [...]}` with every published key.
    pub fn jwks(&self) -> Value {
        self.ring.read().expect("ring lock").jwks.clone()
    }

    /// A verifier over the published keys (updated on reload/rotation).
    pub fn verifier(&self) -> kit::Verifier {
        self.verifier.clone()
    }
}

fn encrypt(c: &Aes256Gcm, kid: &str, plain: &[u8]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = c
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: kid.as_bytes(),
            },
        )
        .map_err(|_| anyhow!("encrypting signing key"))?;
    Ok((ct, nonce.to_vec()))
}

fn decrypt(c: &Aes256Gcm, kid: &str, ct: &[u8], nonce: &[u8]) -> anyhow::Result<Vec<u8>> {
    if nonce.len() != 12 {
        bail!("signing key {kid}: bad nonce");
    }
    c.decrypt(
        Nonce::from_slice(nonce),
        Payload {
            msg: ct,
            aad: kid.as_bytes(),
        },
    )
    .map_err(|_| anyhow!("cannot decrypt signing key {kid}: wrong JWT_SIGNING_KEY_SECRET?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc8037_example() {
        // RFC 8037 appendix A.3: the thumbprint of the A.2 public key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(
            thumbprint(&x),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn encryption_roundtrip_is_bound_to_kid() {
        let c = cipher_from_secret("s3cret");
        let (ct, nonce) = encrypt(&c, "k1", b"seed-bytes").unwrap();
        assert_ne!(ct, b"seed-bytes");
        assert_eq!(decrypt(&c, "k1", &ct, &nonce).unwrap(), b"seed-bytes");
        assert!(decrypt(&c, "k2", &ct, &nonce).is_err());
        assert!(decrypt(&cipher_from_secret("other"), "k1", &ct, &nonce).is_err());
    }
}
