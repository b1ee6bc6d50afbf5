mod common;

use common::{json, Service};
use reqwest::Method;
use serde_json::json;

async fn append_n(s: &Service, n: usize) {
    for i in 1..=n {
        let (st, v) = json(
            s.svc(Method::POST, "/audit")
                .json(&json!({"actor": format!("user-{i}"), "action": "login",
                    "resource": "session", "ip": "10.0.0.9", "detail": {"n": i, "ok": true}}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["id"], i as i64);
    }
}

async fn verify(s: &Service) -> serde_json::Value {
    let (st, v) = json(s.svc(Method::GET, "/audit/verify").send().await.unwrap()).await;
    assert_eq!(st, 200, "{v}");
    v
}

/// Runs SQL as the superuser with triggers disabled (what an attacker with
/// database access could do); the append-only trigger refuses it otherwise.
async fn tamper(s: &Service, sql: &str) {
    let plain = sqlx::query(sql).execute(&s.pool).await;
    let err = plain.expect_err("the append-only trigger must refuse changes");
    assert!(err.to_string().contains("append-only"), "{err}");
    let mut conn = s.pool.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    let r = sqlx::query(sql).execute(&mut *conn).await.unwrap();
    assert_eq!(r.rows_affected(), 1);
    sqlx::query("SET session_replication_role = origin")
        .execute(&mut *conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn chain_verifies_then_detects_an_edited_row() {
    let s = Service::start().await;
    append_n(&s, 6).await;
    let v = verify(&s).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["entries_checked"], 6);
    assert_eq!(v["head_seq"], 6);

    tamper(&s, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 3").await;
    let v = verify(&s).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_broken_id"], 3, "{v}");
    assert_eq!(v["reason"], "hash_mismatch", "{v}");
    assert_eq!(v["entries_checked"], 2);
}

#[tokio::test]
async fn chain_detects_a_deleted_row_and_a_deleted_tail() {
    let s = Service::start().await;
    append_n(&s, 5).await;
    tamper(&s, "DELETE FROM audit_log WHERE seq = 5").await;
    let v = verify(&s).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_broken_id"], 5, "{v}");
    assert_eq!(v["reason"]["truncated_tail"]["head_seq"], 5, "{v}");

    // Appending continues after the recorded head, so the gap stays visible.
    append_n_from(&s, 6).await;
    tamper(&s, "DELETE FROM audit_log WHERE seq = 2").await;
    let v = verify(&s).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_broken_id"], 2, "{v}");
    assert_eq!(v["reason"]["missing_entries"]["from"], 2, "{v}");
    assert_eq!(v["reason"]["missing_entries"]["to"], 2, "{v}");
}

async fn append_n_from(s: &Service, expect_id: i64) {
    let (st, v) = json(
        s.svc(Method::POST, "/audit")
            .json(&json!({"actor": "late", "action": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 201);
    assert_eq!(v["id"], expect_id, "{v}");
}

#[tokio::test]
async fn audit_list_pages_and_events_are_chained() {
    let s = Service::start().await;
    append_n(&s, 3).await;
    for kind in ["failed_login", "failed_login", "lockout"] {
        let (st, v) = json(
            s.svc(Method::POST, "/events")
                .json(&json!({"kind": kind, "subject": "alice", "ip": "192.0.2.1",
                    "detail": {"attempts": 5}}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["category"], "security_event");
    }
    let (st, v) = json(
        s.svc(Method::POST, "/events")
            .json(&json!({"kind": "Bad Kind", "subject": "alice"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 422, "{v}");
    assert!(v["error"]["code"].is_string());

    let (_, v) = json(
        s.svc(Method::GET, "/events?kind=failed_login")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["total"], 2, "{v}");
    assert!(v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["action"] == "failed_login" && e["actor"] == "alice"));

    let (_, v) = json(
        s.svc(Method::GET, "/audit?page=2&per_page=4")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["total"], 6);
    let ids: Vec<i64> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![2, 1], "newest first, second page");
    assert_eq!(verify(&s).await["ok"], true);
}

#[tokio::test]
async fn audit_needs_admin_or_service() {
    let s = Service::start().await;
    let r = s.http.get(s.url("/audit")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = s
        .as_user(Method::GET, "/audit/verify", &["viewer"])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (st, v) = json(
        s.as_user(Method::GET, "/audit/verify", &["admin"])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ok"], true);
    let r = s
        .http
        .get(s.url("/audit"))
        .header(security::SERVICE_TOKEN_HEADER, "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// Run as the database's owning (non-superuser) role, as in production:
/// the migrations leave it unable to UPDATE or DELETE audit rows at all.
#[tokio::test]
async fn owning_role_has_no_update_or_delete_privilege() {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    let db = kit::testing::TestDb::new().await;
    let admin = sqlx::PgPool::connect(&db.url).await.unwrap();
    let role = format!("sec_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE ROLE {role} LOGIN PASSWORD 'pw-{role}'"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("ALTER DATABASE \"{}\" OWNER TO {role}", db.name))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("GRANT ALL ON SCHEMA public TO {role}"))
        .execute(&admin)
        .await
        .unwrap();
    let opts: PgConnectOptions = db.url.parse().unwrap();
    let opts = opts.username(&role).password(&format!("pw-{role}"));
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(opts)
        .await
        .expect("connect as the owning role");
    security::MIGRATOR.run(&pool).await.unwrap();
    let rec = security::store::audit_append(
        &pool,
        security::store::NewEntry {
            category: "audit".into(),
            actor: "a".into(),
            action: "b".into(),
            resource: String::new(),
            ip: None,
            detail: serde_json::json!({}),
        },
    )
    .await
    .unwrap();
    assert_eq!(rec.id, 1);
    for sql in [
        "UPDATE audit_log SET actor = 'x'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
        assert!(
            err.to_string().contains("permission denied"),
            "{sql}: {err}"
        );
    }
    let report = security::store::audit_verify(&pool).await.unwrap();
    assert!(report.ok);
    pool.close().await;
    admin.close().await;
    db.drop_db().await;
    let mut c =
        <sqlx::PgConnection as sqlx::Connection>::connect(&kit::testing::test_database_url())
            .await
            .unwrap();
    sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&mut c)
        .await
        .unwrap();
}
