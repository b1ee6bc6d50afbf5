//! Integration tests against a real PostgreSQL (`TEST_DATABASE_URL`): each
//! test gets a fresh database and the full app on a loopback port.

mod common;

use analytics::Settings;
use chrono::{Duration, Utc};
use common::{at, ev, parse_csv, test_verifier, token, TestApp};
use serde_json::{json, Value};

// ------------------------------------------------------------- ingestion --

#[tokio::test]
async fn same_batch_twice_is_stored_once() {
    let app = TestApp::start().await;
    let now = Utc::now();
    let batch = json!([
        ev("login", "user-management", Some("u1"), now),
        ev("question", "ai-assistant", Some("u1"), now),
        ev("api_call", "api-gateway", None, now),
    ]);

    let (status, first) = app.post_events(&batch).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["received"], 3);
    assert_eq!(first["accepted"], 3);
    assert_eq!(first["duplicate"], 0);
    assert_eq!(first["rejected"], 0);

    let (status, second) = app.post_events(&batch).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["accepted"], 0);
    assert_eq!(second["duplicate"], 3);
    assert_eq!(app.count_rows().await, 3);

    // The same event twice inside one batch: stored once, counted duplicate.
    let e = ev("error", "security", None, now);
    let (_, third) = app.post_events(&json!([e.clone(), e])).await;
    assert_eq!(third["accepted"], 1, "{third}");
    assert_eq!(third["duplicate"], 1, "{third}");
    assert_eq!(app.count_rows().await, 4);

    let daily = app.get_json("/usage/daily").await;
    assert_eq!(daily["total"], 4, "{daily}");

    let m = app.metrics().await;
    assert!(m.contains("events_duplicate_total 4"), "{m}");
    assert!(
        m.contains(r#"events_ingested_total{kind="login"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"events_ingested_total{kind="error"} 1"#),
        "{m}"
    );
    assert!(m.contains("events_batch_size_count 3"), "{m}");
    assert!(m.contains(r#"events_batch_size_bucket{le="1"} 0"#), "{m}");
    assert!(m.contains(r#"events_batch_size_bucket{le="5"} 3"#), "{m}");
    app.stop().await;
}

#[tokio::test]
async fn invalid_events_are_rejected_with_their_index_and_valid_ones_stored() {
    let app = TestApp::start().await;
    let now = Utc::now();
    let good0 = ev("question", "ai-assistant", Some("u1"), now);
    let mut bad_kind = ev("click", "ai-assistant", None, now);
    bad_kind["event_id"] = json!("3b7e3c1e-5d1f-4a53-9d7e-2f0b8a6c1d01");
    let good2 = ev("answer", "ai-assistant", Some("u1"), now);
    let future = ev("login", "user-management", None, now + Duration::days(2));
    let mut many = ev("answer", "", None, now);
    many["latency_ms"] = json!(-5);
    many["properties"] = json!("text");
    let batch = json!([good0, bad_kind, good2, future, "not an event", many]);

    let (status, body) = app.post_events(&batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["received"], 6);
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"], 4);
    let errors = body["errors"].as_array().unwrap();
    let indexes: Vec<u64> = errors
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 3, 4, 5]);
    assert_eq!(
        errors[0]["event_id"],
        "3b7e3c1e-5d1f-4a53-9d7e-2f0b8a6c1d01"
    );
    assert_eq!(errors[0]["errors"][0]["field"], "kind");
    assert_eq!(errors[1]["errors"][0]["field"], "occurred_at");
    assert!(errors[1]["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("future"));
    assert_eq!(errors[2]["event_id"], Value::Null);
    let mut fields: Vec<&str> = errors[3]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(fields, ["latency_ms", "properties", "service"]);

    // Exactly the two valid events are stored.
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM events ORDER BY kind")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let expected: Vec<uuid::Uuid> = [&batch[2], &batch[0]]
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, expected);

    let m = app.metrics().await;
    assert!(m.contains("events_rejected_total 4"), "{m}");
    assert!(
        m.contains(r#"events_ingested_total{kind="answer"} 1"#),
        "{m}"
    );
    app.stop().await;
}

#[tokio::test]
async fn malformed_batches_get_json_errors() {
    let app = TestApp::start().await;
    let post_raw = |body: String| {
        app.client
            .post(app.url("/events"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let r = post_raw("{\"event_id\": 1}".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "invalid_body");

    let r = post_raw("[{".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "invalid_json");

    let now = Utc::now();
    let big: Vec<Value> = (0..1001).map(|_| ev("login", "svc", None, now)).collect();
    let (status, b) = app.post_events(&json!(big)).await;
    assert_eq!(status, 413);
    assert_eq!(b["error"]["code"], "batch_too_large");
    assert_eq!(app.count_rows().await, 0);

    // Exactly the maximum is fine.
    let max: Vec<Value> = (0..1000).map(|_| ev("login", "svc", None, now)).collect();
    let (status, b) = app.post_events(&json!(max)).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["accepted"], 1000);

    let (status, b) = app.post_events(&json!([])).await;
    assert_eq!(status, 200);
    assert_eq!(b["received"], 0);

    let r = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "not_found");
    app.stop().await;
}

// --------------------------------------------------------------- queries --

#[tokio::test]
async fn daily_counts_round_trip() {
    let app = TestApp::start().await;
    app.ingest_ok(&json!([
        ev(
            "question",
            "ai-assistant",
            Some("u1"),
            at("2026-11-01T00:00:00Z")
        ),
        ev(
            "question",
            "ai-assistant",
            Some("u1"),
            at("2026-11-01T23:59:59Z")
        ),
        ev(
            "login",
            "user-management",
            Some("u1"),
            at("2026-11-01T12:00:00Z")
        ),
        // 2 November: nothing.
        ev(
            "question",
            "ai-assistant",
            Some("u2"),
            at("2026-11-03T08:00:00+03:00")
        ), // 05:00Z
        ev("error", "1c-integration", None, at("2026-11-03T10:00:00Z")),
        // Outside the range.
        ev(
            "question",
            "ai-assistant",
            Some("u2"),
            at("2026-10-31T23:59:59Z")
        ),
        ev(
            "question",
            "ai-assistant",
            Some("u2"),
            at("2026-11-04T00:00:00Z")
        ),
    ]))
    .await;

    let d = app
        .get_json("/usage/daily?from=2026-11-01&to=2026-11-03")
        .await;
    assert_eq!(
        d["days"],
        json!([
            {"day": "2026-11-01", "count": 3},
            {"day": "2026-11-02", "count": 0},
            {"day": "2026-11-03", "count": 2},
        ])
    );
    assert_eq!(d["total"], 5);
    assert_eq!(d["from"], "2026-11-01T00:00:00Z");
    assert_eq!(d["to"], "2026-11-04T00:00:00Z");

    let d = app
        .get_json("/usage/daily?from=2026-11-01&to=2026-11-03&kind=question")
        .await;
    let counts: Vec<i64> = d["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, [2, 0, 1]);

    let d = app
        .get_json("/usage/daily?from=2026-11-01&to=2026-11-03&service=1c-integration")
        .await;
    let counts: Vec<i64> = d["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["count"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, [0, 0, 1]);

    // Timestamps are half-open [from, to).
    let d = app
        .get_json("/usage/daily?from=2026-11-01T12:00:00Z&to=2026-11-03T05:00:00Z")
        .await;
    assert_eq!(d["total"], 2, "{d}");

    // Bad parameters.
    for q in [
        "from=yesterday",
        "from=2026-11-03&to=2026-11-01",
        "kind=click",
        "from=1990-01-01&to=2026-01-01",
    ] {
        let r = app
            .client
            .get(app.url(&format!("/usage/daily?{q}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
        let b: Value = r.json().await.unwrap();
        assert!(b["error"]["code"].is_string(), "{b}");
    }
    app.stop().await;
}

#[tokio::test]
async fn services_and_users_round_trip() {
    let app = TestApp::start().await;
    let t = at("2026-11-10T10:00:00Z");
    app.ingest_ok(&json!([
        ev("question", "ai-assistant", Some("alice"), t),
        ev(
            "answer",
            "ai-assistant",
            Some("alice"),
            t + Duration::minutes(1)
        ),
        ev(
            "question",
            "ai-assistant",
            Some("bob"),
            t + Duration::minutes(2)
        ),
        ev("error", "ai-assistant", None, t + Duration::minutes(3)),
        ev(
            "login",
            "user-management",
            Some("alice"),
            t - Duration::hours(1)
        ),
        ev(
            "exchange",
            "1c-integration",
            Some("carol"),
            t + Duration::hours(1)
        ),
    ]))
    .await;

    let s = app.get_json("/usage/services").await;
    let services = s["services"].as_array().unwrap();
    assert_eq!(services.len(), 3, "{s}");
    let ai = &services[0];
    assert_eq!(ai["service"], "ai-assistant");
    assert_eq!(ai["events"], 4);
    assert_eq!(ai["users"], 2);
    assert_eq!(ai["errors"], 1);
    assert_eq!(ai["kinds"], json!({"question": 2, "answer": 1, "error": 1}));
    assert_eq!(ai["first_seen"], "2026-11-10T10:00:00Z");
    assert_eq!(ai["last_seen"], "2026-11-10T10:03:00Z");
    // Ties (1 event each) ordered by name.
    assert_eq!(services[1]["service"], "1c-integration");
    assert_eq!(services[2]["service"], "user-management");

    let s = app
        .get_json("/usage/services?from=2026-11-10T10:30:00Z")
        .await;
    assert_eq!(s["services"].as_array().unwrap().len(), 1);
    assert_eq!(s["services"][0]["service"], "1c-integration");

    let u = app.get_json("/usage/users").await;
    let users = u["users"].as_array().unwrap();
    assert_eq!(users.len(), 3, "{u}");
    assert_eq!(users[0]["user_id"], "alice");
    assert_eq!(users[0]["events"], 3);
    assert_eq!(users[0]["questions"], 1);
    assert_eq!(users[0]["services"], 2);
    assert_eq!(users[0]["last_seen"], "2026-11-10T10:01:00Z");
    assert_eq!(users[1]["user_id"], "bob");
    assert_eq!(users[2]["user_id"], "carol");

    let u = app.get_json("/usage/users?limit=1").await;
    assert_eq!(u["users"].as_array().unwrap().len(), 1);
    assert_eq!(u["limit"], 1);

    let r = app
        .client
        .get(app.url("/usage/users?limit=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    app.stop().await;
}

#[tokio::test]
async fn top_questions_are_normalised() {
    let app = TestApp::start().await;
    let t = at("2026-11-10T10:00:00Z");
    let q = |text: &str, user: &str, min: i64| {
        let mut e = ev(
            "question",
            "ai-assistant",
            Some(user),
            t + Duration::minutes(min),
        );
        e["properties"] = json!({"question": text, "lang": "ru"});
        e
    };
    let mut not_a_question = ev("answer", "ai-assistant", Some("u1"), t);
    not_a_question["properties"] = json!({"question": "Как провести документ?"});
    app.ingest_ok(&json!([
        q("Как провести документ?", "u1", 0),
        q("  как   ПРОВЕСТИ документ ", "u2", 1),
        q("Как провести\nдокумент??", "u1", 2),
        q("Где моё ёлочное меню?", "u3", 3),
        q("Где мое елочное меню", "u3", 4),
        q("What is a register?", "u4", 5),
        not_a_question,
        ev("question", "ai-assistant", Some("u5"), t),
    ]))
    .await;

    let top = app.get_json("/usage/top-questions").await;
    assert_eq!(
        top["questions"],
        json!([
            {"question": "как провести документ", "count": 3, "users": 2,
             "last_asked": "2026-11-10T10:02:00Z"},
            {"question": "где мое елочное меню", "count": 2, "users": 1,
             "last_asked": "2026-11-10T10:04:00Z"},
            {"question": "what is a register", "count": 1, "users": 1,
             "last_asked": "2026-11-10T10:05:00Z"},
        ]),
        "{top}"
    );
    let top = app.get_json("/usage/top-questions?limit=1").await;
    assert_eq!(top["questions"].as_array().unwrap().len(), 1);
    let top = app
        .get_json("/usage/top-questions?from=2026-11-10T10:03:00Z")
        .await;
    assert_eq!(top["questions"][0]["question"], "где мое елочное меню");
    app.stop().await;
}

#[tokio::test]
async fn latency_percentiles_match_known_data() {
    let app = TestApp::start().await;
    let t = at("2026-11-10T10:00:00Z");
    let mut batch = Vec::new();
    // 1..=100 ms for ai-assistant answers.
    for i in 1..=100 {
        let mut e = ev("answer", "ai-assistant", None, t + Duration::seconds(i));
        e["latency_ms"] = json!(i);
        batch.push(e);
    }
    // Other services / kinds / no latency must not count.
    for (kind, svc, lat) in [
        ("answer", "1c-integration", Some(1000.0)),
        ("answer", "1c-integration", Some(3000.0)),
        ("api_call", "ai-assistant", Some(99999.0)),
        ("answer", "ai-assistant", None),
    ] {
        let mut e = ev(kind, svc, None, t);
        if let Some(l) = lat {
            e["latency_ms"] = json!(l);
        }
        batch.push(e);
    }
    app.ingest_ok(&json!(batch)).await;

    let close = |v: &Value, want: f64| {
        let got = v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
        assert!((got - want).abs() < 1e-9, "got {got}, want {want}");
    };
    // percentile_cont interpolates at p * (n - 1): 1..=100 gives
    // p50 = 50.5, p90 = 90.1, p99 = 99.01.
    let l = app.get_json("/usage/latency?service=ai-assistant").await;
    assert_eq!(l["count"], 100, "{l}");
    close(&l["p50_ms"], 50.5);
    close(&l["p90_ms"], 90.1);
    close(&l["p99_ms"], 99.01);
    close(&l["avg_ms"], 50.5);
    close(&l["max_ms"], 100.0);

    // Two values 1000 and 3000: p50 = 2000, p90 = 2800, p99 = 2980.
    let l = app.get_json("/usage/latency?service=1c-integration").await;
    assert_eq!(l["count"], 2);
    close(&l["p50_ms"], 2000.0);
    close(&l["p90_ms"], 2800.0);
    close(&l["p99_ms"], 2980.0);

    // All services: 102 values.
    let l = app.get_json("/usage/latency").await;
    assert_eq!(l["count"], 102);
    close(&l["max_ms"], 3000.0);

    // A time window: seconds 1..=10 only -> 1..=10 ms.
    let l = app
        .get_json(
            "/usage/latency?service=ai-assistant&from=2026-11-10T10:00:01Z&to=2026-11-10T10:00:11Z",
        )
        .await;
    assert_eq!(l["count"], 10);
    close(&l["p50_ms"], 5.5);
    close(&l["p90_ms"], 9.1);

    // No data: count 0 and null percentiles.
    let l = app.get_json("/usage/latency?service=nobody").await;
    assert_eq!(l["count"], 0);
    assert_eq!(l["p50_ms"], Value::Null);
    assert_eq!(l["p99_ms"], Value::Null);
    app.stop().await;
}

// ---------------------------------------------------------------- export --

#[tokio::test]
async fn csv_export_escapes_and_keeps_cyrillic() {
    let app = TestApp::start().await;
    let t = at("2026-11-10T10:00:00Z");
    let mut tricky = ev("question", "ai-assistant", Some("Иванов, Иван"), t);
    tricky["latency_ms"] = json!(12.5);
    tricky["properties"] = json!({
        "question": "Как провести документ \"Реализация\", если\nпериод закрыт?"
    });
    let plain = ev(
        "login",
        "user-management",
        Some("u2"),
        t + Duration::minutes(1),
    );
    let late = ev(
        "login",
        "user-management",
        Some("u3"),
        at("2026-11-12T00:00:00Z"),
    );
    app.ingest_ok(&json!([tricky.clone(), plain.clone(), late]))
        .await;

    let r = app
        .client
        .get(app.url("/export.csv?from=2026-11-10&to=2026-11-11"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/csv; charset=utf-8"
    );
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("events-20261110-20261112.csv"));
    let bytes = r.bytes().await.unwrap();
    let text = std::str::from_utf8(&bytes).expect("export is UTF-8");
    // Cyrillic is raw UTF-8, not escaped.
    assert!(text.contains("\"Иванов, Иван\""), "{text}");
    assert!(bytes
        .windows("Реализация".len())
        .any(|w| w == "Реализация".as_bytes()));

    let rows = parse_csv(text);
    assert_eq!(
        rows[0],
        [
            "event_id",
            "kind",
            "service",
            "user_id",
            "occurred_at",
            "received_at",
            "latency_ms",
            "properties"
        ]
    );
    assert_eq!(rows.len(), 3, "{rows:?}");
    let r1 = &rows[1];
    assert_eq!(r1[0], tricky["event_id"].as_str().unwrap());
    assert_eq!(r1[1], "question");
    assert_eq!(r1[2], "ai-assistant");
    assert_eq!(r1[3], "Иванов, Иван");
    assert_eq!(r1[4], "2026-11-10T10:00:00.000000Z");
    assert_eq!(r1[6], "12.5");
    let props: Value = serde_json::from_str(&r1[7]).unwrap();
    assert_eq!(props, tricky["properties"]);
    let r2 = &rows[2];
    assert_eq!(r2[0], plain["event_id"].as_str().unwrap());
    assert_eq!(r2[3], "u2");
    assert_eq!(r2[6], "");
    assert_eq!(r2[7], "{}");

    // Kind filter; no range = everything.
    let text = app
        .client
        .get(app.url("/export.csv?kind=login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rows = parse_csv(&text);
    assert_eq!(rows.len(), 3);
    assert!(rows[1..].iter().all(|r| r[1] == "login"));

    // Nothing matches: the header only.
    let text = app
        .client
        .get(app.url("/export.csv?kind=exchange"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(parse_csv(&text).len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn csv_export_streams_many_rows() {
    let app = TestApp::start().await;
    let t = at("2026-11-10T10:00:00Z");
    for chunk in 0..3 {
        let batch: Vec<Value> = (0..1000)
            .map(|i| {
                let mut e = ev(
                    "api_call",
                    "api-gateway",
                    Some("u"),
                    t + Duration::seconds(chunk * 1000 + i),
                );
                e["properties"] = json!({"path": "/ai/ask", "note": "запрос, \"кавычки\""});
                e
            })
            .collect();
        app.ingest_ok(&json!(batch)).await;
    }
    let text = app
        .client
        .get(app.url("/export.csv"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.len() > 64 * 1024, "spans several chunks");
    let rows = parse_csv(&text);
    assert_eq!(rows.len(), 3001);
    // Ordered by occurred_at.
    assert!(rows[1..].windows(2).all(|w| w[0][4] < w[1][4]));
    app.stop().await;
}

// ------------------------------------------------------------- retention --

#[tokio::test]
async fn retention_deletes_only_old_rows() {
    let settings = Settings {
        retention_days: 90,
        ..Settings::default()
    };
    let app = TestApp::start_with(settings, None).await;
    let now = Utc::now();
    let old1 = ev("login", "svc", None, now - Duration::days(400));
    let old2 = ev(
        "question",
        "svc",
        None,
        now - Duration::days(90) - Duration::hours(1),
    );
    let keep1 = ev(
        "login",
        "svc",
        None,
        now - Duration::days(90) + Duration::hours(1),
    );
    let keep2 = ev("answer", "svc", None, now - Duration::minutes(1));
    app.ingest_ok(&json!([old1, old2, keep1.clone(), keep2.clone()]))
        .await;
    assert_eq!(app.count_rows().await, 4);

    let r = app
        .client
        .post(app.url("/retention/run"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["deleted"], 2, "{b}");
    assert_eq!(b["retention_days"], 90);
    let cutoff = chrono::DateTime::parse_from_rfc3339(b["cutoff"].as_str().unwrap()).unwrap();
    let expected_cutoff = now - Duration::days(90);
    assert!(
        (cutoff.with_timezone(&Utc) - expected_cutoff)
            .num_seconds()
            .abs()
            < 60
    );

    let mut left: Vec<String> = sqlx::query_scalar("SELECT event_id::text FROM events")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    left.sort();
    let mut want = vec![
        keep1["event_id"].as_str().unwrap().to_string(),
        keep2["event_id"].as_str().unwrap().to_string(),
    ];
    want.sort();
    assert_eq!(left, want);

    // Idempotent: nothing more to delete.
    let b: Value = app
        .client
        .post(app.url("/retention/run"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b["deleted"], 0);
    assert!(app
        .metrics()
        .await
        .contains("events_retention_deleted_total 2"));
    app.stop().await;
}

#[tokio::test]
async fn retention_deletes_in_batches_and_background_task_runs() {
    let app = TestApp::start().await;
    let old = Utc::now() - Duration::days(200);
    // More than one delete batch (5000).
    for chunk in 0..6 {
        let batch: Vec<Value> = (0..1000)
            .map(|i| {
                ev(
                    "api_call",
                    "svc",
                    None,
                    old + Duration::seconds(chunk * 1000 + i),
                )
            })
            .collect();
        app.ingest_ok(&json!(batch)).await;
    }
    app.ingest_ok(&json!([ev("login", "svc", None, Utc::now())]))
        .await;

    let counter = prometheus::IntCounter::new("deleted", "test").unwrap();
    let task = tokio::spawn(analytics::retention::background(
        app.pool.clone(),
        30,
        std::time::Duration::from_secs(3600),
        counter.clone(),
    ));
    // The first tick fires immediately.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while app.count_rows().await > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "background retention did not run"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    task.abort();
    assert_eq!(app.count_rows().await, 1);
    // The counter is bumped right after the run returns.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(counter.get(), 6000);
    app.stop().await;
}

// ------------------------------------------------------ auth and health --

#[tokio::test]
async fn auth_rules_for_reads_retention_and_ingestion() {
    let settings = Settings {
        ingest_token: Some(kit::Secret::new("ingest-secret".to_string())),
        ..Settings::default()
    };
    let app = TestApp::start_with(settings, Some(test_verifier())).await;
    let batch = json!([ev("login", "svc", Some("u1"), Utc::now())]);

    // Ingestion: the ingest token, not a JWT.
    let r = app
        .client
        .post(app.url("/events"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "missing_ingest_token");
    let r = app
        .client
        .post(app.url("/events"))
        .header("x-ingest-token", "wrong")
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .client
        .post(app.url("/events"))
        .header("x-ingest-token", "ingest-secret")
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.count_rows().await, 1);

    // Reads: analyst or admin.
    for path in [
        "/usage/daily",
        "/usage/services",
        "/usage/users",
        "/usage/top-questions",
        "/usage/latency",
        "/export.csv",
    ] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["code"], "missing_token", "{path}");

        let r = app
            .client
            .get(app.url(path))
            .bearer_auth("not.a.jwt")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");

        let r = app
            .client
            .get(app.url(path))
            .bearer_auth(token(&["viewer", "developer"]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["code"], "forbidden");

        for role in ["analyst", "admin"] {
            let r = app
                .client
                .get(app.url(path))
                .bearer_auth(token(&[role]))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path} as {role}");
        }
    }
    let d: Value = app
        .client
        .get(app.url("/usage/users"))
        .bearer_auth(token(&["analyst"]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["users"][0]["user_id"], "u1");

    // Retention: admin only.
    let r = app
        .client
        .post(app.url("/retention/run"))
        .bearer_auth(token(&["analyst"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = app
        .client
        .post(app.url("/retention/run"))
        .bearer_auth(token(&["admin"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["deleted"], 0);
    assert_eq!(app.count_rows().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn health_and_metrics_endpoints() {
    let app = TestApp::start().await;
    let r = app
        .client
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert!(b.to_string().contains("postgres"), "{b}");
    let r = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = app.metrics().await;
    for name in [
        "events_ingested_total",
        "events_duplicate_total",
        "events_rejected_total",
        "events_batch_size",
        "events_retention_deleted_total",
        "http_requests_total",
    ] {
        assert!(m.contains(&format!("# TYPE {name}")), "{name} missing: {m}");
    }
    app.stop().await;
}

#[tokio::test]
async fn ingestion_body_limit_is_larger_than_kits_default() {
    let settings = Settings {
        ingest_body_limit: 7 * 512 * 1024, // 3.5 MiB
        ..Settings::default()
    };
    let app = TestApp::start_with(settings, None).await;
    let now = Utc::now();
    let batch_of = |n: usize| -> Value {
        let v: Vec<Value> = (0..n)
            .map(|_| {
                let mut e = ev("api_call", "svc", None, now);
                e["properties"] = json!({"blob": "ж".repeat(2000)});
                e
            })
            .collect();
        json!(v)
    };
    // ~3 MB: above kit's 2 MiB default, below the ingestion limit.
    let big = batch_of(750);
    assert!(serde_json::to_vec(&big).unwrap().len() > 2 * 1024 * 1024);
    let (status, b) = app.post_events(&big).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["accepted"], 750);
    // ~4.1 MB: above the ingestion limit -> kit's JSON 413.
    let (status, b) = app.post_events(&batch_of(1000)).await;
    assert_eq!(status, 413, "{b}");
    assert_eq!(b["error"]["code"], "payload_too_large");
    app.stop().await;
}
