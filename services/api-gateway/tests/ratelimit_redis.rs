//! The token-bucket Lua script against a real Redis (TEST_REDIS_URL).

use api_gateway::ratelimit::RateLimiter;
use kit::testing::{redis_prefix, test_redis_url};

async fn conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(test_redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to TEST_REDIS_URL")
}

#[tokio::test]
async fn burst_then_refused_then_refilled() {
    let mut c = conn().await;
    let rl = RateLimiter::new(10.0, 5.0, redis_prefix());
    for i in 0..5 {
        let d = rl.check(&mut c, &[("ip", "a")]).await.unwrap();
        assert!(d.allowed, "request {i} within the burst");
        assert_eq!(d.remaining, 4 - i);
    }
    let d = rl.check(&mut c, &[("ip", "a")]).await.unwrap();
    assert!(!d.allowed);
    assert!(
        (1..=100).contains(&d.retry_after_ms),
        "one token at 10/s is ≤ 100 ms away, got {}",
        d.retry_after_ms
    );
    assert_eq!(d.retry_after_secs(), 1);
    // Another key is independent.
    assert!(rl.check(&mut c, &[("ip", "b")]).await.unwrap().allowed);
    // 10 tokens/s: after 250 ms two more requests fit.
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    assert!(rl.check(&mut c, &[("ip", "a")]).await.unwrap().allowed);
    assert!(rl.check(&mut c, &[("ip", "a")]).await.unwrap().allowed);
}

#[tokio::test]
async fn several_buckets_are_all_or_nothing() {
    let mut c = conn().await;
    let rl = RateLimiter::new(0.5, 2.0, redis_prefix());
    // Drain the user bucket alone.
    assert!(rl.check(&mut c, &[("user", "u")]).await.unwrap().allowed);
    assert!(rl.check(&mut c, &[("user", "u")]).await.unwrap().allowed);
    // Refused on the user bucket: the IP bucket must not be charged.
    let d = rl
        .check(&mut c, &[("ip", "x"), ("user", "u")])
        .await
        .unwrap();
    assert!(!d.allowed);
    assert!(d.retry_after_ms > 1000, "0.5 tokens/s: about 2 s away");
    assert_eq!(d.retry_after_secs(), 2);
    let d = rl.check(&mut c, &[("ip", "x")]).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 1, "the IP bucket was untouched before");
}

#[tokio::test]
async fn keys_expire_once_full_again() {
    let mut c = conn().await;
    let prefix = redis_prefix();
    let rl = RateLimiter::new(100.0, 10.0, prefix.clone());
    rl.check(&mut c, &[("ip", "z")]).await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(rl.key("ip", "z"))
        .query_async(&mut c)
        .await
        .unwrap();
    // burst / rate = 0.1 s to refill, plus one second of slack.
    assert!((1..=2).contains(&ttl), "ttl {ttl}");
}
