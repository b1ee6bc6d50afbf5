//! HTTP API: chat with history, conversations, BSL check, knowledge-base
//! search.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use kit::extract::{Json as JsonBody, Query};
use kit::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::analytics::{Analytics, AnalyticsEvent};
use crate::bsl;
use crate::kb::KnowledgeBase;
use crate::metadata::MetadataClient;
use crate::provider::{AnswerRequest, Context, Provider};
use crate::store::{Exchange, Store};

/// Longest accepted chat message (characters).
pub const MAX_MESSAGE_CHARS: usize = 32_000;
/// Default body limit of `POST /bsl/check` (bytes): real common modules are
/// 0.5–2 MB; `BSL_CHECK_MAX_BYTES` overrides it.
pub const DEFAULT_BSL_CHECK_MAX_BYTES: usize = 16 * 1024 * 1024;

/// The body limit of `POST /bsl/check`: `BSL_CHECK_MAX_BYTES` from the
/// environment, else [`DEFAULT_BSL_CHECK_MAX_BYTES`]. (It replaces kit's
/// `BODY_LIMIT_BYTES` for this route only.)
pub fn bsl_check_max_bytes() -> usize {
    match kit::config::Env::process().parse_or("BSL_CHECK_MAX_BYTES", DEFAULT_BSL_CHECK_MAX_BYTES) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "BSL_CHECK_MAX_BYTES is invalid, using the default");
            DEFAULT_BSL_CHECK_MAX_BYTES
        }
    }
}
/// Turns of history handed to the provider.
pub const HISTORY_TURNS: i64 = 20;

/// How the caller is identified (kit's [`kit::AuthUser`] does the work).
#[derive(Clone)]
pub enum AuthMode {
    /// `Authorization: Bearer <jwt>` verified with kit's verifier (JWKS_URL,
    /// `iss`/`aud` required); the user id is the token's `sub`.
    Jwt(kit::Verifier),
    /// Only identities the api-gateway proved (`x-user-id` & co. with the
    /// HMAC of `INTERNAL_AUTH_KEY_FILE`, see `kit::identity`): API-key and
    /// JWT callers alike. A bare `X-User-Id` is refused.
    Gateway(kit::InternalAuthKey),
    /// Both: a bearer token, when sent, is verified and decides; otherwise
    /// the gateway's proved identity (callers that used an API key reach
    /// the service without a JWT).
    JwtOrGateway(kit::Verifier, kit::InternalAuthKey),
}

#[derive(Clone)]
pub struct AppState {
    pub kb: Arc<KnowledgeBase>,
    pub store: Store,
    pub provider: Arc<dyn Provider>,
    pub analytics: Analytics,
    pub metadata: Option<MetadataClient>,
    pub auth: AuthMode,
    pub metrics: crate::metrics::ChatMetrics,
}

/// The caller's user id.
pub struct CurrentUser(pub String);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match &state.auth {
            AuthMode::Jwt(v) => {
                parts.extensions.insert(v.clone());
            }
            AuthMode::Gateway(k) => {
                parts.extensions.insert(k.clone());
            }
            AuthMode::JwtOrGateway(v, k) => {
                parts.extensions.insert(v.clone());
                parts.extensions.insert(k.clone());
            }
        }
        let user = kit::AuthUser::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(CurrentUser(user.sub.clone()))
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/chat", post(chat))
        .route("/conversations", get(list_conversations))
        .route(
            "/conversations/{id}",
            get(get_conversation).delete(delete_conversation),
        )
        .route(
            "/bsl/check",
            post(bsl_check).layer(axum::extract::DefaultBodyLimit::max(bsl_check_max_bytes())),
        )
        .route("/kb/search", get(kb_search))
        .fallback(|| async { ApiError::not_found("no such route") })
        .with_state(state)
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub conversation_id: Option<Uuid>,
    pub message: String,
}

