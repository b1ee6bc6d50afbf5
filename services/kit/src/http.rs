//! Per-request middleware: request ids, access logs, metrics, timeout and
//! body-size limit. [`crate::Infra::wrap`] installs all of them.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::error::error_response;
use crate::metrics::Metrics;

/// The request-id header, accepted from the client or generated.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request id of the current request (a request extension):
/// `Extension(RequestId(id)): Extension<RequestId>`. Forward it to
/// downstream calls in the `x-request-id` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Accept a client-supplied id only when it is short and printable.
fn valid_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    if s.is_empty() || s.len() > 128 {
        return None;
    }
    if !s.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=')
    }) {
        return None;
    }
    Some(s.to_string())
}

/// Request id + tracing span + access log + metrics + panic → 500. The route label is the
/// axum `MatchedPath` (e.g. `/users/{id}`), or `unmatched` for 404s, so the
/// label set stays bounded.
pub async fn observe(State(metrics): State<Metrics>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(valid_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let header = HeaderValue::from_str(&id).expect("validated request id");
    req.headers_mut().insert(REQUEST_ID_HEADER, header.clone());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let quiet = route.starts_with("/health/") || route == "/metrics";
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);

    metrics.http_requests_in_flight.inc();
    // Decrement even when the future is dropped (client went away).
    struct InFlight(Metrics);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.http_requests_in_flight.dec();
        }
    }
    let guard = InFlight(metrics.clone());
    // A panicking handler becomes a logged 500 instead of a dropped connection.
    let run = std::panic::AssertUnwindSafe(next.run(req).instrument(span.clone()));
    let mut resp = match futures::FutureExt::catch_unwind(run).await {
        Ok(resp) => resp,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            span.in_scope(|| tracing::error!(panic = %msg, "handler panicked"));
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal server error",
            )
        }
    };
    drop(guard);

    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    metrics.observe(&method, &route, status, elapsed.as_secs_f64());
    resp.headers_mut().insert(REQUEST_ID_HEADER, header);
    let _enter = span.enter();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    if quiet {
        tracing::debug!(status, latency_ms, "request finished");
    } else if status >= 500 {
        tracing::warn!(status, latency_ms, "request finished");
    } else {
        tracing::info!(status, latency_ms, "request finished");
    }
    resp
}

/// Fail a request with 504 `{"error":{"code":"timeout"}}` after `limit`.
pub async fn timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            &format!("request took longer than {} ms", limit.as_millis()),
        ),
    }
}

/// Replace the bare 413 produced by the body-limit layer with the standard
/// JSON error.
pub async fn json_413(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE
        && !resp
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
    {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large",
        )
        .into_response();
    }
    resp
}
