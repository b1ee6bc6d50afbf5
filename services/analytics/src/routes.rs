//! HTTP handlers and the access rules.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use futures::StreamExt;
use kit::{ApiError, AuthUser, Role};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::event::{self, FieldError, MAX_BATCH_SIZE};
use crate::params::{self, bad_request, DaySpan, TimeRange};
use crate::retention::{self, RetentionOutcome};
use crate::store::{self, ExportRow, EXPORT_HEADER, EXPORT_SQL};
use crate::AppState;

type Q = Query<HashMap<String, String>>;

fn q<'a>(query: &'a Q, name: &str) -> Option<&'a str> {
    query.0.get(name).map(String::as_str)
}

// ---------------------------------------------------------------- access --

/// Readers: a JWT with role `analyst` or `admin` (when auth is enabled).
pub struct Reader;

/// Administrators: a JWT with role `admin` (when auth is enabled).
pub struct Admin;

/// Event producers: the ingest token, when one is configured.
pub struct Producer;

async fn require_roles(
    parts: &mut Parts,
    state: &AppState,
    roles: &[Role],
) -> Result<(), Response> {
    // Auth is on with a JWT verifier (JWKS_URL) or the gateway's identity
    // proofs (INTERNAL_AUTH_KEY_FILE, put in the request by kit's Infra).
    let proofs = parts.extensions.get::<kit::InternalAuthKey>().is_some();
    match &state.verifier {
        // kit's extractor finds the verifier in the request extensions.
        Some(verifier) => {
            parts.extensions.insert(verifier.clone());
        }
        None if proofs => {}
        None => return Ok(()),
    }
    let user = AuthUser::from_request_parts(parts, state)
        .await
        .map_err(IntoResponse::into_response)?;
    user.require_any_role(roles)
        .map_err(IntoResponse::into_response)
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        require_roles(parts, state, &[Role::Analyst, Role::Admin]).await?;
        Ok(Reader)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        require_roles(parts, state, &[Role::Admin]).await?;
        Ok(Admin)
    }
}

/// Constant-time comparison (the ingest token is a secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<AppState> for Producer {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = &state.settings.ingest_token else {
            return Ok(Producer);
        };
        let given = parts
            .headers
            .get(crate::INGEST_TOKEN_HEADER)
            .map(HeaderValue::as_bytes);
        match given {
            Some(g) if ct_eq(g, expected.expose().as_bytes()) => Ok(Producer),
            Some(_) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_ingest_token",
                "the X-Ingest-Token header does not match",
            )),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_ingest_token",
                "POST /events requires the X-Ingest-Token header",
            )),
        }
    }
}

// ------------------------------------------------------------- ingestion --

#[derive(Debug, Serialize)]
pub struct EventError {
    pub index: usize,
    pub event_id: Option<Uuid>,
    pub errors: Vec<FieldError>,
}

#[derive(Debug, Serialize)]
pub struct IngestResponse {
    pub received: usize,
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: usize,
    pub errors: Vec<EventError>,
}

/// `POST /events`: a JSON array of at most [`MAX_BATCH_SIZE`] events.
pub async fn ingest(
    State(state): State<AppState>,
    _producer: Producer,
    body: Bytes,
) -> Result<Json<IngestResponse>, ApiError> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| bad_request("invalid_json", format!("the body is not valid JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(bad_request(
            "invalid_body",
            "the body must be a JSON array of events",
        ));
    };
    if items.len() > MAX_BATCH_SIZE {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "a batch holds at most {MAX_BATCH_SIZE} events, got {}",
                items.len()
            ),
        ));
    }
    state.metrics.batch_size.observe(items.len() as f64);

    let now = Utc::now();
    let mut valid = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match event::validate(item, now) {
            Ok(e) => valid.push(e),
            Err(errs) => errors.push(EventError {
                index,
                event_id: event::raw_event_id(item),
                errors: errs,
            }),
        }
    }
    state.metrics.rejected.inc_by(errors.len() as u64);

    let outcome = store::insert_events(&state.pool, &valid).await?;
    for (kind, n) in &outcome.accepted {
        state.metrics.ingested.with_label_values(&[kind]).inc_by(*n);
    }
    state.metrics.duplicate.inc_by(outcome.duplicate);
    if !errors.is_empty() {
        tracing::info!(
            rejected = errors.len(),
            first_index = errors[0].index,
            "events rejected by validation"
        );
    }
    Ok(Json(IngestResponse {
        received: items.len(),
        accepted: outcome.accepted_total(),
        duplicate: outcome.duplicate,
        rejected: errors.len(),
        errors,
    }))
}

// --------------------------------------------------------------- queries --

fn range_of(query: &Q) -> Result<TimeRange, ApiError> {
    TimeRange::parse(q(query, "from"), q(query, "to"))
}

/// `GET /usage/daily?from=&to=&service=&kind=`
pub async fn daily(
    State(state): State<AppState>,
    _r: Reader,
    query: Q,
) -> Result<Json<Value>, ApiError> {
    let span = DaySpan::resolve(range_of(&query)?, Utc::now())?;
    let service = params::parse_service(q(&query, "service"));
    let kind = params::parse_kind(q(&query, "kind"))?;
    let days = store::daily(&state.pool, &span, service.as_deref(), kind).await?;
    let total: i64 = days.iter().map(|d| d.count).sum();
    Ok(Json(json!({
        "from": span.from,
        "to": span.to,
        "service": service,
        "kind": kind,
        "total": total,
        "days": days,
    })))
}

