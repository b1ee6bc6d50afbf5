//! The standard OData v3 interface over HTTP.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};

use super::atom;
use super::query::{matches, parse_orderby, parse_select, project, sort, Out};
use super::store::{key_text, num, Row, Store, StoreError};
use super::SimState;
use crate::odata::expr::{parse_filter, Expr, Literal, DATETIME_FORMAT};
use crate::odata::metadata::{unqualify, Metadata, Property, SetKind};

/// Projected rows of one page and the `$inlinecount` total.
type Paged = (Vec<(Row, Out)>, Option<usize>);

pub struct SimError {
    pub status: StatusCode,
    pub message: String,
}

fn err(status: StatusCode, message: impl Into<String>) -> SimError {
    SimError {
        status,
        message: message.into(),
    }
}

fn bad(message: impl Into<String>) -> SimError {
    err(StatusCode::BAD_REQUEST, message)
}

impl From<StoreError> for SimError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => err(StatusCode::NOT_FOUND, m),
            StoreError::BadRequest(m) => bad(m),
            StoreError::Conflict(m) => err(StatusCode::CONFLICT, m),
            StoreError::PreconditionFailed(m) => err(StatusCode::PRECONDITION_FAILED, m),
            StoreError::Internal(m) => err(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }
}

/// Both error forms 1C uses: JSON with `$format=json`, `<m:error>` otherwise.
pub fn error_response(e: SimError, as_json: bool) -> Response {
    if as_json {
        let body =
            json!({"odata.error": {"code": "", "message": {"lang": "ru", "value": e.message}}});
        (
            e.status,
            [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
            body.to_string(),
        )
            .into_response()
    } else {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<m:error xmlns:m=\"http://schemas.microsoft.com/ado/2007/08/dataservices/metadata\">\n<m:code/>\n<m:message xml:lang=\"ru\">{}</m:message>\n</m:error>",
            quick_xml::escape::escape(e.message.as_str())
        );
        (
            e.status,
            [(header::CONTENT_TYPE, "application/xml;charset=utf-8")],
            body,
        )
            .into_response()
    }
}

pub fn check_auth(st: &SimState, headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(b64) = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(raw) else {
        return false;
    };
    let Some((user, pass)) = text.split_once(':') else {
        return false;
    };
    // Compare without short-circuiting on the first differing byte.
    let eq = |a: &[u8], b: &[u8]| {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    };
    let user_ok = eq(user.as_bytes(), st.cfg.user.as_bytes());
    let pass_ok = eq(pass.as_bytes(), st.cfg.password.as_bytes());
    user_ok & pass_ok
}

pub fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"1C:Enterprise\"")],
        "",
    )
        .into_response()
}

