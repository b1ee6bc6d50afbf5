//! The HTTP service (on kit) against the simulator, with real PostgreSQL
//! and Redis.

mod common;

use common::{start_service, token, Sim};
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(base: &str, roles: &[&str]) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: base.to_string(),
            token: token(roles),
        }
    }
    async fn get(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        (status, r.json().await.unwrap_or(Value::Null), headers)
    }
    async fn post(&self, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn auth_is_required_with_developer_or_admin_role() {
    let sim = Sim::start().await;
    let svc = start_service(&sim.base_url(), "").await;
    let r = reqwest::get(format!("{}/metadata", svc.url)).await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), "missing_token");
    let (s, v, _) = Api::new(&svc.url, &["viewer"]).get("/metadata", &[]).await;
    assert_eq!(s, 403, "{v}");
    let (s, _, _) = Api::new(&svc.url, &["admin"]).get("/metadata", &[]).await;
    assert_eq!(s, 200);
    // kit's health routes are there, and need no token.
    let r = reqwest::get(format!("{}/health/ready", svc.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn metadata_is_cached_in_redis_with_ttl() {
    let sim = Sim::start().await;
    let svc = start_service(&sim.base_url(), "").await;
    let api = Api::new(&svc.url, &["developer"]);
    let (s, v, h) = api.get("/metadata", &[]).await;
    assert_eq!(s, 200);
    assert_eq!(h["x-cache"], "miss");
    assert!(v["entity_sets"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "Catalog_Контрагенты" && e["kind"] == "catalog"));
    let (_, _, h) = api.get("/metadata", &[]).await;
    assert_eq!(h["x-cache"], "hit");
    let (_, _, h) = api.get("/metadata", &[("refresh", "true")]).await;
    assert_eq!(h["x-cache"], "miss");
    let client = redis::Client::open(kit::testing::test_redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = conn
        .ttl(format!("{}metadata", svc.redis_prefix))
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60, "ttl {ttl}");
    let _: () = conn
        .del(format!("{}metadata", svc.redis_prefix))
        .await
        .unwrap();
}

#[tokio::test]
async fn entities_documents_registers_and_soap() {
    let mut sim = Sim::start().await;
    let svc = start_service(&sim.base_url(), "").await;
    let api = Api::new(&svc.url, &["developer"]);

    // JSON filter with Cyrillic, select, count.
    let (s, v, _) = api
        .get(
            "/entities/Catalog_Номенклатура",
            &[
                (
                    "filter",
                    r#"{"Description": {"substringof": "молоко"}, "IsFolder": false}"#,
                ),
                ("select", "Ref_Key,Description,Артикул"),
                ("inlinecount", "true"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["count"], 1);
    assert_eq!(v["value"][0]["Артикул"], "МЛК-032");
    let milk_key = v["value"][0]["Ref_Key"].as_str().unwrap().to_string();

    // Raw $filter, paging.
    let (s, v, _) = api
        .get(
            "/entities/Catalog_Номенклатура",
            &[("filter", "Артикул eq 'ХЛБ-400'")],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["value"].as_array().unwrap().len(), 1);
    let (_, v, _) = api
        .get(
            "/entities/Catalog_Контрагенты",
            &[("top", "2"), ("skip", "1"), ("orderby", "Code")],
        )
        .await;
    let codes: Vec<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, vec!["00-00000002", "00-00000003"]);
    let (s, v, _) = api
        .get(
            "/entities/Catalog_Номенклатура",
            &[("filter", "Артикул eq")],
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "bad_request"));
    let (s, v, _) = api.get("/entities/Catalog_Нет", &[]).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));

    // By key.
    let (s, v, _) = api
        .get(&format!("/entities/Catalog_Номенклатура/{milk_key}"), &[])
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["Description"], "Молоко пастеризованное 3,2% 1 л");
    let (s, v, _) = api
        .get(
            &format!("/entities/Catalog_Номенклатура/{}", uuid::Uuid::new_v4()),
            &[],
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));

    // Post / unpost a draft sale.
    let (_, v, _) = api
        .get(
            "/entities/Document_РеализацияТоваровУслуг",
            &[("filter", r#"{"Posted": false}"#)],
        )
        .await;
    let doc = v["value"][0]["Ref_Key"].as_str().unwrap().to_string();
    let (s, v) = api
        .post(
            &format!("/documents/Document_РеализацияТоваровУслуг/{doc}/post"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["Posted"], true);
    let (_, bal, _) = api
        .get(
            "/registers/AccumulationRegister_ОстаткиТоваров/balance",
            &[
                ("dimensions", "Номенклатура"),
                (
                    "condition",
                    &format!(r#"{{"Номенклатура_Key": "{milk_key}"}}"#),
                ),
            ],
        )
        .await;
    assert_eq!(bal["value"][0]["КоличествоBalance"], 380);
    let (s, v) = api
        .post(
            &format!("/documents/Document_РеализацияТоваровУслуг/{doc}/unpost"),
            None,
        )
        .await;
    assert_eq!((s, &v["Posted"]), (StatusCode::OK, &json!(false)));
    let (s, v) = api
        .post(&format!("/documents/Catalog_Склады/{doc}/post"), None)
        .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "bad_request"));
    let (s, v, _) = api
        .get(
            "/registers/AccumulationRegister_ОстаткиТоваров/balance",
            &[("period", "вчера")],
        )
        .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "bad_request"));

    // Information register slice.
    let (s, v, _) = api
        .get(
            "/registers/InformationRegister_ЦеныНоменклатуры/slice-last",
            &[
                ("period", "2024-02-15T00:00:00"),
                (
                    "condition",
                    &format!(r#"{{"Номенклатура_Key": "{milk_key}"}}"#),
                ),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["value"][0]["Цена"], 89.9);
    let (s, v, _) = api.get("/registers/Catalog_Склады/slice-last", &[]).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "bad_request"));

    // SOAP.
    let (s, v) = api
        .post(
            "/soap/exchange/GetStock",
            Some(json!({"Article": "ХЛБ-400"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"], "340");
    let (s, v) = api
        .post("/soap/exchange/GetStock", Some(json!({"Article": "НЕТ"})))
        .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_GATEWAY, "soap_fault"));
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("не найдена"));

    // 1C away: a clear 503.
    sim.stop().await;
    let (s, v, _) = api.get("/entities/Catalog_Склады", &[]).await;
    assert_eq!(
        (s, code(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "onec_unavailable"),
        "{v}"
    );
}

#[tokio::test]
async fn exchange_run_and_log_over_http() {
    let sim = Sim::start().await;
    let svc = start_service(
        &sim.base_url(),
        "Catalog_Контрагенты, Document_РеализацияТоваровУслуг",
    )
    .await;
    let api = Api::new(&svc.url, &["admin"]);
    let (s, v) = api.post("/exchange/run", None).await;
    assert_eq!(s, 200, "{v}");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["set_name"], "Catalog_Контрагенты");
    assert_eq!(runs[0]["rows_upserted"], 6);
    assert_eq!(runs[1]["rows_upserted"], 3);
    let (s, v) = api.post("/exchange/run?set=Catalog_Склады", None).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "bad_request"));
    let (s, v, _) = api
        .get("/exchange/log", &[("set", "Catalog_Контрагенты")])
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["value"].as_array().unwrap().len(), 1);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM onec_objects")
        .fetch_one(&svc.state.pool)
        .await
        .unwrap();
    assert_eq!(stored, 9);
}

