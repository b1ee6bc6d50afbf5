//! SQL: ingestion and the usage queries.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::event::{Event, Kind};
use crate::params::{DaySpan, TimeRange};

/// Run the embedded migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}

/// The outcome of storing a batch of valid events.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InsertOutcome {
    /// Newly stored events, per kind.
    pub accepted: BTreeMap<&'static str, u64>,
    /// Events whose `event_id` was already stored (or repeated in the batch).
    pub duplicate: u64,
}

impl InsertOutcome {
    pub fn accepted_total(&self) -> u64 {
        self.accepted.values().sum()
    }
}

const INSERT_SQL: &str = r#"
INSERT INTO events (event_id, kind, service, user_id, occurred_at, latency_ms, properties, question)
SELECT * FROM UNNEST(
    $1::uuid[], $2::text[], $3::text[], $4::text[],
    $5::timestamptz[], $6::float8[], $7::jsonb[], $8::text[]
)
ON CONFLICT (event_id) DO NOTHING
RETURNING kind
"#;

/// Store valid events in one statement; already known `event_id`s are
/// skipped (`ON CONFLICT DO NOTHING`) and counted as duplicates.
pub async fn insert_events(pool: &PgPool, events: &[Event]) -> Result<InsertOutcome, sqlx::Error> {
    let mut seen = HashSet::with_capacity(events.len());
    let mut in_batch_dups = 0u64;
    let unique: Vec<&Event> = events
        .iter()
        .filter(|e| {
            let fresh = seen.insert(e.event_id);
            if !fresh {
                in_batch_dups += 1;
            }
            fresh
        })
        .collect();
    let mut out = InsertOutcome {
        duplicate: in_batch_dups,
        ..Default::default()
    };
    if unique.is_empty() {
        return Ok(out);
    }
    let ids: Vec<Uuid> = unique.iter().map(|e| e.event_id).collect();
    let kinds: Vec<&str> = unique.iter().map(|e| e.kind.as_str()).collect();
    let services: Vec<&str> = unique.iter().map(|e| e.service.as_str()).collect();
    let users: Vec<Option<&str>> = unique.iter().map(|e| e.user_id.as_deref()).collect();
    let times: Vec<DateTime<Utc>> = unique.iter().map(|e| e.occurred_at).collect();
    let latencies: Vec<Option<f64>> = unique.iter().map(|e| e.latency_ms).collect();
    let props: Vec<serde_json::Value> = unique.iter().map(|e| e.properties.clone()).collect();
    let questions: Vec<Option<&str>> = unique.iter().map(|e| e.question.as_deref()).collect();

    let inserted: Vec<String> = sqlx::query_scalar(INSERT_SQL)
        .bind(&ids)
        .bind(&kinds)
        .bind(&services)
        .bind(&users)
        .bind(&times)
        .bind(&latencies)
        .bind(&props)
        .bind(&questions)
        .fetch_all(pool)
        .await?;
    for k in &inserted {
        let kind = Kind::parse(k).map(Kind::as_str).unwrap_or("unknown");
        *out.accepted.entry(kind).or_default() += 1;
    }
    out.duplicate += (unique.len() - inserted.len()) as u64;
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct DayCount {
    pub day: NaiveDate,
    pub count: i64,
}

/// Event counts per UTC day over the span, zero-filled.
pub async fn daily(
    pool: &PgPool,
    span: &DaySpan,
    service: Option<&str>,
    kind: Option<Kind>,
) -> Result<Vec<DayCount>, sqlx::Error> {
    sqlx::query_as(
        r#"
WITH days AS (
    SELECT generate_series($1::date, $2::date, interval '1 day')::date AS day
), counts AS (
    SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, count(*) AS n
    FROM events
    WHERE occurred_at >= $3 AND occurred_at < $4
      AND ($5::text IS NULL OR service = $5)
      AND ($6::text IS NULL OR kind = $6)
    GROUP BY 1
)
SELECT days.day, COALESCE(counts.n, 0)::int8 AS count
FROM days LEFT JOIN counts USING (day)
ORDER BY days.day
"#,
    )
    .bind(span.first_day)
    .bind(span.last_day)
    .bind(span.from)
    .bind(span.to)
    .bind(service)
    .bind(kind.map(Kind::as_str))
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ServiceUsage {
    pub service: String,
    pub events: i64,
    pub users: i64,
    pub errors: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    #[sqlx(json)]
    pub kinds: BTreeMap<String, i64>,
}

/// Per-service totals (events, distinct users, errors, counts per kind).
pub async fn services(pool: &PgPool, range: &TimeRange) -> Result<Vec<ServiceUsage>, sqlx::Error> {
    sqlx::query_as(
        r#"
WITH base AS (
    SELECT service, kind, user_id, occurred_at FROM events
    WHERE ($1::timestamptz IS NULL OR occurred_at >= $1)
      AND ($2::timestamptz IS NULL OR occurred_at < $2)
), per_kind AS (
    SELECT service, jsonb_object_agg(kind, n) AS kinds
    FROM (SELECT service, kind, count(*) AS n FROM base GROUP BY service, kind) k
    GROUP BY service
), totals AS (
    SELECT service,
           count(*) AS events,
           count(DISTINCT user_id) AS users,
           count(*) FILTER (WHERE kind = 'error') AS errors,
           min(occurred_at) AS first_seen,
           max(occurred_at) AS last_seen
    FROM base GROUP BY service
)
SELECT t.service, t.events, t.users, t.errors, t.first_seen, t.last_seen, p.kinds
FROM totals t JOIN per_kind p USING (service)
ORDER BY t.events DESC, t.service
"#,
    )
    .bind(range.from)
    .bind(range.to)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct UserUsage {
    pub user_id: String,
    pub events: i64,
    pub questions: i64,
    pub services: i64,
    pub last_seen: DateTime<Utc>,
}

/// The most active users (events with a `user_id`), busiest first.
pub async fn users(
    pool: &PgPool,
    range: &TimeRange,
    limit: i64,
) -> Result<Vec<UserUsage>, sqlx::Error> {
    sqlx::query_as(
        r#"
SELECT user_id,
       count(*) AS events,
       count(*) FILTER (WHERE kind = 'question') AS questions,
       count(DISTINCT service) AS services,
       max(occurred_at) AS last_seen
FROM events
WHERE user_id IS NOT NULL
  AND ($1::timestamptz IS NULL OR occurred_at >= $1)
  AND ($2::timestamptz IS NULL OR occurred_at < $2)
GROUP BY user_id
ORDER BY events DESC, user_id
LIMIT $3
"#,
    )
    .bind(range.from)
    .bind(range.to)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TopQuestion {
    pub question: String,
    pub count: i64,
    pub users: i64,
    pub last_asked: DateTime<Utc>,
}

/// The most frequent normalised questions of `question` events.
pub async fn top_questions(
    pool: &PgPool,
    range: &TimeRange,
    limit: i64,
) -> Result<Vec<TopQuestion>, sqlx::Error> {
    sqlx::query_as(
        r#"
SELECT question,
       count(*) AS count,
       count(DISTINCT user_id) AS users,
       max(occurred_at) AS last_asked
FROM events
WHERE kind = 'question' AND question IS NOT NULL
  AND ($1::timestamptz IS NULL OR occurred_at >= $1)
  AND ($2::timestamptz IS NULL OR occurred_at < $2)
GROUP BY question
ORDER BY count DESC, question
LIMIT $3
"#,
    )
    .bind(range.from)
    .bind(range.to)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct LatencyStats {
    /// Number of `answer` events with a `latency_ms`.
    pub count: i64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub avg: Option<f64>,
    pub max: Option<f64>,
}

/// Answer latency percentiles (continuous, interpolated: `percentile_cont`).
pub async fn latency(
    pool: &PgPool,
    service: Option<&str>,
    range: &TimeRange,
) -> Result<LatencyStats, sqlx::Error> {
    sqlx::query_as(
        r#"
SELECT count(latency_ms) AS count,
       percentile_cont(0.5)  WITHIN GROUP (ORDER BY latency_ms) AS p50,
       percentile_cont(0.9)  WITHIN GROUP (ORDER BY latency_ms) AS p90,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99,
       avg(latency_ms) AS avg,
       max(latency_ms) AS max
FROM events
WHERE kind = 'answer' AND latency_ms IS NOT NULL
  AND ($1::text IS NULL OR service = $1)
  AND ($2::timestamptz IS NULL OR occurred_at >= $2)
  AND ($3::timestamptz IS NULL OR occurred_at < $3)
"#,
    )
    .bind(service)
    .bind(range.from)
    .bind(range.to)
    .fetch_one(pool)
    .await
}

/// One exported row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ExportRow {
    pub event_id: Uuid,
    pub kind: String,
    pub service: String,
    pub user_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub latency_ms: Option<f64>,
    pub properties: serde_json::Value,
}

pub const EXPORT_SQL: &str = r#"
SELECT event_id, kind, service, user_id, occurred_at, received_at, latency_ms, properties
FROM events
WHERE ($1::timestamptz IS NULL OR occurred_at >= $1)
  AND ($2::timestamptz IS NULL OR occurred_at < $2)
  AND ($3::text IS NULL OR kind = $3)
ORDER BY occurred_at, event_id
"#;

pub const EXPORT_HEADER: [&str; 8] = [
    "event_id",
    "kind",
    "service",
    "user_id",
    "occurred_at",
    "received_at",
    "latency_ms",
    "properties",
];

impl ExportRow {
    /// Append this row as a CSV record.
    pub fn write_csv(&self, out: &mut String) {
        let id = self.event_id.to_string();
        let occurred = self
            .occurred_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let received = self
            .received_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let latency = self.latency_ms.map(|v| v.to_string()).unwrap_or_default();
        let props = self.properties.to_string();
        crate::csv::push_record(
            out,
            [
                id.as_str(),
                self.kind.as_str(),
                self.service.as_str(),
                self.user_id.as_deref().unwrap_or(""),
                occurred.as_str(),
                received.as_str(),
                latency.as_str(),
                props.as_str(),
            ],
        );
    }
}
