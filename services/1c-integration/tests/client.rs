//! The OData and SOAP clients against the simulator started in-process.

mod common;

use std::collections::HashSet;

use common::{client_for, Sim, PASSWORD};
use onec_integration::odata::error::decode_error_body;
use onec_integration::odata::expr::parse_datetime;
use onec_integration::odata::{BalanceArgs, Filter, Key, ODataError, Query, SetKind};
use onec_integration::soap::Soap;
use serde_json::{json, Value};
use uuid::Uuid;

fn guid(v: &Value, field: &str) -> Uuid {
    Uuid::parse_str(
        v[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} missing in {v}")),
    )
    .unwrap()
}

#[tokio::test]
async fn metadata_is_parsed_into_kinds() {
    let sim = Sim::start().await;
    let m = sim.client().metadata().await.unwrap();
    assert_eq!(m.namespace, "StandardODATA");
    let catalogs: Vec<&str> = m
        .sets_of_kind(SetKind::Catalog)
        .map(|s| s.name.as_str())
        .collect();
    assert!(catalogs.contains(&"Catalog_Номенклатура"), "{catalogs:?}");
    assert!(catalogs.contains(&"Catalog_Контрагенты"));
    let ts = m.set("Document_РеализацияТоваровУслуг_Товары").unwrap();
    assert_eq!(ts.kind, SetKind::TabularSection);
    assert_eq!(ts.section.as_deref(), Some("Товары"));
    assert_eq!(
        m.set("InformationRegister_ЦеныНоменклатуры").unwrap().kind,
        SetKind::InformationRegister
    );
    let et = m.entity_type_of("Document_РеализацияТоваровУслуг").unwrap();
    assert_eq!(
        et.property("Товары").unwrap().collection_of(),
        Some("StandardODATA.Document_РеализацияТоваровУслуг_Товары_RowType")
    );
    let nav = et.navigation.iter().find(|n| n.name == "Склад").unwrap();
    assert_eq!(nav.target_set.as_deref(), Some("Catalog_Склады"));
}

#[tokio::test]
async fn paging_across_pages_without_next_link() {
    let sim = Sim::start().await;
    let c = sim.client();
    let folder = c
        .create(
            "Catalog_Номенклатура",
            &json!({"Description": "Тест постраничной выборки", "IsFolder": true}),
        )
        .await
        .unwrap();
    let folder_key = guid(&folder, "Ref_Key");
    for i in 0..25 {
        c.create(
            "Catalog_Номенклатура",
            &json!({"Parent_Key": folder_key.to_string(), "Description": format!("Товар №{i:02}"), "Артикул": format!("ТСТ-{i:03}")}),
        )
        .await
        .unwrap();
    }
    let q = Query::new("Catalog_Номенклатура")
        .filter(&Filter::eq("Parent_Key", folder_key))
        .orderby("Description desc");
    let first = c.fetch(&q.clone().top(10).inlinecount()).await.unwrap();
    assert_eq!(first.count, Some(25));
    assert_eq!(first.rows.len(), 10);
    assert_eq!(first.rows[0]["Description"], "Товар №24");

    let mut pager = c.pages(q.clone(), 10);
    let mut sizes = Vec::new();
    let mut keys = HashSet::new();
    while let Some(rows) = pager.next_page().await.unwrap() {
        sizes.push(rows.len());
        for r in rows {
            assert!(
                keys.insert(r["Ref_Key"].as_str().unwrap().to_string()),
                "duplicate row {r}"
            );
        }
    }
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(keys.len(), 25);

    // A page size dividing the total exactly ends on an empty page.
    let all = c.fetch_all(q.clone(), 5).await.unwrap();
    assert_eq!(all.len(), 25);
    // The query's own $top caps the pager.
    let capped = c
        .fetch_all(q.clone().top(12).select(["Ref_Key", "Description"]), 5)
        .await
        .unwrap();
    assert_eq!(capped.len(), 12);
    assert!(
        capped[0].get("Артикул").is_none(),
        "$select limits fields: {}",
        capped[0]
    );
}