#[tokio::test]
async fn scheduler_pulls_on_its_own_and_metrics_count_runs() {
    use onec_integration::exchange::{self, ExchangeConfig};
    let sim = Sim::start().await;
    let svc = start_service(&sim.base_url(), "Catalog_Склады").await;
    let st = &svc.state;
    let cfg = ExchangeConfig {
        sets: vec!["Catalog_Склады".into()],
        interval: std::time::Duration::from_millis(100),
        page_size: 20,
    };
    let task = exchange::spawn_scheduler(
        st.pool.clone(),
        st.client.clone(),
        cfg,
        st.exchange_lock.clone(),
        st.exchange_metrics.clone(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let log = loop {
        let log = exchange::log(&st.pool, None, 10).await.unwrap();
        if log.len() >= 2 || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    task.abort();
    assert!(log.len() >= 2, "{log:?}");
    assert!(log.iter().all(|e| e.error.is_none()));
    assert_eq!(
        log.last().unwrap().rows_upserted,
        2,
        "first run stores both warehouses"
    );
    assert_eq!(log[0].rows_upserted, 0, "later runs have nothing new");
    let text = reqwest::get(format!("{}/metrics", svc.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("onec_exchange_rows_upserted_total{") && l.contains("Catalog_Склады")
        })
        .unwrap_or_else(|| panic!("no exchange metrics in:\n{text}"));
    assert!(line.ends_with(" 2"), "{line}");
    assert!(text.contains("onec_exchange_last_success_timestamp_seconds{"));
}
