//! HTTP handlers of the security service.

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use kit::{ApiError, AuthUser, Claims, Role};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::crypto::constant_time_eq;
use crate::store::{self, AuditFilter, NewEntry};
use crate::AppState;

/// Header carrying the shared service token (SERVICE_TOKEN_FILE).
pub const SERVICE_TOKEN_HEADER: &str = "x-service-token";

type ApiResult<T> = Result<T, ApiError>;

/// Who is calling: another service (shared token) or a user (JWT).
#[derive(Debug, Clone)]
pub enum Caller {
    Service,
    User(Claims),
}

impl Caller {
    fn name(&self) -> String {
        match self {
            Caller::Service => "service".into(),
            Caller::User(c) => c.sub.clone(),
        }
    }

    fn is_admin(&self) -> bool {
        match self {
            Caller::Service => true,
            Caller::User(c) => c.has_role(Role::Admin),
        }
    }

    /// Service callers and admins pass; anyone else gets 403.
    fn require_admin(&self) -> ApiResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "requires the admin role or the service token",
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        if let Some(presented) = parts.headers.get(SERVICE_TOKEN_HEADER) {
            let ok = state
                .service_token
                .as_ref()
                .is_some_and(|t| constant_time_eq(presented.as_bytes(), t.expose().as_bytes()));
            return if ok {
                Ok(Caller::Service)
            } else {
                Err(ApiError::unauthorized("invalid service token"))
            };
        }
        let user = AuthUser::from_request_parts(parts, state)
            .await
            .map_err(ApiError::from)?;
        Ok(Caller::User(user.0))
    }
}

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/audit", post(audit_append).get(audit_list))
        .route("/audit/verify", get(audit_verify))
        .route("/events", post(event_record).get(event_list))
        .route("/api-keys", post(api_key_create).get(api_key_list))
        .route("/api-keys/verify", post(api_key_verify))
        .route("/api-keys/{id}", delete(api_key_revoke))
        .route("/revocations", post(revoke))
        .route("/revocations/{jti}", get(revocation_status))
        .route("/credentials", post(credential_put))
        .route(
            "/credentials/{owner}/{name}",
            get(credential_get).delete(credential_delete),
        )
        .with_state(state)
}

fn required(field: &str, v: &str, max: usize) -> ApiResult<String> {
    let t = v.trim();
    if t.is_empty() {
        return Err(ApiError::validation(format!("{field} must not be empty")));
    }
    if t.len() > max {
        return Err(ApiError::validation(format!(
            "{field} must be at most {max} bytes"
        )));
    }
    Ok(t.to_string())
}

fn slug(field: &str, v: &str) -> ApiResult<String> {
    let t = required(field, v, 64)?;
    let ok = t.as_bytes()[0].is_ascii_lowercase()
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(ApiError::validation(format!(
            "{field} must match [a-z][a-z0-9_]* (got {t:?})"
        )));
    }
    Ok(t)
}

const MAX_DETAIL_BYTES: usize = 64 * 1024;

fn detail(v: Option<Value>) -> ApiResult<Value> {
    let v = v.unwrap_or_else(|| json!({}));
    if crate::audit::canonical_json(&v).len() > MAX_DETAIL_BYTES {
        return Err(ApiError::validation("detail is larger than 64 KiB"));
    }
    Ok(v)
}

async fn record(state: &AppState, e: NewEntry) {
    if let Err(err) = store::audit_append(&state.pool, e).await {
        tracing::error!(error = %err, "cannot append audit entry");
    }
}

// ---- audit -------------------------------------------------------------

#[derive(Deserialize)]
struct AppendAudit {
    actor: String,
    action: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    detail: Option<Value>,
}

async fn audit_append(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<AppendAudit>,
) -> ApiResult<(StatusCode, Json<store::AuditRecord>)> {
    caller.require_admin()?;
    let category = slug("category", body.category.as_deref().unwrap_or("audit"))?;
    let entry = NewEntry {
        category,
        actor: required("actor", &body.actor, 256)?,
        action: required("action", &body.action, 128)?,
        resource: body.resource.trim().chars().take(512).collect(),
        ip: body.ip.filter(|s| !s.trim().is_empty()),
        detail: detail(body.detail)?,
    };
    let rec = store::audit_append(&state.pool, entry).await?;
    Ok((StatusCode::CREATED, Json(rec)))
}

#[derive(Deserialize)]
struct ListQuery {
    page: Option<i64>,
    per_page: Option<i64>,
    category: Option<String>,
    action: Option<String>,
    actor: Option<String>,
    kind: Option<String>,
}