/// Splits on `sep` outside quotes and parentheses.
pub fn split_top(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quote, mut depth) = (false, 0i32);
    for c in s.chars() {
        match c {
            '\'' => quote = !quote,
            '(' if !quote => depth += 1,
            ')' if !quote => depth -= 1,
            _ => {}
        }
        if c == sep && !quote && depth == 0 {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// `Name(args)` → (Name, Some(args)).
fn split_call(seg: &str) -> (String, Option<String>) {
    match seg.find('(') {
        Some(i) if seg.ends_with(')') => (
            seg[..i].to_string(),
            Some(seg[i + 1..seg.len() - 1].to_string()),
        ),
        _ => (seg.to_string(), None),
    }
}

fn literal(text: &str) -> Result<Literal, SimError> {
    match parse_filter(text.trim()).map_err(bad)? {
        Expr::Lit(l) => Ok(l),
        _ => Err(bad(format!("Ожидалось значение, получено {text}"))),
    }
}

pub fn literal_value(l: &Literal) -> Value {
    match l {
        Literal::Null => Value::Null,
        Literal::Bool(b) => json!(b),
        Literal::Int(i) => json!(i),
        Literal::Double(d) => json!(d),
        Literal::String(s) => json!(s),
        Literal::Guid(g) => json!(g.to_string()),
        Literal::DateTime(d) => json!(d.format(DATETIME_FORMAT).to_string()),
    }
}

/// `guid'…'` or `A=…,B=…` → named literals.
fn parse_args(args: &str, keys: &[String]) -> Result<Vec<(String, Literal)>, SimError> {
    let mut out = Vec::new();
    for part in split_top(args, ',')
        .into_iter()
        .filter(|p| !p.trim().is_empty())
    {
        let eq = part
            .find('=')
            .filter(|i| part.find('\'').is_none_or(|q| q > *i));
        match eq {
            Some(i) => out.push((part[..i].trim().to_string(), literal(&part[i + 1..])?)),
            None if keys.len() == 1 && out.is_empty() => {
                out.push((keys[0].clone(), literal(&part)?))
            }
            None => return Err(bad(format!("Неверный ключ: ({args})"))),
        }
    }
    Ok(out)
}

fn parse_key(meta: &Metadata, set: &str, args: &str) -> Result<Vec<(String, Value)>, SimError> {
    let keys = meta
        .entity_type_of(set)
        .map(|t| t.keys.clone())
        .unwrap_or_default();
    let parsed = parse_args(args, &keys)?;
    if parsed.len() != keys.len() || !parsed.iter().all(|(k, _)| keys.contains(k)) {
        return Err(bad(format!(
            "Ключ {set} состоит из свойств {}",
            keys.join(", ")
        )));
    }
    Ok(parsed
        .into_iter()
        .map(|(k, l)| (k, literal_value(&l)))
        .collect())
}

struct Ctx<'a> {
    st: &'a SimState,
    query: Vec<(String, String)>,
    json: bool,
    service_root: String,
}

impl Ctx<'_> {
    fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn meta(&self) -> &Metadata {
        &self.st.meta
    }
}

pub async fn odata(
    State(st): State<Arc<SimState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let format = query
        .iter()
        .find(|(k, _)| k == "$format")
        .map(|(_, v)| v.to_lowercase());
    let json = format
        .as_deref()
        .is_some_and(|f| f == "json" || f.starts_with("application/json"));
    if !check_auth(&st, &headers) {
        return unauthorized();
    }
    if let Some(f) = &format {
        if !json
            && !matches!(
                f.as_str(),
                "atom" | "xml" | "application/atom+xml" | "application/xml"
            )
        {
            return error_response(
                err(
                    StatusCode::NOT_ACCEPTABLE,
                    format!("Формат {f} не поддерживается (json, atom, xml)"),
                ),
                false,
            );
        }
    }
    let prefix = format!("/{}/odata/standard.odata", st.cfg.base);
    let Some(rest) = uri.path().strip_prefix(&prefix) else {
        return error_response(
            err(
                StatusCode::NOT_FOUND,
                "Публикация информационной базы не найдена",
            ),
            json,
        );
    };
    let rest = match percent_decode_str(rest.trim_start_matches('/')).decode_utf8() {
        Ok(r) => r.into_owned(),
        Err(_) => return error_response(bad("Путь запроса не в кодировке UTF-8"), json),
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let ctx = Ctx {
        st: &st,
        query,
        json,
        service_root: format!("http://{host}{prefix}/"),
    };
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match dispatch(&ctx, &method, &rest, &body, if_match.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::error!(status = %e.status, message = %e.message, "odata request failed");
            }
            error_response(e, json)
        }
    }
}

