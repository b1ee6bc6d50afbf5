//! Scheduled exchange into PostgreSQL: incremental, and resilient to 1C
//! going away mid-run (no loss, no duplicates once it is back).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::middleware::Next;
use common::{client_for, Sim, PASSWORD};
use onec_integration::exchange;
use onec_integration::simulator::{router, SimState};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::{oneshot, Notify};
use uuid::Uuid;

const GOODS: &str = "Catalog_Номенклатура";

/// Holds the N-th request until released, telling the test it arrived.
struct Tripwire {
    count: AtomicUsize,
    at: usize,
    hit: Mutex<Option<oneshot::Sender<()>>>,
    release: Notify,
}

fn sim_versions(state: &SimState) -> HashMap<Uuid, String> {
    state
        .lock()
        .rows(&state.meta, GOODS)
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                Uuid::parse_str(r["Ref_Key"].as_str().unwrap()).unwrap(),
                r["DataVersion"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn pg_rows(pool: &PgPool) -> Vec<(Uuid, String, bool, Value)> {
    sqlx::query_as("SELECT ref_key, data_version, deleted_in_source, data FROM onec_objects WHERE set_name = $1")
        .bind(GOODS)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn exchange_survives_1c_going_away_mid_run() {
    let db = kit::testing::TestDb::new().await;
    let pool = kit::db::connect_pg(
        &db.url,
        Some(&onec_integration::service::MIGRATOR),
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap();

    let state = SimState::new(common::sim_config()).unwrap();
    {
        let mut store = state.lock();
        for i in 0..100 {
            let input = json!({"Description": format!("Конфеты «Ассорти» №{i}"), "Артикул": format!("КНФ-{i:03}")});
            store
                .create(&state.meta, GOODS, input.as_object().unwrap())
                .unwrap();
        }
    }
    let total = sim_versions(&state).len();
    assert_eq!(total, 112);

    // Page size 20: 6 listing requests, then batches of 20 objects. The
    // 8th request (second batch) is held while the simulator stops.
    let (hit_tx, hit_rx) = oneshot::channel();
    let wire = Arc::new(Tripwire {
        count: AtomicUsize::new(0),
        at: 8,
        hit: Mutex::new(Some(hit_tx)),
        release: Notify::new(),
    });
    let w = wire.clone();
    let app = router(state.clone()).layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let w = w.clone();
            async move {
                let n = w.count.fetch_add(1, Ordering::SeqCst) + 1;
                if n == w.at {
                    if let Some(tx) = w.hit.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    w.release.notified().await;
                }
                next.run(req).await
            }
        },
    ));
    let mut sim = Sim::start_with(state.clone(), app, "127.0.0.1:0".parse().unwrap()).await;
    let client = client_for(&sim.base_url(), PASSWORD);

    let run = {
        let (pool, client) = (pool.clone(), client.clone());
        tokio::spawn(async move { exchange::run_set(&pool, &client, GOODS, 20).await.unwrap() })
    };
    hit_rx.await.unwrap();
    sim.begin_stop();
    wire.release.notify_one();
    sim.stop().await;
    let first = run.await.unwrap();
    let err = first
        .error
        .clone()
        .expect("the run must fail while 1C is away");
    assert!(err.contains("cannot reach 1C"), "{err}");
    assert_eq!(first.rows_listed, 112);
    assert!(
        first.rows_upserted >= 20 && first.rows_upserted < 112,
        "partial progress kept: {first:?}"
    );
    assert_eq!(pg_rows(&pool).await.len(), first.rows_upserted as usize);

    // While 1C is away: some goods change, one is deleted, two are added.
    let versions = sim_versions(&state);
    let mut keys: Vec<Uuid> = versions.keys().copied().collect();
    keys.sort();
    {
        let mut store = state.lock();
        for k in &keys[..3] {
            let patch = json!({"Комментарий": "изменено, пока обмен стоял"});
            store
                .update(
                    &state.meta,
                    GOODS,
                    &[("Ref_Key".into(), json!(k.to_string()))],
                    patch.as_object().unwrap(),
                    None,
                )
                .unwrap();
        }
        store
            .delete(
                &state.meta,
                GOODS,
                &[("Ref_Key".into(), json!(keys[3].to_string()))],
                None,
            )
            .unwrap();
        for name in ["Зефир ванильный 250 г", "Пастила яблочная 200 г"]
        {
            store
                .create(
                    &state.meta,
                    GOODS,
                    json!({"Description": name}).as_object().unwrap(),
                )
                .unwrap();
        }
    }

    sim.restart().await;
    let second = exchange::run_set(&pool, &client, GOODS, 20).await.unwrap();
    assert_eq!(second.error, None, "{second:?}");
    assert_eq!(second.rows_listed, 113);

    // Every object in 1C is stored exactly once, at its current version.
    let now = sim_versions(&state);
    let rows = pg_rows(&pool).await;
    let live: HashMap<Uuid, (String, Value)> = rows
        .iter()
        .filter(|r| !r.2)
        .map(|r| (r.0, (r.1.clone(), r.3.clone())))
        .collect();
    assert_eq!(live.len(), now.len());
    for (k, v) in &now {
        let (pv, data) = live.get(k).unwrap_or_else(|| panic!("{k} lost"));
        assert_eq!(pv, v, "stale version of {k}");
        assert_eq!(data["DataVersion"], json!(v));
    }
    let distinct: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT ref_key) FROM onec_objects WHERE set_name = $1")
            .bind(GOODS)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(distinct as usize, rows.len(), "no duplicates");
    let changed = live.get(&keys[0]).unwrap();
    assert_eq!(changed.1["Комментарий"], "изменено, пока обмен стоял");
    // The deleted one is kept, flagged.
    let gone = rows
        .iter()
        .find(|r| r.0 == keys[3])
        .expect("deleted object kept");
    assert!(gone.2, "deleted_in_source");
    assert_eq!(second.rows_deleted, 1);

    // Nothing changed: nothing is downloaded or written.
    let third = exchange::run_set(&pool, &client, GOODS, 20).await.unwrap();
    assert_eq!(
        (
            third.error.as_deref(),
            third.rows_fetched,
            third.rows_upserted,
            third.rows_deleted
        ),
        (None, 0, 0, 0)
    );

    let log = exchange::log(&pool, Some(GOODS), 10).await.unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].id, third.id, "newest first");
    assert!(log[2].error.is_some());
    assert!(log.iter().all(|e| e.finished_at.is_some()));
}

