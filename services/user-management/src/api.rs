//! HTTP handlers.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use kit::extract::{Json as JsonBody, Query};
use kit::http::RequestId;
use kit::{ApiError, AuthUser, Claims};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Row;
use uuid::Uuid;

use crate::store::{self, User};
use crate::{password, AppState};

type ApiResult<T> = Result<T, ApiError>;

pub fn routes(state: AppState) -> Router {
    let verifier = state.keys.verifier();
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/auth/password", post(change_password))
        .route("/me", get(me))
        .route("/me/sessions", get(my_sessions))
        .route(
            "/me/sessions/{id}",
            axum::routing::delete(revoke_my_session),
        )
        .route(
            "/users/{id}/sessions",
            axum::routing::delete(revoke_user_sessions),
        )
        .route("/roles", get(roles))
        .route("/users", get(list_users).post(create_user))
        .route(
            "/users/{id}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route("/users/{id}/roles", put(set_user_roles))
        .route("/keys/rotate", post(rotate_keys))
        .route("/.well-known/jwks.json", get(jwks))
        .layer(Extension(verifier))
        .with_state(state)
}

// ---- helpers ------------------------------------------------------------

fn normalize_email(raw: &str) -> ApiResult<String> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((l, d)) if !l.is_empty() && !d.is_empty() && !d.contains('@'));
    if valid {
        Ok(email)
    } else {
        Err(ApiError::validation("email is not a valid e-mail address"))
    }
}

fn check_display_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.chars().count() > 200 || name.chars().any(|c| c.is_control()) {
        return Err(ApiError::validation(
            "display_name must be at most 200 printable characters",
        ));
    }
    Ok(name.to_string())
}

