//! The OData client: Basic auth (the password is never logged), Cyrillic
//! names percent-encoded as UTF-8, `$format=json` on every data request,
//! bounded retries with back-off, typed queries and 1C's bound functions.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

use super::error::{decode_error_body, ODataError};
use super::expr::{Filter, Literal};
use super::metadata::Metadata;

/// A secret string: `Debug` and `Display` never show it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Publication root, e.g. `http://onec-simulator:8080/demo`.
    pub base_url: String,
    pub user: String,
    pub password: Secret,
    pub timeout: Duration,
    /// Extra attempts after the first on 5xx / connection errors.
    pub retries: u32,
    /// First back-off delay; doubles each attempt (capped at 5 s).
    pub backoff: Duration,
}

impl ClientConfig {
    pub fn new(
        base_url: impl Into<String>,
        user: impl Into<String>,
        password: Secret,
    ) -> ClientConfig {
        ClientConfig {
            base_url: base_url.into(),
            user: user.into(),
            password,
            timeout: Duration::from_secs(30),
            retries: 3,
            backoff: Duration::from_millis(200),
        }
    }
}

/// Path characters encoded in resource paths: everything non-ASCII (done by
/// `utf8_percent_encode`), controls and characters with meaning in URLs.
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'\\')
    .add(b'^')
    .add(b'[')
    .add(b']');
/// Query values additionally encode the separators.
const QUERY: &AsciiSet = &PATH.add(b'&').add(b'+').add(b'=').add(b';');

pub fn encode_path(s: &str) -> String {
    utf8_percent_encode(s, PATH).to_string()
}

pub fn encode_query(s: &str) -> String {
    utf8_percent_encode(s, QUERY).to_string()
}

/// A key: `guid'…'` for objects, `A=…,B=…` for register records.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    Guid(Uuid),
    Named(Vec<(String, Literal)>),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Guid(g) => write!(f, "guid'{g}'"),
            Key::Named(parts) => {
                let s: Vec<String> = parts.iter().map(|(k, v)| format!("{k}={v}")).collect();
                f.write_str(&s.join(","))
            }
        }
    }
}

impl From<Uuid> for Key {
    fn from(g: Uuid) -> Self {
        Key::Guid(g)
    }
}

/// A typed query over an entity set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    pub set: String,
    pub top: Option<u64>,
    pub skip: Option<u64>,
    pub select: Vec<String>,
    pub orderby: Vec<String>,
    pub expand: Vec<String>,
    /// The `$filter` text (from [`Filter::to_odata`] or raw).
    pub filter: Option<String>,
    pub inlinecount: bool,
}

impl Query {
    pub fn new(set: impl Into<String>) -> Query {
        Query {
            set: set.into(),
            ..Default::default()
        }
    }
    pub fn top(mut self, n: u64) -> Self {
        self.top = Some(n);
        self
    }
    pub fn skip(mut self, n: u64) -> Self {
        self.skip = Some(n);
        self
    }
    pub fn select<I: IntoIterator<Item = S>, S: Into<String>>(mut self, fields: I) -> Self {
        self.select.extend(fields.into_iter().map(Into::into));
        self
    }
    /// `"Date desc"` or `"Description"`.
    pub fn orderby(mut self, clause: impl Into<String>) -> Self {
        self.orderby.push(clause.into());
        self
    }
    pub fn expand(mut self, nav: impl Into<String>) -> Self {
        self.expand.push(nav.into());
        self
    }
    pub fn filter(mut self, f: &Filter) -> Self {
        self.filter = Some(f.to_odata());
        self
    }
    pub fn raw_filter(mut self, f: impl Into<String>) -> Self {
        self.filter = Some(f.into());
        self
    }
    pub fn inlinecount(mut self) -> Self {
        self.inlinecount = true;
        self
    }

