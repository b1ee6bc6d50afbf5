//! PostgreSQL pool with a connect-retry loop and migrations, and the Redis
//! `ConnectionManager` (also retried at start).

use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// Connect to PostgreSQL, retrying with backoff for up to `retry_for`
/// (containers start before the database is ready), then run `migrator`.
///
/// ```ignore
/// static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// let pool = kit::db::connect_pg(url, Some(&MIGRATOR), Duration::from_secs(60)).await?;
/// ```
pub async fn connect_pg(
    url: &str,
    migrator: Option<&Migrator>,
    retry_for: Duration,
) -> anyhow::Result<PgPool> {
    let opts: PgConnectOptions = url
        .parse()
        .context("DATABASE_URL is not a valid PostgreSQL URL")?;
    let max: u32 = crate::config::Env::process()
        .parse_or("DATABASE_MAX_CONNECTIONS", 10)
        .unwrap_or(10);
    // Wait until the server accepts a connection, then open the pool.
    let conn = wait_for_pg(&opts, retry_for).await?;
    let _ = conn.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(max)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
        .connect_with(opts)
        .await
        .context("cannot connect to PostgreSQL")?;
    tracing::info!("connected to postgres");
    if let Some(m) = migrator {
        m.run(&pool).await.context("running migrations")?;
        tracing::info!(count = m.iter().count(), "migrations applied");
    }
    Ok(pool)
}

/// Open one PostgreSQL connection, retrying with backoff (200 ms doubling up
/// to 5 s, single attempts of at most 5 s each) for up to `retry_for`: the
/// same wait [`connect_pg`] does before opening its pool.
pub async fn wait_for_pg(
    opts: &PgConnectOptions,
    retry_for: Duration,
) -> anyhow::Result<PgConnection> {
    let deadline = Instant::now() + retry_for;
    let mut delay = Duration::from_millis(200);
    loop {
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        let res = match tokio::time::timeout(budget, PgConnection::connect_with(opts)).await {
            Ok(r) => r.map_err(anyhow::Error::from),
            Err(_) => Err(anyhow::anyhow!("connect timed out")),
        };
        match res {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() + delay < deadline => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "postgres not ready");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("cannot connect to PostgreSQL"),
        }
    }
}

/// Open a Redis `ConnectionManager` (auto-reconnecting), retrying the first
/// connection for up to `retry_for`.
pub async fn connect_redis(
    url: &str,
    retry_for: Duration,
) -> anyhow::Result<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url).context("REDIS_URL is not a valid Redis URL")?;
    let deadline = Instant::now() + retry_for;
    let mut delay = Duration::from_millis(200);
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_connection_timeout(Duration::from_secs(3))
        .set_response_timeout(Duration::from_secs(3));
    loop {
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        let res = tokio::time::timeout(
            budget,
            redis::aio::ConnectionManager::new_with_config(client.clone(), config.clone()),
        )
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "connect timed out",
            )))
        });
        match res {
            Ok(cm) => {
                tracing::info!("connected to redis");
                return Ok(cm);
            }
            Err(e) if Instant::now() + delay < deadline => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "redis not ready");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("cannot connect to Redis"),
        }
    }
}
