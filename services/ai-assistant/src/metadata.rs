//! Metadata questions ("какие реквизиты у Справочник.Номенклатура?")
//! answered from 1c-integration's `GET /metadata` (the OData `$metadata`
//! of the infobase as a JSON model).

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// Russian (and English) metadata kinds and their OData entity-set prefixes.
pub const KINDS: &[(&str, &str)] = &[
    ("Справочник", "Catalog_"),
    ("Справочники", "Catalog_"),
    ("Catalog", "Catalog_"),
    ("Документ", "Document_"),
    ("Документы", "Document_"),
    ("Document", "Document_"),
    ("ЖурналДокументов", "DocumentJournal_"),
    ("Константа", "Constant_"),
    ("ПланОбмена", "ExchangePlan_"),
    ("ПланСчетов", "ChartOfAccounts_"),
    ("ChartOfAccounts", "ChartOfAccounts_"),
    ("ПланВидовРасчета", "ChartOfCalculationTypes_"),
    ("ПланВидовХарактеристик", "ChartOfCharacteristicTypes_"),
    ("РегистрСведений", "InformationRegister_"),
    ("РегистрыСведений", "InformationRegister_"),
    ("InformationRegister", "InformationRegister_"),
    ("РегистрНакопления", "AccumulationRegister_"),
    ("РегистрыНакопления", "AccumulationRegister_"),
    ("AccumulationRegister", "AccumulationRegister_"),
    ("РегистрБухгалтерии", "AccountingRegister_"),
    ("РегистрРасчета", "CalculationRegister_"),
    ("БизнесПроцесс", "BusinessProcess_"),
    ("Задача", "Task_"),
    ("Перечисление", "Enum_"),
];

/// An object named in a question: `Справочник.Номенклатура` → kind
/// `Справочник`, name `Номенклатура`, entity set `Catalog_Номенклатура`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectRef {
    pub kind: String,
    pub name: String,
    pub entity_set: String,
}

fn fold(s: &str) -> String {
    s.replace(['ё', 'Ё'], "е").to_lowercase()
}

/// Finds `Вид.Имя` (or `Вид Имя`, e.g. "справочника Номенклатура") in a
/// question that asks about metadata.
pub fn parse_object_ref(question: &str) -> Option<ObjectRef> {
    let words: Vec<&str> = question
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
        .filter(|w| !w.is_empty())
        .collect();
    let kind_of = |w: &str| -> Option<(&'static str, &'static str)> {
        let fw = fold(w);
        // Exact (case-insensitive), then an inflected form ("справочника").
        KINDS
            .iter()
            .find(|(k, _)| fold(k) == fw)
            .or_else(|| {
                KINDS.iter().find(|(k, _)| {
                    let fk = fold(k);
                    fk.chars().count() >= 6
                        && fw.starts_with(&fk)
                        && fw.chars().count() <= fk.chars().count() + 2
                })
            })
            .map(|(k, p)| (*k, *p))
    };
    let valid_name = |n: &str| {
        n.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
            && n.chars().all(|c| c.is_alphanumeric() || c == '_')
    };
    for (i, w) in words.iter().enumerate() {
        let w = w.trim_matches('.');
        if let Some((k, name)) = w.split_once('.') {
            if let Some((kind, prefix)) = kind_of(k) {
                let name = name.split('.').next().unwrap_or("");
                if valid_name(name) {
                    return Some(ObjectRef {
                        kind: kind.to_string(),
                        name: name.to_string(),
                        entity_set: format!("{prefix}{name}"),
                    });
                }
            }
            continue;
        }
        if let Some((kind, prefix)) = kind_of(w) {
            if let Some(next) = words.get(i + 1) {
                let name = next.trim_matches('.');
                // The next word must look like an object name (capitalised).
                if valid_name(name) && name.chars().next().is_some_and(char::is_uppercase) {
                    return Some(ObjectRef {
                        kind: kind.to_string(),
                        name: name.to_string(),
                        entity_set: format!("{prefix}{name}"),
                    });
                }
            }
        }
    }
    None
}

/// Is this a question about the structure of a metadata object?
pub fn is_metadata_question(question: &str) -> bool {
    let q = fold(question);
    [
        "реквизит",
        "поля",
        "поле ",
        "измерени",
        "ресурс",
        "табличн",
        "структур",
        "состав",
        "свойств",
        "attributes",
        "fields",
        "columns",
        "properties",
    ]
    .iter()
    .any(|k| q.contains(k))
}