    fn params(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if let Some(f) = &self.filter {
            p.push(("$filter".into(), f.clone()));
        }
        if !self.select.is_empty() {
            p.push(("$select".into(), self.select.join(",")));
        }
        if !self.orderby.is_empty() {
            p.push(("$orderby".into(), self.orderby.join(",")));
        }
        if !self.expand.is_empty() {
            p.push(("$expand".into(), self.expand.join(",")));
        }
        if let Some(s) = self.skip {
            p.push(("$skip".into(), s.to_string()));
        }
        if let Some(t) = self.top {
            p.push(("$top".into(), t.to_string()));
        }
        if self.inlinecount {
            p.push(("$inlinecount".into(), "allpages".into()));
        }
        p
    }
}

/// One page of rows and, with `$inlinecount=allpages`, the total.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub rows: Vec<Value>,
    pub count: Option<u64>,
}

/// Arguments of `AccumulationRegister_X/Balance(...)`.
#[derive(Debug, Clone, Default)]
pub struct BalanceArgs {
    pub period: Option<NaiveDateTime>,
    pub condition: Option<String>,
    pub dimensions: Vec<String>,
}

struct Inner {
    http: reqwest::Client,
    cfg: ClientConfig,
    root: String,
}

/// Client for one published infobase. Cheap to clone.
#[derive(Clone)]
pub struct OneC {
    inner: Arc<Inner>,
}

impl fmt::Debug for OneC {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneC")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Safe to repeat: retry on 5xx, timeouts and connection errors.
    Idempotent,
    /// Only retry when the request never reached 1C (connect errors).
    ConnectOnly,
}

