//! PostgreSQL access: the audit chain, API keys and encrypted credentials.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::audit::{
    canonical_json, truncate_micros, ChainBreak, ChainVerifier, EntryContent, StoredEntry,
    GENESIS_HASH,
};
use crate::crypto::{generate_api_key, hash_api_key};

/// Advisory lock serialising appends, so `seq` stays contiguous.
const AUDIT_LOCK_KEY: i64 = 0x5ec_a0d1;

/// What a caller appends.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub category: String,
    pub actor: String,
    pub action: String,
    pub resource: String,
    pub ip: Option<String>,
    pub detail: Value,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    pub ts: DateTime<Utc>,
    pub category: String,
    pub actor: String,
    pub action: String,
    pub resource: String,
    pub ip: Option<String>,
    pub detail: Value,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        let detail_text: String = row.try_get("detail")?;
        let detail = serde_json::from_str(&detail_text)
            .unwrap_or_else(|_| Value::String(detail_text.clone()));
        Ok(Self {
            id: row.try_get("seq")?,
            ts: row.try_get("ts")?,
            category: row.try_get("category")?,
            actor: row.try_get("actor")?,
            action: row.try_get("action")?,
            resource: row.try_get("resource")?,
            ip: row.try_get("ip")?,
            detail,
            prev_hash: row.try_get("prev_hash")?,
            hash: row.try_get("hash")?,
        })
    }

    fn stored(&self) -> StoredEntry {
        StoredEntry {
            content: EntryContent {
                seq: self.id,
                ts: self.ts,
                category: self.category.clone(),
                actor: self.actor.clone(),
                action: self.action.clone(),
                resource: self.resource.clone(),
                ip: self.ip.clone(),
                detail: self.detail.clone(),
            },
            prev_hash: self.prev_hash.clone(),
            hash: self.hash.clone(),
        }
    }
}

const AUDIT_COLUMNS: &str =
    "seq, ts, category, actor, action, resource, ip, detail, prev_hash, hash";

/// Appends one entry to the chain (serialised by an advisory lock).
pub async fn audit_append(pool: &PgPool, e: NewEntry) -> Result<AuditRecord, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(AUDIT_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT last_seq, last_hash FROM audit_head WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await?;
    let (seq, prev_hash) = match head {
        Some((s, h)) => (s + 1, h),
        None => (1, GENESIS_HASH.to_string()),
    };
    // Hash exactly what is stored and read back: canonical detail text.
    let detail_text = canonical_json(&e.detail);
    let detail: Value = serde_json::from_str(&detail_text).unwrap_or(Value::Null);
    let content = EntryContent {
        seq,
        ts: truncate_micros(Utc::now()),
        category: e.category,
        actor: e.actor,
        action: e.action,
        resource: e.resource,
        ip: e.ip,
        detail,
    };
    let hash = content.hash(&prev_hash);
    sqlx::query(
        "INSERT INTO audit_log (seq, ts, category, actor, action, resource, ip, detail, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(seq)
    .bind(content.ts)
    .bind(&content.category)
    .bind(&content.actor)
    .bind(&content.action)
    .bind(&content.resource)
    .bind(&content.ip)
    .bind(&detail_text)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO audit_head (id, last_seq, last_hash) VALUES (1, $1, $2) \
         ON CONFLICT (id) DO UPDATE SET last_seq = EXCLUDED.last_seq, last_hash = EXCLUDED.last_hash",
    )
    .bind(seq)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(AuditRecord {
        id: seq,
        ts: content.ts,
        category: content.category,
        actor: content.actor,
        action: content.action,
        resource: content.resource,
        ip: content.ip,
        detail: content.detail,
        prev_hash,
        hash,
    })
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub category: Option<String>,
    pub action: Option<String>,
    pub actor: Option<String>,
}

/// One page of entries, newest first, plus the total matching.
pub async fn audit_list(
    pool: &PgPool,
    filter: &AuditFilter,
    page: i64,
    per_page: i64,
) -> Result<(Vec<AuditRecord>, i64), sqlx::Error> {
    let cond = "($1::text IS NULL OR category = $1) AND ($2::text IS NULL OR action = $2) \
                AND ($3::text IS NULL OR actor = $3)";
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM audit_log WHERE {cond}"))
        .bind(&filter.category)
        .bind(&filter.action)
        .bind(&filter.actor)
        .fetch_one(pool)
        .await?;
    let rows = sqlx::query(&format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {cond} ORDER BY seq DESC LIMIT $4 OFFSET $5"
    ))
    .bind(&filter.category)
    .bind(&filter.action)
    .bind(&filter.actor)
    .bind(per_page)
    .bind((page - 1) * per_page)
    .fetch_all(pool)
    .await?;
    let entries = rows
        .iter()
        .map(AuditRecord::from_row)
        .collect::<Result<_, _>>()?;
    Ok((entries, total))
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VerifyReport {
    pub ok: bool,
    pub entries_checked: u64,
    pub head_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub broken: Option<ChainBreak>,
}

