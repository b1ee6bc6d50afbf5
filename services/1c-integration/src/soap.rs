//! SOAP calls to 1C web services (`/<base>/ws/<alias>`): the envelope is
//! built from a JSON object, the answer (or Fault) parsed back into JSON.
//! The target namespace comes from the service's WSDL (fetched once).

use std::collections::HashMap;
use std::sync::Mutex;

use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::Reader;
use reqwest::Method;
use serde_json::{Map, Value};

use crate::odata::client::Retry;
use crate::odata::{ODataError, OneC};

pub const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";

/// SOAP client over the same connection settings as the OData client.
pub struct Soap {
    client: OneC,
    namespaces: Mutex<HashMap<String, String>>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `<m:Name>value</m:Name>` for each field (objects nest, arrays repeat).
fn write_value(name: &str, v: &Value, out: &mut String) -> Result<(), ODataError> {
    if !valid_name(name) {
        return Err(ODataError::Invalid(format!(
            "\"{name}\" is not a valid XML element name"
        )));
    }
    match v {
        Value::Array(items) => {
            for it in items {
                write_value(name, it, out)?;
            }
        }
        Value::Object(fields) => {
            out.push_str(&format!("<m:{name}>"));
            for (k, v) in fields {
                write_value(k, v, out)?;
            }
            out.push_str(&format!("</m:{name}>"));
        }
        Value::Null => out.push_str(&format!(
            "<m:{name} xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:nil=\"true\"/>"
        )),
        Value::String(s) => out.push_str(&format!("<m:{name}>{}</m:{name}>", escape(s.as_str()))),
        other => out.push_str(&format!("<m:{name}>{other}</m:{name}>")),
    }
    Ok(())
}

/// The SOAP 1.1 request envelope for `operation` with `params`.
pub fn envelope(
    namespace: &str,
    operation: &str,
    params: &Map<String, Value>,
) -> Result<String, ODataError> {
    if !valid_name(operation) {
        return Err(ODataError::Invalid(format!(
            "\"{operation}\" is not a valid operation name"
        )));
    }
    let mut body = String::new();
    for (k, v) in params {
        write_value(k, v, &mut body)?;
    }
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soap:Envelope xmlns:soap=\"{SOAP11}\" xmlns:m=\"{}\"><soap:Body><m:{operation}>{body}</m:{operation}></soap:Body></soap:Envelope>",
        escape(namespace)
    ))
}

#[derive(Default)]
struct Node {
    name: String,
    text: String,
    nil: bool,
    children: Vec<Node>,
}

fn to_json(n: &Node) -> Value {
    if n.children.is_empty() {
        return if n.nil {
            Value::Null
        } else {
            Value::String(n.text.clone())
        };
    }
    let mut m = Map::new();
    for c in &n.children {
        let v = to_json(c);
        match m.get_mut(&c.name) {
            Some(Value::Array(a)) => a.push(v),
            Some(existing) => {
                let prev = existing.take();
                *existing = Value::Array(vec![prev, v]);
            }
            None => {
                m.insert(c.name.clone(), v);
            }
        }
    }
    Value::Object(m)
}

fn parse_tree(xml: &str) -> Result<Node, ODataError> {
    // No trim_text: it would trim the pieces around each entity reference;
    // an element's text is trimmed once it closes.
    let mut r = Reader::from_str(xml);
    let mut stack: Vec<Node> = vec![Node::default()];
    loop {
        match r
            .read_event()
            .map_err(|e| ODataError::Decode(format!("SOAP answer is not XML: {e}")))?
        {
            Event::Start(e) => {
                let nil = e
                    .attributes()
                    .flatten()
                    .any(|a| a.key.local_name().as_ref() == b"nil" && a.value.as_ref() == b"true");
                stack.push(Node {
                    name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    nil,
                    ..Default::default()
                });
            }
            Event::Empty(e) => {
                let nil = e
                    .attributes()
                    .flatten()
                    .any(|a| a.key.local_name().as_ref() == b"nil" && a.value.as_ref() == b"true");
                let n = Node {
                    name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    nil,
                    ..Default::default()
                };
                if let Some(top) = stack.last_mut() {
                    top.children.push(n);
                }
            }
            Event::Text(t) => {
                let t = crate::xml::text(&t)
                    .map_err(|e| ODataError::Decode(format!("SOAP answer: {e}")))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t);
                }
            }
            Event::GeneralRef(g) => {
                let t = crate::xml::reference(&g)
                    .map_err(|e| ODataError::Decode(format!("SOAP answer: {e}")))?;
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t);
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::End(_) => {
                let mut n = stack
                    .pop()
                    .ok_or_else(|| ODataError::Decode("unbalanced XML".into()))?;
                let trimmed = n.text.trim();
                if trimmed.len() != n.text.len() {
                    n.text = trimmed.to_string();
                }
                match stack.last_mut() {
                    Some(top) => top.children.push(n),
                    None => return Err(ODataError::Decode("unbalanced XML".into())),
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    stack
        .pop()
        .ok_or_else(|| ODataError::Decode("empty XML".into()))
}

fn find<'a>(n: &'a Node, name: &str) -> Option<&'a Node> {
    n.children.iter().find(|c| c.name == name)
}

