//! The stack's secrets on disk (`.stackctl/secrets`, mode 0600, owned by
//! the user each container runs as): made once by `setup`, never logged,
//! read when a container's files are staged; the Redis ACL derived from them.

use crate::error::{Error, Result};
use crate::model::{SecretKind, Stack};
use crate::ui::Ui;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub fn secrets_dir(stack: &Stack) -> std::path::PathBuf {
    stack.root.join("secrets")
}

fn random_password(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut r = rand::thread_rng();
    (0..len)
        .map(|_| ALPHABET[r.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Write a secret file atomically (0600 until `set_owners`): a new one never
/// replaces one that exists (a second `setup` racing this one keeps whichever
/// file landed first); with `replace`, a derived one takes the old one's place.
fn write_secret(path: &Path, bytes: &[u8], replace: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("secret"),
        std::process::id()
    ));
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)))
        .map_err(err)?;
    if replace {
        return std::fs::rename(&tmp, path).map_err(err);
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Create every missing secret; never overwrite one. Returns the names created.
pub fn ensure_secrets(stack: &Stack, ui: &Ui) -> Result<Vec<String>> {
    let dir = secrets_dir(stack);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Write {
        path: dir.clone(),
        source,
    })?;
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    let mut created = Vec::new();
    // Plain values first; the ACL and certificate derive from others.
    let mut order: Vec<&crate::model::Secret> = stack.secrets.iter().collect();
    order.sort_by_key(|s| matches!(s.generate, SecretKind::RedisAcl | SecretKind::TlsCert));
    for s in order {
        let path = dir.join(&s.name);
        if path.exists() {
            continue;
        }
        let bytes: Vec<u8> = match s.generate {
            SecretKind::Password => random_password(32).into_bytes(),
            SecretKind::HexKey => {
                use rand::RngCore;
                let mut k = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut k);
                hex::encode(k).into_bytes()
            }
            SecretKind::TlsKey => rcgen::KeyPair::generate()
                .map_err(|e| Error::Other(anyhow::anyhow!("generate TLS key: {e}")))?
                .serialize_pem()
                .into_bytes(),
            SecretKind::TlsCert => {
                let key_name = s.from.clone().unwrap_or_else(|| format!("{}-key", s.name));
                let key_path = dir.join(&key_name);
                let pem = std::fs::read_to_string(&key_path).map_err(|source| Error::Read {
                    path: key_path.clone(),
                    source,
                })?;
                let key = rcgen::KeyPair::from_pem(&pem)
                    .map_err(|e| Error::Other(anyhow::anyhow!("TLS key {key_name}: {e}")))?;
                let host = stack
                    .nginx
                    .as_ref()
                    .map(|n| n.server_name.clone())
                    .unwrap_or_else(|| "localhost".into());
                let mut names = vec![host.clone()];
                if host != "localhost" {
                    names.push("localhost".into());
                }
                let params = rcgen::CertificateParams::new(names)
                    .map_err(|e| Error::Other(anyhow::anyhow!("certificate for {host}: {e}")))?;
                params
                    .self_signed(&key)
                    .map_err(|e| Error::Other(anyhow::anyhow!("self-sign certificate: {e}")))?
                    .pem()
                    .into_bytes()
            }
            // Derived from stack.toml and the passwords: rewritten below
            // whenever either changed.
            SecretKind::RedisAcl => continue,
            SecretKind::File => {
                ui.warn(format!(
                    "secret `{}` must be provided by you: put it in {}",
                    s.name,
                    path.display()
                ));
                continue;
            }
        };
        write_secret(&path, &bytes, false)?;
        created.push(s.name.clone());
    }
    created.extend(refresh_redis_acl(stack)?);
    set_owners(stack, &dir)?;
    Ok(created)
}