/// `GET /usage/services?from=&to=`
pub async fn services(
    State(state): State<AppState>,
    _r: Reader,
    query: Q,
) -> Result<Json<Value>, ApiError> {
    let range = range_of(&query)?;
    let services = store::services(&state.pool, &range).await?;
    Ok(Json(json!({
        "from": range.from,
        "to": range.to,
        "services": services,
    })))
}

/// `GET /usage/users?limit=&from=&to=`
pub async fn users(
    State(state): State<AppState>,
    _r: Reader,
    query: Q,
) -> Result<Json<Value>, ApiError> {
    let range = range_of(&query)?;
    let limit = params::parse_limit(q(&query, "limit"))?;
    let users = store::users(&state.pool, &range, limit).await?;
    Ok(Json(json!({
        "from": range.from,
        "to": range.to,
        "limit": limit,
        "users": users,
    })))
}

/// `GET /usage/top-questions?limit=&from=&to=`
pub async fn top_questions(
    State(state): State<AppState>,
    _r: Reader,
    query: Q,
) -> Result<Json<Value>, ApiError> {
    let range = range_of(&query)?;
    let limit = params::parse_limit(q(&query, "limit"))?;
    let questions = store::top_questions(&state.pool, &range, limit).await?;
    Ok(Json(json!({
        "from": range.from,
        "to": range.to,
        "limit": limit,
        "questions": questions,
    })))
}

/// `GET /usage/latency?service=&from=&to=`
pub async fn latency(
    State(state): State<AppState>,
    _r: Reader,
    query: Q,
) -> Result<Json<Value>, ApiError> {
    let range = range_of(&query)?;
    let service = params::parse_service(q(&query, "service"));
    let stats = store::latency(&state.pool, service.as_deref(), &range).await?;
    Ok(Json(json!({
        "from": range.from,
        "to": range.to,
        "service": service,
        "kind": "answer",
        "count": stats.count,
        "p50_ms": stats.p50,
        "p90_ms": stats.p90,
        "p99_ms": stats.p99,
        "avg_ms": stats.avg,
        "max_ms": stats.max,
    })))
}

// ---------------------------------------------------------------- export --

/// Flush the CSV buffer to the client once it holds this many bytes.
const EXPORT_CHUNK: usize = 64 * 1024;

/// `GET /export.csv?from=&to=&kind=`: every matching event as CSV, streamed
/// from the database (constant memory however many rows match).
pub async fn export_csv(
    State(state): State<AppState>,
    _r: Reader,
    query: Q,
) -> Result<Response, ApiError> {
    let range = range_of(&query)?;
    let kind = params::parse_kind(q(&query, "kind"))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let pool = state.pool.clone();
    tokio::spawn(async move {
        let mut rows = sqlx::query_as::<_, ExportRow>(EXPORT_SQL)
            .bind(range.from)
            .bind(range.to)
            .bind(kind.map(|k| k.as_str()))
            .fetch(&pool);
        let mut buf = String::with_capacity(EXPORT_CHUNK + 4096);
        crate::csv::push_record(&mut buf, EXPORT_HEADER);
        let mut rows_sent = 0u64;
        let mut first = true;
        while let Some(row) = rows.next().await {
            match row {
                Ok(r) => {
                    r.write_csv(&mut buf);
                    rows_sent += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, rows_sent, "CSV export failed");
                    let _ = tx
                        .send(Err(std::io::Error::other(format!("export failed: {e}"))))
                        .await;
                    return;
                }
            }
            // Send the first chunk early: it tells the handler the query works.
            if first || buf.len() >= EXPORT_CHUNK {
                first = false;
                let chunk = Bytes::from(std::mem::take(&mut buf));
                if tx.send(Ok(chunk)).await.is_err() {
                    tracing::info!(rows_sent, "CSV export: client went away");
                    return;
                }
            }
        }
        if !buf.is_empty() {
            let _ = tx.send(Ok(Bytes::from(buf))).await;
        }
        tracing::info!(rows_sent, "CSV export finished");
    });

    // Wait for the first chunk so a failing query is a proper JSON error
    // instead of a truncated 200.
    let first = match rx.recv().await {
        Some(Ok(chunk)) => chunk,
        Some(Err(_)) | None => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "export_failed",
                "the export query failed",
            ))
        }
    };
    let rest = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let body = Body::from_stream(futures::stream::once(async move { Ok(first) }).chain(rest));
    let filename = format!(
        "events-{}-{}.csv",
        range
            .from
            .map(|t| t.format("%Y%m%d").to_string())
            .unwrap_or_else(|| "start".into()),
        range
            .to
            .map(|t| t.format("%Y%m%d").to_string())
            .unwrap_or_else(|| "now".into()),
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        body,
    )
        .into_response())
}

// ------------------------------------------------------------- retention --

/// `POST /retention/run` (admin): delete events older than `RETENTION_DAYS`.
pub async fn retention_run(
    State(state): State<AppState>,
    _a: Admin,
) -> Result<Json<retention::RetentionReport>, ApiError> {
    match retention::run(&state.pool, state.settings.retention_days, Utc::now()).await? {
        RetentionOutcome::Done(report) => {
            state.metrics.retention_deleted.inc_by(report.deleted);
            tracing::info!(
                deleted = report.deleted,
                cutoff = %report.cutoff,
                "retention run (requested) finished"
            );
            Ok(Json(report))
        }
        RetentionOutcome::AlreadyRunning => Err(ApiError::new(
            StatusCode::CONFLICT,
            "retention_running",
            "a retention run is already in progress; try again later",
        )),
    }
}

/// Unknown paths: the standard JSON 404.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

#[cfg(test)]
mod tests {
    use super::ct_eq;

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }
}
