//! `$metadata` in the shape a real 1C:Enterprise infobase publishes (read
//! from public documents, written here from scratch): long association
//! lists, tabular-section row types, composite fields with their `_Type`
//! twin, accumulation/accounting register record types with `RecordSet`
//! collections, enum types, bound functions, and the `EnterpriseV8`
//! container in a second `<Schema Namespace="Default">`. The generator
//! tallies what it writes; the parser must find exactly that.

use onec_integration::odata::metadata::{Metadata, MetadataError, SetKind};

#[derive(Default, Debug)]
struct Expected {
    entity_sets: usize,
    entity_types: usize,
    complex_types: usize,
    associations: usize,
    navigation: usize,
    functions: usize,
}

struct Doc {
    types: String,
    complex: String,
    assocs: String,
    enums: String,
    sets: String,
    assoc_sets: String,
    functions: String,
    /// Navigation properties of the entity type being written.
    nav_lines: Vec<String>,
    expected: Expected,
}

fn prop(name: &str, ty: &str, nullable: bool) -> String {
    format!("\t\t\t<Property Name=\"{name}\" Type=\"{ty}\" Nullable=\"{nullable}\"/>\n")
}

impl Doc {
    fn new() -> Self {
        Doc {
            types: String::new(),
            complex: String::new(),
            assocs: String::new(),
            enums: String::new(),
            sets: String::new(),
            assoc_sets: String::new(),
            functions: String::new(),
            nav_lines: Vec::new(),
            expected: Expected::default(),
        }
    }

    /// A reference field: `<name>_Key` (Edm.Guid) plus a navigation property
    /// through its own association to `target`.
    fn reference(&mut self, owner: &str, name: &str, target: &str, body: &mut String) {
        body.push_str(&prop(&format!("{name}_Key"), "Edm.Guid", true));
        let assoc = format!("{owner}_{name}");
        self.nav_lines.push(format!(
            "\t\t\t<NavigationProperty Name=\"{name}\" Relationship=\"StandardODATA.{assoc}\" FromRole=\"Begin\" ToRole=\"End\"/>\n"
        ));
        self.assocs.push_str(&format!(
            "\t\t<Association Name=\"{assoc}\">\n\t\t\t<End Role=\"Begin\" Type=\"StandardODATA.{owner}\" Multiplicity=\"*\"/>\n\t\t\t<End Role=\"End\" Type=\"StandardODATA.{target}\" Multiplicity=\"0..1\"/>\n\t\t</Association>\n"
        ));
        self.assoc_sets.push_str(&format!(
            "\t\t\t<AssociationSet Name=\"{assoc}\" Association=\"StandardODATA.{assoc}\">\n\t\t\t\t<End Role=\"Begin\" EntitySet=\"{owner}\"/>\n\t\t\t\t<End Role=\"End\" EntitySet=\"{target}\"/>\n\t\t\t</AssociationSet>\n"
        ));
        self.expected.associations += 1;
        self.expected.navigation += 1;
    }

    fn entity(&mut self, name: &str, keys: &[&str], body: String, published: bool) {
        let key: String = keys
            .iter()
            .map(|k| format!("<PropertyRef Name=\"{k}\"/>"))
            .collect();
        let navs: String = std::mem::take(&mut self.nav_lines).concat();
        self.types.push_str(&format!(
            "\t\t<EntityType Name=\"{name}\" OpenType=\"true\">\n\t\t\t<Key>{key}</Key>\n{body}{navs}\t\t</EntityType>\n"
        ));
        self.expected.entity_types += 1;
        if published {
            self.sets.push_str(&format!(
                "\t\t\t<EntitySet Name=\"{name}\" EntityType=\"StandardODATA.{name}\"/>\n"
            ));
            self.expected.entity_sets += 1;
        }
    }

    fn complex(&mut self, name: &str, body: String) {
        self.complex.push_str(&format!(
            "\t\t<ComplexType Name=\"{name}\">\n{body}\t\t</ComplexType>\n"
        ));
        self.expected.complex_types += 1;
    }

    fn function(
        &mut self,
        name: &str,
        bound_to: &str,
        params: &[(&str, &str)],
        returns: Option<&str>,
    ) {
        let ret = returns
            .map(|r| format!(" ReturnType=\"{r}\""))
            .unwrap_or_default();
        let mut body = format!(
            "\t\t\t\t<Parameter Name=\"bindingParameter\" Type=\"StandardODATA.{bound_to}\"/>\n"
        );
        for (p, t) in params {
            body.push_str(&format!("\t\t\t\t<Parameter Name=\"{p}\" Type=\"{t}\"/>\n"));
        }
        self.functions.push_str(&format!(
            "\t\t\t<FunctionImport Name=\"{name}\" IsBindable=\"true\" IsSideEffecting=\"{}\"{ret}>\n{body}\t\t\t</FunctionImport>\n",
            returns.is_none()
        ));
        self.expected.functions += 1;
    }