pub(crate) struct Response {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl OneC {
    pub fn new(cfg: ClientConfig) -> Result<OneC, ODataError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(5).min(cfg.timeout))
            .build()
            .map_err(|e| ODataError::Invalid(format!("cannot build HTTP client: {e}")))?;
        let base = cfg.base_url.trim_end_matches('/').to_string();
        url::Url::parse(&base)
            .map_err(|e| ODataError::Invalid(format!("bad 1C base URL {base}: {e}")))?;
        Ok(OneC {
            inner: Arc::new(Inner {
                http,
                root: format!("{base}/odata/standard.odata/"),
                cfg,
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// Publication root without the OData suffix (for web services).
    pub fn base_url(&self) -> &str {
        self.inner.cfg.base_url.trim_end_matches('/')
    }

    fn url(&self, resource: &str, params: &[(String, String)], json: bool) -> String {
        let mut u = format!("{}{}", self.inner.root, encode_path(resource));
        let mut q: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode_query(k), encode_query(v)))
            .collect();
        if json {
            q.push("$format=json".into());
        }
        if !q.is_empty() {
            u.push('?');
            u.push_str(&q.join("&"));
        }
        u
    }

    /// Sends with bounded retries; non-2xx answers become [`ODataError`].
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<(String, &'static str)>,
        headers: &[(&str, String)],
        retry: Retry,
    ) -> Result<Response, ODataError> {
        let r = self.send_raw(method, url, body, headers, retry).await?;
        if r.status.is_success() {
            return Ok(r);
        }
        Err(self.status_error(&r))
    }

    pub(crate) fn status_error(&self, r: &Response) -> ODataError {
        let message = decode_error_body(&r.body)
            .unwrap_or_else(|| r.status.canonical_reason().unwrap_or("").to_string());
        match r.status.as_u16() {
            401 => ODataError::Unauthorized {
                user: self.inner.cfg.user.clone(),
            },
            404 => ODataError::NotFound { message },
            412 => ODataError::PreconditionFailed { message },
            s => ODataError::Http { status: s, message },
        }
    }

    /// Sends with bounded retries and returns whatever 1C answered.
    pub(crate) async fn send_raw(
        &self,
        method: Method,
        url: &str,
        body: Option<(String, &'static str)>,
        headers: &[(&str, String)],
        retry: Retry,
    ) -> Result<Response, ODataError> {
        let cfg = &self.inner.cfg;
        let mut attempt = 0u32;
        loop {
            let mut req = self
                .inner
                .http
                .request(method.clone(), url)
                .basic_auth(&cfg.user, Some(cfg.password.expose()));
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            if let Some((b, ct)) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, *ct)
                    .body(b.clone());
            }
            let outcome = req.send().await;
            let retryable = match &outcome {
                Err(e) => {
                    e.is_connect()
                        || (retry == Retry::Idempotent && (e.is_timeout() || e.is_request()))
                }
                Ok(r) => retry == Retry::Idempotent && r.status().is_server_error(),
            };
            if retryable && attempt < cfg.retries {
                let delay = cfg
                    .backoff
                    .saturating_mul(1 << attempt.min(5))
                    .min(Duration::from_secs(5));
                match &outcome {
                    Err(e) => {
                        tracing::warn!(%method, url, attempt, error = %without_url(e), ?delay, "1C request failed, retrying")
                    }
                    Ok(r) => {
                        tracing::warn!(%method, url, attempt, status = %r.status(), ?delay, "1C answered 5xx, retrying")
                    }
                }
                attempt += 1;
                tokio::time::sleep(delay).await;
                continue;
            }
            let resp = outcome.map_err(|e| ODataError::Transport {
                url: url.to_string(),
                message: without_url(&e),
            })?;
            let status = resp.status();
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = resp.bytes().await.map_err(|e| ODataError::Transport {
                url: url.to_string(),
                message: without_url(&e),
            })?;
            return Ok(Response {
                status,
                content_type,
                body: body.to_vec(),
            });
        }
    }

    async fn get_json(
        &self,
        resource: &str,
        params: &[(String, String)],
    ) -> Result<Value, ODataError> {
        let url = self.url(resource, params, true);
        let r = self
            .send(Method::GET, &url, None, &[], Retry::Idempotent)
            .await?;
        parse_json(&r)
    }

    /// `$metadata`, parsed. (The CSDL is XML only, so this is the one request
    /// sent without `$format=json`.)
    pub async fn metadata(&self) -> Result<Metadata, ODataError> {
        let url = self.url("$metadata", &[], false);
        let r = self
            .send(Method::GET, &url, None, &[], Retry::Idempotent)
            .await?;
        let text = String::from_utf8(r.body)
            .map_err(|_| ODataError::Decode("$metadata is not UTF-8".into()))?;
        Ok(Metadata::parse(&text)?)
    }

    /// One request for a query.
    pub async fn fetch(&self, q: &Query) -> Result<Page, ODataError> {
        check_name(&q.set)?;
        let v = self.get_json(&q.set, &q.params()).await?;
        let rows = match v.get("value") {
            Some(Value::Array(a)) => a.clone(),
            _ => {
                return Err(ODataError::Decode(format!(
                    "no \"value\" array in the answer for {}",
                    q.set
                )))
            }
        };
        let count = match v.get("odata.count") {
            Some(Value::String(s)) => Some(
                s.parse()
                    .map_err(|_| ODataError::Decode(format!("bad odata.count {s}")))?,
            ),
            Some(Value::Number(n)) => n.as_u64(),
            _ => None,
        };
        Ok(Page { rows, count })
    }

    /// Pages through a query with `$top/$skip` (1C sends no nextLink): stops
    /// on a short page or when the query's own `$top` is reached.
    pub fn pages(&self, q: Query, page_size: u64) -> Pager {
        Pager {
            client: self.clone(),
            next_skip: q.skip.unwrap_or(0),
            remaining: q.top,
            page_size: page_size.max(1),
            done: false,
            query: q,
        }
    }

    /// All rows of a query, page by page.
    pub async fn fetch_all(&self, q: Query, page_size: u64) -> Result<Vec<Value>, ODataError> {
        let mut p = self.pages(q, page_size);
        let mut out = Vec::new();
        while let Some(rows) = p.next_page().await? {
            out.extend(rows);
        }
        Ok(out)
    }

    pub async fn get(
        &self,
        set: &str,
        key: &Key,
        select: &[String],
        expand: &[String],
    ) -> Result<Value, ODataError> {
        check_name(set)?;
        let mut params = Vec::new();
        if !select.is_empty() {
            params.push(("$select".to_string(), select.join(",")));
        }
        if !expand.is_empty() {
            params.push(("$expand".to_string(), expand.join(",")));
        }
        let mut v = self.get_json(&format!("{set}({key})"), &params).await?;
        strip_annotations(&mut v);
        Ok(v)
    }

    pub async fn create(&self, set: &str, body: &Value) -> Result<Value, ODataError> {
        check_name(set)?;
        let url = self.url(set, &[], true);
        let r = self
            .send(
                Method::POST,
                &url,
                Some((body.to_string(), "application/json")),
                &[],
                Retry::ConnectOnly,
            )
            .await?;
        let mut v = parse_json(&r)?;
        strip_annotations(&mut v);
        Ok(v)
    }

    /// PATCH with `If-Match` on the object's `DataVersion` when given:
    /// 412 ([`ODataError::PreconditionFailed`]) if it changed meanwhile.
    pub async fn update(
        &self,
        set: &str,
        key: &Key,
        patch: &Value,
        if_match: Option<&str>,
    ) -> Result<Value, ODataError> {
        check_name(set)?;
        let url = self.url(&format!("{set}({key})"), &[], true);
        let headers: Vec<(&str, String)> = if_match
            .map(|v| ("If-Match", format!("W/\"'{v}'\"")))
            .into_iter()
            .collect();
        let r = self
            .send(
                Method::PATCH,
                &url,
                Some((patch.to_string(), "application/json")),
                &headers,
                Retry::ConnectOnly,
            )
            .await?;
        let mut v = parse_json(&r)?;
        strip_annotations(&mut v);
        Ok(v)
    }

    pub async fn delete(
        &self,
        set: &str,
        key: &Key,
        if_match: Option<&str>,
    ) -> Result<(), ODataError> {
        check_name(set)?;
        let url = self.url(&format!("{set}({key})"), &[], true);
        let headers: Vec<(&str, String)> = if_match
            .map(|v| ("If-Match", format!("W/\"'{v}'\"")))
            .into_iter()
            .collect();
        self.send(Method::DELETE, &url, None, &headers, Retry::Idempotent)
            .await?;
        Ok(())
    }

    /// `Document_X(guid'…')/Post`.
    pub async fn post_document(
        &self,
        set: &str,
        key: Uuid,
        operational: bool,
    ) -> Result<(), ODataError> {
        check_name(set)?;
        let url = self.url(
            &format!("{set}(guid'{key}')/Post"),
            &[("PostingModeOperational".into(), operational.to_string())],
            true,
        );
        self.send(Method::POST, &url, None, &[], Retry::Idempotent)
            .await?;
        Ok(())
    }

    /// `Document_X(guid'…')/Unpost`.
    pub async fn unpost_document(&self, set: &str, key: Uuid) -> Result<(), ODataError> {
        check_name(set)?;
        let url = self.url(&format!("{set}(guid'{key}')/Unpost"), &[], true);
        self.send(Method::POST, &url, None, &[], Retry::Idempotent)
            .await?;
        Ok(())
    }

    /// `AccumulationRegister_X/Balance(Period=…, Condition='…', Dimensions='…')`.
    pub async fn balance(
        &self,
        register: &str,
        args: &BalanceArgs,
    ) -> Result<Vec<Value>, ODataError> {
        check_name(register)?;
        let mut a = Vec::new();
        if let Some(p) = args.period {
            a.push(format!("Period={}", Literal::DateTime(p)));
        }
        if let Some(c) = &args.condition {
            a.push(format!("Condition={}", Literal::String(c.clone())));
        }
        if !args.dimensions.is_empty() {
            a.push(format!(
                "Dimensions={}",
                Literal::String(args.dimensions.join(","))
            ));
        }
        self.virtual_table(register, &format!("Balance({})", a.join(",")))
            .await
    }

    /// `InformationRegister_X/SliceLast(Period=…, Condition='…')`.
    pub async fn slice_last(
        &self,
        register: &str,
        period: Option<NaiveDateTime>,
        condition: Option<&str>,
    ) -> Result<Vec<Value>, ODataError> {
        check_name(register)?;
        let mut a = Vec::new();
        if let Some(p) = period {
            a.push(format!("Period={}", Literal::DateTime(p)));
        }
        if let Some(c) = condition {
            a.push(format!("Condition={}", Literal::String(c.to_string())));
        }
        self.virtual_table(register, &format!("SliceLast({})", a.join(",")))
            .await
    }

    async fn virtual_table(&self, register: &str, call: &str) -> Result<Vec<Value>, ODataError> {
        let v = self.get_json(&format!("{register}/{call}"), &[]).await?;
        match v.get("value") {
            Some(Value::Array(a)) => Ok(a.clone()),
            _ => Err(ODataError::Decode(format!(
                "no \"value\" array in the answer for {register}/{call}"
            ))),
        }
    }
}

/// Iterates pages of a query.
pub struct Pager {
    client: OneC,
    query: Query,
    next_skip: u64,
    remaining: Option<u64>,
    page_size: u64,
    done: bool,
}

impl Pager {
    /// The next page, `None` when the query is exhausted.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Value>>, ODataError> {
        if self.done || self.remaining == Some(0) {
            return Ok(None);
        }
        let want = self
            .remaining
            .map_or(self.page_size, |r| r.min(self.page_size));
        let mut q = self.query.clone();
        q.skip = Some(self.next_skip);
        q.top = Some(want);
        q.inlinecount = false;
        let page = self.client.fetch(&q).await?;
        let n = page.rows.len() as u64;
        self.next_skip += n;
        if let Some(r) = &mut self.remaining {
            *r = r.saturating_sub(n);
        }
        if n < want {
            self.done = true;
        }
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(page.rows))
    }

    /// Rows already consumed (the `$skip` of the next page).
    pub fn position(&self) -> u64 {
        self.next_skip
    }
}

