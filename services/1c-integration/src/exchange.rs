//! Scheduled exchange: chosen entity sets pulled from 1C into PostgreSQL.
//!
//! Each run of a set lists `Ref_Key, DataVersion` page by page, compares
//! with what is stored, downloads only new or changed objects (in small
//! batches, each committed at once) and marks objects that disappeared from
//! 1C as `deleted_in_source` (only after a complete listing). If 1C goes
//! away mid-run the run is logged with its error; everything committed so
//! far stays, and the next run picks up the rest: nothing is lost, and the
//! primary key (set, Ref_Key) makes duplicates impossible.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::odata::{Filter, ODataError, OneC, Query};

/// Objects fetched per `$filter=Ref_Key eq … or …` request.
const FETCH_BATCH: usize = 20;

#[derive(Debug, Clone)]
pub struct ExchangeConfig {
    pub sets: Vec<String>,
    pub interval: Duration,
    pub page_size: u64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq)]
pub struct LogEntry {
    pub id: i64,
    pub set_name: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub rows_listed: i32,
    pub rows_fetched: i32,
    pub rows_upserted: i32,
    pub rows_deleted: i32,
    pub error: Option<String>,
}

#[derive(Default)]
struct Counts {
    listed: i32,
    fetched: i32,
    upserted: i32,
    deleted: i32,
}

/// Parses `EXCHANGE_SETS` (comma separated; blanks ignored).
pub fn parse_sets(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

fn key_of(row: &Value) -> Option<Uuid> {
    row.get("Ref_Key")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
}

fn version_of(row: &Value) -> String {
    row.get("DataVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// Runs the exchange of one set and records it in `exchange_log`.
pub async fn run_set(
    pool: &PgPool,
    client: &OneC,
    set: &str,
    page_size: u64,
) -> Result<LogEntry, sqlx::Error> {
    let id: i64 =
        sqlx::query_scalar("INSERT INTO exchange_log (set_name) VALUES ($1) RETURNING id")
            .bind(set)
            .fetch_one(pool)
            .await?;
    // One run per set at a time, across replicas too. A transaction-scoped
    // lock: should this future be dropped mid-run, the transaction rolls
    // back and the lock goes with it (a session lock would stay on the
    // pooled connection).
    let mut lock_tx = pool.begin().await?;
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('onec-exchange:' || $1))")
            .bind(set)
            .fetch_one(&mut *lock_tx)
            .await?;
    let mut counts = Counts::default();
    let outcome = if locked {
        // Holding the set's lock, any earlier unfinished run of this set is
        // dead (its process stopped mid-run): say so in the log.
        sqlx::query(
            "UPDATE exchange_log SET finished_at = now(),
                    error = 'interrupted: the run stopped before finishing (service shut down)'
             WHERE set_name = $1 AND finished_at IS NULL AND id < $2",
        )
        .bind(set)
        .bind(id)
        .execute(pool)
        .await?;
        pull(pool, client, set, page_size, &mut counts).await
    } else {
        Err(PullError::Busy)
    };
    lock_tx.rollback().await?;
    let error = match outcome {
        Ok(()) => None,
        Err(PullError::Db(e)) => Some(format!("database: {e}")),
        Err(e) => Some(e.to_string()),
    };
    match &error {
        None => tracing::info!(
            set,
            listed = counts.listed,
            fetched = counts.fetched,
            upserted = counts.upserted,
            deleted = counts.deleted,
            "exchange run finished"
        ),
        Some(e) => {
            tracing::warn!(set, error = %e, upserted = counts.upserted, "exchange run failed")
        }
    }
    sqlx::query_as::<_, LogEntry>(
        "UPDATE exchange_log SET finished_at = now(), rows_listed = $2, rows_fetched = $3, rows_upserted = $4, rows_deleted = $5, error = $6 WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(counts.listed)
    .bind(counts.fetched)
    .bind(counts.upserted)
    .bind(counts.deleted)
    .bind(error)
    .fetch_one(pool)
    .await
}

#[derive(Debug, thiserror::Error)]
enum PullError {
    #[error(transparent)]
    OData(#[from] ODataError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("another exchange of this set is running")]
    Busy,
    #[error("{0}")]
    Data(String),
}

async fn pull(
    pool: &PgPool,
    client: &OneC,
    set: &str,
    page_size: u64,
    counts: &mut Counts,
) -> Result<(), PullError> {
    // 1. List keys and versions.
    let mut remote: HashMap<Uuid, String> = HashMap::new();
    let listing = Query::new(set)
        .select(["Ref_Key", "DataVersion"])
        .orderby("Ref_Key");
    let mut pager = client.pages(listing, page_size);
    while let Some(rows) = pager.next_page().await? {
        for r in rows {
            let key = key_of(&r)
                .ok_or_else(|| PullError::Data(format!("{set}: a row without Ref_Key: {r}")))?;
            remote.insert(key, version_of(&r));
        }
    }
    counts.listed = remote.len() as i32;

    // 2. Compare with what is stored.
    let local: Vec<(Uuid, String, bool)> = sqlx::query_as(
        "SELECT ref_key, data_version, deleted_in_source FROM onec_objects WHERE set_name = $1",
    )
    .bind(set)
    .fetch_all(pool)
    .await?;
    let local_map: HashMap<Uuid, (String, bool)> =
        local.into_iter().map(|(k, v, d)| (k, (v, d))).collect();
    let mut changed: Vec<Uuid> = remote
        .iter()
        .filter(|(k, v)| {
            local_map
                .get(k)
                .is_none_or(|(lv, deleted)| lv != *v || *deleted)
        })
        .map(|(k, _)| *k)
        .collect();
    changed.sort();

    // 3. Download changed objects in batches; each batch is committed.
    for batch in changed.chunks(FETCH_BATCH) {
        let filter = batch
            .iter()
            .map(|k| Filter::eq("Ref_Key", *k))
            .reduce(|a, b| a.or(b))
            .expect("non-empty batch");
        let rows = client.fetch(&Query::new(set).filter(&filter)).await?.rows;
        counts.fetched += rows.len() as i32;
        let mut tx = pool.begin().await?;
        for row in rows {
            let key = key_of(&row)
                .ok_or_else(|| PullError::Data(format!("{set}: a row without Ref_Key")))?;
            let version = version_of(&row);
            let res = sqlx::query(
                "INSERT INTO onec_objects (set_name, ref_key, data_version, data) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (set_name, ref_key) DO UPDATE
                 SET data_version = EXCLUDED.data_version, data = EXCLUDED.data,
                     deleted_in_source = false, updated_at = now()
                 WHERE onec_objects.data_version IS DISTINCT FROM EXCLUDED.data_version
                    OR onec_objects.deleted_in_source",
            )
            .bind(set)
            .bind(key)
            .bind(&version)
            .bind(&row)
            .execute(&mut *tx)
            .await?;
            counts.upserted += res.rows_affected() as i32;
        }
        tx.commit().await?;
    }

    // 4. Objects gone from 1C (deleted there), known only after a full listing.
    let gone: Vec<Uuid> = local_map
        .iter()
        .filter(|(k, (_, deleted))| !*deleted && !remote.contains_key(k))
        .map(|(k, _)| *k)
        .collect();
    if !gone.is_empty() {
        let res = sqlx::query(
            "UPDATE onec_objects SET deleted_in_source = true, updated_at = now()
             WHERE set_name = $1 AND ref_key = ANY($2) AND NOT deleted_in_source",
        )
        .bind(set)
        .bind(&gone)
        .execute(pool)
        .await?;
        counts.deleted = res.rows_affected() as i32;
    }
    Ok(())
}

/// Prometheus metrics of the exchange.
#[derive(Clone)]
pub struct ExchangeMetrics {
    runs: prometheus::IntCounterVec,
    rows_upserted: prometheus::IntCounterVec,
    last_success: prometheus::IntGaugeVec,
}

impl ExchangeMetrics {
    pub fn new(registry: &prometheus::Registry) -> Result<ExchangeMetrics, prometheus::Error> {
        let runs = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "onec_exchange_runs_total",
                "Exchange runs per entity set and outcome",
            ),
            &["set", "outcome"],
        )?;
        let rows_upserted = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "onec_exchange_rows_upserted_total",
                "Objects written by the exchange",
            ),
            &["set"],
        )?;
        let last_success = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "onec_exchange_last_success_timestamp_seconds",
                "Unix time of the last successful exchange run",
            ),
            &["set"],
        )?;
        registry.register(Box::new(runs.clone()))?;
        registry.register(Box::new(rows_upserted.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        Ok(ExchangeMetrics {
            runs,
            rows_upserted,
            last_success,
        })
    }

    pub fn record(&self, e: &LogEntry) {
        let outcome = if e.error.is_some() { "error" } else { "ok" };
        self.runs
            .with_label_values(&[e.set_name.as_str(), outcome])
            .inc();
        self.rows_upserted
            .with_label_values(&[e.set_name.as_str()])
            .inc_by(e.rows_upserted.max(0) as u64);
        if e.error.is_none() {
            let t = e.finished_at.unwrap_or_else(chrono::Utc::now).timestamp();
            self.last_success
                .with_label_values(&[e.set_name.as_str()])
                .set(t);
        }
    }
}