    fn xml(&self, with_container: bool) -> String {
        let container = if with_container {
            format!(
                "\t<Schema xmlns=\"http://schemas.microsoft.com/ado/2009/11/edm\" Namespace=\"Default\">\n\t\t<EntityContainer Name=\"EnterpriseV8\" m:IsDefaultEntityContainer=\"true\">\n{}{}{}\t\t</EntityContainer>\n\t</Schema>\n",
                self.sets, self.assoc_sets, self.functions
            )
        } else {
            String::new()
        };
        format!(
            "\u{feff}<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<edmx:Edmx xmlns:edmx=\"http://schemas.microsoft.com/ado/2007/06/edmx\" Version=\"1.0\">\n<edmx:DataServices xmlns:m=\"http://schemas.microsoft.com/ado/2007/08/dataservices/metadata\" m:DataServiceVersion=\"3.0\" m:MaxDataServiceVersion=\"3.0\">\n\t<Schema xmlns=\"http://schemas.microsoft.com/ado/2009/11/edm\" Namespace=\"StandardODATA\">\n{}{}{}{}\t</Schema>\n{container}</edmx:DataServices>\n</edmx:Edmx>\n",
            self.types, self.complex, self.assocs, self.enums
        )
    }
}

/// Sizes of the generated configuration.
struct Config {
    catalogs: usize,
    documents: usize,
    sections_per_document: usize,
    accumulation_registers: usize,
    information_registers: usize,
}

