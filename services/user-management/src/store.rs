//! Database access (runtime-checked sqlx queries).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

/// A user as returned by the API (never the password hash).
#[derive(Clone, Debug, Serialize)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub roles: Vec<String>,
    pub is_active: bool,
    pub locked_until: Option<DateTime<Utc>>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const USER_SELECT: &str = "SELECT u.id, u.email, u.display_name, u.is_active, u.locked_until,
        u.last_login_at, u.created_at, u.updated_at,
        COALESCE(array_agg(r.role ORDER BY r.role) FILTER (WHERE r.role IS NOT NULL), '{}') AS roles
   FROM users u LEFT JOIN user_roles r ON r.user_id = u.id";

fn user_from_row(row: &sqlx::postgres::PgRow) -> User {
    User {
        id: row.get("id"),
        email: row.get("email"),
        display_name: row.get("display_name"),
        roles: row.get("roles"),
        is_active: row.get("is_active"),
        locked_until: row.get("locked_until"),
        last_login_at: row.get("last_login_at"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

pub async fn get_user(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<User>> {
    let row = sqlx::query(&format!("{USER_SELECT} WHERE u.id = $1 GROUP BY u.id"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(user_from_row))
}

/// One page of users ordered by creation, and the total count.
pub async fn list_users(
    pool: &PgPool,
    limit: i64,
    offset: i64,
    search: Option<&str>,
) -> sqlx::Result<(Vec<User>, i64)> {
    let pattern = search.map(|s| {
        format!(
            "%{}%",
            s.to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        )
    });
    let rows = sqlx::query(&format!(
        "{USER_SELECT} WHERE ($3::text IS NULL OR lower(u.email) LIKE $3 OR lower(u.display_name) LIKE $3)
          GROUP BY u.id ORDER BY u.created_at, u.id LIMIT $1 OFFSET $2"
    ))
    .bind(limit)
    .bind(offset)
    .bind(&pattern)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users u
          WHERE ($1::text IS NULL OR lower(u.email) LIKE $1 OR lower(u.display_name) LIKE $1)",
    )
    .bind(&pattern)
    .fetch_one(pool)
    .await?;
    Ok((rows.iter().map(user_from_row).collect(), total))
}

/// What login needs about a user.
pub struct Credentials {
    pub id: Uuid,
    pub password_hash: String,
    pub is_active: bool,
    pub locked_until: Option<DateTime<Utc>>,
}

pub async fn credentials_by_email(pool: &PgPool, email: &str) -> sqlx::Result<Option<Credentials>> {
    let row = sqlx::query(
        "SELECT id, password_hash, is_active, locked_until FROM users WHERE lower(email) = lower($1)",
    )
    .bind(email)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| Credentials {
        id: r.get("id"),
        password_hash: r.get("password_hash"),
        is_active: r.get("is_active"),
        locked_until: r.get("locked_until"),
    }))
}

pub async fn password_hash(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Insert a user with roles. `Ok(None)` when the e-mail is taken.
pub async fn insert_user(
    conn: &mut PgConnection,
    email: &str,
    display_name: &str,
    password_hash: &str,
    roles: &[String],
) -> sqlx::Result<Option<Uuid>> {
    let id = Uuid::new_v4();
    let res = sqlx::query(
        "INSERT INTO users (id, email, display_name, password_hash) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(email)
    .bind(display_name)
    .bind(password_hash)
    .execute(&mut *conn)
    .await?;
    if res.rows_affected() == 0 {
        return Ok(None);
    }
    set_roles(conn, id, roles).await?;
    Ok(Some(id))
}

pub async fn set_roles(conn: &mut PgConnection, id: Uuid, roles: &[String]) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM user_roles WHERE user_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO user_roles (user_id, role) SELECT $1, unnest($2::text[])")
        .bind(id)
        .bind(roles)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Active admins other than `except`.
pub async fn other_active_admins(conn: &mut PgConnection, except: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM users u JOIN user_roles r ON r.user_id = u.id AND r.role = 'admin'
          WHERE u.is_active AND u.id <> $1",
    )
    .bind(except)
    .fetch_one(conn)
    .await
}

/// Serialise admin-set changes (last-admin protection).
pub async fn lock_admins(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('user_management.admins'))")
        .execute(conn)
        .await?;
    Ok(())
}

/// Record a failed login; returns `locked_until` when this attempt locked
/// the account.
pub async fn record_failed_login(
    pool: &PgPool,
    id: Uuid,
    threshold: i32,
    lock_secs: f64,
) -> sqlx::Result<Option<DateTime<Utc>>> {
    let row = sqlx::query(
        "UPDATE users SET
            failed_logins = CASE WHEN failed_logins + 1 >= $2 THEN 0 ELSE failed_logins + 1 END,
            locked_until  = CASE WHEN failed_logins + 1 >= $2
                                 THEN now() + make_interval(secs => $3) ELSE locked_until END
          WHERE id = $1
      RETURNING (locked_until IS NOT NULL AND locked_until > now()) AS locked, locked_until",
    )
    .bind(id)
    .bind(threshold.max(1))
    .bind(lock_secs)
    .fetch_one(pool)
    .await?;
    Ok(if row.get::<bool, _>("locked") {
        row.get("locked_until")
    } else {
        None
    })
}

pub async fn record_successful_login(pool: &PgPool, id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE users SET failed_logins = 0, locked_until = NULL, last_login_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

// ---- sessions (refresh-token families) ---------------------------------

pub async fn create_family(conn: &mut PgConnection, user: Uuid) -> sqlx::Result<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO token_families (id, user_id) VALUES ($1, $2)")
        .bind(id)
        .bind(user)
        .execute(conn)
        .await?;
    Ok(id)
}

pub async fn insert_refresh_token(
    conn: &mut PgConnection,
    family: Uuid,
    hash: &[u8],
    ttl_secs: f64,
) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar(
        "INSERT INTO refresh_tokens (id, family_id, token_hash, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4)) RETURNING expires_at",
    )
    .bind(Uuid::new_v4())
    .bind(family)
    .bind(hash)
    .bind(ttl_secs)
    .fetch_one(conn)
    .await
}

pub async fn revoke_family(pool: &PgPool, family: Uuid, reason: &str) -> sqlx::Result<bool> {
    let res = sqlx::query(
        "UPDATE token_families SET revoked_at = now(), revoked_reason = $2
          WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(family)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(res.rows_affected() > 0)
}

/// Revoke every session of `user` except `keep`; returns their ids.
pub async fn revoke_user_families(
    conn: &mut PgConnection,
    user: Uuid,
    keep: Option<Uuid>,
    reason: &str,
) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "UPDATE token_families SET revoked_at = now(), revoked_reason = $3
          WHERE user_id = $1 AND revoked_at IS NULL AND ($2::uuid IS NULL OR id <> $2)
      RETURNING id",
    )
    .bind(user)
    .bind(keep)
    .bind(reason)
    .fetch_all(conn)
    .await
}