fn dispatch(
    ctx: &Ctx,
    method: &Method,
    rest: &str,
    body: &[u8],
    if_match: Option<&str>,
) -> Result<Response, SimError> {
    let segs: Vec<String> = split_top(rest, '/')
        .into_iter()
        .filter(|s| !s.is_empty())
        // `Post()` and `Post` are the same action.
        .map(|s| match s.as_str() {
            "Post()" | "Unpost()" => s.trim_end_matches("()").to_string(),
            _ => s,
        })
        .collect();
    let meta = ctx.meta();
    if segs.is_empty() {
        return Ok(service_document(ctx));
    }
    if segs[0] == "$metadata" {
        return Ok((
            [(header::CONTENT_TYPE, "application/xml;charset=utf-8")],
            super::METADATA_XML,
        )
            .into_response());
    }
    let (set, key_args) = split_call(&segs[0]);
    if meta.set(&set).is_none() {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("Не найден набор сущностей \"{set}\""),
        ));
    }
    let m = method.as_str();
    match (key_args, segs.get(1).map(String::as_str), segs.len()) {
        (None, None, _) => match m {
            "GET" => list(ctx, &set),
            "POST" => create(ctx, &set, body),
            _ => Err(err(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("Метод {m} не поддерживается для {set}"),
            )),
        },
        (None, Some("$count"), 2) if m == "GET" => {
            let rows = filtered(ctx, &set)?;
            Ok((
                [(header::CONTENT_TYPE, "text/plain;charset=utf-8")],
                rows.len().to_string(),
            )
                .into_response())
        }
        (None, Some(func), 2) => {
            let (fname, fargs) = split_call(func);
            if meta.function_for(&set, &fname).is_none() {
                return Err(err(
                    StatusCode::NOT_FOUND,
                    format!("Функция {fname} недоступна для {set}"),
                ));
            }
            if m != "GET" {
                return Err(err(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{fname} вызывается методом GET"),
                ));
            }
            let args = parse_args(fargs.as_deref().unwrap_or(""), &[])?;
            match fname.as_str() {
                "Balance" => balance(ctx, &set, &args),
                "SliceLast" => slice_last(ctx, &set, &args, true),
                "SliceFirst" => slice_last(ctx, &set, &args, false),
                other => Err(bad(format!("Функция {other} не поддерживается"))),
            }
        }
        (Some(k), None, _) => {
            let key = parse_key(meta, &set, &k)?;
            match m {
                "GET" => entity(ctx, &set, &key),
                "PATCH" | "MERGE" | "PUT" => update(ctx, &set, &key, body, if_match),
                "DELETE" => {
                    ctx.st.lock().delete(meta, &set, &key, if_match)?;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                _ => Err(err(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("Метод {m} не поддерживается"),
                )),
            }
        }
        (Some(k), Some(action @ ("Post" | "Unpost")), 2) => {
            if m != "POST" {
                return Err(err(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{action} вызывается методом POST"),
                ));
            }
            let key = parse_key(meta, &set, &k)?;
            ctx.st
                .lock()
                .set_posted(meta, &set, &key, action == "Post")?;
            Ok(StatusCode::OK.into_response())
        }
        _ => Err(err(
            StatusCode::NOT_FOUND,
            format!("Ресурс не найден: {rest}"),
        )),
    }
}

fn props_of_set<'a>(meta: &'a Metadata, set: &str) -> &'a [Property] {
    meta.entity_type_of(set)
        .map(|t| t.properties.as_slice())
        .unwrap_or_default()
}

fn parse_filter_opt(text: Option<&str>) -> Result<Option<Expr>, SimError> {
    match text {
        Some(f) if !f.trim().is_empty() => parse_filter(f)
            .map(Some)
            .map_err(|e| bad(format!("Ошибка в $filter: {e}"))),
        _ => Ok(None),
    }
}

fn apply_filter(
    rows: Vec<Row>,
    f: Option<&Expr>,
    props: &[Property],
) -> Result<Vec<Row>, SimError> {
    let Some(f) = f else { return Ok(rows) };
    let mut out = Vec::new();
    for r in rows {
        if matches(f, &r, props).map_err(bad)? {
            out.push(r);
        }
    }
    Ok(out)
}

