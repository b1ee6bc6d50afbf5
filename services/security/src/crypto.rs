//! Credential encryption (AES-256-GCM, random 96-bit nonce per secret) and
//! API key generation/hashing.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("encryption key must be 32 bytes (raw), 64 hex characters or base64 of 32 bytes; got {0} bytes that are none of these")]
    BadKey(usize),
    #[error("decryption failed: wrong key or tampered ciphertext")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
}

/// Parses the content of ENCRYPTION_KEY_FILE: exactly 32 raw bytes, or
/// (surrounding whitespace ignored) 64 hex digits, or base64 (standard or
/// URL-safe, padded or not) of 32 bytes.
pub fn parse_key(bytes: &[u8]) -> Result<[u8; 32], CryptoError> {
    if bytes.len() == 32 {
        let mut k = [0u8; 32];
        k.copy_from_slice(bytes);
        return Ok(k);
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| CryptoError::BadKey(bytes.len()))?
        .trim();
    let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).ok()
    } else {
        [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(text).ok())
    };
    match decoded {
        Some(v) if v.len() == 32 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(&v);
            Ok(k)
        }
        _ => Err(CryptoError::BadKey(bytes.len())),
    }
}

/// AES-256-GCM with the owner and name bound as associated data, so a
/// ciphertext copied to another row does not decrypt.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<key redacted>)")
    }
}

fn aad(owner: &str, name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(owner.len() + name.len() + 1);
    v.extend_from_slice(owner.as_bytes());
    v.push(0);
    v.extend_from_slice(name.as_bytes());
    v
}

impl SecretBox {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// Returns `(nonce, ciphertext_with_tag)`.
    pub fn seal(
        &self,
        owner: &str,
        name: &str,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad = aad(owner, name);
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Encrypt)?;
        Ok((nonce.to_vec(), ct))
    }

    pub fn open(
        &self,
        owner: &str,
        name: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if nonce.len() != 12 {
            return Err(CryptoError::Decrypt);
        }
        let aad = aad(owner, name);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// Prefix of every API key, so leaked keys are easy to recognise.
pub const API_KEY_PREFIX: &str = "sk_";

/// A new random API key: `sk_` + base64url of 32 random bytes.
pub fn generate_api_key() -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// The stored form of an API key: hex sha256 of the full key string.
pub fn hash_api_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Constant-time comparison of two byte strings (lengths are not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_formats_parse() {
        let raw: [u8; 32] = core::array::from_fn(|i| i as u8 * 7);
        assert_eq!(parse_key(&raw).unwrap(), raw);
        let hexed = format!("{}\n", hex::encode(raw));
        assert_eq!(parse_key(hexed.as_bytes()).unwrap(), raw);
        let b64 = format!("  {}\n", STANDARD.encode(raw));
        assert_eq!(parse_key(b64.as_bytes()).unwrap(), raw);
        let b64url = URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(parse_key(b64url.as_bytes()).unwrap(), raw);
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert!(parse_key(b"short").is_err());
        // 16 bytes of hex plus a newline is 33 bytes: not raw, and too short as hex.
        assert!(parse_key(format!("{}\n", hex::encode([1u8; 16])).as_bytes()).is_err());
        assert!(parse_key(STANDARD.encode([1u8; 31]).as_bytes()).is_err());
        assert!(parse_key(&[0u8; 33]).is_err());
    }

    #[test]
    fn seal_open_round_trip_with_random_nonces() {
        let b = SecretBox::new(&[9u8; 32]);
        let (n1, c1) = b.seal("svc", "db", b"hunter2").unwrap();
        let (n2, c2) = b.seal("svc", "db", b"hunter2").unwrap();
        assert_ne!(n1, n2);
        assert_ne!(c1, c2);
        assert_eq!(b.open("svc", "db", &n1, &c1).unwrap(), b"hunter2");
        assert_eq!(b.open("svc", "db", &n2, &c2).unwrap(), b"hunter2");
    }

    #[test]
    fn wrong_key_or_other_row_fails() {
        let b = SecretBox::new(&[9u8; 32]);
        let (n, c) = b.seal("svc", "db", b"hunter2").unwrap();
        let other = SecretBox::new(&[8u8; 32]);
        assert_eq!(other.open("svc", "db", &n, &c), Err(CryptoError::Decrypt));
        assert_eq!(b.open("svc", "db2", &n, &c), Err(CryptoError::Decrypt));
        let mut tampered = c.clone();
        tampered[0] ^= 1;
        assert_eq!(
            b.open("svc", "db", &n, &tampered),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn api_keys_are_random_and_hashed() {
        let a = generate_api_key();
        let b = generate_api_key();
        assert!(a.starts_with("sk_"));
        assert_eq!(a.len(), 3 + 43);
        assert_ne!(a, b);
        let h = hash_api_key(&a);
        assert_eq!(h.len(), 64);
        assert_eq!(h, hash_api_key(&a));
        assert_ne!(h, hash_api_key(&b));
        assert!(!h.contains(&a[3..]));
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