/// The state of a session for an access token: `(user active, session
/// live, current roles)`; `None` when the user or session does not exist.
pub async fn session_state(
    pool: &PgPool,
    user: Uuid,
    family: Uuid,
) -> sqlx::Result<Option<(bool, bool, Vec<String>)>> {
    let row = sqlx::query(
        "SELECT u.is_active, f.revoked_at IS NULL AS live,
                COALESCE((SELECT array_agg(role ORDER BY role) FROM user_roles WHERE user_id = u.id), '{}') AS roles
           FROM users u JOIN token_families f ON f.user_id = u.id
          WHERE u.id = $1 AND f.id = $2",
    )
    .bind(user)
    .bind(family)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.get("is_active"), r.get("live"), r.get("roles"))))
}

/// role → permissions.
pub async fn role_permissions(
    pool: &PgPool,
) -> sqlx::Result<std::collections::BTreeMap<String, Vec<String>>> {
    let rows = sqlx::query(
        "SELECT r.name, COALESCE(array_agg(p.permission ORDER BY p.permission)
                FILTER (WHERE p.permission IS NOT NULL), '{}') AS perms
           FROM roles r LEFT JOIN role_permissions p ON p.role = r.name GROUP BY r.name",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get("name"), r.get("perms")))
        .collect())
}