#[derive(Debug, Clone, Serialize)]
pub struct Field {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetadataFacts {
    pub object: ObjectRef,
    pub fields: Vec<Field>,
    /// Tabular sections: (section name, its fields).
    pub sections: Vec<(String, Vec<Field>)>,
}

impl MetadataFacts {
    pub fn render(&self) -> String {
        let mut s = format!(
            "**{}.{}** (OData: `{}`), поля — {}:\n",
            self.object.kind,
            self.object.name,
            self.object.entity_set,
            self.fields.len()
        );
        for f in &self.fields {
            s.push_str(&format!("- `{}`: {}\n", f.name, f.type_name));
        }
        for (name, fields) in &self.sections {
            s.push_str(&format!("\nТабличная часть **{name}**:\n"));
            for f in fields {
                s.push_str(&format!("- `{}`: {}\n", f.name, f.type_name));
            }
        }
        s.push_str(
            "\nИсточник: 1c-integration GET /metadata (стандартный интерфейс OData). \
             Ссылочные реквизиты представлены полями `<Имя>_Key`.",
        );
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("сервис 1c-integration недоступен: {0}")]
    Unavailable(String),
    #[error("сервис 1c-integration ответил HTTP {0}")]
    Status(u16),
    #[error(
        "нет доступа к метаданным в 1c-integration (HTTP {0}): нужна роль developer или admin"
    )]
    Forbidden(u16),
    #[error("ответ 1c-integration не разобран: {0}")]
    Invalid(String),
    #[error("объект {0} не найден в составе стандартного интерфейса OData")]
    NotFound(String),
}

#[derive(Clone)]
pub struct MetadataClient {
    base_url: String,
    client: reqwest::Client,
}

impl MetadataClient {
    pub fn new(base_url: impl Into<String>) -> Self {
        MetadataClient {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(3))
                .build()
                .expect("http client"),
        }
    }

    /// Fetches `GET /metadata` (forwarding the caller's bearer token) and
    /// extracts the object's fields.
    pub async fn lookup(
        &self,
        obj: &ObjectRef,
        authorization: Option<&str>,
    ) -> Result<MetadataFacts, MetadataError> {
        let mut rb = self.client.get(format!("{}/metadata", self.base_url));
        if let Some(a) = authorization {
            rb = rb.header(reqwest::header::AUTHORIZATION, a);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| MetadataError::Unavailable(e.without_url().to_string()))?;
        match resp.status().as_u16() {
            200..=299 => {}
            s @ (401 | 403) => return Err(MetadataError::Forbidden(s)),
            s => return Err(MetadataError::Status(s)),
        }
        let model: Value = resp
            .json()
            .await
            .map_err(|e| MetadataError::Invalid(e.without_url().to_string()))?;
        facts_from_model(&model, obj)
    }
}

