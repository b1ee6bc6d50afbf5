//! Retention: delete events older than `RETENTION_DAYS` (by `occurred_at`).
//!
//! Deletion runs in batches (short transactions, no long table locks). A
//! PostgreSQL session advisory lock makes sure only one run works at a time
//! even with several replicas; a run that finds the lock taken is skipped.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// Advisory lock key ("analytic" in ASCII).
const LOCK_KEY: i64 = 0x616e_616c_7974_6963;
/// Rows deleted per statement.
pub const DELETE_BATCH: i64 = 5000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub retention_days: u32,
    /// Events with `occurred_at` before this instant were deleted.
    pub cutoff: DateTime<Utc>,
    pub deleted: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetentionOutcome {
    Done(RetentionReport),
    /// Another run (this or another replica) holds the lock.
    AlreadyRunning,
}

/// The cutoff instant for a retention of `days` days at `now`.
pub fn cutoff(now: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    now - Duration::days(i64::from(days))
}

/// Delete every event older than `days` days; returns how many were deleted.
pub async fn run(
    pool: &PgPool,
    days: u32,
    now: DateTime<Utc>,
) -> Result<RetentionOutcome, sqlx::Error> {
    let cutoff = cutoff(now, days);
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(RetentionOutcome::AlreadyRunning);
    }
    let result = delete_batches(&mut conn, cutoff).await;
    let unlocked = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *conn)
        .await;
    if !matches!(unlocked, Ok(true)) {
        // Never hand a connection that may still hold the lock back to the
        // pool: closing it releases the lock for sure.
        conn.close_on_drop();
    }
    let deleted = result?;
    Ok(RetentionOutcome::Done(RetentionReport {
        retention_days: days,
        cutoff,
        deleted,
    }))
}

async fn delete_batches(
    conn: &mut sqlx::PgConnection,
    cutoff: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let mut total = 0u64;
    loop {
        let n = sqlx::query(
            "DELETE FROM events WHERE event_id IN \
             (SELECT event_id FROM events WHERE occurred_at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(DELETE_BATCH)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        total += n;
        if n < DELETE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// The periodic background task: one run right away, then one per `every`.
/// Errors are logged and retried at the next tick; the task never exits on
/// its own (abort it on shutdown).
pub async fn background(
    pool: PgPool,
    days: u32,
    every: StdDuration,
    deleted_total: prometheus::IntCounter,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match run(&pool, days, Utc::now()).await {
            Ok(RetentionOutcome::Done(r)) => {
                deleted_total.inc_by(r.deleted);
                tracing::info!(
                    deleted = r.deleted,
                    cutoff = %r.cutoff,
                    retention_days = r.retention_days,
                    "retention run finished"
                )
            }
            Ok(RetentionOutcome::AlreadyRunning) => {
                tracing::info!("retention run skipped: another run holds the lock")
            }
            Err(e) => tracing::warn!(error = %e, "retention run failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_is_days_before_now() {
        let now = DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(cutoff(now, 90).to_rfc3339(), "2026-08-28T12:00:00+00:00");
        assert_eq!(cutoff(now, 1).to_rfc3339(), "2026-11-25T12:00:00+00:00");
    }
}
