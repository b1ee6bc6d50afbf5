//! Forwarding to an upstream: streaming bodies both ways (never buffered),
//! hop-by-hop header removal, identity headers, one retry of idempotent
//! requests on a connect error, and a timeout to the response headers.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Identity headers the gateway sets (with their proof); any client-sent
/// copies are removed.
pub const IDENTITY_HEADERS: &[&str] = kit::identity::HEADERS;

/// Headers that only concern one connection (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// A request body that is handed to the first attempt that actually polls
/// it. hyper polls the body only once the connection is established, so
/// after a connect error the body is still in the slot and can be sent with
/// the retry: streaming, nothing buffered.
pub struct ReplayOnceBody {
    slot: Arc<Mutex<Option<Body>>>,
    body: Option<Body>,
    hint: SizeHint,
    empty: bool,
}

impl ReplayOnceBody {
    fn new(slot: Arc<Mutex<Option<Body>>>, hint: SizeHint, empty: bool) -> Self {
        Self {
            slot,
            body: None,
            hint,
            empty,
        }
    }
}

impl hyper::body::Body for ReplayOnceBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.body.is_none() {
            let taken = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            match taken {
                Some(b) => self.body = Some(b),
                None => return Poll::Ready(None),
            }
        }
        let body = self.body.as_mut().expect("body present");
        Pin::new(body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(b) => b.is_end_stream(),
            None => self.empty,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}

pub type UpstreamClient = Client<HttpConnector, ReplayOnceBody>;

pub fn client(connect_timeout: Duration) -> UpstreamClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(connect_timeout));
    conn.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(conn)
}

#[derive(Debug)]
pub enum ForwardError {
    /// Could not connect (after the retry, for idempotent requests).
    Connect(String),
    /// No response headers within the upstream timeout.
    Timeout,
    /// Any other transport failure.
    Other(String),
}

/// Sends `method uri` with `headers` and `body`. Idempotent requests are
/// retried once, after `retry_delay`, when the first attempt cannot connect
/// or its connection closes before a response (and the body was empty or
/// never sent).
/// Returns the response and whether a retry happened.
pub async fn forward(
    client: &UpstreamClient,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    timeout: Duration,
    retry_delay: Duration,
) -> Result<(Response<Incoming>, bool), ForwardError> {
    use hyper::body::Body as _;
    let hint = body.size_hint();
    let empty = body.is_end_stream();
    let slot = Arc::new(Mutex::new(Some(body)));
    let mut retried = false;
    loop {
        let mut req = Request::new(ReplayOnceBody::new(slot.clone(), hint, empty));
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = headers.clone();
        let res = tokio::time::timeout(timeout, client.request(req)).await;
        match res {
            Err(_) => return Err(ForwardError::Timeout),
            Ok(Ok(resp)) => return Ok((resp, retried)),
            Ok(Err(e)) => {
                let connect = e.is_connect();
                let body_unsent = empty || slot.lock().unwrap_or_else(|e| e.into_inner()).is_some();
                let retryable = connect || closed_before_response(&e);
                if retryable && !retried && is_idempotent(&method) && body_unsent {
                    retried = true;
                    tracing::info!(%uri, error = %error_chain(&e), "upstream connection failed, retrying once");
                    tokio::time::sleep(retry_delay).await;
                    continue;
                }
                return Err(if connect {
                    ForwardError::Connect(error_chain(&e))
                } else {
                    ForwardError::Other(error_chain(&e))
                });
            }
        }
    }
}

/// The connection was closed before any response arrived (an upstream
/// shutting down under a rolling deploy closes kept-alive connections).
/// Only retried for idempotent requests whose body was empty or never sent.
fn closed_before_response(e: &hyper_util::client::legacy::Error) -> bool {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            return h.is_incomplete_message() || h.is_canceled();
        }
        src = s.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Builds the upstream request headers from the client's; `peer_ip` (the
/// TCP peer) is appended to `X-Forwarded-For` as every proxy hop does.
pub fn upstream_headers(
    mut headers: HeaderMap,
    peer_ip: &str,
    identity: Option<(&str, &[String], &str)>,
) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    for h in IDENTITY_HEADERS {
        headers.remove(*h);
    }
    // The gateway's own secret is never relayed from clients, and an API
    // key, once verified here, is not handed on to every upstream.
    headers.remove(crate::auth::SERVICE_TOKEN_HEADER);
    headers.remove(crate::auth::API_KEY_HEADER);
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {peer_ip}"),
        _ => peer_ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if let Some((user, roles, method)) = identity {
        if let Ok(v) = HeaderValue::from_str(user) {
            headers.insert("x-user-id", v);
        }
        if let Ok(v) = HeaderValue::from_str(&roles.join(",")) {
            headers.insert("x-user-roles", v);
        }
        if let Ok(v) = HeaderValue::from_str(method) {
            headers.insert("x-auth-method", v);
        }
    }
    headers
}

/// Turns the upstream response into ours, streaming the body.
pub fn downstream_response(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn identity_headers_are_replaced_not_trusted() {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", "admin".parse().unwrap());
        h.insert("x-user-roles", "admin".parse().unwrap());
        h.insert("x-identity-proof", "v1=00".parse().unwrap());
        h.insert("x-identity-timestamp", "1".parse().unwrap());
        h.insert("x-service-token", "guess".parse().unwrap());
        h.insert("x-api-key", "sk_secret".parse().unwrap());
        h.insert("host", "evil".parse().unwrap());
        h.insert("authorization", "Bearer t".parse().unwrap());
        let out = upstream_headers(h.clone(), "192.0.2.7", None);
        assert!(!out.contains_key("x-user-id"));
        assert!(!out.contains_key("x-user-roles"));
        assert!(!out.contains_key("x-identity-proof"));
        assert!(!out.contains_key("x-identity-timestamp"));
        assert!(!out.contains_key("x-service-token"));
        assert!(!out.contains_key("x-api-key"));
        assert!(!out.contains_key("host"));
        assert_eq!(out["authorization"], "Bearer t");
        assert_eq!(out["x-forwarded-for"], "192.0.2.7");
        let roles = vec!["viewer".to_string(), "analyst".to_string()];
        let out = upstream_headers(h, "192.0.2.7", Some(("u-1", &roles, "jwt")));
        assert_eq!(out["x-user-id"], "u-1");
        assert_eq!(out["x-user-roles"], "viewer,analyst");
        assert_eq!(out["x-auth-method"], "jwt");
    }

    #[test]
    fn xff_is_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        let out = upstream_headers(h, "10.0.0.2", None);
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 10.0.0.2");
    }

    #[test]
    fn idempotent_methods() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(is_idempotent(&m));
        }
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