fn check_roles(state: &AppState, roles: &[String]) -> ApiResult<Vec<String>> {
    let mut out = BTreeSet::new();
    for r in roles {
        if !state.perms.contains_key(r) {
            return Err(ApiError::validation(format!(
                "unknown role {r:?} (known: {})",
                state.perms.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        out.insert(r.clone());
    }
    Ok(out.into_iter().collect())
}

fn new_refresh_token() -> (String, Vec<u8>) {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = format!("rt_{}", URL_SAFE_NO_PAD.encode(raw));
    let hash = refresh_hash(&token);
    (token, hash)
}

fn refresh_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn err(status: StatusCode, code: &str, msg: &str) -> ApiError {
    ApiError::new(status, code, msg)
}

fn invalid_credentials() -> ApiError {
    err(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "invalid e-mail or password",
    )
}

fn revocation_unavailable(e: redis::RedisError) -> ApiError {
    tracing::error!(error = %e, "cannot publish a revocation");
    ApiError::unavailable("the revocation list is unavailable; retry").with_retry_after(1)
}

/// Every access token of these sessions is refused by the gateway and
/// security from now on (no-op without Redis).
async fn publish_sessions(state: &AppState, sids: &[Uuid]) -> ApiResult<()> {
    let Some(r) = &state.revocations else {
        return Ok(());
    };
    let sids: Vec<String> = sids.iter().map(Uuid::to_string).collect();
    r.revoke_sessions(&sids, state.settings.access_ttl)
        .await
        .map_err(revocation_unavailable)
}

/// Every access token of `user` issued until now is refused by the gateway
/// and security from now on (no-op without Redis).
async fn publish_user(state: &AppState, user: Uuid) -> ApiResult<()> {
    let Some(r) = &state.revocations else {
        return Ok(());
    };
    r.revoke_user(&user.to_string(), state.settings.access_ttl)
        .await
        .map(|_| ())
        .map_err(revocation_unavailable)
}

/// A new session (family) with its first refresh token, plus an access
/// token; the login/refresh response body.
async fn issue_tokens(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    user: &User,
    family: Uuid,
) -> ApiResult<Value> {
    let (refresh, hash) = new_refresh_token();
    store::insert_refresh_token(
        conn,
        family,
        &hash,
        state.settings.refresh_ttl.as_secs_f64(),
    )
    .await?;
    let access = access_token(state, user, family)?;
    Ok(json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": state.settings.access_ttl.as_secs(),
        "refresh_token": refresh,
        "refresh_expires_in": state.settings.refresh_ttl.as_secs(),
        "user": user,
    }))
}

fn access_token(state: &AppState, user: &User, family: Uuid) -> ApiResult<String> {
    let now_ms = kit::revocation::now_ms();
    let now = now_ms / 1000;
    let claims = Claims {
        sub: user.id.to_string(),
        roles: user.roles.clone(),
        exp: now + state.settings.access_ttl.as_secs() as i64,
        iat: now,
        jti: Uuid::new_v4().to_string(),
        iss: state.settings.issuer.clone(),
        aud: Some(state.settings.audience.clone()),
        iat_ms: Some(now_ms),
        email: Some(user.email.clone()),
        sid: Some(family.to_string()),
    };
    Ok(state.keys.sign(&claims)?)
}

/// The authenticated caller, checked against the database: the user is
/// active, its session (refresh family) is not revoked, and its roles are
/// the current ones (not those frozen in the token).
struct Principal {
    id: Uuid,
    sid: Uuid,
    roles: Vec<String>,
    claims: Claims,
}

async fn principal(state: &AppState, user: AuthUser) -> ApiResult<Principal> {
    let claims = user.0;
    let bad = || {
        err(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "token subject or session is malformed",
        )
    };
    let id: Uuid = claims.sub.parse().map_err(|_| bad())?;
    let sid: Uuid = claims
        .sid
        .as_deref()
        .ok_or_else(bad)?
        .parse()
        .map_err(|_| bad())?;
    match store::session_state(&state.pool, id, sid).await? {
        None => Err(err(
            StatusCode::UNAUTHORIZED,
            "session_revoked",
            "session no longer exists",
        )),
        Some((false, _, _)) => Err(err(
            StatusCode::UNAUTHORIZED,
            "account_disabled",
            "account is disabled",
        )),
        Some((_, false, _)) => Err(err(
            StatusCode::UNAUTHORIZED,
            "session_revoked",
            "session has been revoked",
        )),
        Some((true, true, roles)) => Ok(Principal {
            id,
            sid,
            roles,
            claims,
        }),
    }
}

impl Principal {
    fn permissions(&self, state: &AppState) -> BTreeSet<String> {
        self.roles
            .iter()
            .filter_map(|r| state.perms.get(r))
            .flatten()
            .cloned()
            .collect()
    }

    fn require(&self, state: &AppState, perm: &str) -> ApiResult<()> {
        if self.permissions(state).contains(perm) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "requires the permission {perm}"
            )))
        }
    }
}

// ---- auth ---------------------------------------------------------------

#[derive(Deserialize)]
struct RegisterBody {
    email: String,
    password: String,
    #[serde(default)]
    display_name: String,
}

async fn register(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RegisterBody>,
) -> ApiResult<(StatusCode, Json<User>)> {
    if !state.settings.allow_registration {
        return Err(err(
            StatusCode::FORBIDDEN,
            "registration_disabled",
            "self-registration is disabled; ask an administrator",
        ));
    }
    let user = create(
        &state,
        &body.email,
        &body.password,
        &body.display_name,
        &["viewer".to_string()],
    )
    .await?;
    tracing::info!(user_id = %user.id, "user registered");
    Ok((StatusCode::CREATED, Json(user)))
}

async fn create(
    state: &AppState,
    email: &str,
    password: &str,
    display_name: &str,
    roles: &[String],
) -> ApiResult<User> {
    let email = normalize_email(email)?;
    let display_name = check_display_name(display_name)?;
    password::check_length(password)?;
    password::check_policy(password, &email)?;
    let roles = check_roles(state, roles)?;
    let hash = state
        .hasher
        .hash(password.to_string(), state.settings.argon2)
        .await?;
    let mut tx = state.pool.begin().await?;
    let id = store::insert_user(&mut tx, &email, &display_name, &hash, &roles)
        .await?
        .ok_or_else(|| {
            err(
                StatusCode::CONFLICT,
                "email_taken",
                "a user with this e-mail already exists",
            )
        })?;
    let user = store::get_user(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::internal("user vanished"))?;
    tx.commit().await?;
    Ok(user)
}

