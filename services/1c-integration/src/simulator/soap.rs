//! One published SOAP web service, `exchange` (`/<base>/ws/exchange`,
//! `?wsdl` for its description), with operations `GetStock` and `GetPrice`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::Value;

use super::http::{check_auth, unauthorized};
use super::SimState;

pub const SOAP_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const SERVICE_NS: &str = "urn:ai-assistants-1c:exchange";

struct Fault {
    code: &'static str,
    message: String,
}

fn fault(code: &'static str, message: impl Into<String>) -> Fault {
    Fault {
        code,
        message: message.into(),
    }
}

pub async fn handle(
    State(st): State<Arc<SimState>>,
    Path((base, alias)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    if !check_auth(&st, &headers) {
        return unauthorized();
    }
    let alias = alias.trim_end_matches(".1cws");
    if base != st.cfg.base || alias != "exchange" {
        return (StatusCode::NOT_FOUND, "Web-сервис не найден").into_response();
    }
    let wsdl = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.eq_ignore_ascii_case("wsdl")));
    if method == Method::GET && wsdl {
        let location = format!(
            "http://{}{}",
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost"),
            uri.path()
        );
        return (
            [(header::CONTENT_TYPE, "text/xml;charset=utf-8")],
            wsdl_text(&location),
        )
            .into_response();
    }
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "Используйте POST (SOAP) или GET ?wsdl",
        )
            .into_response();
    }
    let result = std::str::from_utf8(&body)
        .map_err(|_| fault("soap:Client", "Сообщение не в кодировке UTF-8"))
        .and_then(parse_request)
        .and_then(|(op, params)| run(&st, &op, &params).map(|v| (op, v)));
    match result {
        Ok((op, value)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/xml;charset=utf-8")],
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soap:Envelope xmlns:soap=\"{SOAP_NS}\"><soap:Header/><soap:Body><m:{op}Response xmlns:m=\"{SERVICE_NS}\"><m:return xmlns:xs=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">{}</m:return></m:{op}Response></soap:Body></soap:Envelope>",
                escape(value.as_str())
            ),
        )
            .into_response(),
        Err(f) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/xml;charset=utf-8")],
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soap:Envelope xmlns:soap=\"{SOAP_NS}\"><soap:Body><soap:Fault><faultcode>{}</faultcode><faultstring>{}</faultstring><detail/></soap:Fault></soap:Body></soap:Envelope>",
                f.code,
                escape(f.message.as_str())
            ),
        )
            .into_response(),
    }
}