/// Runs every configured set once.
pub async fn run_all(
    pool: &PgPool,
    client: &OneC,
    cfg: &ExchangeConfig,
    metrics: Option<&ExchangeMetrics>,
) -> Result<Vec<LogEntry>, sqlx::Error> {
    let mut out = Vec::new();
    for set in &cfg.sets {
        let e = run_set(pool, client, set, cfg.page_size).await?;
        if let Some(m) = metrics {
            m.record(&e);
        }
        out.push(e);
    }
    Ok(out)
}

/// The most recent log entries, newest first.
pub async fn log(
    pool: &PgPool,
    set: Option<&str>,
    limit: i64,
) -> Result<Vec<LogEntry>, sqlx::Error> {
    sqlx::query_as::<_, LogEntry>(
        "SELECT * FROM exchange_log WHERE ($1::text IS NULL OR set_name = $1) ORDER BY started_at DESC, id DESC LIMIT $2",
    )
    .bind(set)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Runs the exchange every `interval` until the process ends.
pub fn spawn_scheduler(
    pool: PgPool,
    client: OneC,
    cfg: ExchangeConfig,
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    metrics: Option<ExchangeMetrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _guard = lock.lock().await;
            if let Err(e) = run_all(&pool, &client, &cfg, metrics.as_ref()).await {
                tracing::error!(error = %e, "exchange could not record its run");
            }
        }
    })
}
