//! Errors from talking to 1C, with both of 1C's error bodies decoded:
//! `{"odata.error":{"code":"","message":{"lang":"ru","value":"…"}}}` and
//! `<m:error><m:code/><m:message xml:lang="ru">…</m:message></m:error>`.

use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::Value;

use super::metadata::MetadataError;

#[derive(Debug, thiserror::Error)]
pub enum ODataError {
    #[error("1C rejected the credentials of user \"{user}\" (HTTP 401): check ONEC_USER and the password file")]
    Unauthorized { user: String },
    #[error("1C: not found (HTTP 404): {message}")]
    NotFound { message: String },
    #[error(
        "1C: the object was changed by someone else (HTTP 412, DataVersion mismatch): {message}"
    )]
    PreconditionFailed { message: String },
    #[error("1C answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("cannot reach 1C at {url}: {message}")]
    Transport { url: String, message: String },
    #[error("unexpected answer from 1C: {0}")]
    Decode(String),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("SOAP fault {code}: {message}")]
    SoapFault { code: String, message: String },
}

impl ODataError {
    /// The HTTP status 1C answered, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ODataError::Unauthorized { .. } => Some(401),
            ODataError::NotFound { .. } => Some(404),
            ODataError::PreconditionFailed { .. } => Some(412),
            ODataError::Http { status, .. } => Some(*status),
            ODataError::SoapFault { .. } => Some(500),
            _ => None,
        }
    }

    /// True when 1C could not be reached at all (or answered 5xx).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ODataError::Transport { .. })
            || matches!(self, ODataError::Http { status, .. } if *status >= 500)
    }
}

/// The human message inside an error body, whichever form it takes.
pub fn decode_error_body(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).ok()?;
        let e = v.get("odata.error").or_else(|| v.get("error"))?;
        let msg = e.pointer("/message/value").or_else(|| e.get("message"))?;
        let msg = match msg {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let code = e.get("code").and_then(Value::as_str).unwrap_or("");
        return Some(if code.is_empty() || code == "-1" {
            msg
        } else {
            format!("{msg} (code {code})")
        });
    }
    if text.starts_with('<') {
        let mut r = Reader::from_str(text);
        let (mut in_msg, mut in_code, mut saw_error) = (false, false, false);
        let (mut msg, mut code) = (String::new(), String::new());
        loop {
            match r.read_event().ok()? {
                Event::Start(e) => match e.local_name().as_ref() {
                    b"error" => saw_error = true,
                    b"message" if saw_error => in_msg = true,
                    b"code" if saw_error => in_code = true,
                    _ => {}
                },
                Event::Text(t) if in_msg || in_code => {
                    let t = crate::xml::text(&t).ok()?;
                    if in_msg {
                        msg.push_str(&t);
                    } else {
                        code.push_str(&t);
                    }
                }
                Event::GeneralRef(g) if in_msg || in_code => {
                    let t = crate::xml::reference(&g).ok()?;
                    if in_msg {
                        msg.push_str(&t);
                    } else {
                        code.push_str(&t);
                    }
                }
                Event::End(e) => match e.local_name().as_ref() {
                    b"message" => in_msg = false,
                    b"code" => in_code = false,
                    _ => {}
                },
                Event::Eof => break,
                _ => {}
            }
        }
        if saw_error {
            let (msg, code) = (msg.trim().to_string(), code.trim());
            return Some(if code.is_empty() || code == "-1" {
                msg
            } else {
                format!("{msg} (code {code})")
            });
        }
        return None;
    }
    if text.is_empty() {
        None
    } else {
        Some(text.chars().take(500).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_form() {
        let b = r#"{"odata.error":{"code":"","message":{"lang":"ru","value":"Не найден объект"}}}"#;
        assert_eq!(
            decode_error_body(b.as_bytes()).as_deref(),
            Some("Не найден объект")
        );
        let b = r#"{"odata.error":{"code":"15","message":{"lang":"ru","value":"Ошибка"}}}"#;
        assert_eq!(
            decode_error_body(b.as_bytes()).as_deref(),
            Some("Ошибка (code 15)")
        );
    }

    #[test]
    fn xml_form() {
        let b = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<m:error xmlns:m=\"http://schemas.microsoft.com/ado/2007/08/dataservices/metadata\"><m:code>-1</m:code><m:message xml:lang=\"ru\">Неизвестное свойство &quot;X&quot;</m:message></m:error>";
        assert_eq!(
            decode_error_body(b.as_bytes()).as_deref(),
            Some("Неизвестное свойство \"X\"")
        );
    }
}
