//! The standard routes and layers, against the real PostgreSQL and Redis
//! (TEST_DATABASE_URL, TEST_REDIS_URL).

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use kit::testing::{test_redis_url, TestDb};
use kit::Infra;
use tower::ServiceExt;

async fn body_json(resp: axum::response::Response) -> serde_json::Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn app(infra: &Infra) -> Router {
    infra.wrap(
        Router::new()
            .route("/items/{id}", get(|| async { "item" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "slow"
                }),
            )
            .route("/echo", post(|body: String| async move { body }))
            .route(
                "/panic",
                get(|| async {
                    if std::env::var("NEVER_SET_KIT_TEST").is_err() {
                        panic!("boom");
                    }
                    "unreachable"
                }),
            ),
    )
}

#[tokio::test]
async fn ready_reports_postgres_and_redis() {
    let db = TestDb::new().await;
    let pool = kit::db::connect_pg(&db.url, None, Duration::from_secs(5))
        .await
        .unwrap();
    let redis = kit::db::connect_redis(&test_redis_url(), Duration::from_secs(5))
        .await
        .unwrap();
    let infra = Infra::named("kit-test", "0.0.1")
        .with_pg(pool.clone())
        .with_redis(redis);
    let app = app(&infra);
    let resp = app
        .clone()
        .oneshot(Request::get("/health/ready").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v = body_json(resp).await;
    assert_eq!(v["status"], "ok");
    assert_eq!(v["checks"]["postgres"]["status"], "ok");
    assert_eq!(v["checks"]["redis"]["status"], "ok");
    assert!(v["checks"]["postgres"]["latency_ms"].as_f64().is_some());

    // PostgreSQL goes away: 503 with the failing dependency named.
    pool.close().await;
    let resp = app
        .clone()
        .oneshot(Request::get("/health/ready").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v = body_json(resp).await;
    assert_eq!(v["status"], "fail");
    assert_eq!(v["checks"]["postgres"]["status"], "fail");
    assert_eq!(v["checks"]["redis"]["status"], "ok");
    db.drop_db().await;
}

#[tokio::test]
async fn ready_fails_when_redis_is_unreachable() {
    // A port with nothing listening: the connect-retry loops give up after
    // their retry window with a clear error.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        drop(l);
        p
    };
    let err = kit::db::connect_redis(
        &format!("redis://127.0.0.1:{dead}"),
        Duration::from_millis(300),
    )
    .await
    .err()
    .expect("dead redis must fail");
    assert!(format!("{err:#}").contains("Redis"), "{err:#}");
    let err = kit::db::connect_pg(
        &format!("postgres://postgres:postgres@127.0.0.1:{dead}/x"),
        None,
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("PostgreSQL"), "{err:#}");
}

#[tokio::test]
async fn request_ids_metrics_timeout_and_body_limit() {
    let mut infra = Infra::named("kit-test", "0.0.1");
    infra.request_timeout = Duration::from_millis(200);
    infra.body_limit = 16;
    let app = app(&infra);

    // Generated request id.
    let resp = app
        .clone()
        .oneshot(Request::get("/items/1").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "uuid expected: {id}");
    // Incoming request id is propagated.
    let resp = app
        .clone()
        .oneshot(
            Request::get("/items/2")
                .header("x-request-id", "abc-123")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    // A hostile id is replaced.
    let resp = app
        .clone()
        .oneshot(
            Request::get("/items/3")
                .header("x-request-id", "a b\"c")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_ne!(resp.headers()["x-request-id"], "a b\"c");

    // Timeout → 504 JSON.
    let resp = app
        .clone()
        .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body_json(resp).await["error"]["code"], "timeout");

    // Body limit → 413 JSON; small body passes.
    let resp = app
        .clone()
        .oneshot(
            Request::post("/echo")
                .body(Body::from("x".repeat(1000)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body_json(resp).await["error"]["code"], "payload_too_large");
    let resp = app
        .clone()
        .oneshot(Request::post("/echo").body(Body::from("hi")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // A panicking handler → 500 JSON, counted, in-flight gauge restored.
    let resp = app
        .clone()
        .oneshot(Request::get("/panic").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(body_json(resp).await["error"]["code"], "internal");

    // 404 is counted under a bounded label.
    let _ = app
        .clone()
        .oneshot(Request::get("/no/such/path").body(Body::empty()).unwrap())
        .await
        .unwrap();

    let resp = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/items/{id}",status="200"} 3"#),
        "{text}"
    );
    assert!(text.contains(r#"route="/slow",status="504"} 1"#), "{text}");
    assert!(text.contains(r#"route="/echo",status="413"} 1"#), "{text}");
    assert!(
        text.contains(r#"route="unmatched",status="404"} 1"#),
        "{text}"
    );
    assert!(!text.contains("/no/such/path"));
    assert!(text.contains(r#"build_info{service="kit-test",version="0.0.1"} 1"#));
    assert!(
        text.contains("http_requests_in_flight 1"),
        "only /metrics itself: {text}"
    );

    // Liveness.
    let resp = app
        .oneshot(Request::get("/health/live").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
