//! The `<binary> migrate` subcommand: apply the service's pending sqlx
//! migrations as a one-shot job (before a deploy rolls the service), then exit.
//!
//! ```ignore
//! // main.rs; `MIGRATOR` is the `sqlx::migrate!("./migrations")` static the
//! // service's `run` gives to `kit::db::connect_pg` at startup.
//! fn main() -> std::process::ExitCode {
//!     if let Some(code) = kit::migrate::run_if_requested("user-management", &user_management::MIGRATOR) {
//!         return code;
//!     }
//!     kit::main_with(8002, user_management::run)
//! }
//! ```
//!
//! A binary without a database that uses [`crate::main_with`] answers
//! `migrate` with exit code [`EXIT_CONFIG`] and a JSON error line (it never
//! starts its server by mistake).
//!
//! The database comes from the same settings the service reads at startup
//! ([`Config`]: `DATABASE_URL`, `DATABASE_URL_FILE`, or `DATABASE_HOST/PORT/
//! NAME/USER` + `DATABASE_PASSWORD[_FILE]`), the connection is retried for
//! `DB_CONNECT_TIMEOUT` seconds (default 60) exactly like at startup, and the
//! migrations are applied by the service's own [`Migrator`] (same advisory
//! lock, so a starting service and the job never migrate at the same time).
//! Nothing else is started: no HTTP server, no background task.
//!
//! Output: one JSON line on stdout (see [`Report::to_json`] and
//! [`Failure::to_json`]); connection retries add `postgres not ready` warning
//! lines before it. Exit codes: [`EXIT_OK`] 0, [`EXIT_MIGRATION`] 1 (a
//! migration failed, or the applied history does not match the binary's),
//! [`EXIT_CONFIG`] 2 (missing/invalid settings: retrying will not help),
//! [`EXIT_CONNECT`] 3 (database unreachable or credentials refused).

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::postgres::PgConnectOptions;
use sqlx::Connection;

use crate::config::{Config, Env};

/// Success: every migration is applied (now or before).
pub const EXIT_OK: u8 = 0;
/// A migration failed (SQL error, partially applied, modified or missing
/// migration in the database's history).
pub const EXIT_MIGRATION: u8 = 1;
/// The settings are missing or invalid (no `DATABASE_URL`, unreadable
/// `*_FILE`, unparsable URL, unexpected arguments).
pub const EXIT_CONFIG: u8 = 2;
/// The database could not be reached within `DB_CONNECT_TIMEOUT`, or refused
/// the connection (authentication, unknown database).
pub const EXIT_CONNECT: u8 = 3;

/// True when the binary was invoked as `<binary> migrate ...`.
pub fn is_migrate_invocation() -> bool {
    std::env::args().nth(1).as_deref() == Some("migrate")
}

/// `Some(exit code)` after running the `migrate` subcommand when the binary
/// was invoked as `<binary> migrate`; `None` otherwise (carry on with
/// [`crate::main_with`]). `default_service_name` is used when `SERVICE_NAME`
/// is unset, as at startup.
pub fn run_if_requested(default_service_name: &str, migrator: &Migrator) -> Option<ExitCode> {
    if !is_migrate_invocation() {
        return None;
    }
    let extra: Vec<String> = std::env::args().skip(2).collect();
    Some(run(default_service_name, migrator, &extra))
}

