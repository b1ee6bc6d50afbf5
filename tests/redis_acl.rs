//! The Redis ACL stackctl derives from stack.toml, loaded by a real
//! redis-server (Debian's, on loopback): every service of the repo stack has
//! its own user that reaches its own keys and commands and nothing else (and
//! so has the Redis exporter, with the few @dangerous reads it needs), the
//! administrator keeps everything, no password is in the file, and the file
//! follows stack.toml when the access changes.

mod common;
use common::*;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stackctl::model::Stack;
use stackctl::runtime::secrets;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The repo stack with its root (and so its secrets directory) in `dir`.
fn repo_stack(dir: &Path, src: &str) -> Stack {
    stackctl::model::load_str(src, &repo().join("stack.toml"), dir, None, false).unwrap()
}

/// A temp root holding the repo stack's secrets, as `setup` makes them,
/// and the stack's text.
fn with_secrets() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read_to_string(repo().join("stack.toml")).unwrap();
    let stack = repo_stack(dir.path(), &src);
    secrets::ensure_secrets(&stack, &stackctl::ui::Ui::silent()).unwrap();
    (dir, src)
}

fn start_redis(acl: &Path) -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--aclfile")
        .arg(acl)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is not installed (scripts/test-setup.sh installs it)");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

/// One command as `user` (password from its secret file), its reply text.
fn as_user(port: u16, user: &str, password: &str, args: &[&str]) -> String {
    let o = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--user", user])
        .env("REDISCLI_AUTH", password)
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
    .trim()
    .to_string()
}

#[test]
fn each_service_reaches_its_own_keys_and_commands_only() {
    let (dir, _) = with_secrets();
    let secrets = dir.path().join("secrets");
    let pw = |name: &str| std::fs::read_to_string(secrets.join(name)).unwrap();
    let acl = std::fs::read_to_string(secrets.join("redis-acl")).unwrap();
    let users: Vec<&str> = acl
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(
        users,
        [
            "default",
            "security",
            "user-management",
            "1c-integration",
            "api-gateway",
            "redis-exporter"
        ]
    );
    for s in std::fs::read_dir(&secrets).unwrap() {
        let name = s.unwrap().file_name().into_string().unwrap();
        if name.ends_with("password") {
            assert!(
                !acl.contains(pw(&name).trim()),
                "{name} is in the ACL in clear"
            );
        }
    }

    let (_server, port) = start_redis(&secrets.join("redis-acl"));
    let run = |user: &str, args: &[&str]| {
        let secret = if user == "default" {
            "redis-password".to_string()
        } else {
            format!("redis-{user}-password")
        };
        as_user(port, user, pw(&secret).trim(), args)
    };
    let denied = |user: &str, args: &[&str]| {
        let reply = run(user, args);
        assert!(reply.contains("NOPERM"), "{user} {args:?}: {reply}");
    };

    // The administrator: everything (health check, backups).
    assert_eq!(run("default", &["SET", "api-gateway:seed", "1"]), "OK");
    assert_eq!(
        run("default", &["SET", "1c-integration:metadata", "m"]),
        "OK"
    );
    assert!(run("default", &["CONFIG", "GET", "maxmemory"]).contains("maxmemory"));

    // user-management writes revocations and nothing else.
    assert_eq!(
        run(
            "user-management",
            &["SET", "revoked:sid:s1", "1", "PX", "60000"]
        ),
        "OK"
    );
    denied("user-management", &["GET", "revoked:sid:s1"]);
    denied("user-management", &["SET", "api-gateway:seed", "2"]);

    // The gateway reads revocations, runs its bucket script on its own keys.
    assert_eq!(run("api-gateway", &["MGET", "revoked:sid:s1"]), "1");
    denied("api-gateway", &["SET", "revoked:sid:s1", "0"]);
    assert_eq!(
        run("api-gateway", &["HSET", "api-gateway:rl:1", "tokens", "3"]),
        "1"
    );
    let script = "return redis.call('HMGET', KEYS[1], 'tokens')[1]";
    assert_eq!(
        run("api-gateway", &["EVAL", script, "1", "api-gateway:rl:1"]),
        "3"
    );
    // ... and a script cannot reach what the user cannot.
    denied(
        "api-gateway",
        &["EVAL", script, "1", "1c-integration:metadata"],
    );
    denied("api-gateway", &["MGET", "1c-integration:metadata"]);

    // 1c-integration: its metadata cache only.
    assert_eq!(
        run(
            "1c-integration",
            &["SETEX", "1c-integration:metadata", "60", "x"]
        ),
        "OK"
    );
    denied("1c-integration", &["GET", "api-gateway:seed"]);
    denied("1c-integration", &["GET", "revoked:sid:s1"]);

    // security: its keys and the revocation list, read and write.
    assert_eq!(
        run("security", &["SET", "revoked:jti:j1", "9", "PX", "60000"]),
        "OK"
    );
    assert_eq!(run("security", &["MGET", "revoked:jti:j1"]), "9");
    denied("security", &["MGET", "1c-integration:metadata"]);

    // Dangerous commands are off for every service, whatever its keys.
    for user in [
        "security",
        "user-management",
        "1c-integration",
        "api-gateway",
    ] {
        assert_eq!(run(user, &["PING"]), "PONG");
        for cmd in [
            &["KEYS", "*"][..],
            &["FLUSHALL"],
            &["CONFIG", "GET", "*"],
            &["ACL", "LIST"],
            &["SWAPDB", "0", "1"],
            &["BGSAVE"],
        ] {
            denied(user, cmd);
        }
    }
    // The exporter (a component with its own user): the reads its metrics
    // need, named one by one after @dangerous, and no key, no write, no
    // other administration.
    assert!(run("redis-exporter", &["INFO", "ALL"]).contains("redis_version"));
    assert!(run("redis-exporter", &["CONFIG", "GET", "maxmemory"]).contains("maxmemory"));
    assert!(!run("redis-exporter", &["SLOWLOG", "LEN"]).contains("NOPERM"));
    assert!(!run("redis-exporter", &["LATENCY", "LATEST"]).contains("NOPERM"));
    for cmd in [
        &["GET", "api-gateway:seed"][..],
        &["MGET", "revoked:sid:s1"],
        &["SET", "redis-exporter:x", "1"],
        &["CONFIG", "SET", "maxmemory", "1"],
        &["KEYS", "*"],
        &["FLUSHALL"],
        &["ACL", "LIST"],
        &["CLIENT", "KILL", "TYPE", "normal"],
        &["SLOWLOG", "RESET"],
        &["EVAL", "return 1", "0"],
    ] {
        denied("redis-exporter", cmd);
    }

    // Nobody gets in with another's password.
    let reply = as_user(port, "api-gateway", pw("redis-password").trim(), &["PING"]);
    assert!(reply.contains("WRONGPASS"), "{reply}");
}

