//! The shared revocation list against the real Redis (TEST_REDIS_URL), and
//! the AuthUser extractor refusing revoked tokens.

use std::time::Duration;

use kit::revocation::{self, Revocations, Revoked};
use kit::testing::test_redis_url;
use kit::Claims;

fn claims(sub: &str, jti: &str, sid: &str, iat_ms: i64) -> Claims {
    Claims {
        sub: sub.into(),
        roles: vec!["viewer".into()],
        exp: iat_ms / 1000 + 900,
        iat: iat_ms / 1000,
        jti: jti.into(),
        iss: "user-management".into(),
        aud: Some("ai-assistants-1c".into()),
        iat_ms: Some(iat_ms),
        email: None,
        sid: Some(sid.into()),
    }
}

async fn list() -> (Revocations, redis::aio::ConnectionManager) {
    let conn = kit::db::connect_redis(&test_redis_url(), Duration::from_secs(5))
        .await
        .unwrap();
    (Revocations::new(conn.clone()), conn)
}

fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn token_session_and_user_cutoff() {
    let (r, mut conn) = list().await;
    let (user, sid, jti) = (uid(), uid(), uid());
    let before = claims(&user, &jti, &sid, revocation::now_ms() - 5);
    assert_eq!(r.check_token(&before).await.unwrap(), None);

    r.revoke_token(&jti, before.exp).await.unwrap();
    assert_eq!(r.check_token(&before).await.unwrap(), Some(Revoked::Token));

    let other = claims(&user, &uid(), &sid, revocation::now_ms() - 5);
    r.revoke_sessions(std::slice::from_ref(&sid), Duration::from_secs(900))
        .await
        .unwrap();
    assert_eq!(r.check_token(&other).await.unwrap(), Some(Revoked::Session));

    // The user cutoff: tokens issued before it are refused, after it not.
    let old = claims(&user, &uid(), &uid(), revocation::now_ms() - 5);
    r.revoke_user(&user, Duration::from_secs(900))
        .await
        .unwrap();
    assert_eq!(r.check_token(&old).await.unwrap(), Some(Revoked::User));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fresh = claims(&user, &uid(), &uid(), revocation::now_ms());
    assert_eq!(r.check_token(&fresh).await.unwrap(), None);
    // A token without iat_ms counts from the start of its iat second.
    let mut coarse = fresh.clone();
    coarse.iat_ms = None;
    assert_eq!(r.check_token(&coarse).await.unwrap(), Some(Revoked::User));

    // Every entry has a TTL covering the token's life (never persistent).
    for key in [
        revocation::jti_key(&jti),
        revocation::sid_key(&sid),
        revocation::user_key(&user),
    ] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 900_000, "{key}: ttl {ttl} ms");
    }
}

#[tokio::test]
async fn api_keys() {
    let (r, mut conn) = list().await;
    let id = uid();
    assert!(!r.api_key_revoked(&id).await.unwrap());
    r.revoke_api_key(&id).await.unwrap();
    assert!(r.api_key_revoked(&id).await.unwrap());
    let ttl: i64 = redis::cmd("TTL")
        .arg(revocation::api_key_key(&id))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 3600, "ttl {ttl}");
}

#[tokio::test]
async fn extractor_refuses_revoked_tokens_when_the_list_is_configured() {
    use axum::body::Body;
    use axum::routing::get;
    use axum::{Extension, Router};
    use tower::ServiceExt;
    // user-management's own signing path is not available here: a local
    // Ed25519 key signs the token.
    const PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEICgPFPQHHG8WB8FjWrSBBTzBTIm9oQHnggiRKNPRud7R
-----END PRIVATE KEY-----
";
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "x": "47YZOo5ZKW3zjrL-o_8v7D-6_alr7PfSm-WnDcDaITE",
        "kid": "k1", "use": "sig", "alg": "EdDSA"
    }]}))
    .unwrap();
    let (r, _) = list().await;
    let c = claims(&uid(), &uid(), &uid(), revocation::now_ms());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(
        &header,
        &c,
        &jsonwebtoken::EncodingKey::from_ed_pem(PEM.as_bytes()).unwrap(),
    )
    .unwrap();
    let app = Router::new()
        .route("/me", get(|u: kit::AuthUser| async move { u.sub.clone() }))
        .layer(Extension(kit::Verifier::from_jwks(&jwks)))
        .layer(Extension(r.clone()));
    let call = |app: Router| {
        let req = axum::http::Request::builder()
            .uri("/me")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        async move { app.oneshot(req).await.unwrap().status() }
    };
    assert_eq!(call(app.clone()).await, 200);
    r.revoke_sessions(&[c.sid.clone().unwrap()], Duration::from_secs(900))
        .await
        .unwrap();
    assert_eq!(call(app).await, 401);
}