fn filtered(ctx: &Ctx, set: &str) -> Result<Vec<Row>, SimError> {
    let props = props_of_set(ctx.meta(), set);
    let rows = ctx.st.lock().rows(ctx.meta(), set)?;
    let f = parse_filter_opt(ctx.q("$filter"))?;
    apply_filter(rows, f.as_ref(), props)
}

/// $orderby, $inlinecount, $skip, $top, $select over rows → projected items.
fn page(ctx: &Ctx, mut rows: Vec<Row>, props: &[Property]) -> Result<Paged, SimError> {
    let count = match ctx.q("$inlinecount") {
        Some("allpages") => Some(rows.len()),
        Some("none") | None => None,
        Some(other) => return Err(bad(format!("Неверное значение $inlinecount: {other}"))),
    };
    if let Some(o) = ctx.q("$orderby") {
        let order = parse_orderby(o, props).map_err(bad)?;
        sort(&mut rows, &order);
    }
    let num = |name: &str| -> Result<Option<usize>, SimError> {
        ctx.q(name)
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| bad(format!("Неверное значение {name}: {v}")))
            })
            .transpose()
    };
    let skip = num("$skip")?.unwrap_or(0);
    let top = num("$top")?.unwrap_or(usize::MAX);
    let select = ctx
        .q("$select")
        .map(|s| parse_select(s, props))
        .transpose()
        .map_err(bad)?;
    let items = rows
        .into_iter()
        .skip(skip)
        .take(top)
        .map(|r| {
            let o = project(ctx.meta(), &r, props, select.as_deref());
            (r, o)
        })
        .collect();
    Ok((items, count))
}

/// `$expand=Контрагент,Склад`: attach the referenced objects.
fn expand(
    ctx: &Ctx,
    set: &str,
    items: &mut [(Row, Out)],
) -> Result<Vec<(String, String)>, SimError> {
    let Some(list) = ctx.q("$expand") else {
        return Ok(Vec::new());
    };
    let meta = ctx.meta();
    let et = meta.entity_type_of(set).ok_or_else(|| bad("нет типа"))?;
    let mut navs = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let nav = et
            .navigation
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| {
                bad(format!(
                    "Неизвестное навигационное свойство \"{name}\" в $expand"
                ))
            })?;
        let target = nav.target_set.clone().ok_or_else(|| {
            bad(format!(
                "Навигационное свойство {name} не может быть развернуто"
            ))
        })?;
        navs.push((name.to_string(), target));
    }
    let store = ctx.st.lock();
    for (row, out) in items.iter_mut() {
        for (name, target) in &navs {
            let key = row
                .get(&format!("{name}_Key"))
                .cloned()
                .unwrap_or(Value::Null);
            let found = store.get(meta, target, &[("Ref_Key".into(), key)]).ok();
            let v = match found {
                Some(t) => project(meta, &t, props_of_set(meta, target), None),
                None => Out::Val(Value::Null),
            };
            out.push(name.clone(), v);
        }
    }
    Ok(navs)
}

fn json_response(status: StatusCode, body: &Out) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".into());
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        text,
    )
        .into_response()
}

fn list(ctx: &Ctx, set: &str) -> Result<Response, SimError> {
    let meta = ctx.meta();
    let props = props_of_set(meta, set);
    let rows = filtered(ctx, set)?;
    let (mut items, count) = page(ctx, rows, props)?;
    let navs = expand(ctx, set, &mut items)?;
    if ctx.json {
        let mut body = Out::Obj(vec![(
            "odata.metadata".into(),
            Out::Val(json!(format!("{}$metadata#{set}", ctx.service_root))),
        )]);
        if let Some(c) = count {
            body.push("odata.count", Out::Val(json!(c.to_string())));
        }
        body.push(
            "value",
            Out::Arr(items.into_iter().map(|(_, o)| o).collect()),
        );
        Ok(json_response(StatusCode::OK, &body))
    } else {
        let keys = meta
            .entity_type_of(set)
            .map(|t| t.keys.clone())
            .unwrap_or_default();
        let xml = atom::feed(ctx.st, &ctx.service_root, set, &keys, &items, count, &navs);
        Ok((
            [(
                header::CONTENT_TYPE,
                "application/atom+xml;type=feed;charset=utf-8",
            )],
            xml,
        )
            .into_response())
    }
}