/// The result of an answer: the single `return` value, or the response
/// element as an object; a Fault becomes [`ODataError::SoapFault`].
pub fn parse_response(xml: &str) -> Result<Value, ODataError> {
    let root = parse_tree(xml)?;
    let env = find(&root, "Envelope")
        .ok_or_else(|| ODataError::Decode("no SOAP Envelope in the answer".into()))?;
    let body =
        find(env, "Body").ok_or_else(|| ODataError::Decode("no SOAP Body in the answer".into()))?;
    if let Some(f) = find(body, "Fault") {
        // SOAP 1.1 faultcode/faultstring, SOAP 1.2 Code/Value + Reason/Text.
        let code = find(f, "faultcode")
            .map(|c| c.text.clone())
            .or_else(|| {
                find(f, "Code")
                    .and_then(|c| find(c, "Value"))
                    .map(|v| v.text.clone())
            })
            .unwrap_or_default();
        let message = find(f, "faultstring")
            .map(|c| c.text.clone())
            .or_else(|| {
                find(f, "Reason")
                    .and_then(|c| find(c, "Text"))
                    .map(|v| v.text.clone())
            })
            .unwrap_or_default();
        return Err(ODataError::SoapFault { code, message });
    }
    let resp = body
        .children
        .first()
        .ok_or_else(|| ODataError::Decode("empty SOAP Body".into()))?;
    if resp.children.len() == 1 && resp.children[0].name == "return" {
        return Ok(to_json(&resp.children[0]));
    }
    Ok(to_json(resp))
}

/// `targetNamespace` of a WSDL document.
pub fn wsdl_namespace(xml: &str) -> Result<String, ODataError> {
    let mut r = Reader::from_str(xml);
    loop {
        match r
            .read_event()
            .map_err(|e| ODataError::Decode(format!("WSDL is not XML: {e}")))?
        {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == b"definitions" => {
                for a in e.attributes().flatten() {
                    if a.key.as_ref() == b"targetNamespace" {
                        return Ok(a
                            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .map_err(|e| ODataError::Decode(e.to_string()))?
                            .into_owned());
                    }
                }
                return Err(ODataError::Decode("WSDL has no targetNamespace".into()));
            }
            Event::Eof => {
                return Err(ODataError::Decode(
                    "no WSDL <definitions> in the answer".into(),
                ))
            }
            _ => {}
        }
    }
}

impl Soap {
    pub fn new(client: OneC) -> Soap {
        Soap {
            client,
            namespaces: Mutex::new(HashMap::new()),
        }
    }

    fn endpoint(&self, alias: &str) -> Result<String, ODataError> {
        if !valid_name(alias) {
            return Err(ODataError::Invalid(format!(
                "\"{alias}\" is not a web service alias"
            )));
        }
        Ok(format!(
            "{}/ws/{}",
            self.client.base_url(),
            crate::odata::client::encode_path(alias)
        ))
    }

    pub async fn namespace(&self, alias: &str) -> Result<String, ODataError> {
        if let Some(ns) = self
            .namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(alias)
        {
            return Ok(ns.clone());
        }
        let url = format!("{}?wsdl", self.endpoint(alias)?);
        let r = self
            .client
            .send(Method::GET, &url, None, &[], Retry::Idempotent)
            .await?;
        let ns = wsdl_namespace(&String::from_utf8_lossy(&r.body))?;
        self.namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(alias.to_string(), ns.clone());
        Ok(ns)
    }

    pub async fn call(
        &self,
        alias: &str,
        operation: &str,
        params: &Map<String, Value>,
    ) -> Result<Value, ODataError> {
        let ns = self.namespace(alias).await?;
        let env = envelope(&ns, operation, params)?;
        let url = self.endpoint(alias)?;
        let headers = [("SOAPAction", format!("\"{ns}#{alias}:{operation}\""))];
        let r = self
            .client
            .send_raw(
                Method::POST,
                &url,
                Some((env, "text/xml; charset=utf-8")),
                &headers,
                Retry::ConnectOnly,
            )
            .await?;
        let text = String::from_utf8_lossy(&r.body);
        // A Fault travels with HTTP 500: decode it from the body.
        if r.status.is_success() || (r.status.as_u16() == 500 && text.contains("Fault")) {
            return parse_response(&text);
        }
        Err(self.client.status_error(&r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_from_json() {
        let p = serde_json::json!({"Article": "МЛК-032", "Filter": {"Warehouse": "Основной <склад>"}, "Tags": ["a", "b"]});
        let e = envelope("urn:x", "GetStock", p.as_object().unwrap()).unwrap();
        assert!(e.contains("<m:GetStock><m:Article>МЛК-032</m:Article><m:Filter><m:Warehouse>Основной &lt;склад&gt;</m:Warehouse></m:Filter><m:Tags>a</m:Tags><m:Tags>b</m:Tags></m:GetStock>"), "{e}");
        assert!(envelope("urn:x", "Get Stock", &Map::new()).is_err());
    }

    #[test]
    fn response_and_fault() {
        let ok = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><m:GetStockResponse xmlns:m="urn:x"><m:return>380</m:return></m:GetStockResponse></soap:Body></soap:Envelope>"#;
        assert_eq!(parse_response(ok).unwrap(), Value::String("380".into()));
        let fault = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultcode>soap:Server</faultcode><faultstring>Номенклатура не найдена</faultstring></soap:Fault></soap:Body></soap:Envelope>"#;
        match parse_response(fault) {
            Err(ODataError::SoapFault { code, message }) => {
                assert_eq!(code, "soap:Server");
                assert_eq!(message, "Номенклатура не найдена");
            }
            other => panic!("{other:?}"),
        }
    }
}