/// The operation (first element inside Body) and its child elements' text.
fn parse_request(xml: &str) -> Result<(String, Vec<(String, String)>), Fault> {
    // No trim_text (it would eat the spaces around entity references): a
    // parameter's text is collected piece by piece and trimmed at its end.
    let mut r = Reader::from_str(xml);
    let mut depth_in_body: Option<usize> = None;
    let mut op: Option<String> = None;
    let mut params: Vec<(String, String)> = Vec::new();
    let mut current: Option<String> = None;
    let mut value = String::new();
    let mut saw_envelope = false;
    loop {
        let ev = r
            .read_event()
            .map_err(|e| fault("soap:Client", format!("Неверный XML: {e}")))?;
        match ev {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                match depth_in_body {
                    None if name == "Envelope" => {
                        saw_envelope = true;
                        let ns_ok = e
                            .attributes()
                            .flatten()
                            .any(|a| a.value.as_ref() == SOAP_NS.as_bytes());
                        if !ns_ok {
                            return Err(fault(
                                "soap:VersionMismatch",
                                "Ожидается конверт SOAP 1.1",
                            ));
                        }
                    }
                    None if name == "Body" => depth_in_body = Some(0),
                    None => {}
                    Some(d) => {
                        if d == 0 && op.is_none() {
                            op = Some(name);
                        } else if d == 1 {
                            current = Some(name);
                            value.clear();
                        }
                        depth_in_body = Some(d + 1);
                    }
                }
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                match depth_in_body {
                    Some(0) if op.is_none() => op = Some(name),
                    Some(1) => params.push((name, String::new())),
                    _ => {}
                }
            }
            Event::Text(t) => {
                if let (Some(2), Some(_)) = (depth_in_body, &current) {
                    let text = crate::xml::text(&t)
                        .map_err(|e| fault("soap:Client", format!("Неверный XML: {e}")))?;
                    value.push_str(&text);
                }
            }
            Event::GeneralRef(g) => {
                if let (Some(2), Some(_)) = (depth_in_body, &current) {
                    let text = crate::xml::reference(&g)
                        .map_err(|e| fault("soap:Client", format!("Неверный XML: {e}")))?;
                    value.push_str(&text);
                }
            }
            Event::End(_) => {
                if let Some(d) = depth_in_body {
                    if d == 0 {
                        depth_in_body = None;
                    } else {
                        if d == 2 {
                            if let Some(name) = current.take() {
                                params.push((name, value.trim().to_string()));
                            }
                            value.clear();
                        }
                        depth_in_body = Some(d - 1);
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_envelope {
        return Err(fault("soap:Client", "Сообщение не является конвертом SOAP"));
    }
    let op = op.ok_or_else(|| fault("soap:Client", "Пустое тело SOAP-сообщения"))?;
    Ok((op, params))
}

fn run(st: &SimState, op: &str, params: &[(String, String)]) -> Result<String, Fault> {
    let p = |n: &str| {
        params
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.trim().to_string())
    };
    let meta = &st.meta;
    let store = st.lock();
    let goods = store
        .sets
        .get("Catalog_Номенклатура")
        .cloned()
        .unwrap_or_default();
    let find_goods = |article: &str| {
        goods
            .iter()
            .find(|g| {
                g.get("Артикул")
                    .and_then(Value::as_str)
                    .is_some_and(|a| a.eq_ignore_ascii_case(article))
            })
            .and_then(|g| g.get("Ref_Key").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| {
                fault(
                    "soap:Server",
                    format!("Номенклатура с артикулом «{article}» не найдена"),
                )
            })
    };
    match op {
        "GetStock" => {
            let article = p("Article")
                .filter(|a| !a.is_empty())
                .ok_or_else(|| fault("soap:Client", "Не задан параметр Article"))?;
            let key = find_goods(&article)?;
            let warehouse = match p("Warehouse").filter(|w| !w.is_empty()) {
                None => None,
                Some(w) => Some(
                    store
                        .sets
                        .get("Catalog_Склады")
                        .into_iter()
                        .flatten()
                        .find(|s| {
                            s.get("Code").and_then(Value::as_str) == Some(w.as_str())
                                || s.get("Description")
                                    .and_then(Value::as_str)
                                    .is_some_and(|d| d.eq_ignore_ascii_case(&w))
                        })
                        .and_then(|s| s.get("Ref_Key").and_then(Value::as_str).map(str::to_string))
                        .ok_or_else(|| fault("soap:Server", format!("Склад «{w}» не найден")))?,
                ),
            };
            let mut total = 0.0;
            for m in store.movements(meta, "AccumulationRegister_ОстаткиТоваров") {
                if m.get("Номенклатура_Key").and_then(Value::as_str) != Some(key.as_str())
                {
                    continue;
                }
                if let Some(w) = &warehouse {
                    if m.get("Склад_Key").and_then(Value::as_str) != Some(w.as_str()) {
                        continue;
                    }
                }
                let q = m.get("Количество").and_then(Value::as_f64).unwrap_or(0.0);
                total += if m.get("RecordType").and_then(Value::as_str) == Some("Expense") {
                    -q
                } else {
                    q
                };
            }
            Ok(format_number(total))
        }
        "GetPrice" => {
            let article = p("Article")
                .filter(|a| !a.is_empty())
                .ok_or_else(|| fault("soap:Client", "Не задан параметр Article"))?;
            let key = find_goods(&article)?;
            let date = p("Date")
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "9999-12-31T23:59:59".into());
            store
                .sets
                .get("InformationRegister_ЦеныНоменклатуры")
                .into_iter()
                .flatten()
                .filter(|r| r.get("Номенклатура_Key").and_then(Value::as_str) == Some(key.as_str()))
                .filter(|r| {
                    r.get("Period")
                        .and_then(Value::as_str)
                        .is_some_and(|p| p <= date.as_str())
                })
                .max_by(|a, b| {
                    a.get("Period")
                        .and_then(Value::as_str)
                        .cmp(&b.get("Period").and_then(Value::as_str))
                })
                .and_then(|r| r.get("Цена").and_then(Value::as_f64))
                .map(format_number)
                .ok_or_else(|| {
                    fault(
                        "soap:Server",
                        format!("Цена для артикула «{article}» не установлена"),
                    )
                })
        }
        other => Err(fault(
            "soap:Client",
            format!("Операция {other} не найдена в web-сервисе exchange"),
        )),
    }
}

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

fn wsdl_text(location: &str) -> String {
    let op = |name: &str, extra: &str| {
        format!(
            "<xs:element name=\"{name}\"><xs:complexType><xs:sequence><xs:element name=\"Article\" type=\"xs:string\"/>{extra}</xs:sequence></xs:complexType></xs:element><xs:element name=\"{name}Response\"><xs:complexType><xs:sequence><xs:element name=\"return\" type=\"xs:decimal\"/></xs:sequence></xs:complexType></xs:element>"
        )
    };
    let mut ops = String::new();
    let mut binding_ops = String::new();
    let mut messages = String::new();
    for name in ["GetStock", "GetPrice"] {
        messages.push_str(&format!(
            "<message name=\"{name}RequestMessage\"><part name=\"parameters\" element=\"tns:{name}\"/></message><message name=\"{name}ResponseMessage\"><part name=\"parameters\" element=\"tns:{name}Response\"/></message>"
        ));
        ops.push_str(&format!(
            "<operation name=\"{name}\"><input message=\"tns:{name}RequestMessage\"/><output message=\"tns:{name}ResponseMessage\"/></operation>"
        ));
        binding_ops.push_str(&format!(
            "<operation name=\"{name}\"><soap:operation style=\"document\" soapAction=\"{SERVICE_NS}#exchange:{name}\"/><input><soap:body use=\"literal\"/></input><output><soap:body use=\"literal\"/></output></operation>"
        ));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<definitions xmlns=\"http://schemas.xmlsoap.org/wsdl/\" xmlns:soap=\"http://schemas.xmlsoap.org/wsdl/soap/\" xmlns:xs=\"http://www.w3.org/2001/XMLSchema\" xmlns:tns=\"{SERVICE_NS}\" name=\"exchange\" targetNamespace=\"{SERVICE_NS}\"><types><xs:schema targetNamespace=\"{SERVICE_NS}\" elementFormDefault=\"qualified\">{}{}</xs:schema></types>{messages}<portType name=\"exchangePortType\">{ops}</portType><binding name=\"exchangeSoapBinding\" type=\"tns:exchangePortType\"><soap:binding style=\"document\" transport=\"http://schemas.xmlsoap.org/soap/http\"/>{binding_ops}</binding><service name=\"exchange\"><port name=\"exchangeSoap\" binding=\"tns:exchangeSoapBinding\"><soap:address location=\"{}\"/></port></service></definitions>",
        op("GetStock", "<xs:element name=\"Warehouse\" type=\"xs:string\" minOccurs=\"0\"/>"),
        op("GetPrice", "<xs:element name=\"Date\" type=\"xs:dateTime\" minOccurs=\"0\"/>"),
        escape(location)
    )
}
