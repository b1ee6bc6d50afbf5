//! `backup` and `restore` against the real Docker Engine, under their own
//! project name (so no other stack on the host is touched): users created in
//! user-management's database survive `down --volumes`; a corrupt, truncated
//! or incomplete backup is refused before anything changes; `--keep` prunes;
//! a pg_dump that fails in its container exits 39 and leaves no backup.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

const PROJECT: &str = "stackctl-backup-e2e";

fn sc(args: &[&str]) -> Output {
    run_logged(in_project(PROJECT).args(args), &args.join(" "))
}

fn ok(args: &[&str]) -> Output {
    let o = sc(args);
    succeeded(&o, &format!("stackctl {}", args.join(" ")));
    o
}

/// One value from user-management's database, through `stackctl exec`.
fn query(sql: &str) -> String {
    psql("user_management_db", sql)
}

/// `sql` run by psql in postgres-user, connected to `database`; its output.
fn psql(database: &str, sql: &str) -> String {
    let o = ok(&[
        "exec",
        "postgres-user",
        "--",
        "psql",
        "-U",
        "user_management",
        "-d",
        database,
        "-tAc",
        sql,
    ]);
    stdout(&o).trim().to_string()
}

/// A Redis command, with the password from the secret file inside the container.
fn redis(args: &str) -> String {
    let line =
        format!("redis-cli --no-auth-warning -a \"$(cat /run/secrets/redis-password)\" {args}");
    let o = ok(&["exec", "redis", "--", "/bin/sh", "-c", &line]);
    stdout(&o).trim().to_string()
}

fn backup_users() -> i64 {
    query("select count(*) from users where email like 'backup-e2e-%'")
        .parse()
        .unwrap()
}

fn backups_dir() -> PathBuf {
    repo().join("backups").join(PROJECT)
}

fn complete_backups() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(backups_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("manifest.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Removes this project's containers, volumes and backups, also when the test fails.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = sc(&["down", "--volumes", "--yes"]);
        let _ = std::fs::remove_dir_all(backups_dir());
    }
}