/// Run the subcommand (JSON logs, current-thread runtime), print the result
/// line and return the exit code. `extra_args` (after `migrate`) must be empty.
pub fn run(default_service_name: &str, migrator: &Migrator, extra_args: &[String]) -> ExitCode {
    // PostgreSQL notices ("relation _sqlx_migrations already exists,
    // skipping") are not worth a line each, unless RUST_LOG asks for sqlx.
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if f.contains("sqlx") => f,
        Ok(f) if !f.trim().is_empty() => format!("{f},sqlx::postgres::notice=warn"),
        _ => "info,sqlx::postgres::notice=warn".to_string(),
    };
    crate::telemetry::init_tracing_with_filter(&filter);
    let service = Env::process()
        .var("SERVICE_NAME")
        .unwrap_or_else(|| default_service_name.to_string());
    let result = if extra_args.is_empty() {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(migrate(&Env::process(), default_service_name, migrator)),
            Err(e) => Err(Failure::new(
                &service,
                Stage::Config,
                None,
                format!("cannot start the tokio runtime: {e}"),
            )),
        }
    } else {
        Err(Failure::new(
            &service,
            Stage::Config,
            None,
            format!(
                "unexpected arguments after `migrate`: {:?}; usage: <binary> migrate \
                 (the database comes from DATABASE_URL[_FILE] or DATABASE_HOST/PORT/NAME/USER \
                 + DATABASE_PASSWORD_FILE)",
                extra_args
            ),
        ))
    };
    let (line, code) = match &result {
        Ok(report) => (report.to_json(), EXIT_OK),
        Err(failure) => (failure.to_json(), failure.exit_code()),
    };
    println!("{line}");
    ExitCode::from(code)
}

/// The answer of [`crate::main_with`] to `migrate` when the binary did not
/// handle it first: it has no database migrations.
pub fn not_supported() -> ExitCode {
    let bin = std::env::args()
        .next()
        .map(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(a)
        })
        .unwrap_or_else(|| "this binary".into());
    let service = Env::process().var("SERVICE_NAME").unwrap_or(bin.clone());
    let failure = Failure::new(
        &service,
        Stage::Config,
        None,
        format!("{bin} has no database migrations: `migrate` is only for services with PostgreSQL"),
    );
    println!("{}", failure.to_json());
    ExitCode::from(failure.exit_code())
}

/// Where a `migrate` run failed; decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Settings ([`EXIT_CONFIG`]).
    Config,
    /// Reaching the database ([`EXIT_CONNECT`]).
    Connect,
    /// Applying the migrations ([`EXIT_MIGRATION`]).
    Migrate,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Config => "config",
            Stage::Connect => "connect",
            Stage::Migrate => "migrate",
        }
    }
}

/// A successful run.
#[derive(Clone, Debug)]
pub struct Report {
    pub service: String,
    /// `host:port/database` (never the password).
    pub database: String,
    /// Migrations applied by this run, `(version, description)`, in order.
    pub applied: Vec<(i64, String)>,
    /// Highest version recorded as applied in the database after the run.
    pub latest_version: Option<i64>,
    /// Number of (up) migrations the binary carries.
    pub known: usize,
    pub elapsed: Duration,
}

impl Report {
    pub fn up_to_date(&self) -> bool {
        self.applied.is_empty()
    }

    /// The result line:
    /// `{"timestamp","level":"INFO","service","event":"migrate","status":
    /// "applied"|"up_to_date","applied":[{"version","description"}],
    /// "latest_version","known_migrations","database","elapsed_ms","message"}`.
    pub fn to_json(&self) -> serde_json::Value {
        let message = if self.up_to_date() {
            match self.latest_version {
                Some(v) => format!("database is up to date (latest migration {v})"),
                None => "database is up to date (no migrations)".to_string(),
            }
        } else {
            let list: Vec<String> = self
                .applied
                .iter()
                .map(|(v, d)| format!("{v} ({d})"))
                .collect();
            format!(
                "applied {} migration(s): {}",
                self.applied.len(),
                list.join(", ")
            )
        };
        json!({
            "timestamp": timestamp(),
            "level": "INFO",
            "service": self.service,
            "event": "migrate",
            "status": if self.up_to_date() { "up_to_date" } else { "applied" },
            "applied": self.applied.iter()
                .map(|(v, d)| json!({"version": v, "description": d}))
                .collect::<Vec<_>>(),
            "latest_version": self.latest_version,
            "known_migrations": self.known,
            "database": self.database,
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "message": message,
        })
    }
}

/// A failed run.
#[derive(Clone, Debug)]
pub struct Failure {
    pub service: String,
    pub stage: Stage,
    /// `host:port/database` when the settings could be read.
    pub database: Option<String>,
    /// What failed and how to fix it (never contains the password).
    pub error: String,
}