/// The Redis ACL file: the administrator (`default`, with the password its
/// secret's `from` names: health check, backups) and one user per
/// service or component that uses Redis, each with its own password and the access
/// stack.toml gives it. Passwords appear only as SHA-256 hashes.
pub fn redis_acl(stack: &Stack, dir: &Path, from: &str) -> Result<String> {
    let hash = |secret: &str| -> Result<String> {
        use sha2::{Digest, Sha256};
        let pw = crate::engine::create::read_secret(dir, secret)?;
        Ok(hex::encode(Sha256::digest(
            String::from_utf8_lossy(&pw).trim().as_bytes(),
        )))
    };
    let mut acl = format!("user default on #{} ~* &* +@all\n", hash(from)?);
    let services = stack.services.iter().filter_map(|s| s.redis.as_ref());
    for a in services.chain(stack.components.iter().filter_map(|c| c.redis.as_ref())) {
        acl.push_str(&format!(
            "user {} on #{} {}\n",
            a.user,
            hash(&a.password_secret)?,
            a.rules()
        ));
    }
    Ok(acl)
}

/// A digest of what each secret holds, for the containers' config hash: the
/// file, or for a Redis ACL what [`refresh_redis_acl`] writes before the
/// containers are staged (so a hash made earlier, or by `status`, which
/// writes nothing, already sees it). Secrets not there yet are left out.
pub fn secret_digests(stack: &Stack) -> std::collections::HashMap<String, Vec<u8>> {
    use sha2::{Digest, Sha256};
    let dir = secrets_dir(stack);
    stack
        .secrets
        .iter()
        .filter_map(|s| {
            let bytes = match s.generate {
                SecretKind::RedisAcl => {
                    redis_acl(stack, &dir, s.from.as_deref().unwrap_or_default())
                        .ok()?
                        .into_bytes()
                }
                _ => std::fs::read(dir.join(&s.name)).ok()?,
            };
            Some((s.name.clone(), Sha256::digest(&bytes).to_vec()))
        })
        .collect()
}

/// Write every Redis ACL secret again when stack.toml or a password changed
/// since (`setup`, and staging for `start`, `deploy` and Swarm, call this).
/// Returns the names written. An ACL whose passwords are missing is left to
/// `setup` (the containers' secret check says so).
pub fn refresh_redis_acl(stack: &Stack) -> Result<Vec<String>> {
    let dir = secrets_dir(stack);
    let mut written = Vec::new();
    for s in stack
        .secrets
        .iter()
        .filter(|s| s.generate == SecretKind::RedisAcl)
    {
        let acl = redis_acl(stack, &dir, s.from.as_deref().unwrap_or_default())?;
        let path = dir.join(&s.name);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(acl.as_str()) {
            continue;
        }
        write_secret(&path, acl.as_bytes(), true)?;
        written.push(s.name.clone());
    }
    if !written.is_empty() {
        set_owners(stack, &dir)?;
    }
    Ok(written)
}

/// Who may read each secret file when it is bind-mounted as is (docker-compose
/// does that): a secret an app reads belongs to the app's uid, group root,
/// mode 0640, so both the service (uid 1001) and root-started entrypoints
/// without capabilities (Redis, PostgreSQL) can read it; any other stays
/// root's, 0600. stackctl's own containers get private 0444 copies instead.
pub fn set_owners(stack: &Stack, dir: &Path) -> Result<()> {
    let containers = crate::model::containers(stack);
    for s in &stack.secrets {
        let path = dir.join(&s.name);
        if !path.exists() {
            continue;
        }
        let uid = containers
            .iter()
            .filter(|c| c.secrets.contains(&s.name))
            .filter_map(|c| c.user.as_deref())
            .filter_map(|u| u.split(':').next().and_then(|x| x.parse::<u32>().ok()))
            .find(|uid| *uid != 0);
        let (owner, mode) = match uid {
            Some(u) => (u, 0o640),
            None => (0, 0o600),
        };
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|e| Error::Other(e.into()))?;
        // SAFETY: a valid NUL-terminated path; chown has no other preconditions.
        if unsafe { libc::chown(c.as_ptr(), owner, 0) } != 0 {
            return Err(Error::Write {
                path: path.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(
            |source| Error::Write {
                path: path.clone(),
                source,
            },
        )?;
    }
    Ok(())
}