#[tokio::test]
async fn one_run_per_set_at_a_time() {
    let db = kit::testing::TestDb::new().await;
    let pool = kit::db::connect_pg(
        &db.url,
        Some(&onec_integration::service::MIGRATOR),
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap();
    let sim = Sim::start().await;
    let client = sim.client();
    // Another replica holds the set's lock.
    let mut other = pool.begin().await.unwrap();
    let _: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('onec-exchange:' || $1))")
            .bind("Catalog_Склады")
            .fetch_one(&mut *other)
            .await
            .unwrap();
    let busy = exchange::run_set(&pool, &client, "Catalog_Склады", 50)
        .await
        .unwrap();
    assert_eq!(
        busy.error.as_deref(),
        Some("another exchange of this set is running")
    );
    assert_eq!(busy.rows_upserted, 0);
    // Other sets are not blocked.
    let goods = exchange::run_set(&pool, &client, GOODS, 50).await.unwrap();
    assert_eq!((goods.error, goods.rows_upserted), (None, 12));
    other.rollback().await.unwrap();
    // A run whose process died left an unfinished row: the next run closes it.
    let dead: i64 = sqlx::query_scalar(
        "INSERT INTO exchange_log (set_name) VALUES ('Catalog_Склады') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let ok = exchange::run_set(&pool, &client, "Catalog_Склады", 50)
        .await
        .unwrap();
    assert_eq!((ok.error, ok.rows_upserted), (None, 2));
    let (finished, error): (Option<chrono::DateTime<chrono::Utc>>, Option<String>) =
        sqlx::query_as("SELECT finished_at, error FROM exchange_log WHERE id = $1")
            .bind(dead)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(finished.is_some());
    assert!(error.unwrap().starts_with("interrupted"));
    // A set that is not keyed by Ref_Key fails with 1C's own message.
    let reg = exchange::run_set(&pool, &client, "InformationRegister_ЦеныНоменклатуры", 50)
        .await
        .unwrap();
    assert!(
        reg.error.as_deref().unwrap_or_default().contains("Ref_Key"),
        "{reg:?}"
    );
}