fn one(ctx: &Ctx, set: &str, row: Row, status: StatusCode) -> Result<Response, SimError> {
    let meta = ctx.meta();
    let props = props_of_set(meta, set);
    let select = ctx
        .q("$select")
        .map(|s| parse_select(s, props))
        .transpose()
        .map_err(bad)?;
    let out = project(meta, &row, props, select.as_deref());
    let keys = meta
        .entity_type_of(set)
        .map(|t| t.keys.clone())
        .unwrap_or_default();
    let key: Vec<(String, Value)> = keys
        .iter()
        .map(|k| (k.clone(), row.get(k).cloned().unwrap_or_default()))
        .collect();
    let mut items = vec![(row.clone(), out)];
    let navs = expand(ctx, set, &mut items)?;
    let (row, mut out) = items.pop().expect("one item");
    let mut resp = if ctx.json {
        out.insert_front(
            "odata.metadata",
            Out::Val(json!(format!(
                "{}$metadata#{set}/@Element",
                ctx.service_root
            ))),
        );
        json_response(status, &out)
    } else {
        let xml = atom::entry_document(ctx.st, &ctx.service_root, set, &keys, &row, &out, &navs);
        (
            status,
            [(
                header::CONTENT_TYPE,
                "application/atom+xml;type=entry;charset=utf-8",
            )],
            xml,
        )
            .into_response()
    };
    if let Some(v) = row.get("DataVersion").and_then(|v| v.as_str()) {
        if let Ok(h) = HeaderValue::from_str(&format!("W/\"'{v}'\"")) {
            resp.headers_mut().insert(header::ETAG, h);
        }
    }
    if status == StatusCode::CREATED {
        let loc = format!("{}{set}({})", ctx.service_root, key_text(&key));
        if let Ok(h) = HeaderValue::from_str(
            &percent_encoding::utf8_percent_encode(&loc, LOCATION_SET).to_string(),
        ) {
            resp.headers_mut().insert(header::LOCATION, h);
        }
    }
    Ok(resp)
}

const LOCATION_SET: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>');

fn entity(ctx: &Ctx, set: &str, key: &[(String, Value)]) -> Result<Response, SimError> {
    let row = ctx.st.lock().get(ctx.meta(), set, key)?;
    one(ctx, set, row, StatusCode::OK)
}

fn body_object(body: &[u8]) -> Result<Row, SimError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("Тело запроса не является JSON: {e}")))?;
    match v {
        Value::Object(o) => Ok(o),
        _ => Err(bad("Тело запроса должно быть JSON-объектом")),
    }
}

fn create(ctx: &Ctx, set: &str, body: &[u8]) -> Result<Response, SimError> {
    let input = body_object(body)?;
    let row = ctx.st.lock().create(ctx.meta(), set, &input)?;
    one(ctx, set, row, StatusCode::CREATED)
}

fn update(
    ctx: &Ctx,
    set: &str,
    key: &[(String, Value)],
    body: &[u8],
    if_match: Option<&str>,
) -> Result<Response, SimError> {
    let input = body_object(body)?;
    let row = ctx
        .st
        .lock()
        .update(ctx.meta(), set, key, &input, if_match)?;
    one(ctx, set, row, StatusCode::OK)
}

fn arg<'a>(
    args: &'a [(String, Literal)],
    ctx: &'a Ctx,
    name: &str,
) -> Result<Option<Literal>, SimError> {
    if let Some((_, l)) = args.iter().find(|(k, _)| k == name) {
        return Ok(Some(l.clone()));
    }
    ctx.q(name).map(literal).transpose()
}

