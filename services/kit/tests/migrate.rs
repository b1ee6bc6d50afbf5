//! `kit::migrate` against the real PostgreSQL at TEST_DATABASE_URL: a fresh
//! database gets every migration, a second run is up to date, a partly
//! migrated one gets only the rest, and bad settings / an unreachable server /
//! a failing migration give the right stage, exit code and a password-free
//! message.

use std::io::Write;

use kit::config::Env;
use kit::migrate::{migrate, Stage, EXIT_CONFIG, EXIT_CONNECT, EXIT_MIGRATION};
use kit::testing::{test_database_url, TestDb};
use sqlx::migrate::Migrator;
use sqlx::{Connection, PgConnection};

static MIGRATOR: Migrator = sqlx::migrate!("tests/fixtures/migrations");
/// The same first migration, without the second (an older build).
static OLDER: Migrator = sqlx::migrate!("tests/fixtures/older_migrations");
static BROKEN: Migrator = sqlx::migrate!("tests/fixtures/broken_migrations");

fn env_url(url: &str) -> Env {
    Env::from_pairs([("DATABASE_URL", url), ("DB_CONNECT_TIMEOUT", "5")])
}

async fn tables(url: &str) -> Vec<String> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let names: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    names.into_iter().map(|(n,)| n).collect()
}

async fn applied_versions(url: &str) -> Vec<(i64, bool)> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let rows: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let _ = conn.close().await;
    rows
}

/// host, port, user, password of TEST_DATABASE_URL (no percent-encoding expected).
fn test_parts() -> (String, String, String, String) {
    let url = test_database_url();
    let rest = url.split_once("://").unwrap().1;
    let (userinfo, hostpart) = rest.rsplit_once('@').expect("TEST_DATABASE_URL has a user");
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let authority = hostpart.split(['/', '?']).next().unwrap();
    let (host, port) = authority.split_once(':').unwrap_or((authority, "5432"));
    (host.into(), port.into(), user.into(), password.into())
}

#[tokio::test]
async fn fresh_database_gets_all_migrations_then_is_up_to_date() {
    let db = TestDb::new().await;
    let env = env_url(&db.url);

    let report = migrate(&env, "kit-test", &MIGRATOR).await.unwrap();
    assert_eq!(
        report.applied,
        vec![(1, "widgets".to_string()), (2, "gadgets".to_string())]
    );
    assert_eq!(report.latest_version, Some(2));
    assert_eq!(report.known, 2);
    assert_eq!(report.service, "kit-test");
    assert!(
        report.database.ends_with(&format!("/{}", db.name)),
        "{}",
        report.database
    );
    let line = report.to_json();
    assert_eq!(line["status"], "applied");
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["event"], "migrate");
    assert_eq!(line["applied"][0]["version"], 1);
    assert_eq!(line["applied"][1]["version"], 2);
    assert_eq!(line["applied"][1]["description"], "gadgets");
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(line["elapsed_ms"].is_u64());
    // One line of JSON.
    assert!(!line.to_string().contains('\n'));
    assert!(!line.to_string().contains("postgres:postgres@"));

    let tables = tables(&db.url).await;
    for t in ["_sqlx_migrations", "kit_gadgets", "kit_widgets"] {
        assert!(tables.contains(&t.to_string()), "{t} missing in {tables:?}");
    }
    assert_eq!(applied_versions(&db.url).await, vec![(1, true), (2, true)]);

    let again = migrate(&env, "kit-test", &MIGRATOR).await.unwrap();
    assert!(again.up_to_date());
    assert!(again.applied.is_empty());
    assert_eq!(again.latest_version, Some(2));
    let line = again.to_json();
    assert_eq!(line["status"], "up_to_date");
    assert_eq!(line["applied"], serde_json::json!([]));
    assert!(
        line["message"].as_str().unwrap().contains("up to date"),
        "{line}"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn only_pending_migrations_are_reported() {
    let db = TestDb::new().await;
    // An older build of the service: only the first migration.
    let r1 = migrate(&env_url(&db.url), "kit-test", &OLDER)
        .await
        .unwrap();
    assert_eq!(r1.applied, vec![(1, "widgets".to_string())]);
    assert_eq!(r1.latest_version, Some(1));
    let r2 = migrate(&env_url(&db.url), "kit-test", &MIGRATOR)
        .await
        .unwrap();
    assert_eq!(r2.applied, vec![(2, "gadgets".to_string())]);
    assert_eq!(r2.latest_version, Some(2));
    db.drop_db().await;
}

#[tokio::test]
async fn settings_are_read_as_at_startup_file_and_parts() {
    // DATABASE_URL_FILE
    let db = TestDb::new().await;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "{}", db.url).unwrap();
    let env = Env::from_pairs([
        ("DATABASE_URL_FILE", f.path().to_str().unwrap()),
        ("SERVICE_NAME", "renamed"),
    ]);
    let r = migrate(&env, "kit-test", &MIGRATOR).await.unwrap();
    assert_eq!(r.applied.len(), 2);
    assert_eq!(r.service, "renamed");
    db.drop_db().await;

    // DATABASE_HOST/PORT/NAME/USER + DATABASE_PASSWORD_FILE
    let db = TestDb::new().await;
    let (host, port, user, password) = test_parts();
    let mut pw = tempfile::NamedTempFile::new().unwrap();
    writeln!(pw, "{password}").unwrap();
    let env = Env::from_pairs([
        ("DATABASE_HOST", host.as_str()),
        ("DATABASE_PORT", port.as_str()),
        ("DATABASE_NAME", db.name.as_str()),
        ("DATABASE_USER", user.as_str()),
        ("DATABASE_PASSWORD_FILE", pw.path().to_str().unwrap()),
    ]);
    let r = migrate(&env, "kit-test", &MIGRATOR).await.unwrap();
    assert_eq!(r.applied.len(), 2);
    assert_eq!(r.database, format!("{host}:{port}/{}", db.name));
    assert!(tables(&db.url).await.contains(&"kit_gadgets".to_string()));
    db.drop_db().await;
}

