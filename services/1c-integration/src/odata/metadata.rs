//! `$metadata` (EDMX 1.0, OData v3 CSDL) parsed into a model of the
//! infobase: entity sets grouped by 1C object kind, their fields with types,
//! keys and navigation properties resolved through associations.

use std::collections::BTreeMap;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use serde::{Deserialize, Serialize};

/// The 1C metadata object kind an entity set belongs to, from its name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum SetKind {
    Catalog,
    Document,
    DocumentJournal,
    Constant,
    ExchangePlan,
    ChartOfCharacteristicTypes,
    ChartOfAccounts,
    ChartOfCalculationTypes,
    InformationRegister,
    AccumulationRegister,
    AccountingRegister,
    CalculationRegister,
    BusinessProcess,
    Task,
    /// A tabular section of another object (`Document_X_Товары`).
    TabularSection,
    Other,
}

impl SetKind {
    const PREFIXES: &'static [(&'static str, SetKind)] = &[
        ("Catalog_", SetKind::Catalog),
        ("Document_", SetKind::Document),
        ("DocumentJournal_", SetKind::DocumentJournal),
        ("Constant_", SetKind::Constant),
        ("ExchangePlan_", SetKind::ExchangePlan),
        (
            "ChartOfCharacteristicTypes_",
            SetKind::ChartOfCharacteristicTypes,
        ),
        ("ChartOfAccounts_", SetKind::ChartOfAccounts),
        ("ChartOfCalculationTypes_", SetKind::ChartOfCalculationTypes),
        ("InformationRegister_", SetKind::InformationRegister),
        ("AccumulationRegister_", SetKind::AccumulationRegister),
        ("AccountingRegister_", SetKind::AccountingRegister),
        ("CalculationRegister_", SetKind::CalculationRegister),
        ("BusinessProcess_", SetKind::BusinessProcess),
        ("Task_", SetKind::Task),
    ];

    /// The kind from the name prefix alone (`Document_X_Товары` → Document).
    pub fn from_prefix(name: &str) -> SetKind {
        Self::PREFIXES
            .iter()
            .find(|(p, _)| name.starts_with(p))
            .map(|(_, k)| *k)
            .unwrap_or(SetKind::Other)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Property {
    pub name: String,
    /// EDM type as written (`Edm.Guid`, `Collection(StandardODATA.X_RowType)`).
    #[serde(rename = "type")]
    pub type_name: String,
    pub nullable: bool,
}

impl Property {
    /// `Some(inner)` for `Collection(inner)` properties (tabular sections).
    pub fn collection_of(&self) -> Option<&str> {
        self.type_name
            .strip_prefix("Collection(")
            .and_then(|s| s.strip_suffix(')'))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Navigation {
    pub name: String,
    pub relationship: String,
    pub to_role: String,
    /// Entity type at the far end, resolved through the association.
    pub target_type: Option<String>,
    /// Entity set holding that type, when there is exactly one.
    pub target_set: Option<String>,
    pub multiplicity: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EntityType {
    pub name: String,
    pub keys: Vec<String>,
    pub properties: Vec<Property>,
    pub navigation: Vec<Navigation>,
}

impl EntityType {
    pub fn property(&self, name: &str) -> Option<&Property> {
        self.properties.iter().find(|p| p.name == name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ComplexType {
    pub name: String,
    pub properties: Vec<Property>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AssociationEnd {
    pub role: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub multiplicity: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Association {
    pub name: String,
    pub ends: Vec<AssociationEnd>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionImport {
    pub name: String,
    pub return_type: Option<String>,
    /// Entity type the function binds to (`bindingParameter`).
    pub binding: Option<String>,
    pub parameters: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EntitySet {
    pub name: String,
    pub entity_type: String,
    pub kind: SetKind,
    /// For tabular sections: the owning set (`Document_X`) and the section name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Metadata {
    pub namespace: String,
    pub data_service_version: Option<String>,
    pub entity_sets: Vec<EntitySet>,
    pub entity_types: BTreeMap<String, EntityType>,
    pub complex_types: BTreeMap<String, ComplexType>,
    pub associations: BTreeMap<String, Association>,
    pub functions: Vec<FunctionImport>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("$metadata is not valid XML: {0}")]
    Xml(String),
    #[error("$metadata has no <Schema> element: this is not an OData CSDL document")]
    NoSchema,
    #[error(
        "the infobase publishes no entity sets over OData: a published infobase exposes \
         nothing until its OData content is set. In 1C:Enterprise, as administrator, set it \
         (\"Установить состав стандартного интерфейса OData\", the platform method \
         УстановитьСоставСтандартногоИнтерфейсаOData) and add the catalogs, documents and \
         registers to publish"
    )]
    Empty,
    #[error(
        "$metadata declares {entity_types} entity type(s) but has no <EntityContainer>, so it \
         names no entity sets to read: the document is incomplete (cut off by a proxy or a size \
         limit) or is not the standard OData interface of a 1C infobase. Check that the URL ends \
         in /odata/standard.odata/$metadata and that the whole answer arrives (compare its size \
         with the one the web server sends)"
    )]
    NoEntityContainer { entity_types: usize },
    #[error(
        "$metadata declares {entity_types} entity type(s) but its <EntityContainer \
         Name=\"{container}\"> has no <EntitySet>: the document does not match the types it \
         declares (a broken or hand-edited $metadata, or a non-1C service); check the URL \
         /odata/standard.odata/$metadata and the web server's answer"
    )]
    NoEntitySets {
        container: String,
        entity_types: usize,
    },
}

/// Strips the schema namespace from a qualified name (`StandardODATA.X` → `X`).
pub fn unqualify(name: &str) -> &str {
    match name.rfind('.') {
        Some(i) => &name[i + 1..],
        None => name,
    }
}

impl Metadata {
    pub fn parse(xml: &str) -> Result<Metadata, MetadataError> {
        let (mut m, container) = parse_xml(xml)?;
        if m.entity_sets.is_empty() {
            let entity_types = m.entity_types.len();
            return Err(match container {
                // Nothing published: 1C sends neither types nor sets.
                _ if entity_types == 0 && m.complex_types.is_empty() => MetadataError::Empty,
                None => MetadataError::NoEntityContainer { entity_types },
                Some(container) => MetadataError::NoEntitySets {
                    container,
                    entity_types,
                },
            });
        }
        m.resolve();
        Ok(m)
    }

    pub fn set(&self, name: &str) -> Option<&EntitySet> {
        self.entity_sets.iter().find(|s| s.name == name)
    }

    pub fn entity_type_of(&self, set: &str) -> Option<&EntityType> {
        self.set(set)
            .and_then(|s| self.entity_types.get(unqualify(&s.entity_type)))
    }

    /// Properties of a structural type (entity or complex) by unqualified name.
    pub fn properties_of(&self, type_name: &str) -> Option<&[Property]> {
        let t = unqualify(type_name);
        self.entity_types
            .get(t)
            .map(|e| e.properties.as_slice())
            .or_else(|| self.complex_types.get(t).map(|c| c.properties.as_slice()))
    }

    pub fn sets_of_kind(&self, kind: SetKind) -> impl Iterator<Item = &EntitySet> {
        self.entity_sets.iter().filter(move |s| s.kind == kind)
    }

    /// A bound function (`Post`, `Balance`, `SliceLast`) available on a set.
    pub fn function_for(&self, set: &str, name: &str) -> Option<&FunctionImport> {
        let ty = self
            .set(set)
            .map(|s| unqualify(&s.entity_type).to_string())?;
        self.functions
            .iter()
            .find(|f| f.name == name && f.binding.as_deref().map(unqualify) == Some(ty.as_str()))
    }

    fn resolve(&mut self) {
        let set_names: Vec<String> = self.entity_sets.iter().map(|s| s.name.clone()).collect();
        for s in &mut self.entity_sets {
            s.kind = SetKind::from_prefix(&s.name);
            // A tabular section is `<owner>_<Section>` where `<owner>` is
            // itself a published set of an object kind.
            if matches!(
                s.kind,
                SetKind::Catalog
                    | SetKind::Document
                    | SetKind::ExchangePlan
                    | SetKind::ChartOfCharacteristicTypes
                    | SetKind::ChartOfAccounts
                    | SetKind::ChartOfCalculationTypes
                    | SetKind::BusinessProcess
                    | SetKind::Task
            ) {
                if let Some(owner) = set_names
                    .iter()
                    .filter(|o| {
                        s.name.len() > o.len() + 1
                            && s.name.starts_with(o.as_str())
                            && s.name.as_bytes()[o.len()] == b'_'
                    })
                    .max_by_key(|o| o.len())
                {
                    s.section = Some(s.name[owner.len() + 1..].to_string());
                    s.owner = Some(owner.clone());
                    s.kind = SetKind::TabularSection;
                }
            }
        }
        // Entity type → the sets holding it (thousands of navigation
        // properties in a real configuration: no linear scans per property).
        let mut sets_by_type: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        for s in &self.entity_sets {
            sets_by_type
                .entry(unqualify(&s.entity_type).to_string())
                .or_default()
                .push(s.name.clone());
        }
        for et in self.entity_types.values_mut() {
            for nav in &mut et.navigation {
                let Some(assoc) = self.associations.get(unqualify(&nav.relationship)) else {
                    continue;
                };
                if let Some(end) = assoc.ends.iter().find(|e| e.role == nav.to_role) {
                    let t = unqualify(&end.type_name).to_string();
                    nav.target_set = match sets_by_type.get(&t).map(Vec::as_slice) {
                        Some([s]) => Some(s.clone()),
                        _ => None,
                    };
                    nav.target_type = Some(t);
                    nav.multiplicity = Some(end.multiplicity.clone());
                }
            }
        }
    }
}

fn attrs(e: &BytesStart) -> Result<BTreeMap<String, String>, MetadataError> {
    let mut out = BTreeMap::new();
    for a in e.attributes() {
        let a = a.map_err(|err| MetadataError::Xml(err.to_string()))?;
        let key = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
        let value = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|err| MetadataError::Xml(err.to_string()))?
            .into_owned();
        out.insert(key, value);
    }
    Ok(out)
}

enum Scope {
    Entity(EntityType),
    Complex(ComplexType),
    Association(Association),
    Function(FunctionImport),
    Other,
}

/// The model and the name of the `<EntityContainer>`, when there is one (a
/// real 1C document may put it, `EnterpriseV8`, in a second `<Schema>`).
fn parse_xml(xml: &str) -> Result<(Metadata, Option<String>), MetadataError> {
    let xml = xml.strip_prefix('\u{feff}').unwrap_or(xml);
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut m = Metadata::default();
    let mut saw_schema = false;
    let mut container: Option<String> = None;
    // Namespace of the <Schema> being read; the model's namespace is the
    // one that declares the entity types.
    let mut schema_ns = String::new();
    let mut types_ns: Option<String> = None;
    let mut stack: Vec<Scope> = Vec::new();
    loop {
        let ev = reader.read_event().map_err(|e| {
            MetadataError::Xml(format!("at byte {}: {e}", reader.buffer_position()))
        })?;
        let (e, empty) = match &ev {
            Event::Start(e) => (e.clone(), false),
            Event::Empty(e) => (e.clone(), true),
            Event::End(_) => {
                if let Some(scope) = stack.pop() {
                    finish(&mut m, scope);
                }
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
        let a = attrs(&e)?;
        let get = |k: &str| a.get(k).cloned().unwrap_or_default();
        let scope = match name.as_str() {
            "DataServices" => {
                m.data_service_version = a.get("DataServiceVersion").cloned();
                Scope::Other
            }
            "Schema" => {
                saw_schema = true;
                schema_ns = get("Namespace");
                if m.namespace.is_empty() {
                    m.namespace = schema_ns.clone();
                }
                Scope::Other
            }
            "EntityContainer" => {
                container = Some(get("Name"));
                Scope::Other
            }
            "EntityType" => {
                if types_ns.is_none() {
                    types_ns = Some(schema_ns.clone());
                }
                Scope::Entity(EntityType {
                    name: get("Name"),
                    ..Default::default()
                })
            }
            "ComplexType" => Scope::Complex(ComplexType {
                name: get("Name"),
                ..Default::default()
            }),
            "Association" => Scope::Association(Association {
                name: get("Name"),
                ..Default::default()
            }),
            "FunctionImport" => Scope::Function(FunctionImport {
                name: get("Name"),
                return_type: a.get("ReturnType").cloned(),
                binding: None,
                parameters: Vec::new(),
            }),
            "EntitySet" => {
                m.entity_sets.push(EntitySet {
                    name: get("Name"),
                    entity_type: get("EntityType"),
                    kind: SetKind::Other,
                    owner: None,
                    section: None,
                });
                Scope::Other
            }
            "PropertyRef" => {
                // Inside <Key>, which sits inside the <EntityType>.
                if let Some(Scope::Entity(et)) =
                    stack.iter_mut().rev().find(|s| !matches!(s, Scope::Other))
                {
                    et.keys.push(get("Name"));
                }
                Scope::Other
            }
            "Property" => {
                let p = Property {
                    name: get("Name"),
                    type_name: get("Type"),
                    nullable: a.get("Nullable").map(|v| v != "false").unwrap_or(true),
                };
                match stack.last_mut() {
                    Some(Scope::Entity(et)) => et.properties.push(p),
                    Some(Scope::Complex(ct)) => ct.properties.push(p),
                    _ => {}
                }
                Scope::Other
            }
            "NavigationProperty" => {
                if let Some(Scope::Entity(et)) = stack.last_mut() {
                    et.navigation.push(Navigation {
                        name: get("Name"),
                        relationship: get("Relationship"),
                        to_role: get("ToRole"),
                        target_type: None,
                        target_set: None,
                        multiplicity: None,
                    });
                }
                Scope::Other
            }
            "End" => {
                if let Some(Scope::Association(assoc)) = stack.last_mut() {
                    assoc.ends.push(AssociationEnd {
                        role: get("Role"),
                        type_name: get("Type"),
                        multiplicity: get("Multiplicity"),
                    });
                }
                Scope::Other
            }
            "Parameter" => {
                if let Some(Scope::Function(f)) = stack.last_mut() {
                    if get("Name") == "bindingParameter" {
                        f.binding = Some(get("Type"));
                    } else {
                        f.parameters.push((get("Name"), get("Type")));
                    }
                }
                Scope::Other
            }
            _ => Scope::Other,
        };
        if empty {
            finish(&mut m, scope);
        } else {
            stack.push(scope);
        }
    }
    if !saw_schema {
        return Err(MetadataError::NoSchema);
    }
    if let Some(ns) = types_ns {
        m.namespace = ns;
    }
    Ok((m, container))
}

fn finish(m: &mut Metadata, scope: Scope) {
    match scope {
        Scope::Entity(et) => {
            m.entity_types.insert(et.name.clone(), et);
        }
        Scope::Complex(ct) => {
            m.complex_types.insert(ct.name.clone(), ct);
        }
        Scope::Association(a) => {
            m.associations.insert(a.name.clone(), a);
        }
        Scope::Function(f) => m.functions.push(f),
        Scope::Other => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../fixtures/metadata.xml");

    #[test]
    fn parses_fixture_into_kinds() {
        let m = Metadata::parse(FIXTURE).unwrap();
        assert_eq!(m.namespace, "StandardODATA");
        assert_eq!(m.data_service_version.as_deref(), Some("3.0"));
        let goods = m.set("Catalog_Номенклатура").unwrap();
        assert_eq!(goods.kind, SetKind::Catalog);
        let ts = m.set("Document_РеализацияТоваровУслуг_Товары").unwrap();
        assert_eq!(ts.kind, SetKind::TabularSection);
        assert_eq!(ts.owner.as_deref(), Some("Document_РеализацияТоваровУслуг"));
        assert_eq!(ts.section.as_deref(), Some("Товары"));
        assert_eq!(
            m.set("AccumulationRegister_ОстаткиТоваров").unwrap().kind,
            SetKind::AccumulationRegister
        );
        let doc = m.entity_type_of("Document_РеализацияТоваровУслуг").unwrap();
        assert_eq!(doc.keys, vec!["Ref_Key"]);
        assert_eq!(doc.property("Date").unwrap().type_name, "Edm.DateTime");
        let nav = doc
            .navigation
            .iter()
            .find(|n| n.name == "Контрагент")
            .unwrap();
        assert_eq!(nav.target_set.as_deref(), Some("Catalog_Контрагенты"));
        assert!(m
            .function_for("Document_РеализацияТоваровУслуг", "Post")
            .is_some());
        assert!(m
            .function_for("AccumulationRegister_ОстаткиТоваров", "Balance")
            .is_some());
    }

    #[test]
    fn empty_container_is_an_error_with_the_hint() {
        let xml = r#"<?xml version="1.0"?><edmx:Edmx xmlns:edmx="http://schemas.microsoft.com/ado/2007/06/edmx" Version="1.0"><edmx:DataServices><Schema Namespace="StandardODATA"><EntityContainer Name="StandardODATA"/></Schema></edmx:DataServices></edmx:Edmx>"#;
        let err = Metadata::parse(xml).unwrap_err();
        assert!(matches!(err, MetadataError::Empty));
        assert!(err
            .to_string()
            .contains("Установить состав стандартного интерфейса OData"));
    }

    #[test]
    fn types_without_container_get_a_different_error() {
        let xml = r#"<?xml version="1.0"?><edmx:Edmx xmlns:edmx="http://schemas.microsoft.com/ado/2007/06/edmx" Version="1.0"><edmx:DataServices><Schema Namespace="StandardODATA"><EntityType Name="Catalog_Валюты"><Key><PropertyRef Name="Ref_Key"/></Key><Property Name="Ref_Key" Type="Edm.Guid" Nullable="false"/></EntityType></Schema></edmx:DataServices></edmx:Edmx>"#;
        let err = Metadata::parse(xml).unwrap_err();
        assert!(
            matches!(err, MetadataError::NoEntityContainer { entity_types: 1 }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(!text.contains("Установить состав"), "{text}");
        assert!(text.contains("EntityContainer"), "{text}");
        let with_empty = xml.replace(
            "</EntityType></Schema>",
            "</EntityType><EntityContainer Name=\"EnterpriseV8\"/></Schema>",
        );
        let err = Metadata::parse(&with_empty).unwrap_err();
        assert!(
            matches!(&err, MetadataError::NoEntitySets { container, entity_types: 1 } if container == "EnterpriseV8"),
            "{err:?}"
        );
        assert!(!err.to_string().contains("Установить состав"));
    }

    #[test]
    fn garbage_is_an_xml_error() {
        assert!(Metadata::parse("<a><b></a>").is_err());
        assert!(matches!(
            Metadata::parse("<html><body>hi</body></html>"),
            Err(MetadataError::NoSchema)
        ));
    }
}