/// Walks the whole chain in one consistent snapshot, 1000 rows at a time.
pub async fn audit_verify(pool: &PgPool) -> Result<VerifyReport, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT last_seq, last_hash FROM audit_head WHERE id = 1")
            .fetch_optional(&mut *tx)
            .await?;
    let mut verifier = ChainVerifier::new();
    let mut after = 0i64;
    let mut broken = None;
    'walk: loop {
        let rows = sqlx::query(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT 1000"
        ))
        .bind(after)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let rec = AuditRecord::from_row(row)?;
            after = rec.id;
            if let Err(b) = verifier.push(&rec.stored()) {
                broken = Some(b);
                break 'walk;
            }
        }
    }
    if broken.is_none() {
        broken = verifier
            .finish(head.as_ref().map(|(s, h)| (*s, h.as_str())))
            .err();
    }
    tx.commit().await?;
    Ok(VerifyReport {
        ok: broken.is_none(),
        entries_checked: verifier.checked(),
        head_seq: head.map(|(s, _)| s),
        broken,
    })
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    pub name: String,
    pub owner: String,
    pub roles: Vec<String>,
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

const KEY_COLUMNS: &str =
    "id, name, owner, roles, key_prefix, created_at, revoked_at, last_used_at";

fn key_from_row(row: &sqlx::postgres::PgRow) -> Result<ApiKeyRecord, sqlx::Error> {
    Ok(ApiKeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        roles: row.try_get("roles")?,
        key_prefix: row.try_get("key_prefix")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

/// Issues a key; the plaintext key is returned here and never again.
pub async fn api_key_create(
    pool: &PgPool,
    name: &str,
    owner: &str,
    roles: &[String],
) -> Result<(ApiKeyRecord, String), sqlx::Error> {
    let key = generate_api_key();
    let row = sqlx::query(&format!(
        "INSERT INTO api_keys (id, name, owner, roles, key_hash, key_prefix) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {KEY_COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(owner)
    .bind(roles)
    .bind(hash_api_key(&key))
    .bind(&key[..10])
    .fetch_one(pool)
    .await?;
    Ok((key_from_row(&row)?, key))
}

pub async fn api_key_list(pool: &PgPool) -> Result<Vec<ApiKeyRecord>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at DESC, id"
    ))
    .fetch_all(pool)
    .await?;
    rows.iter().map(key_from_row).collect()
}

/// Revokes a key (idempotent); `None` when no such key exists.
pub async fn api_key_revoke(pool: &PgPool, id: Uuid) -> Result<Option<ApiKeyRecord>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 \
         RETURNING {KEY_COLUMNS}"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(key_from_row).transpose()
}

/// Looks a presented key up by its hash; only unrevoked keys match.
pub async fn api_key_verify(pool: &PgPool, key: &str) -> Result<Option<ApiKeyRecord>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "UPDATE api_keys SET last_used_at = now() WHERE key_hash = $1 AND revoked_at IS NULL \
         RETURNING {KEY_COLUMNS}"
    ))
    .bind(hash_api_key(key))
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(key_from_row).transpose()
}

/// Stores (or replaces) an encrypted credential.
pub async fn credential_put(
    pool: &PgPool,
    owner: &str,
    name: &str,
    nonce: &[u8],
    ciphertext: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO credentials (owner, name, nonce, ciphertext) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (owner, name) DO UPDATE SET nonce = EXCLUDED.nonce, \
         ciphertext = EXCLUDED.ciphertext, updated_at = now()",
    )
    .bind(owner)
    .bind(name)
    .bind(nonce)
    .bind(ciphertext)
    .execute(pool)
    .await?;
    Ok(())
}

/// `(nonce, ciphertext)` of a stored credential.
pub async fn credential_get(
    pool: &PgPool,
    owner: &str,
    name: &str,
) -> Result<Option<(Vec<u8>, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as("SELECT nonce, ciphertext FROM credentials WHERE owner = $1 AND name = $2")
        .bind(owner)
        .bind(name)
        .fetch_optional(pool)
        .await
}

pub async fn credential_delete(
    pool: &PgPool,
    owner: &str,
    name: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM credentials WHERE owner = $1 AND name = $2")
        .bind(owner)
        .bind(name)
        .execute(pool)
        .await?;
    Ok(r.rows_affected() > 0)
}