fn generate(c: &Config) -> (Doc, Vec<String>) {
    let mut d = Doc::new();
    let catalogs: Vec<String> = (0..c.catalogs)
        .map(|i| format!("Catalog_Справочник{i:03}"))
        .collect();
    // A chart of accounts referenced by registers but not published: its
    // navigation properties resolve to a type without a set.
    let chart = "ChartOfAccounts_Хозрасчетный".to_string();
    for (i, cat) in catalogs.iter().enumerate() {
        let mut body = String::new();
        body.push_str(&prop("Ref_Key", "Edm.Guid", false));
        body.push_str(&prop("DataVersion", "Edm.String", true));
        body.push_str(&prop("DeletionMark", "Edm.Boolean", true));
        body.push_str(&prop("Code", "Edm.String", true));
        body.push_str(&prop("Description", "Edm.String", true));
        d.reference(cat, "Parent", cat, &mut body);
        // References to two other catalogs (a long association list).
        let a = &catalogs[(i + 1) % catalogs.len()];
        let b = &catalogs[(i + 7) % catalogs.len()];
        d.reference(cat, "Владелец", a, &mut body);
        d.reference(cat, "ОсновнойЭлемент", b, &mut body);
        // Composite field: value + its type name.
        body.push_str(&prop("ЗначениеПоУмолчанию", "Edm.String", true));
        body.push_str(&prop("ЗначениеПоУмолчанию_Type", "Edm.String", true));
        body.push_str(&prop("Predefined", "Edm.Boolean", true));
        body.push_str(&prop("PredefinedDataName", "Edm.String", true));
        d.entity(cat, &["Ref_Key"], body, true);
    }
    d.entity(
        &chart,
        &["Ref_Key"],
        prop("Ref_Key", "Edm.Guid", false) + &prop("Code", "Edm.String", true),
        false,
    );
    let mut sections = Vec::new();
    for i in 0..c.documents {
        let doc = format!("Document_Документ{i:03}");
        let mut body = String::new();
        body.push_str(&prop("Ref_Key", "Edm.Guid", false));
        body.push_str(&prop("DataVersion", "Edm.String", true));
        body.push_str(&prop("Number", "Edm.String", true));
        body.push_str(&prop("Date", "Edm.DateTime", true));
        body.push_str(&prop("Posted", "Edm.Boolean", true));
        d.reference(&doc, "Организация", &catalogs[0], &mut body);
        d.reference(&doc, "Контрагент", &catalogs[1 % catalogs.len()], &mut body);
        body.push_str(&prop("ДокументОснование", "Edm.String", true));
        body.push_str(&prop("ДокументОснование_Type", "Edm.String", true));
        for s in 0..c.sections_per_document {
            let section = format!("Товары{s}");
            let row = format!("{doc}_{section}_RowType");
            body.push_str(&prop(
                &section,
                &format!("Collection(StandardODATA.{row})"),
                false,
            ));
            // The row type (complex) and the section's own entity type/set.
            let mut rb = String::new();
            rb.push_str(&prop("LineNumber", "Edm.Int64", false));
            rb.push_str(&prop("Номенклатура_Key", "Edm.Guid", true));
            rb.push_str(&prop("Количество", "Edm.Double", true));
            d.complex(&row, rb);
            let set = format!("{doc}_{section}");
            let mut sb = String::new();
            sb.push_str(&prop("Ref_Key", "Edm.Guid", false));
            sb.push_str(&prop("LineNumber", "Edm.Int64", false));
            let nav_saved = std::mem::take(&mut d.nav_lines);
            d.reference(
                &set,
                "Номенклатура",
                &catalogs[(i + s) % catalogs.len()],
                &mut sb,
            );
            sb.push_str(&prop("Количество", "Edm.Double", true));
            d.entity(&set, &["Ref_Key", "LineNumber"], sb, true);
            d.nav_lines = nav_saved;
            sections.push(set);
        }
        d.entity(&doc, &["Ref_Key"], body, true);
        d.function(
            "Post",
            &doc,
            &[("PostingModeOperational", "Edm.Boolean")],
            None,
        );
        d.function("Unpost", &doc, &[], None);
    }
    for i in 0..c.accumulation_registers {
        let reg = format!("AccumulationRegister_Регистр{i:02}");
        let rec = format!("{reg}_RecordType");
        let row = format!("{reg}_RowType");
        let mut body = String::new();
        body.push_str(&prop("Recorder", "Edm.String", false));
        body.push_str(&prop("Recorder_Type", "Edm.String", false));
        body.push_str(&prop(
            "RecordSet",
            &format!("Collection(StandardODATA.{row})"),
            false,
        ));
        d.entity(&reg, &["Recorder", "Recorder_Type"], body, true);
        let mut rb = String::new();
        for p in ["Recorder", "Recorder_Type"] {
            rb.push_str(&prop(p, "Edm.String", false));
        }
        rb.push_str(&prop("Period", "Edm.DateTime", true));
        rb.push_str(&prop("LineNumber", "Edm.Int64", false));
        rb.push_str(&prop("Active", "Edm.Boolean", true));
        rb.push_str(&prop("RecordType", "Edm.String", true));
        d.reference(&rec, "Номенклатура", &catalogs[i % catalogs.len()], &mut rb);
        d.reference(&rec, "Склад", &catalogs[(i + 3) % catalogs.len()], &mut rb);
        d.reference(&rec, "СчетУчета", &chart, &mut rb);
        rb.push_str(&prop("Партия", "Edm.String", true));
        rb.push_str(&prop("Партия_Type", "Edm.String", true));
        rb.push_str(&prop("Количество", "Edm.Double", true));
        d.entity(&rec, &["Recorder", "LineNumber", "Recorder_Type"], rb, true);
        let mut row_body = String::new();
        row_body.push_str(&prop("LineNumber", "Edm.Int64", false));
        row_body.push_str(&prop("Количество", "Edm.Double", true));
        d.complex(&row, row_body);
        let balance = format!("{reg}_Balance");
        d.complex(
            &balance,
            prop("Номенклатура_Key", "Edm.Guid", true)
                + &prop("КоличествоBalance", "Edm.Double", true),
        );
        d.function(
            "Balance",
            &reg,
            &[("Period", "Edm.DateTime"), ("Condition", "Edm.String")],
            Some(&format!("Collection(StandardODATA.{balance})")),
        );
    }
    for i in 0..c.information_registers {
        let reg = format!("InformationRegister_Сведения{i:02}");
        let mut body = String::new();
        body.push_str(&prop("Period", "Edm.DateTime", false));
        body.push_str(&prop("Объект", "Edm.String", false));
        body.push_str(&prop("Объект_Type", "Edm.String", false));
        d.reference(
            &reg,
            "Валюта",
            &catalogs[(i + 5) % catalogs.len()],
            &mut body,
        );
        body.push_str(&prop("Курс", "Edm.Double", true));
        d.entity(
            &reg,
            &["Period", "Объект", "Объект_Type", "Валюта_Key"],
            body,
            true,
        );
        d.function(
            "SliceLast",
            &reg,
            &[("Period", "Edm.DateTime"), ("Condition", "Edm.String")],
            Some(&format!("Collection(StandardODATA.{reg})")),
        );
    }
    d.enums.push_str("\t\t<EnumType Name=\"СтавкиНДС\" UnderlyingType=\"Edm.Int32\">\n\t\t\t<Member Name=\"НДС20\"/>\n\t\t\t<Member Name=\"БезНДС\"/>\n\t\t</EnumType>\n");
    (d, sections)
}

