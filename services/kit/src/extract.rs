//! Extractors whose rejections use the standard JSON error shape (axum's own
//! `Json`/`Query` reject with plain text).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Like `axum::Json`, rejecting with `{"error": {...}}` (400/415/422).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rej) => {
                let status = rej.status();
                let code = match status.as_u16() {
                    415 => "unsupported_media_type",
                    413 => "payload_too_large",
                    422 => "validation_failed",
                    _ => "bad_request",
                };
                Err(ApiError::new(status, code, rej.body_text()))
            }
        }
    }
}

/// Like `axum::extract::Query`, rejecting with a JSON 400.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(rej) => Err(ApiError::new(rej.status(), "bad_request", rej.body_text())),
        }
    }
}
