mod common;

use std::time::Duration;

use common::{json, serve, settings, Service};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn api_key_issue_verify_revoke() {
    let s = Service::start().await;
    let r = s
        .as_user(Method::POST, "/api-keys", &["developer"])
        .json(&json!({"name": "ci", "owner": "bob", "roles": ["developer"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let (st, created) = json(
        s.as_user(Method::POST, "/api-keys", &["admin"])
            .json(&json!({"name": "ci", "owner": "bob", "roles": ["developer", "viewer"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk_"));
    let id = created["id"].as_str().unwrap().to_string();

    // Stored only as a hash.
    let (hash,): (String,) = sqlx::query_as("SELECT key_hash FROM api_keys WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(hash, security::crypto::hash_api_key(&key));
    assert!(!hash.contains(&key));

    // Listing never shows the key again.
    let (_, list) = json(s.svc(Method::GET, "/api-keys").send().await.unwrap()).await;
    let text = list.to_string();
    assert!(!text.contains(&key));
    assert_eq!(list["api_keys"][0]["name"], "ci");

    let verify = |k: String| {
        s.svc(Method::POST, "/api-keys/verify")
            .json(&json!({ "key": k }))
            .send()
    };
    let (_, v) = json(verify(key.clone()).await.unwrap()).await;
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["owner"], "bob");
    assert_eq!(v["roles"], json!(["developer", "viewer"]));
    let (_, v) = json(verify(format!("{key}x")).await.unwrap()).await;
    assert_eq!(v["valid"], false);

    let (st, v) = json(
        s.svc(Method::DELETE, &format!("/api-keys/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["revoked_at"].is_string());
    let (_, v) = json(verify(key.clone()).await.unwrap()).await;
    assert_eq!(v["valid"], false, "revoked key must not verify");

    let (st, _) = json(
        s.svc(
            Method::DELETE,
            "/api-keys/00000000-0000-0000-0000-000000000000",
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(st, 404);

    // Issue and revoke are in the audit chain.
    let (_, v) = json(
        s.svc(Method::GET, "/audit?category=api_key")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["total"], 2, "{v}");
    assert!(!v.to_string().contains(&key));
}

#[tokio::test]
async fn api_key_roles_are_validated() {
    let s = Service::start().await;
    let (st, v) = json(
        s.svc(Method::POST, "/api-keys")
            .json(&json!({"name": "x", "owner": "y", "roles": ["root"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 422, "{v}");
}

#[tokio::test]
async fn revocation_list_in_redis() {
    let s = Service::start().await;
    let exp = chrono::Utc::now().timestamp() + 120;
    // The list is shared by every test run on this Redis: unique ids.
    let tok1 = uuid::Uuid::new_v4().to_string();
    let tok2 = uuid::Uuid::new_v4().to_string();
    let (st, v) = json(
        s.svc(Method::POST, "/revocations")
            .json(&json!({"jti": tok1, "exp": exp}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (_, v) = json(
        s.svc(Method::GET, &format!("/revocations/{tok1}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["revoked"], true);
    let (_, v) = json(
        s.svc(Method::GET, &format!("/revocations/{tok2}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["revoked"], false);

    // Stored in the shared list until the token's own expiry plus the
    // verifiers' leeway and a margin (kit::revocation::MARGIN = 90 s).
    let client = redis::Client::open(kit::testing::test_redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("revoked:jti:{tok1}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((190..=210).contains(&ttl), "ttl {ttl}");

    // Already expired: nothing to store.
    let (st, v) = json(
        s.svc(Method::POST, "/revocations")
            .json(&json!({"jti": "old", "exp": exp - 1000}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["stored"], false);

    // A user may revoke its own token, not somebody else's.
    let mine = uuid::Uuid::new_v4().to_string();
    let own = s.jwt.token("u2", &["viewer"], &mine);
    let r = s
        .http
        .post(s.url("/revocations"))
        .bearer_auth(&own)
        .json(&json!({"jti": mine, "exp": exp}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // ...and that token is refused from now on, here too.
    let r = s
        .http
        .post(s.url("/revocations"))
        .bearer_auth(&own)
        .json(&json!({"jti": mine, "exp": exp}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let other = s
        .jwt
        .token("u2", &["viewer"], &uuid::Uuid::new_v4().to_string());
    let r = s
        .http
        .post(s.url("/revocations"))
        .bearer_auth(&other)
        .json(&json!({"jti": "someone-else", "exp": exp}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn credentials_round_trip_and_wrong_key_fails() {
    let s = Service::start().await;
    let (st, v) = json(
        s.svc(Method::POST, "/credentials")
            .json(&json!({"owner": "1c-integration", "name": "soap", "secret": "p@ss wörd"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = json(
        s.svc(Method::GET, "/credentials/1c-integration/soap")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["secret"], "p@ss wörd");

    // Encrypted at rest with a 12-byte nonce.
    let (nonce, ct): (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT nonce, ciphertext FROM credentials WHERE owner = '1c-integration'")
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(nonce.len(), 12);
    assert!(!String::from_utf8_lossy(&ct).contains("p@ss"));

    // Non-admin users are refused.
    let r = s
        .as_user(
            Method::GET,
            "/credentials/1c-integration/soap",
            &["developer"],
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let (st, _) = json(
        s.svc(Method::GET, "/credentials/1c-integration/nope")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 404);

    // The same database served with another key cannot decrypt.
    let other = settings(&s.db.url, &s.jwt.jwks_url, [8u8; 32]);
    let (base, _stop) = serve(&other).await;
    let (st, v) = json(
        s.http
            .get(format!("{base}/credentials/1c-integration/soap"))
            .header(security::SERVICE_TOKEN_HEADER, common::SERVICE_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 500, "{v}");
    assert_eq!(v["error"]["code"], "decryption_failed");
    assert!(!v.to_string().contains("p@ss"));

    let r = s
        .svc(Method::DELETE, "/credentials/1c-integration/soap")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test]
async fn health_and_metrics() {
    let s = Service::start().await;
    let (st, v) = json(s.http.get(s.url("/health/ready")).send().await.unwrap()).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["checks"]["postgres"]["status"], "ok");
    assert_eq!(v["checks"]["redis"]["status"], "ok");
    let text = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("http_requests_total"));
}

#[tokio::test]
async fn revoked_tokens_and_api_keys_are_refused_at_once() {
    let s = Service::start().await;
    let conn = kit::db::connect_redis(&kit::testing::test_redis_url(), Duration::from_secs(5))
        .await
        .unwrap();
    let list = kit::revocation::Revocations::new(conn.clone());

    // An admin JWT works; its session is revoked (as user-management does
    // on logout); within a second security refuses it.
    let jti = uuid::Uuid::new_v4().to_string();
    let admin = s.jwt.token("admin-1", &["admin"], &jti);
    let audit = || s.http.get(s.url("/audit")).bearer_auth(&admin).send();
    assert_eq!(audit().await.unwrap().status(), 200);
    list.revoke_sessions(&[format!("sid-{jti}")], Duration::from_secs(900))
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let (st, v) = json(audit().await.unwrap()).await;
    let delay = start.elapsed();
    assert_eq!(st, 401, "{v}");
    assert_eq!(v["error"]["code"], "token_revoked");
    println!("security refused the revoked session after {delay:?}");
    assert!(delay < Duration::from_secs(1));

    // The whole user (force logout, disable, role change...).
    let user = uuid::Uuid::new_v4().to_string();
    let t = s
        .jwt
        .token(&user, &["admin"], &uuid::Uuid::new_v4().to_string());
    assert_eq!(
        s.http
            .get(s.url("/audit"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    list.revoke_user(&user, Duration::from_secs(900))
        .await
        .unwrap();
    assert_eq!(
        s.http
            .get(s.url("/audit"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Revoking an API key lists it for the gateway.
    let (st, v) = json(
        s.svc(Method::POST, "/api-keys")
            .json(&json!({"name": "bot", "owner": "svc-bot", "roles": ["viewer"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert!(!list.api_key_revoked(&id).await.unwrap());
    let r = s
        .svc(Method::DELETE, &format!("/api-keys/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(list.api_key_revoked(&id).await.unwrap());
}

#[tokio::test]
async fn tokens_for_another_audience_are_refused() {
    let s = Service::start().await;
    let now = chrono::Utc::now().timestamp();
    for claims in [
        json!({"sub": "a", "roles": ["admin"], "exp": now + 60, "iat": now, "jti": "j",
               "iss": "user-management", "aud": "another-stack"}),
        json!({"sub": "a", "roles": ["admin"], "exp": now + 60, "iat": now, "jti": "j",
               "iss": "user-management"}),
        json!({"sub": "a", "roles": ["admin"], "exp": now + 60, "iat": now, "jti": "j",
               "iss": "someone", "aud": "ai-assistants-1c"}),
    ] {
        let t = s.jwt.sign(&claims);
        let r = s
            .http
            .get(s.url("/audit"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{claims}");
    }
}