#[test]
fn realistic_metadata_is_parsed_with_the_right_counts() {
    for c in [
        Config {
            catalogs: 3,
            documents: 2,
            sections_per_document: 1,
            accumulation_registers: 1,
            information_registers: 1,
        },
        Config {
            catalogs: 120,
            documents: 80,
            sections_per_document: 3,
            accumulation_registers: 25,
            information_registers: 15,
        },
    ] {
        let (doc, sections) = generate(&c);
        let xml = doc.xml(true);
        let m = Metadata::parse(&xml).expect("parses");
        let e = &doc.expected;
        let navs: usize = m.entity_types.values().map(|t| t.navigation.len()).sum();
        println!(
            "$metadata of {} KiB: {} entity sets, {} entity types, {} complex types, {} associations, {} navigation properties, {} functions",
            xml.len() / 1024,
            m.entity_sets.len(),
            m.entity_types.len(),
            m.complex_types.len(),
            m.associations.len(),
            navs,
            m.functions.len()
        );
        assert_eq!(m.entity_sets.len(), e.entity_sets, "{e:?}");
        assert_eq!(m.entity_types.len(), e.entity_types, "{e:?}");
        assert_eq!(m.complex_types.len(), e.complex_types, "{e:?}");
        assert_eq!(m.associations.len(), e.associations, "{e:?}");
        assert_eq!(navs, e.navigation, "{e:?}");
        assert_eq!(m.functions.len(), e.functions, "{e:?}");
        // The types' schema, not the container's ("Default").
        assert_eq!(m.namespace, "StandardODATA");
        assert_eq!(m.data_service_version.as_deref(), Some("3.0"));

        // Kinds: every tabular section recognised with its owner.
        for s in &sections {
            let set = m.set(s).expect("section set");
            assert_eq!(set.kind, SetKind::TabularSection, "{s}");
            assert!(s.starts_with(set.owner.as_deref().unwrap()), "{s}");
        }
        assert_eq!(m.sets_of_kind(SetKind::Catalog).count(), c.catalogs);
        assert_eq!(m.sets_of_kind(SetKind::Document).count(), c.documents);
        assert_eq!(
            m.sets_of_kind(SetKind::AccumulationRegister).count(),
            2 * c.accumulation_registers,
            "register + its _RecordType set"
        );
        assert_eq!(
            m.sets_of_kind(SetKind::InformationRegister).count(),
            c.information_registers
        );

        // Navigation through the association lists.
        let rec = m
            .entity_type_of("AccumulationRegister_Регистр00_RecordType")
            .expect("record type");
        assert_eq!(rec.keys, vec!["Recorder", "LineNumber", "Recorder_Type"]);
        let stock = rec.navigation.iter().find(|n| n.name == "Склад").unwrap();
        let expected_stock = format!("Catalog_Справочник{:03}", 3 % c.catalogs);
        assert_eq!(stock.target_set.as_deref(), Some(expected_stock.as_str()));
        assert_eq!(stock.multiplicity.as_deref(), Some("0..1"));
        let account = rec
            .navigation
            .iter()
            .find(|n| n.name == "СчетУчета")
            .unwrap();
        assert_eq!(
            account.target_type.as_deref(),
            Some("ChartOfAccounts_Хозрасчетный")
        );
        assert_eq!(account.target_set, None, "the chart is not published");
        assert_eq!(
            rec.property("Партия_Type").map(|p| p.type_name.as_str()),
            Some("Edm.String")
        );
        let reg = m.entity_type_of("AccumulationRegister_Регистр00").unwrap();
        assert_eq!(
            reg.property("RecordSet").and_then(|p| p.collection_of()),
            Some("StandardODATA.AccumulationRegister_Регистр00_RowType")
        );
        assert!(m
            .properties_of("AccumulationRegister_Регистр00_RowType")
            .is_some());
        assert!(m
            .function_for("AccumulationRegister_Регистр00", "Balance")
            .is_some());
        assert!(m
            .function_for("InformationRegister_Сведения00", "SliceLast")
            .is_some());
        assert!(m.function_for("Document_Документ001", "Post").is_some());
        let doc_type = m.entity_type_of("Document_Документ000").unwrap();
        assert_eq!(
            doc_type.property("Товары0").and_then(|p| p.collection_of()),
            Some("StandardODATA.Document_Документ000_Товары0_RowType")
        );
        let row = m.entity_type_of("Document_Документ000_Товары0").unwrap();
        assert_eq!(row.keys, vec!["Ref_Key", "LineNumber"]);
        assert_eq!(
            row.navigation[0].target_set.as_deref(),
            Some("Catalog_Справочник000")
        );

        // The same types without the container: a different error than
        // "nothing published".
        let err = Metadata::parse(&doc.xml(false)).unwrap_err();
        match &err {
            MetadataError::NoEntityContainer { entity_types } => {
                assert_eq!(*entity_types, e.entity_types)
            }
            other => panic!("expected NoEntityContainer, got {other:?}"),
        }
        assert!(!err
            .to_string()
            .contains("Установить состав стандартного интерфейса OData"));
    }
}