fn paging(q: &ListQuery) -> ApiResult<(i64, i64)> {
    let page = q.page.unwrap_or(1);
    let per_page = q.per_page.unwrap_or(50);
    if !(1..=1_000_000).contains(&page) {
        return Err(ApiError::validation("page must be within 1..=1000000"));
    }
    if !(1..=500).contains(&per_page) {
        return Err(ApiError::validation("per_page must be within 1..=500"));
    }
    Ok((page, per_page))
}

async fn list(state: &AppState, filter: AuditFilter, q: &ListQuery) -> ApiResult<Json<Value>> {
    let (page, per_page) = paging(q)?;
    let (entries, total) = store::audit_list(&state.pool, &filter, page, per_page).await?;
    Ok(Json(json!({
        "page": page,
        "per_page": per_page,
        "total": total,
        "entries": entries,
    })))
}

async fn audit_list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let filter = AuditFilter {
        category: q.category.clone(),
        action: q.action.clone(),
        actor: q.actor.clone(),
    };
    list(&state, filter, &q).await
}

async fn audit_verify(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<store::VerifyReport>> {
    caller.require_admin()?;
    let report = store::audit_verify(&state.pool).await?;
    if !report.ok {
        tracing::error!(?report, "audit chain verification failed");
    }
    Ok(Json(report))
}

// ---- security events ---------------------------------------------------

/// Category of security events in the audit chain.
pub const EVENT_CATEGORY: &str = "security_event";

#[derive(Deserialize)]
struct NewEvent {
    kind: String,
    subject: String,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    detail: Option<Value>,
}

async fn event_record(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<NewEvent>,
) -> ApiResult<(StatusCode, Json<store::AuditRecord>)> {
    caller.require_admin()?;
    let entry = NewEntry {
        category: EVENT_CATEGORY.into(),
        actor: required("subject", &body.subject, 256)?,
        action: slug("kind", &body.kind)?,
        resource: format!("reported_by:{}", caller.name()),
        ip: body.ip.filter(|s| !s.trim().is_empty()),
        detail: detail(body.detail)?,
    };
    let rec = store::audit_append(&state.pool, entry).await?;
    Ok((StatusCode::CREATED, Json(rec)))
}

async fn event_list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let filter = AuditFilter {
        category: Some(EVENT_CATEGORY.into()),
        action: q.kind.clone(),
        actor: q.actor.clone(),
    };
    list(&state, filter, &q).await
}

// ---- API keys ----------------------------------------------------------

#[derive(Deserialize)]
struct NewApiKey {
    name: String,
    owner: String,
    roles: Vec<String>,
}

async fn api_key_create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<NewApiKey>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require_admin()?;
    let name = required("name", &body.name, 128)?;
    let owner = required("owner", &body.owner, 256)?;
    if body.roles.is_empty() {
        return Err(ApiError::validation("roles must name at least one role"));
    }
    let mut roles = Vec::new();
    for r in &body.roles {
        let role: Role = r.parse().map_err(ApiError::validation)?;
        if !roles.contains(&role.as_str().to_string()) {
            roles.push(role.as_str().to_string());
        }
    }
    let (rec, key) = store::api_key_create(&state.pool, &name, &owner, &roles).await?;
    record(
        &state,
        NewEntry {
            category: "api_key".into(),
            actor: caller.name(),
            action: "create".into(),
            resource: rec.id.to_string(),
            ip: None,
            detail: json!({"name": rec.name, "owner": rec.owner, "roles": rec.roles}),
        },
    )
    .await;
    let mut v = serde_json::to_value(&rec).map_err(ApiError::internal)?;
    v["key"] = Value::String(key);
    Ok((StatusCode::CREATED, Json(v)))
}

async fn api_key_list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let keys = store::api_key_list(&state.pool).await?;
    Ok(Json(json!({ "api_keys": keys })))
}

async fn api_key_revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<store::ApiKeyRecord>> {
    caller.require_admin()?;
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::validation("id must be a UUID"))?;
    let rec = store::api_key_revoke(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no API key {id}")))?;
    // The gateway caches verified keys: it checks this entry on every
    // request, so the key stops working at once. Retrying is harmless.
    state
        .revocations
        .revoke_api_key(&id.to_string())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot publish the API key revocation");
            ApiError::unavailable(
                "the key is revoked here but the revocation list is unavailable; retry",
            )
        })?;
    record(
        &state,
        NewEntry {
            category: "api_key".into(),
            actor: caller.name(),
            action: "revoke".into(),
            resource: id.to_string(),
            ip: None,
            detail: json!({"name": rec.name, "owner": rec.owner}),
        },
    )
    .await;
    Ok(Json(rec))
}