#[derive(Debug, Deserialize, Default)]
pub struct ChatParams {
    pub stream: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct ChatResponse {
    pub conversation_id: Uuid,
    pub message_id: Uuid,
    pub answer: String,
    pub sources: Value,
    pub diagnostics: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    pub provider: &'static str,
}

fn wants_stream(params: &ChatParams, headers: &HeaderMap) -> bool {
    params.stream.unwrap_or(false)
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"))
}

fn sources_json(ctx: &Context) -> Value {
    Value::Array(
        ctx.sources()
            .into_iter()
            .map(|s| json!({"file": s.file, "heading": s.heading}))
            .collect(),
    )
}

fn diagnostics_json(ctx: &Context) -> Value {
    ctx.code
        .as_ref()
        .map(|c| serde_json::to_value(&c.diagnostics).unwrap_or(Value::Null))
        .unwrap_or_else(|| json!([]))
}

async fn chat(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Query(params): Query<ChatParams>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let message = req.message.trim().to_string();
    if message.is_empty() {
        return Err(ApiError::validation("message must not be empty"));
    }
    if message.chars().count() > MAX_MESSAGE_CHARS {
        return Err(ApiError::validation(format!(
            "message is longer than {MAX_MESSAGE_CHARS} characters"
        )));
    }
    let (conversation_id, history) = match req.conversation_id {
        Some(id) => {
            if !state.store.owns(&user, id).await? {
                return Err(ApiError::not_found("conversation not found"));
            }
            (id, state.store.history(id, HISTORY_TURNS).await?)
        }
        None => (Uuid::new_v4(), Vec::new()),
    };
    let queued = state
        .analytics
        .emit(AnalyticsEvent::question(&user, &message, conversation_id));
    state.metrics.analytics(&state.analytics, queued);

    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let previous_question = history
        .iter()
        .rev()
        .find(|t| t.role == crate::provider::Speaker::User)
        .map(|t| t.content.as_str());
    let ctx = crate::context::build(
        &state.kb,
        state.metadata.as_ref(),
        authorization,
        &message,
        previous_question,
    )
    .await;
    let request = AnswerRequest {
        question: message.clone(),
        history,
        context: ctx.clone(),
    };
    if let Some(code) = &ctx.code {
        state.metrics.diagnostics(&code.diagnostics);
    }
    let provider_name = state.provider.name();
    let failed = |state: &AppState| {
        state
            .metrics
            .answers
            .with_label_values(&[provider_name, "error"])
            .inc()
    };
    let finish = Finish {
        state: state.clone(),
        user,
        question: message,
        conversation_id,
        ctx,
        started,
        provider: provider_name,
    };

    if !wants_stream(&params, &headers) {
        let answer = match state.provider.answer(request).await {
            Ok(a) => a,
            Err(e) => {
                failed(&state);
                return Err(e.into());
            }
        };
        let resp = finish
            .persist(&answer)
            .await
            .inspect_err(|_| failed(&state))?;
        return Ok(Json(resp).into_response());
    }

    // Errors before the first chunk are ordinary JSON errors.
    let mut chunks = match state.provider.stream(request).await {
        Ok(c) => c,
        Err(e) => {
            failed(&state);
            return Err(e.into());
        }
    };
    let metrics = state.metrics.clone();
    let (tx, rx) = mpsc::channel::<Event>(32);
    tokio::spawn(async move {
        let meta = json!({"conversation_id": conversation_id, "provider": provider_name});
        if tx
            .send(Event::default().event("meta").data(meta.to_string()))
            .await
            .is_err()
        {
            return;
        }
        let mut answer = String::new();
        while let Some(item) = chunks.next().await {
            match item {
                Ok(text) => {
                    answer.push_str(&text);
                    let ev = Event::default()
                        .event("delta")
                        .data(json!({"text": text}).to_string());
                    if tx.send(ev).await.is_err() {
                        tracing::info!("client left the stream; answer not stored");
                        return;
                    }
                }
                Err(e) => {
                    metrics
                        .answers
                        .with_label_values(&[provider_name, "error"])
                        .inc();
                    tracing::warn!(error = %e, "provider stream failed");
                    let body = json!({"error": {"code": e.code(), "message": e.to_string()}});
                    let _ = tx
                        .send(Event::default().event("error").data(body.to_string()))
                        .await;
                    return;
                }
            }
        }
        match finish.persist(&answer).await {
            Ok(resp) => {
                let done = json!({
                    "conversation_id": resp.conversation_id,
                    "message_id": resp.message_id,
                    "sources": resp.sources,
                    "diagnostics": resp.diagnostics,
                    "metadata": resp.metadata,
                    "provider": resp.provider,
                });
                let _ = tx
                    .send(Event::default().event("done").data(done.to_string()))
                    .await;
            }
            Err(e) => {
                metrics
                    .answers
                    .with_label_values(&[provider_name, "error"])
                    .inc();
                let body = json!({"error": {"code": e.code, "message": e.message}});
                let _ = tx
                    .send(Event::default().event("error").data(body.to_string()))
                    .await;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|ev| (Ok::<_, Infallible>(ev), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// What happens once the answer text is complete.
struct Finish {
    state: AppState,
    user: String,
    question: String,
    conversation_id: Uuid,
    ctx: Context,
    started: Instant,
    provider: &'static str,
}

impl Finish {
    async fn persist(self, answer: &str) -> Result<ChatResponse, ApiError> {
        let sources = sources_json(&self.ctx);
        let diagnostics = diagnostics_json(&self.ctx);
        let answer_id = Uuid::new_v4();
        let ex = Exchange {
            conversation_id: self.conversation_id,
            user_id: &self.user,
            question: &self.question,
            answer,
            answer_id,
            sources: sources.clone(),
            diagnostics: diagnostics.clone(),
            provider: self.provider,
        };
        match self.state.store.save_exchange(&ex).await {
            Ok(_) => {}
            Err(sqlx::Error::RowNotFound) => {
                return Err(ApiError::not_found("conversation not found"))
            }
            Err(e) => return Err(e.into()),
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let latency = elapsed * 1000.0;
        let m = &self.state.metrics;
        m.answers.with_label_values(&[self.provider, "ok"]).inc();
        m.answer_seconds
            .with_label_values(&[self.provider])
            .observe(elapsed);
        let queued = self.state.analytics.emit(AnalyticsEvent::answer(
            &self.user,
            &self.question,
            self.conversation_id,
            latency,
            self.provider,
            self.ctx.sources().len(),
        ));
        m.analytics(&self.state.analytics, queued);
        Ok(ChatResponse {
            conversation_id: self.conversation_id,
            message_id: answer_id,
            answer: answer.to_string(),
            sources,
            diagnostics,
            metadata: self
                .ctx
                .metadata
                .as_ref()
                .and_then(|m| serde_json::to_value(m).ok()),
            provider: self.provider,
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

async fn list_conversations(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Query(p): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = p.limit.unwrap_or(50);
    let offset = p.offset.unwrap_or(0);
    if !(1..=200).contains(&limit) || offset < 0 {
        return Err(ApiError::validation(
            "limit must be between 1 and 200 and offset must not be negative",
        ));
    }
    let list = state.store.list(&user, limit, offset).await?;
    Ok(Json(
        json!({"conversations": list, "limit": limit, "offset": offset}),
    ))
}

async fn get_conversation(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id =
        Uuid::parse_str(&id).map_err(|_| ApiError::validation("conversation id must be a UUID"))?;
    match state.store.get(&user, id).await? {
        Some(c) => Ok(Json(serde_json::to_value(c).map_err(ApiError::internal)?)),
        None => Err(ApiError::not_found("conversation not found")),
    }
}

async fn delete_conversation(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id =
        Uuid::parse_str(&id).map_err(|_| ApiError::validation("conversation id must be a UUID"))?;
    if state.store.delete(&user, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("conversation not found"))
    }
}

#[derive(Debug, Deserialize)]
pub struct CheckRequest {
    pub code: String,
    /// `module`, `query`, or absent to detect (a text starting with
    /// ВЫБРАТЬ/SELECT is a query).
    pub kind: Option<String>,
}

/// Checks a module or a query. The size is bounded by the route's body
/// limit ([`bsl_check_max_bytes`]; 413 `payload_too_large` above it); the
/// answer reports `lines` and `elapsed_ms` (the check itself).
async fn bsl_check(JsonBody(req): JsonBody<CheckRequest>) -> Result<Json<Value>, ApiError> {
    let kind = match req.kind.as_deref() {
        Some("module") => "module",
        Some("query") => "query",
        None if bsl::looks_like_query(&req.code) => "query",
        None => "module",
        Some(other) => {
            return Err(ApiError::validation(format!(
                "kind must be \"module\" or \"query\", got {other:?}"
            )))
        }
    };
    // Parsing is CPU work: keep it off the async workers.
    let code = req.code;
    let (diagnostics, lines, elapsed) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let d = if kind == "query" {
            bsl::check_query(&code)
        } else {
            bsl::check(&code)
        };
        (d, code.lines().count(), started.elapsed())
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "kind": kind,
        "diagnostics": diagnostics,
        "lines": lines,
        "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
    })))
}

#[derive(Debug, Deserialize)]
pub struct SearchParams {
    pub q: String,
    pub limit: Option<usize>,
}

async fn kb_search(
    State(state): State<AppState>,
    Query(p): Query<SearchParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = p.limit.unwrap_or(5);
    if !(1..=20).contains(&limit) {
        return Err(ApiError::validation("limit must be between 1 and 20"));
    }
    let hits: Vec<Value> = state
        .kb
        .search(&p.q, limit)
        .into_iter()
        .map(|h| {
            json!({
                "file": h.passage.file,
                "heading": h.passage.heading,
                "title": h.passage.title,
                "score": h.score,
                "text": h.passage.text,
            })
        })
        .collect();
    Ok(Json(json!({"results": hits})))
}
