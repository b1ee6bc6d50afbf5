//! The real binary's `security migrate` subcommand (TEST_DATABASE_URL): it
//! needs only the database settings (no Redis, no ENCRYPTION_KEY_FILE: the
//! service itself is not started), applies both migrations of a fresh
//! database, reports them in one JSON line, is up to date on a second run,
//! and exits 3 without leaking the password when the database is unreachable.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kit::testing::TestDb;
use serde_json::Value;
use sqlx::{Connection, PgConnection};

/// Run `security migrate` with only `vars` set among the service's settings;
/// killed after 60 s.
fn run_migrate(vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_security"));
    cmd.arg("migrate")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "DATABASE_URL",
        "DATABASE_URL_FILE",
        "DATABASE_HOST",
        "DATABASE_PORT",
        "DATABASE_NAME",
        "DATABASE_USER",
        "DATABASE_PASSWORD",
        "DATABASE_PASSWORD_FILE",
        "REDIS_URL",
        "ENCRYPTION_KEY_FILE",
        "SERVICE_NAME",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the security binary");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`security migrate` still running after 60 s (did it start the server?): {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last stdout line, as JSON.
fn result_line(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no output; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {last}"))
}

#[tokio::test]
async fn migrate_subcommand_applies_then_is_up_to_date() {
    let db = TestDb::new().await;
    let vars = [
        ("DATABASE_URL", db.url.as_str()),
        ("DB_CONNECT_TIMEOUT", "10"),
    ];

    let out = run_migrate(&vars);
    let line = result_line(&out);
    assert_eq!(out.status.code(), Some(0), "{line}");
    assert_eq!(line["status"], "applied", "{line}");
    assert_eq!(line["service"], "security");
    let versions: Vec<i64> = line["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2], "{line}");
    assert_eq!(line["applied"][1]["description"], "audit privileges");
    // Exactly one line on a healthy database, and no server log lines.
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    for table in ["audit_log", "audit_head", "api_keys", "credentials"] {
        let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(table)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(exists.as_deref(), Some(table), "table {table} missing");
    }
    let rows: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(rows, vec![(1, true), (2, true)]);
    let _ = conn.close().await;

    let out = run_migrate(&vars);
    let line = result_line(&out);
    assert_eq!(out.status.code(), Some(0), "{line}");
    assert_eq!(line["status"], "up_to_date", "{line}");
    assert_eq!(line["applied"], serde_json::json!([]));
    assert_eq!(line["latest_version"], 2);
    db.drop_db().await;
}

#[test]
fn migrate_subcommand_fails_clearly_on_a_bad_database() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let url = format!("postgres://security:hunter2@127.0.0.1:{port}/security_db");
    let out = run_migrate(&[("DATABASE_URL", &url), ("DB_CONNECT_TIMEOUT", "1")]);
    let line = result_line(&out);
    assert_eq!(out.status.code(), Some(3), "{line}");
    assert_eq!(line["status"], "failed");
    assert_eq!(line["stage"], "connect");
    assert_eq!(line["database"], format!("127.0.0.1:{port}/security_db"));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("hunter2"), "{all}");

    // No database configured: a configuration error.
    let out = run_migrate(&[]);
    let line = result_line(&out);
    assert_eq!(out.status.code(), Some(2), "{line}");
    assert!(line["error"].as_str().unwrap().contains("DATABASE_URL"));
}