#[derive(Deserialize)]
struct LoginBody {
    email: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<LoginBody>,
) -> ApiResult<Response> {
    // Over 1024 bytes: 400 before any hashing (Argon2 cost grows with it).
    password::check_length(&body.password)?;
    let email = body.email.trim().to_lowercase();
    let Some(cred) = store::credentials_by_email(&state.pool, &email).await? else {
        // Same work as for a real account: no user enumeration by timing.
        state
            .hasher
            .verify(body.password, state.dummy_hash.to_string())
            .await?;
        state.metrics.login("invalid_credentials");
        return Err(invalid_credentials());
    };
    // A locked account answers exactly like a wrong password (status, body,
    // no Retry-After), after the same work: nothing tells it exists.
    if cred.locked_until.is_some_and(|until| until > Utc::now()) {
        state
            .hasher
            .verify(body.password, cred.password_hash)
            .await?;
        state.metrics.login("locked");
        return Err(invalid_credentials());
    }
    if !state
        .hasher
        .verify(body.password, cred.password_hash)
        .await?
    {
        let lock = store::record_failed_login(
            &state.pool,
            cred.id,
            state.settings.lockout_threshold,
            state.settings.lockout_duration.as_secs_f64(),
        )
        .await?;
        if let Some(until) = lock {
            tracing::warn!(user_id = %cred.id, %until, "account locked after failed logins");
            state.metrics.login("locked");
            return Err(invalid_credentials());
        }
        state.metrics.login("invalid_credentials");
        return Err(invalid_credentials());
    }
    if !cred.is_active {
        state.metrics.login("disabled");
        return Err(err(
            StatusCode::FORBIDDEN,
            "account_disabled",
            "account is disabled",
        ));
    }
    store::record_successful_login(&state.pool, cred.id).await?;
    let mut tx = state.pool.begin().await?;
    let user = store::get_user(&mut tx, cred.id)
        .await?
        .ok_or_else(|| ApiError::internal("user vanished"))?;
    let family = store::create_family(&mut tx, user.id).await?;
    let body = issue_tokens(&state, &mut tx, &user, family).await?;
    tx.commit().await?;
    tracing::info!(user_id = %user.id, session = %family, "login");
    state.metrics.login("success");
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshBody>,
) -> ApiResult<Json<Value>> {
    let hash = refresh_hash(body.refresh_token.trim());
    let mut tx = state.pool.begin().await?;
    let row = sqlx::query(
        "SELECT t.id, t.family_id, f.user_id, t.used_at IS NOT NULL AS used,
                t.expires_at <= now() AS expired, f.revoked_at IS NOT NULL AS revoked, u.is_active
           FROM refresh_tokens t
           JOIN token_families f ON f.id = t.family_id
           JOIN users u ON u.id = f.user_id
          WHERE t.token_hash = $1
            FOR UPDATE OF t, f",
    )
    .bind(&hash)
    .fetch_optional(&mut *tx)
    .await?;
    let unauthorized = |code: &str, msg: &str| err(StatusCode::UNAUTHORIZED, code, msg);
    let Some(row) = row else {
        return Err(unauthorized(
            "invalid_refresh_token",
            "refresh token is not valid",
        ));
    };
    let token_id: Uuid = row.get("id");
    let family: Uuid = row.get("family_id");
    let user_id: Uuid = row.get("user_id");
    if row.get::<bool, _>("revoked") {
        return Err(unauthorized(
            "refresh_token_revoked",
            "session has been revoked",
        ));
    }
    if row.get::<bool, _>("used") {
        // A rotated token came back: it was stolen or replayed. Kill the
        // whole family so neither the thief nor the victim keeps a session.
        sqlx::query(
            "UPDATE token_families SET revoked_at = now(), revoked_reason = 'refresh_token_reuse' WHERE id = $1",
        )
        .bind(family)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // The session's access tokens too, at the gateway and security.
        if let Err(e) = publish_sessions(&state, &[family]).await {
            tracing::error!(session = %family, error = %e, "reused session not published");
        }
        state.metrics.refresh_reuse.inc();
        tracing::warn!(user_id = %user_id, session = %family, "refresh token reuse detected; session revoked");
        return Err(unauthorized(
            "refresh_token_reused",
            "refresh token was already used; the session has been revoked",
        ));
    }
    if row.get::<bool, _>("expired") {
        return Err(unauthorized(
            "refresh_token_expired",
            "refresh token has expired",
        ));
    }
    if !row.get::<bool, _>("is_active") {
        return Err(unauthorized("account_disabled", "account is disabled"));
    }
    sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE id = $1")
        .bind(token_id)
        .execute(&mut *tx)
        .await?;
    let user = store::get_user(&mut tx, user_id)
        .await?
        .ok_or_else(|| ApiError::internal("user vanished"))?;
    let body = issue_tokens(&state, &mut tx, &user, family).await?;
    tx.commit().await?;
    Ok(Json(body))
}

