//! Simulator behaviour not covered through the client.

mod common;

use onec_integration::simulator::{SimConfig, SimState};
use serde_json::json;

#[tokio::test]
async fn state_file_keeps_data_across_restarts() {
    let path = std::env::temp_dir().join(format!("onec-sim-{}.json", uuid::Uuid::new_v4()));
    let cfg = SimConfig {
        state_file: Some(path.clone()),
        ..common::sim_config()
    };
    let first = SimState::new(cfg.clone()).unwrap();
    let created = {
        let mut store = first.lock();
        let input = json!({"Description": "Творог 9% 180 г", "Артикул": "ТВР-009"});
        store
            .create(
                &first.meta,
                "Catalog_Номенклатура",
                input.as_object().unwrap(),
            )
            .unwrap()
    };
    drop(first);
    let second = SimState::new(cfg).unwrap();
    let rows = second
        .lock()
        .rows(&second.meta, "Catalog_Номенклатура")
        .unwrap();
    let again = rows
        .iter()
        .find(|r| r["Ref_Key"] == created["Ref_Key"])
        .expect("row survived restart");
    assert_eq!(again["Description"], "Творог 9% 180 г");
    assert_eq!(again["DataVersion"], created["DataVersion"]);
    // New writes get fresh versions (the counter is persisted too).
    let next = {
        let mut store = second.lock();
        let input = json!({"Description": "Ряженка 4% 0,5 л"});
        store
            .create(
                &second.meta,
                "Catalog_Номенклатура",
                input.as_object().unwrap(),
            )
            .unwrap()
    };
    assert_ne!(next["DataVersion"], created["DataVersion"]);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn odata_count_and_service_document() {
    let sim = common::Sim::start().await;
    let http = reqwest::Client::new();
    let url = format!(
        "{}/odata/standard.odata/Catalog_Контрагенты/$count",
        sim.base_url()
    );
    let n = http
        .get(url)
        .basic_auth(common::USER, Some(common::PASSWORD))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(n, "6");
    let url = format!("{}/odata/standard.odata/?$format=json", sim.base_url());
    let doc: serde_json::Value = http
        .get(url)
        .basic_auth(common::USER, Some(common::PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["value"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "AccumulationRegister_ОстаткиТоваров"));
    // Unknown $format is refused.
    let url = format!(
        "{}/odata/standard.odata/Catalog_Склады?$format=csv",
        sim.base_url()
    );
    let r = http
        .get(url)
        .basic_auth(common::USER, Some(common::PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
}