#[test]
fn the_acl_follows_stack_toml() {
    let (dir, src) = with_secrets();
    let stack = repo_stack(dir.path(), &src);
    let acl_path = dir.path().join("secrets/redis-acl");
    let before = std::fs::read_to_string(&acl_path).unwrap();
    // Nothing changed: nothing written.
    assert!(secrets::refresh_redis_acl(&stack).unwrap().is_empty());

    // 1c-integration may now also read the gateway's keys.
    let line =
        r#"redis = { keys = ["1c-integration:*"], commands = ["ping", "get", "set", "setex"] }"#;
    assert!(
        src.contains(line),
        "the repo stack's 1c-integration access changed"
    );
    let wider = src.replace(
        line,
        r#"redis = { keys = ["1c-integration:*"], read = ["api-gateway:*"], commands = ["ping", "get", "set", "setex"] }"#,
    );
    let stack = repo_stack(dir.path(), &wider);
    assert_eq!(
        secrets::refresh_redis_acl(&stack).unwrap(),
        ["redis-acl".to_string()]
    );
    let after = std::fs::read_to_string(&acl_path).unwrap();
    assert_ne!(before, after);
    let user = after
        .lines()
        .find(|l| l.starts_with("user 1c-integration "))
        .unwrap();
    assert!(user.contains(" %R~api-gateway:* "), "{user}");
    // Same passwords: only the rules changed.
    let hash = |acl: &str| {
        acl.lines()
            .find(|l| l.starts_with("user 1c-integration "))
            .and_then(|l| l.split_whitespace().nth(3))
            .map(str::to_string)
    };
    assert_eq!(hash(&before), hash(&after));

    // A service without its password secret: the error says to run setup.
    std::fs::remove_file(dir.path().join("secrets/redis-api-gateway-password")).unwrap();
    let err = secrets::refresh_redis_acl(&stack).unwrap_err().to_string();
    assert!(
        err.contains("redis-api-gateway-password") && err.contains("stackctl setup"),
        "{err}"
    );
}
