//! `/health/live`, `/health/ready` and `/metrics`.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::metrics::{Metrics, CONTENT_TYPE};

/// The dependencies `/health/ready` checks.
#[derive(Clone)]
pub struct Health {
    pub service: String,
    pub pg: Option<sqlx::PgPool>,
    pub redis: Option<redis::aio::ConnectionManager>,
    /// Per-dependency check timeout (default 2 s).
    pub check_timeout: Duration,
}

impl Health {
    pub fn new(service: impl Into<String>) -> Self {
        Health {
            service: service.into(),
            pg: None,
            redis: None,
            check_timeout: Duration::from_secs(2),
        }
    }

    /// Run every check; `(all_ok, report)`.
    pub async fn check(&self) -> (bool, Value) {
        let mut checks = Map::new();
        let mut ok = true;
        if let Some(pg) = &self.pg {
            let start = Instant::now();
            let res = tokio::time::timeout(
                self.check_timeout,
                sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pg),
            )
            .await;
            let res = match res {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_string()),
            };
            ok &= res.is_ok();
            checks.insert("postgres".into(), report(res, start));
        }
        if let Some(redis) = &self.redis {
            let start = Instant::now();
            let mut conn = redis.clone();
            let res = tokio::time::timeout(
                self.check_timeout,
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
            let res = match res {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_string()),
            };
            ok &= res.is_ok();
            checks.insert("redis".into(), report(res, start));
        }
        let body = json!({
            "status": if ok { "ok" } else { "fail" },
            "service": self.service,
            "checks": checks,
        });
        (ok, body)
    }
}

fn report(res: Result<(), String>, start: Instant) -> Value {
    let latency_ms = (start.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    match res {
        Ok(()) => json!({"status": "ok", "latency_ms": latency_ms}),
        Err(e) => json!({"status": "fail", "latency_ms": latency_ms, "error": e}),
    }
}

async fn live(State((health, _)): State<(Health, Metrics)>) -> impl IntoResponse {
    Json(json!({"status": "ok", "service": health.service}))
}

async fn ready(State((health, _)): State<(Health, Metrics)>) -> impl IntoResponse {
    let (ok, body) = health.check().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

async fn metrics(State((_, metrics)): State<(Health, Metrics)>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render())
}

/// The standard routes, ready to merge into a service router.
pub fn routes(health: Health, metrics: Metrics) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(self::metrics))
        .with_state((health, metrics))
}
