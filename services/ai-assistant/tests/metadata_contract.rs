//! Contract with 1c-integration: `tests/fixtures/integration-metadata.json`
//! is its `Metadata` model (services/1c-integration/src/odata/metadata.rs)
//! serialized to JSON, exactly as its `GET /metadata` returns it, generated
//! from its `fixtures/metadata.xml` with its own parser.

use ai_assistant::metadata::{facts_from_model, parse_object_ref};

fn model() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/integration-metadata.json")).unwrap()
}

#[test]
fn catalog_attributes_from_the_integration_model() {
    let obj = parse_object_ref("какие реквизиты у Справочник.Номенклатура?").unwrap();
    let facts = facts_from_model(&model(), &obj).unwrap();
    let names: Vec<&str> = facts.fields.iter().map(|f| f.name.as_str()).collect();
    assert!(names.contains(&"Ref_Key"), "{names:?}");
    assert!(names.contains(&"Артикул"), "{names:?}");
    let art = facts.fields.iter().find(|f| f.name == "Артикул").unwrap();
    assert_eq!(art.type_name, "Edm.String");
    assert!(facts.render().contains("`Артикул`: Edm.String"));
}

#[test]
fn document_tabular_sections_from_the_integration_model() {
    let obj = parse_object_ref("какие поля у Документ.РеализацияТоваровУслуг").unwrap();
    let facts = facts_from_model(&model(), &obj).unwrap();
    assert_eq!(facts.object.entity_set, "Document_РеализацияТоваровУслуг");
    let sections: Vec<&str> = facts.sections.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(sections, ["Товары"], "{facts:?}");
    assert!(!facts.sections[0].1.is_empty());
    // The tabular section is not repeated among the header fields.
    assert!(facts
        .fields
        .iter()
        .all(|f| !f.type_name.starts_with("Collection(")));
}

#[test]
fn registers_map_to_their_prefixes() {
    let m = model();
    let obj = parse_object_ref("измерения РегистрНакопления.ОстаткиТоваров").unwrap();
    let f = facts_from_model(&m, &obj).unwrap();
    assert!(!f.fields.is_empty());
    let obj = parse_object_ref("ресурсы РегистрСведений.ЦеныНоменклатуры").unwrap();
    assert!(!facts_from_model(&m, &obj).unwrap().fields.is_empty());
    let obj = parse_object_ref("реквизиты Справочник.НетТакого").unwrap();
    assert!(facts_from_model(&m, &obj).is_err());
}
