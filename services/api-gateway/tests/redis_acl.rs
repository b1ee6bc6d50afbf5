//! The per-service Redis ACL users of docs/service-contract.md against the
//! real Redis (TEST_REDIS_URL; its default user must be allowed `ACL`):
//! each service does its work through kit with `REDIS_USERNAME` and
//! `REDIS_PASSWORD_FILE`, and cannot touch another service's keys.

use std::io::Write;
use std::time::Duration;

use api_gateway::ratelimit::RateLimiter;
use kit::config::Env;
use kit::revocation::Revocations;
use kit::testing::test_redis_url;

/// The rules of docs/service-contract.md, section "Redis", with `<svc>`
/// and the prefixes made unique for this test run.
fn rules(service: &str, own: &str) -> Vec<String> {
    let base = [
        "resetkeys",
        "resetchannels",
        "-@all",
        "+@connection",
        "-@dangerous",
        "+ping",
    ];
    let (keys, cmds): (Vec<String>, &[&str]) = match service {
        "api-gateway" => (
            vec![format!("~{own}*"), "%R~revoked:*".into()],
            &[
                "+evalsha",
                "+eval",
                "+script|load",
                "+time",
                "+hmget",
                "+hset",
                "+expire",
                "+mget",
                "+exists",
            ],
        ),
        "user-management" => (vec!["~revoked:*".into()], &["+set"]),
        "security" => (
            vec![format!("~{own}*"), "~revoked:*".into()],
            &["+set", "+mget", "+exists"],
        ),
        "1c-integration" => (vec![format!("~{own}*")], &["+get", "+set", "+setex"]),
        other => panic!("no rules for {other}"),
    };
    base.iter()
        .map(|s| s.to_string())
        .chain(keys)
        .chain(cmds.iter().map(|s| s.to_string()))
        .collect()
}

async fn admin() -> redis::aio::MultiplexedConnection {
    redis::Client::open(test_redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Creates the ACL user and returns the service's connection, made by kit
/// from `REDIS_URL` + `REDIS_USERNAME` + `REDIS_PASSWORD_FILE`.
async fn service_conn(
    service: &str,
    own: &str,
    user: &str,
) -> (redis::aio::ConnectionManager, tempfile::NamedTempFile) {
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(user)
        .arg("on")
        .arg(format!(">{password}"));
    for r in rules(service, own) {
        cmd.arg(r);
    }
    let _: () = cmd.query_async(&mut admin().await).await.unwrap();
    let mut pw_file = tempfile::NamedTempFile::new().unwrap();
    writeln!(pw_file, "{password}").unwrap();
    let env = Env::from_pairs([
        ("REDIS_URL", test_redis_url()),
        ("REDIS_USERNAME", user.to_string()),
        (
            "REDIS_PASSWORD_FILE",
            pw_file.path().to_str().unwrap().to_string(),
        ),
    ]);
    let url = kit::config::redis_url(&env).unwrap().unwrap();
    let conn = kit::db::connect_redis(url.expose(), Duration::from_secs(5))
        .await
        .unwrap();
    (conn, pw_file)
}

async fn drop_user(user: &str) {
    let _: () = redis::cmd("ACL")
        .arg("DELUSER")
        .arg(user)
        .query_async(&mut admin().await)
        .await
        .unwrap();
}

fn claims(sub: &str) -> kit::Claims {
    kit::Claims {
        sub: sub.into(),
        roles: vec![],
        exp: 0,
        iat: 0,
        jti: uuid::Uuid::new_v4().to_string(),
        iss: "user-management".into(),
        aud: None,
        iat_ms: Some(0),
        email: None,
        sid: Some(uuid::Uuid::new_v4().to_string()),
    }
}

#[tokio::test]
async fn each_service_works_with_its_own_acl_user_and_nothing_more() {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let gw_prefix = format!("acltest-{run}-api-gateway:");
    let onec_prefix = format!("acltest-{run}-1c-integration:");
    let users = [
        format!("acltest-{run}-gw"),
        format!("acltest-{run}-um"),
        format!("acltest-{run}-sec"),
        format!("acltest-{run}-1c"),
    ];
    let (mut gw, _f1) = service_conn("api-gateway", &gw_prefix, &users[0]).await;
    let (um, _f2) = service_conn("user-management", "", &users[1]).await;
    let (sec, _f3) = service_conn("security", &format!("acltest-{run}-security:"), &users[2]).await;
    let (mut onec, _f4) = service_conn("1c-integration", &onec_prefix, &users[3]).await;

    // kit's health check (PING) works for every one of them.
    for c in [&gw, &um, &sec, &onec] {
        let pong: String = redis::cmd("PING")
            .query_async(&mut c.clone())
            .await
            .unwrap();
        assert_eq!(pong, "PONG");
    }

    // user-management writes revocations; the gateway and security read them.
    let user = uuid::Uuid::new_v4().to_string();
    Revocations::new(um.clone())
        .revoke_user(&user, Duration::from_secs(60))
        .await
        .unwrap();
    let c = claims(&user);
    assert!(Revocations::new(gw.clone())
        .check_token(&c)
        .await
        .unwrap()
        .is_some());
    assert!(Revocations::new(sec.clone())
        .check_token(&c)
        .await
        .unwrap()
        .is_some());
    // security writes token and API key revocations, the gateway reads them.
    let key_id = uuid::Uuid::new_v4().to_string();
    Revocations::new(sec.clone())
        .revoke_api_key(&key_id)
        .await
        .unwrap();
    assert!(Revocations::new(gw.clone())
        .api_key_revoked(&key_id)
        .await
        .unwrap());
    // The gateway may not write revocations.
    let denied: redis::RedisResult<i64> = Revocations::new(gw.clone())
        .revoke_user(&user, Duration::from_secs(60))
        .await;
    assert!(denied.is_err(), "the gateway's user only reads revoked:*");

    // The gateway's rate limiter (Lua) under its own prefix.
    let rl = RateLimiter::new(10.0, 5.0, gw_prefix.clone());
    assert!(rl.check(&mut gw, &[("ip", "a")]).await.unwrap().allowed);

    // 1c-integration's metadata cache under its own prefix.
    let _: () = redis::cmd("SETEX")
        .arg(format!("{onec_prefix}metadata"))
        .arg(60)
        .arg("{}")
        .query_async(&mut onec)
        .await
        .unwrap();

    // Nobody reads another service's keys.
    let read = |c: &redis::aio::ConnectionManager, key: String| {
        let mut c = c.clone();
        async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<String>>(&mut c)
                .await
        }
    };
    assert!(read(&gw, format!("{onec_prefix}metadata")).await.is_err());
    assert!(read(&onec, format!("{gw_prefix}ip:a")).await.is_err());
    assert!(read(&um, format!("{onec_prefix}metadata")).await.is_err());
    // Nor runs dangerous commands.
    for c in [&gw, &um, &sec, &onec] {
        let r: redis::RedisResult<()> = redis::cmd("FLUSHALL").query_async(&mut c.clone()).await;
        assert!(r.is_err());
        let r: redis::RedisResult<Vec<String>> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c.clone())
            .await;
        assert!(r.is_err());
    }

    for u in &users {
        drop_user(u).await;
    }
}