#[derive(Deserialize)]
struct VerifyKey {
    key: String,
}

async fn api_key_verify(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<VerifyKey>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    if body.key.is_empty() || body.key.len() > 256 {
        return Ok(Json(json!({"valid": false})));
    }
    Ok(Json(
        match store::api_key_verify(&state.pool, &body.key).await? {
            Some(rec) => json!({
                "valid": true,
                "id": rec.id,
                "name": rec.name,
                "owner": rec.owner,
                "roles": rec.roles,
            }),
            None => json!({"valid": false}),
        },
    ))
}

// ---- token revocation list (Redis) -----------------------------------

#[derive(Deserialize)]
struct Revoke {
    jti: String,
    exp: i64,
}

fn check_jti(jti: &str) -> ApiResult<()> {
    if jti.is_empty() || jti.len() > 256 || jti.chars().any(|c| c.is_control()) {
        return Err(ApiError::validation(
            "jti must be 1..=256 printable characters",
        ));
    }
    Ok(())
}

async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<Revoke>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_jti(&body.jti)?;
    // Services and admins revoke anything; a user may revoke its own token.
    let own = matches!(&caller, Caller::User(c) if c.jti == body.jti);
    if !own {
        caller.require_admin()?;
    }
    let now = chrono::Utc::now().timestamp();
    if body.exp <= now {
        // Already expired: every verifier refuses it anyway.
        return Ok((
            StatusCode::OK,
            Json(json!({"jti": body.jti, "revoked": true, "stored": false})),
        ));
    }
    state
        .revocations
        .revoke_token(&body.jti, body.exp)
        .await
        .map_err(redis_error)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"jti": body.jti, "revoked": true, "stored": true, "expires_at": body.exp})),
    ))
}

fn redis_error(e: redis::RedisError) -> ApiError {
    tracing::error!(error = %e, "redis error");
    ApiError::unavailable("redis unavailable")
}

async fn revocation_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(jti): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    check_jti(&jti)?;
    let mut conn = state.redis.clone();
    let exists: bool = redis::cmd("EXISTS")
        .arg(kit::revocation::jti_key(&jti))
        .query_async(&mut conn)
        .await
        .map_err(redis_error)?;
    Ok(Json(json!({"jti": jti, "revoked": exists})))
}

// ---- credentials -------------------------------------------------------

#[derive(Deserialize)]
struct PutCredential {
    owner: String,
    name: String,
    secret: String,
}

async fn credential_put(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<PutCredential>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require_admin()?;
    let owner = required("owner", &body.owner, 128)?;
    let name = required("name", &body.name, 128)?;
    if body.secret.len() > 64 * 1024 {
        return Err(ApiError::validation("secret must be at most 64 KiB"));
    }
    let (nonce, ct) = state
        .secret_box
        .seal(&owner, &name, body.secret.as_bytes())
        .map_err(ApiError::internal)?;
    store::credential_put(&state.pool, &owner, &name, &nonce, &ct).await?;
    record(
        &state,
        NewEntry {
            category: "credential".into(),
            actor: caller.name(),
            action: "store".into(),
            resource: format!("{owner}/{name}"),
            ip: None,
            detail: json!({}),
        },
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({"owner": owner, "name": name, "stored": true})),
    ))
}

async fn credential_get(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.require_admin()?;
    let (nonce, ct) = store::credential_get(&state.pool, &owner, &name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no credential {owner}/{name}")))?;
    let plain = state
        .secret_box
        .open(&owner, &name, &nonce, &ct)
        .map_err(|e| {
            tracing::error!(%owner, %name, "credential decryption failed (wrong ENCRYPTION_KEY?)");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "decryption_failed",
                e.to_string(),
            )
        })?;
    let secret = match String::from_utf8(plain) {
        Ok(s) => json!(s),
        Err(e) => json!(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
    };
    Ok(Json(
        json!({"owner": owner, "name": name, "secret": secret}),
    ))
}

async fn credential_delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if !store::credential_delete(&state.pool, &owner, &name).await? {
        return Err(ApiError::not_found(format!("no credential {owner}/{name}")));
    }
    record(
        &state,
        NewEntry {
            category: "credential".into(),
            actor: caller.name(),
            action: "delete".into(),
            resource: format!("{owner}/{name}"),
            ip: None,
            detail: json!({}),
        },
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