#[tokio::test]
async fn filters_with_cyrillic_and_typed_literals() {
    let sim = Sim::start().await;
    let c = sim.client();
    let milk = c
        .fetch(
            &Query::new("Catalog_Номенклатура")
                .filter(&Filter::substringof("Description", "молоко")),
        )
        .await
        .unwrap();
    assert_eq!(milk.rows.len(), 1, "{:?}", milk.rows);
    assert_eq!(milk.rows[0]["Артикул"], "МЛК-032");

    let bread = c
        .fetch(&Query::new("Catalog_Номенклатура").filter(&Filter::eq("Артикул", "ХЛБ-400")))
        .await
        .unwrap();
    assert_eq!(bread.rows[0]["Description"], "Хлеб «Бородинский» 400 г");

    // Quotes inside Cyrillic strings survive the round trip.
    let odd = c
        .create(
            "Catalog_Контрагенты",
            &json!({"Description": "Д'Артаньян и сыновья ООО", "ИНН": "7700000001"}),
        )
        .await
        .unwrap();
    let found = c
        .fetch(
            &Query::new("Catalog_Контрагенты")
                .filter(&Filter::eq("Description", "Д'Артаньян и сыновья ООО")),
        )
        .await
        .unwrap();
    assert_eq!(found.rows.len(), 1);
    assert_eq!(found.rows[0]["Ref_Key"], odd["Ref_Key"]);

    // guid and datetime literals, and/or.
    let partner = c
        .fetch(&Query::new("Catalog_Контрагенты").filter(&Filter::eq("ИНН", "7701234567")))
        .await
        .unwrap();
    let partner_key = guid(&partner.rows[0], "Ref_Key");
    let docs = c
        .fetch(&Query::new("Document_РеализацияТоваровУслуг").filter(
            &Filter::eq("Контрагент_Key", partner_key).and(Filter::ge(
                "Date",
                parse_datetime("2024-02-01T00:00:00").unwrap(),
            )),
        ))
        .await
        .unwrap();
    assert_eq!(docs.rows.len(), 1);
    assert_eq!(docs.rows[0]["Комментарий"], "Отгрузка по договору № 15/24");
    let either = c
        .fetch(
            &Query::new("Catalog_Номенклатура")
                .filter(&Filter::eq("Артикул", "ЧАЙ-100").or(Filter::eq("Артикул", "КОФ-250")))
                .orderby("Артикул"),
        )
        .await
        .unwrap();
    let arts: Vec<&str> = either
        .rows
        .iter()
        .map(|r| r["Артикул"].as_str().unwrap())
        .collect();
    assert_eq!(arts, vec!["КОФ-250", "ЧАЙ-100"]);
    let expensive = c
        .fetch(
            &Query::new("InformationRegister_ЦеныНоменклатуры").filter(&Filter::gt("Цена", 400.0)),
        )
        .await
        .unwrap();
    assert!(!expensive.rows.is_empty());
    assert!(expensive
        .rows
        .iter()
        .all(|r| r["Цена"].as_f64().unwrap() > 400.0));

    // $expand brings the referenced counterparty.
    let with_partner = c
        .fetch(
            &Query::new("Document_РеализацияТоваровУслуг")
                .filter(&Filter::eq("Контрагент_Key", partner_key))
                .expand("Контрагент"),
        )
        .await
        .unwrap();
    assert_eq!(with_partner.rows[0]["Контрагент"]["ИНН"], "7701234567");

    // A raw filter with a syntax error is a 400 with 1C's message.
    let err = c
        .fetch(&Query::new("Catalog_Номенклатура").raw_filter("Description eq"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
}

#[tokio::test]
async fn optimistic_lock_conflict_is_412() {
    let sim = Sim::start().await;
    let c = sim.client();
    let item = c
        .create(
            "Catalog_Номенклатура",
            &json!({"Description": "Сыр «Российский» 200 г", "Артикул": "СЫР-200"}),
        )
        .await
        .unwrap();
    let key = Key::Guid(guid(&item, "Ref_Key"));
    let v1 = item["DataVersion"].as_str().unwrap().to_string();
    let updated = c
        .update(
            "Catalog_Номенклатура",
            &key,
            &json!({"Комментарий": "первая правка"}),
            Some(&v1),
        )
        .await
        .unwrap();
    let v2 = updated["DataVersion"].as_str().unwrap().to_string();
    assert_ne!(v1, v2, "DataVersion changes on every write");
    let err = c
        .update(
            "Catalog_Номенклатура",
            &key,
            &json!({"Комментарий": "вторая правка по старой версии"}),
            Some(&v1),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ODataError::PreconditionFailed { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("412"));
    let now = c.get("Catalog_Номенклатура", &key, &[], &[]).await.unwrap();
    assert_eq!(now["Комментарий"], "первая правка");
    // Delete with a stale version fails too; with the current one it works.
    assert!(matches!(
        c.delete("Catalog_Номенклатура", &key, Some(&v1)).await,
        Err(ODataError::PreconditionFailed { .. })
    ));
    c.delete("Catalog_Номенклатура", &key, Some(&v2))
        .await
        .unwrap();
    assert!(matches!(
        c.get("Catalog_Номенклатура", &key, &[], &[]).await,
        Err(ODataError::NotFound { .. })
    ));
}

#[tokio::test]
async fn post_unpost_move_the_balance() {
    let sim = Sim::start().await;
    let c = sim.client();
    let drafts = c
        .fetch(&Query::new("Document_РеализацияТоваровУслуг").filter(&Filter::eq("Posted", false)))
        .await
        .unwrap();
    assert_eq!(drafts.rows.len(), 1);
    let doc = &drafts.rows[0];
    let doc_key = guid(doc, "Ref_Key");
    let line = &doc["Товары"][0];
    assert_eq!(line["LineNumber"], "1", "LineNumber is a string");
    let goods = guid(line, "Номенклатура_Key");
    let qty = line["Количество"].as_f64().unwrap();

    let balance_of = |rows: &[Value]| -> f64 {
        rows.iter()
            .find(|r| r["Номенклатура_Key"] == goods.to_string())
            .map(|r| r["КоличествоBalance"].as_f64().unwrap())
            .unwrap_or(0.0)
    };
    let args = BalanceArgs {
        dimensions: vec!["Номенклатура".into()],
        ..Default::default()
    };
    let before = balance_of(
        &c.balance("AccumulationRegister_ОстаткиТоваров", &args)
            .await
            .unwrap(),
    );
    assert_eq!(before, 200.0);

    c.post_document("Document_РеализацияТоваровУслуг", doc_key, false)
        .await
        .unwrap();
    let posted = c
        .get(
            "Document_РеализацияТоваровУслуг",
            &Key::Guid(doc_key),
            &[],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(posted["Posted"], true);
    let after = c
        .balance("AccumulationRegister_ОстаткиТоваров", &args)
        .await
        .unwrap();
    assert_eq!(balance_of(&after), before - qty);
    assert!(
        after[0].get("Склад_Key").is_none(),
        "only the requested dimension: {}",
        after[0]
    );

    // Condition and Period narrow the virtual table.
    let cond = BalanceArgs {
        condition: Some(format!("Номенклатура_Key eq guid'{goods}'")),
        period: Some(parse_datetime("2024-02-05T00:00:00").unwrap()),
        dimensions: vec![],
    };
    let early = c
        .balance("AccumulationRegister_ОстаткиТоваров", &cond)
        .await
        .unwrap();
    assert_eq!(early.len(), 1);
    assert_eq!(early[0]["КоличествоBalance"].as_f64(), Some(200.0));
    assert!(early[0].get("Склад_Key").is_some());

    c.unpost_document("Document_РеализацияТоваровУслуг", doc_key)
        .await
        .unwrap();
    let restored = c
        .balance("AccumulationRegister_ОстаткиТоваров", &args)
        .await
        .unwrap();
    assert_eq!(balance_of(&restored), before);

    // Posting a catalog is refused.
    let cat = c.fetch(&Query::new("Catalog_Склады").top(1)).await.unwrap();
    let err = c
        .post_document("Catalog_Склады", guid(&cat.rows[0], "Ref_Key"), false)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400));
}

#[tokio::test]
async fn slice_last_takes_the_latest_price() {
    let sim = Sim::start().await;
    let c = sim.client();
    let milk = c
        .fetch(&Query::new("Catalog_Номенклатура").filter(&Filter::eq("Артикул", "МЛК-032")))
        .await
        .unwrap();
    let key = guid(&milk.rows[0], "Ref_Key");
    let cond = format!("Номенклатура_Key eq guid'{key}'");
    let now = c
        .slice_last("InformationRegister_ЦеныНоменклатуры", None, Some(&cond))
        .await
        .unwrap();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0]["Цена"].as_f64(), Some(96.19));
    let feb = c
        .slice_last(
            "InformationRegister_ЦеныНоменклатуры",
            parse_datetime("2024-02-15T00:00:00"),
            Some(&cond),
        )
        .await
        .unwrap();
    assert_eq!(feb[0]["Цена"].as_f64(), Some(89.9));
    // Register records are addressed by a compound key.
    let rec = c
        .get(
            "InformationRegister_ЦеныНоменклатуры",
            &Key::Named(vec![
                (
                    "Period".into(),
                    parse_datetime("2024-01-01T00:00:00").unwrap().into(),
                ),
                ("Номенклатура_Key".into(), key.into()),
            ]),
            &[],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rec["Цена"].as_f64(), Some(89.9));
}