fn string_arg(
    args: &[(String, Literal)],
    ctx: &Ctx,
    name: &str,
) -> Result<Option<String>, SimError> {
    match arg(args, ctx, name)? {
        None | Some(Literal::Null) => Ok(None),
        Some(Literal::String(s)) => Ok(Some(s)),
        Some(other) => Err(bad(format!(
            "Параметр {name} должен быть строкой, получено {other}"
        ))),
    }
}

fn period_arg(args: &[(String, Literal)], ctx: &Ctx) -> Result<Option<String>, SimError> {
    match arg(args, ctx, "Period")? {
        None | Some(Literal::Null) => Ok(None),
        Some(Literal::DateTime(d)) => Ok(Some(d.format(DATETIME_FORMAT).to_string())),
        Some(other) => Err(bad(format!(
            "Параметр Period должен быть datetime'…', получено {other}"
        ))),
    }
}

fn function_result(
    ctx: &Ctx,
    set: &str,
    fname: &str,
    rows: Vec<Row>,
) -> Result<Response, SimError> {
    let meta = ctx.meta();
    let ret = meta
        .function_for(set, fname)
        .and_then(|f| f.return_type.clone())
        .unwrap_or_default();
    let type_name = ret
        .strip_prefix("Collection(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(&ret)
        .to_string();
    let props = meta.properties_of(&type_name).unwrap_or_default();
    let f = parse_filter_opt(ctx.q("$filter"))?;
    let rows = apply_filter(rows, f.as_ref(), props)?;
    let (items, count) = page(ctx, rows, props)?;
    if ctx.json {
        let mut body = Out::Obj(vec![(
            "odata.metadata".into(),
            Out::Val(json!(format!(
                "{}$metadata#{}",
                ctx.service_root,
                unqualify(&type_name)
            ))),
        )]);
        if let Some(c) = count {
            body.push("odata.count", Out::Val(json!(c.to_string())));
        }
        body.push(
            "value",
            Out::Arr(items.into_iter().map(|(_, o)| o).collect()),
        );
        Ok(json_response(StatusCode::OK, &body))
    } else {
        let xml = atom::collection(meta, fname, &ret, props, &items);
        Ok((
            [(header::CONTENT_TYPE, "application/xml;charset=utf-8")],
            xml,
        )
            .into_response())
    }
}

/// `AccumulationRegister_X/Balance(Period=…, Condition='…', Dimensions='…')`.
fn balance(ctx: &Ctx, set: &str, args: &[(String, Literal)]) -> Result<Response, SimError> {
    let meta = ctx.meta();
    if meta.set(set).map(|s| s.kind) != Some(SetKind::AccumulationRegister) {
        return Err(bad(format!("{set} не является регистром накопления")));
    }
    let (all_dims, resources) = Store::register_fields(meta, set);
    let dims: Vec<Property> = match string_arg(args, ctx, "Dimensions")? {
        None => all_dims.clone(),
        Some(list) => {
            let mut out = Vec::new();
            for d in list.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                let p = all_dims
                    .iter()
                    .find(|p| p.name == d || p.name == format!("{d}_Key"))
                    .ok_or_else(|| bad(format!("Регистр {set} не имеет измерения {d}")))?;
                out.push(p.clone());
            }
            out
        }
    };
    let period = period_arg(args, ctx)?;
    let condition = match string_arg(args, ctx, "Condition")? {
        Some(c) => Some(parse_filter(&c).map_err(|e| bad(format!("Ошибка в Condition: {e}")))?),
        None => None,
    };
    let row_props: Vec<Property> = meta
        .entity_type_of(set)
        .and_then(|t| t.property("RecordSet"))
        .and_then(|p| p.collection_of())
        .and_then(|t| meta.properties_of(t))
        .map(|p| p.to_vec())
        .unwrap_or_default();
    let movements = ctx.st.lock().movements(meta, set);
    let mut groups: Vec<(Vec<Value>, Vec<f64>)> = Vec::new();
    for m in movements {
        if let Some(p) = &period {
            if m.get("Period")
                .and_then(|v| v.as_str())
                .is_some_and(|mp| mp >= p.as_str())
            {
                continue;
            }
        }
        if let Some(c) = &condition {
            if !matches(c, &m, &row_props).map_err(bad)? {
                continue;
            }
        }
        let sign = if m.get("RecordType").and_then(|v| v.as_str()) == Some("Expense") {
            -1.0
        } else {
            1.0
        };
        let key: Vec<Value> = dims
            .iter()
            .map(|d| m.get(&d.name).cloned().unwrap_or(Value::Null))
            .collect();
        let vals: Vec<f64> = resources
            .iter()
            .map(|r| sign * m.get(&r.name).and_then(|v| v.as_f64()).unwrap_or(0.0))
            .collect();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, acc)) => acc.iter_mut().zip(&vals).for_each(|(a, v)| *a += v),
            None => groups.push((key, vals)),
        }
    }
    let rows: Vec<Row> = groups
        .into_iter()
        .filter(|(_, vals)| vals.iter().any(|v| v.abs() > 1e-9))
        .map(|(key, vals)| {
            let mut r = Row::new();
            for (d, v) in dims.iter().zip(key) {
                r.insert(d.name.clone(), v);
            }
            for (res, v) in resources.iter().zip(vals) {
                r.insert(
                    format!("{}Balance", res.name),
                    num((v * 1000.0).round() / 1000.0),
                );
            }
            r
        })
        .collect();
    function_result(ctx, set, "Balance", rows)
}