impl Failure {
    fn new(service: &str, stage: Stage, database: Option<String>, error: String) -> Self {
        Failure {
            service: service.to_string(),
            stage,
            database,
            error,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self.stage {
            Stage::Config => EXIT_CONFIG,
            Stage::Connect => EXIT_CONNECT,
            Stage::Migrate => EXIT_MIGRATION,
        }
    }

    /// `{"timestamp","level":"ERROR","service","event":"migrate","status":
    /// "failed","stage","database","exit_code","error","message"}`: `error`
    /// says what failed, where and how to fix it; `message` is the summary.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "timestamp": timestamp(),
            "level": "ERROR",
            "service": self.service,
            "event": "migrate",
            "status": "failed",
            "stage": self.stage.as_str(),
            "database": self.database,
            "exit_code": self.exit_code(),
            "error": self.error,
            "message": format!(
                "migrate failed at the {} stage (exit {})",
                self.stage.as_str(),
                self.exit_code()
            ),
        })
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "migrate failed ({}): {}",
            self.stage.as_str(),
            self.error
        )
    }
}

/// Now, as RFC 3339 UTC with microseconds (`2026-11-26T07:00:35.393177Z`),
/// the format of the JSON log lines.
fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_micros())
}

/// Unix seconds + microseconds as RFC 3339 UTC (days-to-civil conversion
/// of Howard Hinnant's `chrono`-compatible algorithm).
fn rfc3339(unix_secs: i64, micros: u32) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        secs_of_day / 3_600,
        secs_of_day % 3_600 / 60,
        secs_of_day % 60
    )
}

/// `host:port/database` of parsed options (the password is never shown).
pub fn describe(opts: &PgConnectOptions) -> String {
    let host = match opts.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => opts.get_host().to_string(),
    };
    let db = opts.get_database().unwrap_or(opts.get_username());
    format!("{host}:{}/{db}", opts.get_port())
}

/// The same URL with the password (if any) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return "[unparsable URL, not shown]".to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!(
                "{}{masked}{}",
                &url[..scheme_end],
                &rest[at..] // from '@' on
            )
        }
        None => url.to_string(),
    }
}

/// Apply the pending migrations of `migrator` to the database configured in
/// `env` (as [`Config::from_source`] reads it at startup) and report which
/// ones this run applied. The testable core of the subcommand.
pub async fn migrate(
    env: &Env,
    default_service_name: &str,
    migrator: &Migrator,
) -> Result<Report, Failure> {
    let started = Instant::now();
    let service = env
        .var("SERVICE_NAME")
        .unwrap_or_else(|| default_service_name.to_string());
    let config_failure = |e: String| Failure::new(&service, Stage::Config, None, e);

    let cfg = Config::from_source(env, default_service_name, 0)
        .map_err(|e| config_failure(format!("invalid configuration: {e}")))?;
    let url = cfg
        .require_database_url()
        .map_err(|e| config_failure(format!("{e}: this service has no database configured")))?;
    let opts: PgConnectOptions = url.parse().map_err(|e| {
        config_failure(format!(
            "DATABASE_URL is not a valid PostgreSQL URL ({}): {e}; expected \
             postgres://user:password@host:port/database",
            redact_url(url)
        ))
    })?;
    let database = describe(&opts);
    let user = opts.get_username().to_string();

    let mut conn = crate::db::wait_for_pg(&opts, cfg.connect_timeout)
        .await
        .map_err(|e| {
            Failure::new(
                &service,
                Stage::Connect,
                Some(database.clone()),
                format!(
                    "cannot connect to PostgreSQL at {database} as user {user} \
                     (retried for {:.1} s, DB_CONNECT_TIMEOUT): {}; check that the database \
                     is running and reachable and that DATABASE_URL / DATABASE_HOST, \
                     DATABASE_NAME, DATABASE_USER and DATABASE_PASSWORD_FILE are right",
                    cfg.connect_timeout.as_secs_f64(),
                    root_cause(&e)
                ),
            )
        })?;

    let result = apply(&mut conn, migrator).await;
    let _ = conn.close().await;
    match result {
        Ok((applied, latest_version)) => Ok(Report {
            service,
            database,
            applied,
            latest_version,
            known: migrator
                .iter()
                .filter(|m| !m.migration_type.is_down_migration())
                .count(),
            elapsed: started.elapsed(),
        }),
        Err(e) => Err(Failure::new(
            &service,
            Stage::Migrate,
            Some(database.clone()),
            format!("migrating {database} as user {user}: {e}"),
        )),
    }
}