#[tokio::test]
async fn both_error_forms_are_decoded() {
    let sim = Sim::start().await;
    let c = sim.client();
    // JSON form (the client always asks for $format=json).
    let err = c
        .get("Catalog_Номенклатура", &Key::Guid(Uuid::new_v4()), &[], &[])
        .await
        .unwrap_err();
    match &err {
        ODataError::NotFound { message } => assert!(
            message.starts_with("Не найден объект Catalog_Номенклатура"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
    let err = c
        .create("Catalog_Номенклатура", &json!({"НетТакогоПоля": 1}))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Неизвестное свойство \"НетТакогоПоля\""),
        "{err}"
    );

    // XML form: $metadata is requested without $format=json, so a wrong
    // publication answers <m:error>.
    let wrong = client_for(&format!("http://{}/nosuchbase", sim.addr), PASSWORD);
    match wrong.metadata().await.unwrap_err() {
        ODataError::NotFound { message } => {
            assert_eq!(message, "Публикация информационной базы не найдена")
        }
        other => panic!("{other:?}"),
    }
    // And any data request without $format=json gets Atom / XML errors.
    let raw = reqwest::Client::new()
        .get(format!(
            "{}/odata/standard.odata/Catalog_Склады(guid'{}')",
            sim.base_url(),
            Uuid::nil()
        ))
        .basic_auth(common::USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 404);
    assert!(raw.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/xml"));
    let body = raw.bytes().await.unwrap();
    assert!(decode_error_body(&body)
        .unwrap()
        .contains("Не найден объект Catalog_Склады"));
    let feed = reqwest::Client::new()
        .get(format!(
            "{}/odata/standard.odata/Catalog_Склады",
            sim.base_url()
        ))
        .basic_auth(common::USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert!(feed.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/atom+xml"));
    assert!(feed
        .text()
        .await
        .unwrap()
        .contains("<d:Description>Основной склад</d:Description>"));
}

#[tokio::test]
async fn wrong_password_is_401() {
    let sim = Sim::start().await;
    let c = client_for(&sim.base_url(), "неверный");
    let err = c.fetch(&Query::new("Catalog_Склады")).await.unwrap_err();
    assert!(matches!(err, ODataError::Unauthorized { .. }), "{err:?}");
    assert!(
        !format!("{err} {err:?} {c:?}").contains("неверный"),
        "password leaked"
    );
    let raw = reqwest::get(format!("{}/odata/standard.odata/$metadata", sim.base_url()))
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);
    assert_eq!(
        raw.headers()["www-authenticate"],
        "Basic realm=\"1C:Enterprise\""
    );
}

#[tokio::test]
async fn unreachable_infobase_fails_after_bounded_retries() {
    let mut sim = Sim::start().await;
    let c = sim.client();
    sim.stop().await;
    let started = std::time::Instant::now();
    let err = c.fetch(&Query::new("Catalog_Склады")).await.unwrap_err();
    assert!(matches!(err, ODataError::Transport { .. }), "{err:?}");
    assert!(err.is_unavailable());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Back again: the same client works.
    sim.restart().await;
    assert_eq!(
        c.fetch(&Query::new("Catalog_Склады"))
            .await
            .unwrap()
            .rows
            .len(),
        2
    );
}

#[tokio::test]
async fn soap_call_and_fault() {
    let sim = Sim::start().await;
    let soap = Soap::new(sim.client());
    let params = json!({"Article": "МЛК-032"});
    let v = soap
        .call("exchange", "GetStock", params.as_object().unwrap())
        .await
        .unwrap();
    assert_eq!(v, json!("380"));
    let p = json!({"Article": "МЛК-032", "Warehouse": "Склад Санкт-Петербург"});
    assert_eq!(
        soap.call("exchange", "GetStock", p.as_object().unwrap())
            .await
            .unwrap(),
        json!("0")
    );
    let p = json!({"Article": "МЛК-032", "Date": "2024-02-01T00:00:00"});
    assert_eq!(
        soap.call("exchange", "GetPrice", p.as_object().unwrap())
            .await
            .unwrap(),
        json!("89.9")
    );
    let p = json!({"Article": "НЕТ-000"});
    match soap
        .call("exchange", "GetStock", p.as_object().unwrap())
        .await
    {
        Err(ODataError::SoapFault { code, message }) => {
            assert_eq!(code, "soap:Server");
            assert!(message.contains("НЕТ-000"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        soap.call("exchange", "NoSuchOperation", &serde_json::Map::new())
            .await,
        Err(ODataError::SoapFault { .. })
    ));
}

/// A tiny HTTP server answering from a closure, counting requests.
async fn fake_1c(
    handler: impl Fn(usize, &str) -> (u16, &'static str, String) + Clone + Send + Sync + 'static,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (h, handler) = (h.clone(), handler.clone());
        async move {
            let n = h.fetch_add(1, Ordering::SeqCst) + 1;
            let (status, ct, body) = handler(n, &format!("{} {}", req.method(), req.uri()));
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                [(axum::http::header::CONTENT_TYPE, ct)],
                body,
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/demo"), hits)
}

#[tokio::test]
async fn server_errors_are_retried_for_reads_only() {
    use std::sync::atomic::Ordering;
    // Two 500s, then a page: the read succeeds on the third attempt.
    let (base, hits) = fake_1c(|n, _| {
        if n <= 2 {
            (
                500,
                "application/json",
                r#"{"odata.error":{"code":"","message":{"lang":"ru","value":"Временная ошибка"}}}"#
                    .into(),
            )
        } else {
            (
                200,
                "application/json",
                r#"{"value":[{"Ref_Key":"00000000-0000-0000-0000-000000000001"}]}"#.into(),
            )
        }
    })
    .await;
    let c = client_for(&base, PASSWORD);
    let page = c.fetch(&Query::new("Catalog_Склады")).await.unwrap();
    assert_eq!(page.rows.len(), 1);
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    // Always 500: bounded (1 + 2 retries), and the message is decoded.
    let (base, hits) = fake_1c(|_, _| {
        (500, "application/json", r#"{"odata.error":{"code":"","message":{"lang":"ru","value":"Сервер 1С:Предприятия недоступен"}}}"#.into())
    })
    .await;
    let c = client_for(&base, PASSWORD);
    let err = c.fetch(&Query::new("Catalog_Склады")).await.unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert!(
        err.to_string().contains("Сервер 1С:Предприятия недоступен"),
        "{err}"
    );
    // A create is not repeated after a 500 (it may have been applied).
    hits.store(0, Ordering::SeqCst);
    assert!(c
        .create("Catalog_Склады", &json!({"Description": "x"}))
        .await
        .is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn empty_odata_content_gives_the_hint() {
    let (base, _) = fake_1c(|_, what| {
        assert!(what.contains("$metadata"), "{what}");
        (200, "application/xml", r#"<?xml version="1.0" encoding="UTF-8"?>
<edmx:Edmx xmlns:edmx="http://schemas.microsoft.com/ado/2007/06/edmx" Version="1.0"><edmx:DataServices xmlns:m="http://schemas.microsoft.com/ado/2007/08/dataservices/metadata" m:DataServiceVersion="3.0"><Schema xmlns="http://schemas.microsoft.com/ado/2009/11/edm" Namespace="StandardODATA"><EntityContainer Name="StandardODATA" m:IsDefaultEntityContainer="true"/></Schema></edmx:DataServices></edmx:Edmx>"#.into())
    })
    .await;
    let err = client_for(&base, PASSWORD).metadata().await.unwrap_err();
    assert!(matches!(err, ODataError::Metadata(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("Установить состав стандартного интерфейса OData"),
        "{err}"
    );
}