fn check_name(set: &str) -> Result<(), ODataError> {
    if !set.is_empty() && set.chars().all(|c| c.is_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(ODataError::Invalid(format!(
            "\"{set}\" is not an entity set name"
        )))
    }
}

fn parse_json(r: &Response) -> Result<Value, ODataError> {
    serde_json::from_slice(&r.body).map_err(|e| {
        let head: String = String::from_utf8_lossy(&r.body).chars().take(200).collect();
        ODataError::Decode(format!(
            "expected JSON ({}), got {}: {e}: {head}",
            r.status, r.content_type
        ))
    })
}

fn strip_annotations(v: &mut Value) {
    if let Value::Object(o) = v {
        o.retain(|k, _| !k.starts_with("odata."));
    }
}

/// reqwest's error text without the URL (which is reported separately).
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "request failed"
    }
    .to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_password() {
        let cfg = ClientConfig::new("http://x/demo", "Администратор", Secret::new("hunter2"));
        let c = OneC::new(cfg).unwrap();
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("<redacted>"));
    }

    #[test]
    fn urls_percent_encode_cyrillic() {
        let c = OneC::new(ClientConfig::new("http://x:1/demo/", "u", Secret::new("p"))).unwrap();
        let u = c.url(
            "Catalog_Склады(guid'00000000-0000-0000-0000-000000000000')",
            &[("$filter".into(), "Description eq 'Склад & Co'".into())],
            true,
        );
        assert_eq!(
            u,
            "http://x:1/demo/odata/standard.odata/Catalog_%D0%A1%D0%BA%D0%BB%D0%B0%D0%B4%D1%8B(guid'00000000-0000-0000-0000-000000000000')?$filter=Description%20eq%20'%D0%A1%D0%BA%D0%BB%D0%B0%D0%B4%20%26%20Co'&$format=json"
        );
    }

    #[test]
    fn keys_render() {
        let g = Uuid::nil();
        assert_eq!(
            Key::from(g).to_string(),
            "guid'00000000-0000-0000-0000-000000000000'"
        );
        let k = Key::Named(vec![
            (
                "Period".into(),
                Literal::DateTime(
                    crate::odata::expr::parse_datetime("2024-01-01T00:00:00").unwrap(),
                ),
            ),
            ("Номенклатура_Key".into(), Literal::Guid(g)),
        ]);
        assert_eq!(
            k.to_string(),
            "Period=datetime'2024-01-01T00:00:00',Номенклатура_Key=guid'00000000-0000-0000-0000-000000000000'"
        );
    }
}
