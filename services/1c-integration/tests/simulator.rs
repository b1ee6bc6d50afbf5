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

#[tokio::test]
async fn post_with_parentheses_and_atom_entries() {
    let sim = common::Sim::start().await;
    let http = reqwest::Client::new();
    let root = format!("{}/odata/standard.odata", sim.base_url());
    let list: serde_json::Value = http
        .get(format!(
            "{root}/Document_РеализацияТоваровУслуг?$format=json&$filter=Posted eq false"
        ))
        .basic_auth(common::USER, Some(common::PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = list["value"][0]["Ref_Key"].as_str().unwrap().to_string();
    let r = http
        .post(format!("{root}/Document_РеализацияТоваровУслуг(guid'{key}')/Post()?PostingModeOperational=false"))
        .basic_auth(common::USER, Some(common::PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Without $format=json the entry is Atom, with the tabular section as a collection.
    let atom = http
        .get(format!(
            "{root}/Document_РеализацияТоваровУслуг(guid'{key}')"
        ))
        .basic_auth(common::USER, Some(common::PASSWORD))
        .send()
        .await
        .unwrap();
    assert!(atom.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("type=entry"));
    let text = atom.text().await.unwrap();
    assert!(
        text.contains("<d:Posted m:type=\"Edm.Boolean\">true</d:Posted>"),
        "{text}"
    );
    assert!(text.contains("<d:Товары m:type=\"Collection(StandardODATA.Document_РеализацияТоваровУслуг_Товары_RowType)\"><d:element>"), "{text}");
    assert!(
        text.contains("<d:LineNumber m:type=\"Edm.Int64\">1</d:LineNumber>"),
        "{text}"
    );
}