#[derive(Deserialize, Default)]
struct LogoutBody {
    #[serde(default)]
    refresh_token: Option<String>,
}

/// Revoke the session of the bearer token and/or of the given refresh
/// token; report the access token's `jti` to security (best effort).
async fn logout(
    State(state): State<AppState>,
    request_id: Option<Extension<RequestId>>,
    headers: HeaderMap,
    raw: Bytes,
) -> ApiResult<Json<Value>> {
    let body: LogoutBody = if raw.iter().all(|b| b.is_ascii_whitespace()) {
        LogoutBody::default()
    } else {
        serde_json::from_slice(&raw)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let mut families = BTreeSet::new();
    let mut access: Option<(String, Claims)> = None;
    if let Some(token) = bearer {
        match state.keys.verifier().verify(&token).await {
            Ok(claims) => {
                if let Some(sid) = claims.sid.as_deref().and_then(|s| s.parse::<Uuid>().ok()) {
                    families.insert(sid);
                }
                access = Some((token, claims));
            }
            // An expired access token must not prevent logging out with
            // the refresh token.
            Err(_) if body.refresh_token.is_some() => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(rt) = body.refresh_token {
        let fam: Option<Uuid> =
            sqlx::query_scalar("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
                .bind(refresh_hash(rt.trim()))
                .fetch_optional(&state.pool)
                .await?;
        match fam {
            Some(f) => {
                families.insert(f);
            }
            None if access.is_none() => {
                return Err(err(
                    StatusCode::UNAUTHORIZED,
                    "invalid_refresh_token",
                    "refresh token is not valid",
                ))
            }
            None => {}
        }
    }
    if families.is_empty() && access.is_none() {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "send a bearer access token or a refresh_token to log out",
        ));
    }
    let mut revoked = 0;
    for f in &families {
        if store::revoke_family(&state.pool, *f, "logout").await? {
            revoked += 1;
        }
    }
    // Published for every named session (also already revoked ones), so a
    // retried logout repairs a failed publication.
    publish_sessions(&state, &families.iter().copied().collect::<Vec<_>>()).await?;
    let reported = match &access {
        Some((token, claims)) => {
            crate::report_revocation(&state, token, claims, request_id.map(|e| e.0)).await
        }
        None => None,
    };
    Ok(Json(json!({
        "revoked_sessions": revoked,
        "access_token_reported": reported,
    })))
}

#[derive(Deserialize)]
struct PasswordBody {
    current_password: String,
    new_password: String,
}

async fn change_password(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBody(body): JsonBody<PasswordBody>,
) -> ApiResult<Json<Value>> {
    let me = principal(&state, user).await?;
    password::check_length(&body.current_password)?;
    password::check_length(&body.new_password)?;
    let email = me.claims.email.clone().unwrap_or_default();
    let stored = store::password_hash(&state.pool, me.id)
        .await?
        .ok_or_else(|| {
            err(
                StatusCode::UNAUTHORIZED,
                "session_revoked",
                "user no longer exists",
            )
        })?;
    if !state.hasher.verify(body.current_password, stored).await? {
        return Err(err(
            StatusCode::FORBIDDEN,
            "invalid_credentials",
            "current password is wrong",
        ));
    }
    password::check_policy(&body.new_password, &email)?;
    let hash = state
        .hasher
        .hash(body.new_password, state.settings.argon2)
        .await?;
    let mut tx = state.pool.begin().await?;
    sqlx::query(
        "UPDATE users SET password_hash = $2, password_changed_at = now(), updated_at = now(),
                failed_logins = 0, locked_until = NULL WHERE id = $1",
    )
    .bind(me.id)
    .bind(hash)
    .execute(&mut *tx)
    .await?;
    let others =
        store::revoke_user_families(&mut tx, me.id, Some(me.sid), "password_change").await?;
    // Published before the commit: when Redis is down nothing changes.
    publish_sessions(&state, &others).await?;
    tx.commit().await?;
    let revoked = others.len();
    tracing::info!(user_id = %me.id, revoked, "password changed");
    Ok(Json(
        json!({"password_changed": true, "revoked_sessions": revoked}),
    ))
}

// ---- self ---------------------------------------------------------------

async fn me(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<Value>> {
    let me = principal(&state, user).await?;
    let mut conn = state.pool.acquire().await?;
    let user = store::get_user(&mut conn, me.id)
        .await?
        .ok_or_else(|| ApiError::not_found("user not found"))?;
    let mut v = serde_json::to_value(&user).map_err(ApiError::internal)?;
    v["permissions"] = json!(me.permissions(&state));
    v["session_id"] = json!(me.sid);
    Ok(Json(v))
}

/// The caller's live sessions (refresh-token families).
async fn my_sessions(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<Value>> {
    let me = principal(&state, user).await?;
    let rows = sqlx::query(
        "SELECT f.id, f.created_at, max(t.created_at) AS last_refreshed_at
           FROM token_families f LEFT JOIN refresh_tokens t ON t.family_id = f.id
          WHERE f.user_id = $1 AND f.revoked_at IS NULL
          GROUP BY f.id ORDER BY f.created_at DESC",
    )
    .bind(me.id)
    .fetch_all(&state.pool)
    .await?;
    let sessions: Vec<Value> = rows
        .iter()
        .map(|r| {
            let id: Uuid = r.get("id");
            json!({
                "id": id,
                "created_at": r.get::<DateTime<Utc>, _>("created_at"),
                "last_refreshed_at": r.get::<Option<DateTime<Utc>>, _>("last_refreshed_at"),
                "current": id == me.sid,
            })
        })
        .collect();
    Ok(Json(json!({ "sessions": sessions })))
}

/// Revoke one of the caller's own sessions.
async fn revoke_my_session(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let me = principal(&state, user).await?;
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::not_found("session not found"))?;
    let res = sqlx::query(
        "UPDATE token_families SET revoked_at = now(), revoked_reason = 'revoked_by_user'
          WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(me.id)
    .execute(&state.pool)
    .await?;
    if res.rows_affected() == 0 {
        return Err(ApiError::not_found("session not found"));
    }
    publish_sessions(&state, &[id]).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Admin: end every session of a user (force logout).
async fn revoke_user_sessions(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let me = principal(&state, user).await?;
    me.require(&state, "users:write")?;
    let id = parse_id(&id)?;
    let mut conn = state.pool.acquire().await?;
    if store::get_user(&mut conn, id).await?.is_none() {
        return Err(ApiError::not_found("user not found"));
    }
    publish_user(&state, id).await?;
    let n = store::revoke_user_families(&mut conn, id, None, "revoked_by_admin")
        .await?
        .len();
    tracing::info!(user_id = %id, by = %me.id, revoked = n, "sessions revoked by admin");
    Ok(Json(json!({ "revoked_sessions": n })))
}

async fn roles(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<Value>> {
    principal(&state, user).await?;
    let roles: Vec<Value> = state
        .perms
        .iter()
        .map(|(r, p)| json!({"name": r, "permissions": p}))
        .collect();
    Ok(Json(json!({"roles": roles})))
}

// ---- admin: users -------------------------------------------------------

#[derive(Deserialize)]
struct PageQuery {
    page: Option<i64>,
    per_page: Option<i64>,
    q: Option<String>,
}

async fn list_users(
    State(state): State<AppState>,
    user: AuthUser,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    principal(&state, user)
        .await?
        .require(&state, "users:read")?;
    let page = q.page.unwrap_or(1);
    let per_page = q.per_page.unwrap_or(20);
    if !(1..=1_000_000).contains(&page) {
        return Err(ApiError::validation("page must be between 1 and 1000000"));
    }
    if !(1..=100).contains(&per_page) {
        return Err(ApiError::validation("per_page must be between 1 and 100"));
    }
    let search = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let (items, total) =
        store::list_users(&state.pool, per_page, (page - 1) * per_page, search).await?;
    Ok(Json(json!({
        "items": items,
        "page": page,
        "per_page": per_page,
        "total": total,
        "total_pages": (total + per_page - 1) / per_page,
    })))
}

#[derive(Deserialize)]
struct CreateUserBody {
    email: String,
    password: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    roles: Option<Vec<String>>,
}

async fn create_user(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBody(body): JsonBody<CreateUserBody>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let me = principal(&state, user).await?;
    me.require(&state, "users:write")?;
    let roles = body.roles.unwrap_or_else(|| vec!["viewer".into()]);
    if roles.iter().any(|r| r != "viewer") {
        me.require(&state, "roles:assign")?;
    }
    let created = create(
        &state,
        &body.email,
        &body.password,
        &body.display_name,
        &roles,
    )
    .await?;
    tracing::info!(user_id = %created.id, by = %me.id, "user created by admin");
    Ok((StatusCode::CREATED, Json(created)))
}

fn parse_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("no user {raw:?}")))
}

async fn get_user(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<User>> {
    let me = principal(&state, user).await?;
    let id = parse_id(&id)?;
    if id != me.id {
        me.require(&state, "users:read")?;
    }
    let mut conn = state.pool.acquire().await?;
    store::get_user(&mut conn, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("user not found"))
}

#[derive(Deserialize)]
struct UpdateUserBody {
    email: Option<String>,
    display_name: Option<String>,
    is_active: Option<bool>,
    roles: Option<Vec<String>>,
    password: Option<String>,
    /// `true` clears a lockout.
    #[serde(default)]
    unlock: bool,
}

async fn update_user(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateUserBody>,
) -> ApiResult<Json<User>> {
    let me = principal(&state, user).await?;
    me.require(&state, "users:write")?;
    let id = parse_id(&id)?;
    apply_update(&state, &me, id, body).await.map(Json)
}

async fn apply_update(
    state: &AppState,
    me: &Principal,
    id: Uuid,
    body: UpdateUserBody,
) -> ApiResult<User> {
    let roles = match &body.roles {
        Some(r) => {
            me.require(state, "roles:assign")?;
            Some(check_roles(state, r)?)
        }
        None => None,
    };
    let email = body.email.as_deref().map(normalize_email).transpose()?;
    let display_name = body
        .display_name
        .as_deref()
        .map(check_display_name)
        .transpose()?;
    let hash = match &body.password {
        Some(pw) => {
            let target_email = match &email {
                Some(e) => e.clone(),
                None => {
                    let mut c = state.pool.acquire().await?;
                    store::get_user(&mut c, id)
                        .await?
                        .map(|u| u.email)
                        .unwrap_or_default()
                }
            };
            password::check_length(pw)?;
            password::check_policy(pw, &target_email)?;
            Some(state.hasher.hash(pw.clone(), state.settings.argon2).await?)
        }
        None => None,
    };

    let mut tx = state.pool.begin().await?;
    store::lock_admins(&mut tx).await?;
    let current = store::get_user(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("user not found"))?;
    let is_admin_now = current.is_active && current.roles.iter().any(|r| r == "admin");
    let admin_after = body.is_active.unwrap_or(current.is_active)
        && roles
            .as_ref()
            .unwrap_or(&current.roles)
            .iter()
            .any(|r| r == "admin");
    if is_admin_now && !admin_after && store::other_active_admins(&mut tx, id).await? == 0 {
        return Err(ApiError::conflict(
            "this is the last active admin; make another admin first",
        ));
    }
    if let Some(email) = &email {
        let taken: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM users WHERE lower(email) = $1 AND id <> $2)",
        )
        .bind(email)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if taken {
            return Err(err(
                StatusCode::CONFLICT,
                "email_taken",
                "a user with this e-mail already exists",
            ));
        }
    }
    sqlx::query(
        "UPDATE users SET
            email = COALESCE($2, email),
            display_name = COALESCE($3, display_name),
            is_active = COALESCE($4, is_active),
            password_hash = COALESCE($5, password_hash),
            password_changed_at = CASE WHEN $5 IS NULL THEN password_changed_at ELSE now() END,
            failed_logins = CASE WHEN $6 THEN 0 ELSE failed_logins END,
            locked_until = CASE WHEN $6 THEN NULL ELSE locked_until END,
            updated_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(&email)
    .bind(&display_name)
    .bind(body.is_active)
    .bind(&hash)
    .bind(body.unlock)
    .execute(&mut *tx)
    .await?;
    if let Some(roles) = &roles {
        store::set_roles(&mut tx, id, roles).await?;
    }
    // A disabled account or a password reset ends every session.
    if body.is_active == Some(false) || hash.is_some() {
        let reason = if hash.is_some() {
            "password_reset"
        } else {
            "disabled"
        };
        store::revoke_user_families(&mut tx, id, None, reason).await?;
    }
    // Disabled, new password or other roles: the access tokens already
    // issued (with the old roles) are refused by the gateway and security
    // at once; after a role change the user's refresh gets the new roles.
    let roles_changed = roles.as_ref().is_some_and(|r| *r != current.roles);
    if body.is_active == Some(false) || hash.is_some() || roles_changed {
        publish_user(state, id).await?;
    }
    let updated = store::get_user(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::internal("user vanished"))?;
    tx.commit().await?;
    tracing::info!(user_id = %id, by = %me.id, "user updated");
    Ok(updated)
}

#[derive(Deserialize)]
struct RolesBody {
    roles: Vec<String>,
}

async fn set_user_roles(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RolesBody>,
) -> ApiResult<Json<User>> {
    let me = principal(&state, user).await?;
    me.require(&state, "roles:assign")?;
    let id = parse_id(&id)?;
    let update = UpdateUserBody {
        email: None,
        display_name: None,
        is_active: None,
        roles: Some(body.roles),
        password: None,
        unlock: false,
    };
    apply_update(&state, &me, id, update).await.map(Json)
}

async fn delete_user(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let me = principal(&state, user).await?;
    me.require(&state, "users:delete")?;
    let id = parse_id(&id)?;
    let mut tx = state.pool.begin().await?;
    store::lock_admins(&mut tx).await?;
    let current = store::get_user(&mut tx, id)
        .await?
        .ok_or_else(|| ApiError::not_found("user not found"))?;
    if current.is_active
        && current.roles.iter().any(|r| r == "admin")
        && store::other_active_admins(&mut tx, id).await? == 0
    {
        return Err(ApiError::conflict(
            "this is the last active admin; make another admin first",
        ));
    }
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    publish_user(&state, id).await?;
    tx.commit().await?;
    tracing::info!(user_id = %id, by = %me.id, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---- keys ---------------------------------------------------------------

async fn rotate_keys(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<Value>> {
    let me = principal(&state, user).await?;
    me.require(&state, "keys:rotate")?;
    let previous = state.keys.active_kid();
    let kid = state.keys.rotate(&state.pool).await?;
    tracing::info!(%kid, %previous, by = %me.id, "signing key rotated by admin");
    let published: Vec<Value> = state.keys.jwks()["keys"]
        .as_array()
        .map(|ks| ks.iter().map(|k| k["kid"].clone()).collect())
        .unwrap_or_default();
    Ok(Json(
        json!({"kid": kid, "previous_kid": previous, "published_kids": published}),
    ))
}

async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        Json(state.keys.jwks()),
    )
}
