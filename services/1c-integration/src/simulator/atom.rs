//! Atom XML: what 1C answers when `$format=json` is not asked for.

use quick_xml::escape::escape;
use serde_json::Value;

use super::query::Out;
use super::store::{key_text, Row};
use super::SimState;
use crate::odata::metadata::{unqualify, Metadata, Property};

const NS: &str = "xmlns=\"http://www.w3.org/2005/Atom\" xmlns:d=\"http://schemas.microsoft.com/ado/2007/08/dataservices\" xmlns:m=\"http://schemas.microsoft.com/ado/2007/08/dataservices/metadata\"";

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `<d:Name m:type="…">value</d:Name>` for every projected property.
fn properties(meta: &Metadata, out: &Out, props: &[Property], xml: &mut String) {
    let Out::Obj(fields) = out else { return };
    for (name, v) in fields {
        let Some(p) = props.iter().find(|p| &p.name == name) else {
            continue; // expanded navigation: written as a link
        };
        let ty = if p.type_name == "Edm.String" {
            String::new()
        } else {
            format!(" m:type=\"{}\"", escape(p.type_name.as_str()))
        };
        match v {
            Out::Val(Value::Null) => xml.push_str(&format!("<d:{name}{ty} m:null=\"true\"/>")),
            Out::Val(s) => xml.push_str(&format!(
                "<d:{name}{ty}>{}</d:{name}>",
                escape(scalar_text(s).as_str())
            )),
            Out::Arr(elems) => {
                xml.push_str(&format!("<d:{name}{ty}>"));
                let row_props = p
                    .collection_of()
                    .and_then(|t| meta.properties_of(t))
                    .unwrap_or_default();
                for e in elems {
                    xml.push_str("<d:element>");
                    properties(meta, e, row_props, xml);
                    xml.push_str("</d:element>");
                }
                xml.push_str(&format!("</d:{name}>"));
            }
            Out::Obj(_) => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn entry(
    st: &SimState,
    root: &str,
    set: &str,
    keys: &[String],
    row: &Row,
    out: &Out,
    navs: &[(String, String)],
    xml: &mut String,
) {
    let meta = &st.meta;
    let key: Vec<(String, Value)> = keys
        .iter()
        .map(|k| (k.clone(), row.get(k).cloned().unwrap_or_default()))
        .collect();
    let href = format!("{set}({})", key_text(&key));
    let ty = meta
        .set(set)
        .map(|s| unqualify(&s.entity_type).to_string())
        .unwrap_or_default();
    xml.push_str(&format!(
        "<entry><id>{}</id><category term=\"{}.{}\" scheme=\"http://schemas.microsoft.com/ado/2007/08/dataservices/scheme\"/><title type=\"text\"/><updated>{}</updated><author/><summary/><link rel=\"edit\" href=\"{}\" title=\"edit-link\"/>",
        escape(format!("{root}{href}").as_str()),
        escape(meta.namespace.as_str()),
        escape(ty.as_str()),
        now(),
        escape(href.as_str())
    ));
    if let Out::Obj(fields) = out {
        for (nav, target) in navs {
            xml.push_str(&format!(
                "<link rel=\"http://schemas.microsoft.com/ado/2007/08/dataservices/related/{nav}\" type=\"application/atom+xml;type=entry\" title=\"{nav}\" href=\"{}/{nav}\"><m:inline>",
                escape(href.as_str())
            ));
            if let Some((_, inner @ Out::Obj(inner_fields))) = fields.iter().find(|(n, _)| n == nav)
            {
                let target_keys = meta
                    .entity_type_of(target)
                    .map(|t| t.keys.clone())
                    .unwrap_or_default();
                let inner_row: Row = inner_fields
                    .iter()
                    .filter_map(|(k, v)| match v {
                        Out::Val(v) => Some((k.clone(), v.clone())),
                        _ => None,
                    })
                    .collect();
                entry(st, root, target, &target_keys, &inner_row, inner, &[], xml);
            }
            xml.push_str("</m:inline></link>");
        }
    }
    xml.push_str("<content type=\"application/xml\"><m:properties>");
    let props = meta
        .entity_type_of(set)
        .map(|t| t.properties.as_slice())
        .unwrap_or_default();
    properties(meta, out, props, xml);
    xml.push_str("</m:properties></content></entry>");
}

pub fn feed(
    st: &SimState,
    root: &str,
    set: &str,
    keys: &[String],
    items: &[(Row, Out)],
    count: Option<usize>,
    navs: &[(String, String)],
) -> String {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<feed {NS} xml:base=\"{}\"><id>{}</id><title type=\"text\">{}</title><updated>{}</updated><author/><link rel=\"self\" href=\"{}\" title=\"{}\"/>",
        escape(root),
        escape(format!("{root}{set}").as_str()),
        escape(set),
        now(),
        escape(set),
        escape(set)
    );
    if let Some(c) = count {
        xml.push_str(&format!("<m:count>{c}</m:count>"));
    }
    for (row, out) in items {
        entry(st, root, set, keys, row, out, navs, &mut xml);
    }
    xml.push_str("</feed>");
    xml
}

pub fn entry_document(
    st: &SimState,
    root: &str,
    set: &str,
    keys: &[String],
    row: &Row,
    out: &Out,
    navs: &[(String, String)],
) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let mut body = String::new();
    entry(st, root, set, keys, row, out, navs, &mut body);
    // The root entry carries the namespaces and xml:base.
    xml.push_str(&body.replacen(
        "<entry>",
        &format!("<entry {NS} xml:base=\"{}\">", escape(root)),
        1,
    ));
    xml
}

/// A collection of complex values (virtual tables such as Balance).
pub fn collection(
    meta: &Metadata,
    name: &str,
    ret_type: &str,
    props: &[Property],
    items: &[(Row, Out)],
) -> String {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<d:{name} xmlns:d=\"http://schemas.microsoft.com/ado/2007/08/dataservices\" xmlns:m=\"http://schemas.microsoft.com/ado/2007/08/dataservices/metadata\" m:type=\"{}\">",
        escape(ret_type)
    );
    for (_, out) in items {
        xml.push_str("<d:element>");
        properties(meta, out, props, &mut xml);
        xml.push_str("</d:element>");
    }
    xml.push_str(&format!("</d:{name}>"));
    xml
}

pub fn service(meta: &Metadata, root: &str) -> String {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<service xmlns=\"http://www.w3.org/2007/app\" xmlns:atom=\"http://www.w3.org/2005/Atom\" xml:base=\"{}\"><workspace><atom:title>Default</atom:title>",
        escape(root)
    );
    for s in &meta.entity_sets {
        xml.push_str(&format!(
            "<collection href=\"{0}\"><atom:title>{0}</atom:title></collection>",
            escape(s.name.as_str())
        ));
    }
    xml.push_str("</workspace></service>");
    xml
}