#[tokio::test]
async fn bad_settings_fail_with_config_exit_code() {
    // No database configured at all.
    let f = migrate(
        &Env::from_pairs::<[(&str, &str); 0], _, _>([]),
        "kit-test",
        &MIGRATOR,
    )
    .await
    .unwrap_err();
    assert_eq!(f.stage, Stage::Config);
    assert_eq!(f.exit_code(), EXIT_CONFIG);
    assert!(f.error.contains("DATABASE_URL"), "{}", f.error);

    // Unparsable URL: the password is not echoed.
    let f = migrate(
        &env_url("postgres://root:hunter2@127.0.0.1:notaport/x"),
        "kit-test",
        &MIGRATOR,
    )
    .await
    .unwrap_err();
    assert_eq!(f.exit_code(), EXIT_CONFIG);
    assert!(
        f.error.contains("not a valid PostgreSQL URL"),
        "{}",
        f.error
    );
    assert!(!f.to_json().to_string().contains("hunter2"), "{}", f.error);

    // Unreadable secret file.
    let f = migrate(
        &Env::from_pairs([("DATABASE_URL_FILE", "/nonexistent/db-url")]),
        "kit-test",
        &MIGRATOR,
    )
    .await
    .unwrap_err();
    assert_eq!(f.exit_code(), EXIT_CONFIG);
    assert!(f.error.contains("DATABASE_URL_FILE"), "{}", f.error);
}

#[tokio::test]
async fn unreachable_or_refused_database_fails_with_connect_exit_code() {
    // Nothing listens on this port: retried for DB_CONNECT_TIMEOUT, then fails.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let env = Env::from_pairs([
        (
            "DATABASE_URL",
            format!("postgres://app:hunter2@127.0.0.1:{port}/appdb"),
        ),
        ("DB_CONNECT_TIMEOUT", "1".to_string()),
    ]);
    let start = std::time::Instant::now();
    let f = migrate(&env, "kit-test", &MIGRATOR).await.unwrap_err();
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(f.stage, Stage::Connect);
    assert_eq!(f.exit_code(), EXIT_CONNECT);
    assert_eq!(
        f.database.as_deref(),
        Some(&*format!("127.0.0.1:{port}/appdb"))
    );
    assert!(
        f.error
            .contains(&format!("127.0.0.1:{port}/appdb as user app")),
        "{}",
        f.error
    );
    let line = f.to_json().to_string();
    assert!(!line.contains("hunter2"), "{line}");
    assert!(line.contains("\"exit_code\":3"), "{line}");

    // The server answers but refuses the password.
    let (host, port, user, _) = test_parts();
    let env = Env::from_pairs([
        (
            "DATABASE_URL",
            format!("postgres://{user}:wrong-hunter2@{host}:{port}/postgres"),
        ),
        ("DB_CONNECT_TIMEOUT", "0.5".to_string()),
    ]);
    let f = migrate(&env, "kit-test", &MIGRATOR).await.unwrap_err();
    assert_eq!(f.exit_code(), EXIT_CONNECT);
    assert!(!f.to_json().to_string().contains("wrong-hunter2"));
}

#[tokio::test]
async fn failing_migration_reports_the_version_and_exit_code() {
    let db = TestDb::new().await;
    let f = migrate(&env_url(&db.url), "kit-test", &BROKEN)
        .await
        .unwrap_err();
    assert_eq!(f.stage, Stage::Migrate);
    assert_eq!(f.exit_code(), EXIT_MIGRATION);
    assert!(f.error.contains("migration 2"), "{}", f.error);
    assert!(f.error.contains("kit_no_such_table"), "{}", f.error);
    assert!(f.error.contains(&format!("/{}", db.name)), "{}", f.error);
    // The first one stays applied; the broken one is not recorded.
    assert_eq!(applied_versions(&db.url).await, vec![(1, true)]);
    // A database migrated by a different build (checksum of 1 differs).
    let f = migrate(&env_url(&db.url), "kit-test", &MIGRATOR)
        .await
        .unwrap_err();
    assert_eq!(f.exit_code(), EXIT_MIGRATION);
    assert!(f.error.contains("modified"), "{}", f.error);
    db.drop_db().await;
}