#[test]
fn backup_and_restore_on_the_real_engine() {
    let _ = sc(&["down", "--volumes", "--yes"]);
    let _ = std::fs::remove_dir_all(backups_dir());
    let _cleanup = Cleanup;

    ok(&["setup"]);
    // The images of the current commit (`start` checks every service's image,
    // not only those it starts). Built in the target dir the other engine
    // tests share (CARGO_TARGET_DIR), so cargo has nothing to do when one of
    // them built first.
    ok(&["build"]);
    ok(&["start", "user-management"]);

    // A container that is not running: a clear error, nothing written.
    let o = sc(&["backup", "--service", "analytics"]);
    assert_eq!(o.status.code(), Some(38), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("{PROJECT}-postgres-analytics-1 is not running")),
        "{}",
        stderr(&o)
    );
    assert!(!backups_dir().exists() || complete_backups().is_empty());

    for i in 1..=3 {
        query(&format!("insert into users (id, email, password_hash) values (gen_random_uuid(), 'backup-e2e-{i}@example.com', 'x')"));
    }
    assert_eq!(backup_users(), 3);
    assert_eq!(redis("set backup-e2e-key kept"), "OK");

    let t = Instant::now();
    let o = ok(&[
        "--json",
        "backup",
        "--service",
        "user-management",
        "--service",
        "redis",
    ]);
    let backup_secs = t.elapsed().as_secs_f64();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("backup --json");
    let name = v["backup"].as_str().unwrap().to_string();
    let dir = backups_dir().join(&name);
    let files = v["manifest"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{v}");
    assert_eq!(files[0]["file"], "postgres-user.dump");
    assert_eq!(files[0]["database"], "user_management_db");
    assert_eq!(files[0]["services"][0], "user-management");
    assert_eq!(files[1]["file"], "redis.rdb");
    assert_eq!(v["manifest"]["project"], PROJECT);
    for f in files {
        let bytes = std::fs::read(dir.join(f["file"].as_str().unwrap())).unwrap();
        assert_eq!(bytes.len() as u64, f["size"].as_u64().unwrap());
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            f["sha256"].as_str().unwrap()
        );
    }
    assert!(
        std::fs::read(dir.join("postgres-user.dump"))
            .unwrap()
            .starts_with(b"PGDMP"),
        "a pg_dump custom-format archive"
    );
    assert!(
        std::fs::read(dir.join("redis.rdb"))
            .unwrap()
            .starts_with(b"REDIS"),
        "an RDB snapshot"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("postgres-user.dump"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "dumps hold password hashes");

    // All data gone; a fresh stack (the service re-creates its tables).
    ok(&["down", "--volumes", "--yes"]);
    ok(&["start", "user-management"]);
    assert_eq!(backup_users(), 0);
    assert_eq!(redis("get backup-e2e-key"), "");
    query("insert into users (id, email, password_hash) values (gen_random_uuid(), 'after-e2e@example.com', 'x')");

    // Without a terminal, restore needs --yes.
    let o = sc(&["restore", &name]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));

    // A corrupt copy (one byte flipped), a truncated one, an incomplete one:
    // each refused before anything changes, naming the file.
    let scratch = tempfile::tempdir().unwrap();
    let bad = scratch.path().join("bad");
    copy_dir(&dir, &bad);
    let dump = bad.join("postgres-user.dump");
    let mut bytes = std::fs::read(&dump).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&dump, &bytes).unwrap();
    let o = sc(&["restore", bad.to_str().unwrap(), "--yes"]);
    assert_eq!(o.status.code(), Some(37), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("postgres-user.dump") && stderr(&o).contains("corrupt"),
        "{}",
        stderr(&o)
    );
    std::fs::write(&dump, &bytes[..mid]).unwrap();
    let o = sc(&["restore", bad.to_str().unwrap(), "--yes"]);
    assert_eq!(o.status.code(), Some(37), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("postgres-user.dump") && stderr(&o).contains("truncated"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(bad.join("manifest.json")).unwrap();
    let o = sc(&["restore", bad.to_str().unwrap(), "--yes"]);
    assert_eq!(o.status.code(), Some(37), "{}", stderr(&o));
    assert!(stderr(&o).contains("incomplete"), "{}", stderr(&o));
    // Untouched: the new user is there, the service was never stopped.
    assert_eq!(
        query("select count(*) from users where email = 'after-e2e@example.com'"),
        "1"
    );
    assert_eq!(backup_users(), 0);
    let o = ok(&[
        "exec",
        "user-management",
        "--",
        "/app/user-management",
        "healthcheck",
    ]);
    assert_eq!(o.status.code(), Some(0));

    let t = Instant::now();
    let o = ok(&["restore", &name, "--yes"]);
    let restore_secs = t.elapsed().as_secs_f64();
    let err = stderr(&o);
    assert!(
        err.contains("stopped security, user-management")
            && err.contains("started redis, security, user-management again"),
        "{err}"
    );
    assert!(err.contains("Redis restored from redis.rdb"), "{err}");
    assert_eq!(backup_users(), 3, "the users are back");
    assert_eq!(redis("get backup-e2e-key"), "kept", "Redis' data is back");
    assert_eq!(
        query("select count(*) from users where email = 'after-e2e@example.com'"),
        "0",
        "the database is the backup's"
    );
    // The service runs again on the restored database.
    ok(&[
        "exec",
        "user-management",
        "--",
        "/app/user-management",
        "healthcheck",
    ]);
    eprintln!("backup (user-management database + Redis): {backup_secs:.1}s; restore (verify, stop, pg_restore, start): {restore_secs:.1}s");

    // Retention: only complete backups count, the newest N stay.
    let partial = backups_dir().join("00000000T000000Z");
    std::fs::create_dir(&partial).unwrap();
    ok(&["backup", "--service", "user-management"]);
    ok(&["backup", "--service", "user-management"]);
    let before = complete_backups();
    assert_eq!(before.len(), 3, "{before:?}");
    let o = ok(&[
        "--json",
        "backup",
        "--service",
        "user-management",
        "--keep",
        "2",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let newest = v["backup"].as_str().unwrap().to_string();
    let after = complete_backups();
    assert_eq!(
        after,
        vec![before[2].clone(), newest],
        "the two newest are kept"
    );
    assert_eq!(v["deleted"].as_array().unwrap().len(), 2, "{v}");
    assert!(!dir.exists(), "the oldest backup is deleted");
    assert!(
        partial.is_dir(),
        "a directory without a manifest is not a backup: left alone"
    );
    let o = sc(&["backup", "--keep", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    // pg_dump fails in its container (the database refuses connections):
    // exit 39 with pg_dump's own message, and no backup is left behind.
    let before = complete_backups();
    // (From another database: the one connected to cannot refuse itself.)
    psql(
        "postgres",
        "alter database user_management_db allow_connections false",
    );
    let o = sc(&["backup", "--service", "user-management"]);
    assert_eq!(o.status.code(), Some(39), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is not currently accepting connections"),
        "says why: {}",
        stderr(&o)
    );
    assert_eq!(complete_backups(), before, "no new backup");

    ok(&["down", "--volumes", "--yes"]);
}