/// Run `migrator` on `conn`; return the migrations this run applied and the
/// latest applied version. The migrator's session-level advisory lock is
/// taken around the before/after listing too (PostgreSQL advisory locks are
/// re-entrant within a session; `Migrator::run` takes it once more), so the
/// report names exactly the migrations this run applied even when a
/// starting service migrates at the same time.
async fn apply(
    conn: &mut sqlx::PgConnection,
    migrator: &Migrator,
) -> Result<(Vec<(i64, String)>, Option<i64>), String> {
    conn.lock()
        .await
        .map_err(|e| format!("cannot take the migration lock: {e}"))?;
    let res = async {
        conn.ensure_migrations_table()
            .await
            .map_err(|e| format!("cannot create _sqlx_migrations: {e}"))?;
        let before: HashSet<i64> = conn
            .list_applied_migrations()
            .await
            .map_err(|e| format!("cannot read _sqlx_migrations: {e}"))?
            .into_iter()
            .map(|m| m.version)
            .collect();
        migrator.run(&mut *conn).await.map_err(|e| {
            let hint = match &e {
                sqlx::migrate::MigrateError::Dirty(_) => {
                    "; fix the database by hand, then delete that row of _sqlx_migrations"
                }
                sqlx::migrate::MigrateError::VersionMismatch(_)
                | sqlx::migrate::MigrateError::VersionMissing(_) => {
                    "; the database was migrated by a different build of this service"
                }
                _ => "",
            };
            format!("{e}{hint}")
        })?;
        let after = conn
            .list_applied_migrations()
            .await
            .map_err(|e| format!("cannot read _sqlx_migrations: {e}"))?;
        let latest = after.iter().map(|m| m.version).max();
        let applied = migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .filter(|m| !before.contains(&m.version))
            .filter(|m| after.iter().any(|a| a.version == m.version))
            .map(|m| (m.version, m.description.to_string()))
            .collect();
        Ok((applied, latest))
    }
    .await;
    if res.is_ok() {
        // On error the connection is closed, which releases the lock.
        let _ = conn.unlock().await;
    }
    res
}

/// The error below `wait_for_pg`'s "cannot connect to PostgreSQL" context
/// (the caller's message says that already; sqlx errors print their own
/// source, so one level is enough).
fn root_cause(e: &anyhow::Error) -> String {
    match e.chain().nth(1) {
        Some(inner) => inner.to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(
            rfc3339(1_795_676_435, 393_177),
            "2026-11-26T07:00:35.393177Z"
        );
        assert_eq!(
            rfc3339(4_107_542_399, 999_999),
            "2100-02-28T23:59:59.999999Z"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("postgres://h/db?x=a@b"), "postgres://h/db?x=a@b");
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db"
        );
        assert!(!redact_url("nonsense:secret").contains("secret"));
    }

    #[test]
    fn describes_without_password() {
        let opts: PgConnectOptions = "postgres://u:secret@db.example:5433/app".parse().unwrap();
        assert_eq!(describe(&opts), "db.example:5433/app");
        let opts: PgConnectOptions = "postgres://bob:secret@h".parse().unwrap();
        assert_eq!(describe(&opts), "h:5432/bob");
    }

    #[test]
    fn exit_codes_follow_the_stage() {
        let f = |s| Failure::new("svc", s, None, "x".into());
        assert_eq!(f(Stage::Config).exit_code(), EXIT_CONFIG);
        assert_eq!(f(Stage::Connect).exit_code(), EXIT_CONNECT);
        assert_eq!(f(Stage::Migrate).exit_code(), EXIT_MIGRATION);
        let j = f(Stage::Connect).to_json();
        assert_eq!(j["status"], "failed");
        assert_eq!(j["stage"], "connect");
        assert_eq!(j["exit_code"], 3);
    }
}