fn unqualify(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

fn fields_of(model: &Value, entity_type: &str) -> Option<Vec<Field>> {
    let types = model.get("entity_types")?;
    let t = types
        .get(entity_type)
        .or_else(|| types.get(unqualify(entity_type)))
        .or_else(|| {
            types
                .as_object()?
                .iter()
                .find_map(|(k, v)| (unqualify(k) == unqualify(entity_type)).then_some(v))
        })?;
    let props = t.get("properties")?.as_array()?;
    Some(
        props
            .iter()
            .filter_map(|p| {
                let name = p.get("name")?.as_str()?.to_string();
                let type_name = p.get("type")?.as_str()?.to_string();
                // Collections are the tabular sections, listed separately.
                (!type_name.starts_with("Collection(")).then_some(Field { name, type_name })
            })
            .collect(),
    )
}

/// Extracts an object's fields and tabular sections from the JSON model
/// (`{entity_sets: [{name, entity_type, owner?, section?}], entity_types:
/// {Name: {properties: [{name, type}]}}}`, possibly under `metadata`).
pub fn facts_from_model(model: &Value, obj: &ObjectRef) -> Result<MetadataFacts, MetadataError> {
    let model = model.get("metadata").unwrap_or(model);
    let sets = model
        .get("entity_sets")
        .and_then(Value::as_array)
        .ok_or_else(|| MetadataError::Invalid("no entity_sets".into()))?;
    let find_set = |name: &str| {
        sets.iter()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
    };
    let set = find_set(&obj.entity_set)
        .or_else(|| {
            // Case-insensitive fallback (users type names loosely).
            let want = fold(&obj.entity_set);
            sets.iter().find(|s| {
                s.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| fold(n) == want)
            })
        })
        .ok_or_else(|| MetadataError::NotFound(obj.entity_set.clone()))?;
    let set_name = set.get("name").and_then(Value::as_str).unwrap_or_default();
    let et = set
        .get("entity_type")
        .and_then(Value::as_str)
        .unwrap_or(set_name);
    let fields = fields_of(model, et).ok_or_else(|| {
        MetadataError::Invalid(format!("entity type {et} of {set_name} is not described"))
    })?;
    let mut sections = Vec::new();
    for s in sets {
        if s.get("owner").and_then(Value::as_str) == Some(set_name) {
            let name = s
                .get("section")
                .and_then(Value::as_str)
                .or_else(|| s.get("name").and_then(Value::as_str))
                .unwrap_or_default()
                .to_string();
            let et = s
                .get("entity_type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if let Some(f) = fields_of(model, et) {
                sections.push((name, f));
            }
        }
    }
    let mut object = obj.clone();
    object.entity_set = set_name.to_string();
    Ok(MetadataFacts {
        object,
        fields,
        sections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_dotted_and_spaced_references() {
        let r = parse_object_ref("какие реквизиты у Справочник.Номенклатура?").unwrap();
        assert_eq!(r.entity_set, "Catalog_Номенклатура");
        let r = parse_object_ref("измерения РегистрНакопления.ОстаткиТоваров").unwrap();
        assert_eq!(r.entity_set, "AccumulationRegister_ОстаткиТоваров");
        let r = parse_object_ref("поля документа РеализацияТоваровУслуг").unwrap();
        assert_eq!(r.entity_set, "Document_РеализацияТоваровУслуг");
        let r = parse_object_ref("структура ПланСчетов.Хозрасчетный").unwrap();
        assert_eq!(r.entity_set, "ChartOfAccounts_Хозрасчетный");
        let r = parse_object_ref("ресурсы РегистрСведений.ЦеныНоменклатуры").unwrap();
        assert_eq!(r.entity_set, "InformationRegister_ЦеныНоменклатуры");
        assert!(parse_object_ref("как получить остатки товаров на складе").is_none());
        assert!(is_metadata_question(
            "какие реквизиты у Справочник.Номенклатура?"
        ));
        assert!(!is_metadata_question("как сделать бэкап"));
    }

    #[test]
    fn facts_from_json_model() {
        let model = json!({
            "entity_sets": [
                {"name": "Document_Заказ", "entity_type": "StandardODATA.Document_Заказ", "kind": "document"},
                {"name": "Document_Заказ_Товары", "entity_type": "StandardODATA.Document_Заказ_Товары",
                 "kind": "tabular_section", "owner": "Document_Заказ", "section": "Товары"}
            ],
            "entity_types": {
                "Document_Заказ": {"name": "Document_Заказ", "properties": [
                    {"name": "Ref_Key", "type": "Edm.Guid", "nullable": false},
                    {"name": "Контрагент_Key", "type": "Edm.Guid", "nullable": true},
                    {"name": "Товары", "type": "Collection(StandardODATA.Document_Заказ_Товары_RowType)", "nullable": true}
                ]},
                "Document_Заказ_Товары": {"name": "Document_Заказ_Товары", "properties": [
                    {"name": "Количество", "type": "Edm.Double", "nullable": true}
                ]}
            }
        });
        let obj = parse_object_ref("реквизиты Документ.Заказ").unwrap();
        let f = facts_from_model(&model, &obj).unwrap();
        assert_eq!(f.fields.len(), 2);
        assert_eq!(f.sections[0].0, "Товары");
        assert!(f.render().contains("`Контрагент_Key`: Edm.Guid"));
        let missing = parse_object_ref("реквизиты Документ.Нет").unwrap();
        assert!(matches!(
            facts_from_model(&model, &missing),
            Err(MetadataError::NotFound(_))
        ));
    }
}
