//! Contract with 1c-integration: its `GET /metadata` body is its
//! `Metadata` model serialized to JSON. Parse its `$metadata` fixture with
//! its own parser and answer metadata questions from the JSON.

use ai_assistant::metadata::{facts_from_model, parse_object_ref};
use onec_integration::odata::metadata::Metadata;

fn model() -> serde_json::Value {
    let xml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../1c-integration/fixtures/metadata.xml"
    ))
    .expect("1c-integration fixture");
    let m = Metadata::parse(&xml).expect("fixture parses");
    serde_json::to_value(&m).unwrap()
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
}

#[test]
fn document_tabular_sections_from_the_integration_model() {
    let obj = parse_object_ref("какие поля у Документ.РеализацияТоваровУслуг").unwrap();
    let facts = facts_from_model(&model(), &obj).unwrap();
    assert_eq!(facts.object.entity_set, "Document_РеализацияТоваровУслуг");
    let sections: Vec<&str> = facts.sections.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(sections, ["Товары"], "{facts:?}");
    assert!(!facts.sections[0].1.is_empty());
}

#[test]
fn registers_map_to_their_prefixes() {
    let m = model();
    let obj = parse_object_ref("измерения РегистрНакопления.ОстаткиТоваров").unwrap();
    assert!(facts_from_model(&m, &obj).is_ok());
    let obj = parse_object_ref("ресурсы РегистрСведений.ЦеныНоменклатуры").unwrap();
    assert!(facts_from_model(&m, &obj).is_ok());
}