/// `InformationRegister_X/SliceLast(Period=…, Condition='…')`.
fn slice_last(
    ctx: &Ctx,
    set: &str,
    args: &[(String, Literal)],
    last: bool,
) -> Result<Response, SimError> {
    let meta = ctx.meta();
    let et = meta.entity_type_of(set).ok_or_else(|| bad("нет типа"))?;
    if et.property("Period").is_none() {
        return Err(bad(format!(
            "{set} не является периодическим регистром сведений"
        )));
    }
    let dims: Vec<String> = et.keys.iter().filter(|k| *k != "Period").cloned().collect();
    let period = period_arg(args, ctx)?;
    let condition = match string_arg(args, ctx, "Condition")? {
        Some(c) => Some(parse_filter(&c).map_err(|e| bad(format!("Ошибка в Condition: {e}")))?),
        None => None,
    };
    let rows = ctx.st.lock().rows(meta, set)?;
    let rows = apply_filter(rows, condition.as_ref(), &et.properties)?;
    let mut best: Vec<Row> = Vec::new();
    for r in rows {
        let p = r
            .get("Period")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        if let Some(limit) = &period {
            if (last && p.as_str() > limit.as_str()) || (!last && p.as_str() < limit.as_str()) {
                continue;
            }
        }
        let same = |b: &Row| dims.iter().all(|d| b.get(d) == r.get(d));
        match best.iter_mut().find(|b| same(b)) {
            Some(b) => {
                let bp = b
                    .get("Period")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string();
                if (last && p > bp) || (!last && p < bp) {
                    *b = r;
                }
            }
            None => best.push(r),
        }
    }
    function_result(
        ctx,
        set,
        if last { "SliceLast" } else { "SliceFirst" },
        best,
    )
}

fn service_document(ctx: &Ctx) -> Response {
    let meta = ctx.meta();
    if ctx.json {
        let body = json!({
            "odata.metadata": format!("{}$metadata", ctx.service_root),
            "value": meta.entity_sets.iter().map(|s| json!({"name": s.name, "url": s.name})).collect::<Vec<_>>(),
        });
        (
            [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
            body.to_string(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "application/atomsvc+xml;charset=utf-8",
            )],
            atom::service(meta, &ctx.service_root),
        )
            .into_response()
    }
}
