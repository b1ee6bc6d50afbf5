//! The event schema and its validation.
//!
//! Events arrive as untyped JSON (`serde_json::Value`) and are validated field
//! by field, so one bad event produces a precise list of problems (with the
//! event's index in the batch) instead of failing the whole batch.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Largest number of events accepted in one `POST /events` batch.
pub const MAX_BATCH_SIZE: usize = 1000;
/// Largest serialised size of an event's `properties` object, in bytes.
pub const MAX_PROPERTIES_BYTES: usize = 16 * 1024;
/// Deepest nesting allowed inside `properties` (the object itself is depth 1).
pub const MAX_PROPERTIES_DEPTH: usize = 8;
/// How far in the future `occurred_at` may be (clock skew between hosts).
pub const MAX_FUTURE_SKEW_SECS: i64 = 5 * 60;
/// Longest `service` name.
pub const MAX_SERVICE_LEN: usize = 64;
/// Longest `user_id`.
pub const MAX_USER_ID_LEN: usize = 128;
/// Largest `latency_ms` (one day): anything above is a unit mistake.
pub const MAX_LATENCY_MS: f64 = 86_400_000.0;
/// Longest normalised question kept for `/usage/top-questions` (characters).
pub const MAX_QUESTION_CHARS: usize = 500;

const FIELDS: [&str; 7] = [
    "event_id",
    "kind",
    "service",
    "user_id",
    "occurred_at",
    "latency_ms",
    "properties",
];

/// The fixed set of event kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Question,
    Answer,
    Login,
    ApiCall,
    Error,
    Exchange,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Question,
        Kind::Answer,
        Kind::Login,
        Kind::ApiCall,
        Kind::Error,
        Kind::Exchange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Question => "question",
            Kind::Answer => "answer",
            Kind::Login => "login",
            Kind::ApiCall => "api_call",
            Kind::Error => "error",
            Kind::Exchange => "exchange",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// `question, answer, ...` for error messages.
    pub fn list() -> String {
        Kind::ALL.map(Kind::as_str).join(", ")
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated event, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_id: Uuid,
    pub kind: Kind,
    pub service: String,
    pub user_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub latency_ms: Option<f64>,
    pub properties: Value,
    /// Normalised `properties.question` of `question` events.
    pub question: Option<String>,
}

/// One problem with one field of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Validate one event of a batch; `now` bounds `occurred_at`.
pub fn validate(value: &Value, now: DateTime<Utc>) -> Result<Event, Vec<FieldError>> {
    let Some(obj) = value.as_object() else {
        return Err(vec![FieldError::new(
            "",
            format!("an event must be a JSON object, got {}", type_name(value)),
        )]);
    };
    let mut errors = Vec::new();

    for key in obj.keys() {
        if !FIELDS.contains(&key.as_str()) {
            errors.push(FieldError::new(key, "unknown field"));
        }
    }

    let event_id = match obj.get("event_id") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("event_id", "is required"));
            None
        }
        Some(Value::String(s)) => match Uuid::parse_str(s) {
            Ok(id) if !id.is_nil() => Some(id),
            Ok(_) => {
                errors.push(FieldError::new("event_id", "must not be the nil UUID"));
                None
            }
            Err(_) => {
                errors.push(FieldError::new("event_id", "must be a UUID"));
                None
            }
        },
        Some(other) => {
            errors.push(FieldError::new(
                "event_id",
                format!("must be a UUID string, got {}", type_name(other)),
            ));
            None
        }
    };

    let kind = match obj.get("kind") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("kind", "is required"));
            None
        }
        Some(Value::String(s)) => match Kind::parse(s) {
            Some(k) => Some(k),
            None => {
                errors.push(FieldError::new(
                    "kind",
                    format!("unknown kind {s:?}; expected one of {}", Kind::list()),
                ));
                None
            }
        },
        Some(other) => {
            errors.push(FieldError::new(
                "kind",
                format!("must be a string, got {}", type_name(other)),
            ));
            None
        }
    };

    let service = match obj.get("service") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("service", "is required"));
            None
        }
        Some(Value::String(s)) => match check_service(s) {
            Ok(()) => Some(s.clone()),
            Err(msg) => {
                errors.push(FieldError::new("service", msg));
                None
            }
        },
        Some(other) => {
            errors.push(FieldError::new(
                "service",
                format!("must be a string, got {}", type_name(other)),
            ));
            None
        }
    };

    let user_id = match obj.get("user_id") {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) => {
            if s.trim().is_empty() {
                errors.push(FieldError::new(
                    "user_id",
                    "must not be empty (omit it or send null)",
                ));
                None
            } else if s.chars().count() > MAX_USER_ID_LEN {
                errors.push(FieldError::new(
                    "user_id",
                    format!("must be at most {MAX_USER_ID_LEN} characters"),
                ));
                None
            } else if s.chars().any(char::is_control) {
                errors.push(FieldError::new(
                    "user_id",
                    "must not contain control characters",
                ));
                None
            } else {
                Some(Some(s.clone()))
            }
        }
        Some(other) => {
            errors.push(FieldError::new(
                "user_id",
                format!("must be a string or null, got {}", type_name(other)),
            ));
            None
        }
    };

    let occurred_at = match obj.get("occurred_at") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new("occurred_at", "is required"));
            None
        }
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => {
                let t = t.with_timezone(&Utc);
                if t > now + Duration::seconds(MAX_FUTURE_SKEW_SECS) {
                    errors.push(FieldError::new(
                        "occurred_at",
                        format!(
                            "is in the future (more than {MAX_FUTURE_SKEW_SECS} s after the server's clock)"
                        ),
                    ));
                    None
                } else {
                    Some(t)
                }
            }
            Err(e) => {
                errors.push(FieldError::new(
                    "occurred_at",
                    format!("must be an RFC 3339 timestamp such as 2026-01-31T12:00:00Z ({e})"),
                ));
                None
            }
        },
        Some(other) => {
            errors.push(FieldError::new(
                "occurred_at",
                format!("must be an RFC 3339 string, got {}", type_name(other)),
            ));
            None
        }
    };

    let latency_ms = match obj.get("latency_ms") {
        None | Some(Value::Null) => Some(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && (0.0..=MAX_LATENCY_MS).contains(&v) => Some(Some(v)),
            Some(v) if v < 0.0 => {
                errors.push(FieldError::new("latency_ms", "must not be negative"));
                None
            }
            _ => {
                errors.push(FieldError::new(
                    "latency_ms",
                    format!("must be at most {MAX_LATENCY_MS} (one day)"),
                ));
                None
            }
        },
        Some(other) => {
            errors.push(FieldError::new(
                "latency_ms",
                format!("must be a number, got {}", type_name(other)),
            ));
            None
        }
    };

    let properties = match obj.get("properties") {
        None | Some(Value::Null) => Some(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => match check_properties(v) {
            Ok(()) => Some(v.clone()),
            Err(msg) => {
                errors.push(FieldError::new("properties", msg));
                None
            }
        },
        Some(other) => {
            errors.push(FieldError::new(
                "properties",
                format!("must be an object, got {}", type_name(other)),
            ));
            None
        }
    };

    let question = match (kind, &properties) {
        (Some(Kind::Question), Some(p)) => match p.get("question") {
            None | Some(Value::Null) => None,
            Some(Value::String(q)) => {
                let n = normalize_question(q);
                (!n.is_empty()).then_some(n)
            }
            Some(other) => {
                errors.push(FieldError::new(
                    "properties.question",
                    format!("must be a string, got {}", type_name(other)),
                ));
                None
            }
        },
        _ => None,
    };

    if !errors.is_empty() {
        return Err(errors);
    }
    match (
        event_id,
        kind,
        service,
        user_id,
        occurred_at,
        latency_ms,
        properties,
    ) {
        (
            Some(event_id),
            Some(kind),
            Some(service),
            Some(user_id),
            Some(occurred_at),
            Some(latency_ms),
            Some(properties),
        ) => Ok(Event {
            event_id,
            kind,
            service,
            user_id,
            occurred_at,
            latency_ms,
            properties,
            question,
        }),
        // Every `None` above pushed an error, so this arm is unreachable in
        // practice; keep it total instead of panicking.
        _ => Err(vec![FieldError::new("", "invalid event")]),
    }
}

/// The `event_id` of a raw event, when it has a parseable one (used to label
/// validation errors so callers can match them without counting indexes).
pub fn raw_event_id(value: &Value) -> Option<Uuid> {
    value
        .get("event_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
}

fn check_service(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_SERVICE_LEN {
        return Err(format!("must be at most {MAX_SERVICE_LEN} characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may only contain ASCII letters, digits, '-', '_' and '.'".into());
    }
    Ok(())
}

fn check_properties(v: &Value) -> Result<(), String> {
    let size = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
    if size > MAX_PROPERTIES_BYTES {
        return Err(format!(
            "is {size} bytes serialised; the limit is {MAX_PROPERTIES_BYTES}"
        ));
    }
    if depth(v) > MAX_PROPERTIES_DEPTH {
        return Err(format!(
            "is nested more than {MAX_PROPERTIES_DEPTH} levels deep"
        ));
    }
    if contains_nul(v) {
        // PostgreSQL jsonb cannot store U+0000.
        return Err("must not contain the NUL character (\\u0000)".into());
    }
    Ok(())
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Array(a) => a.iter().any(contains_nul),
        _ => false,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Normalise a question for grouping: Unicode lower case, `ё` folded to `е`,
/// runs of whitespace collapsed to one space, surrounding whitespace and
/// trailing `?`, `!`, `.`, `…` removed, and at most [`MAX_QUESTION_CHARS`]
/// characters kept.
pub fn normalize_question(q: &str) -> String {
    let lowered = q.to_lowercase().replace('ё', "е");
    let mut out = String::with_capacity(lowered.len());
    for word in lowered.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    let trimmed = out
        .trim_end_matches(|c: char| matches!(c, '?' | '!' | '.' | '…') || c.is_whitespace())
        .to_string();
    match trimmed.char_indices().nth(MAX_QUESTION_CHARS) {
        Some((cut, _)) => trimmed[..cut].trim_end().to_string(),
        None => trimmed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn good() -> Value {
        json!({
            "event_id": "6f1c1f9e-3c1a-4f57-9a52-0c8f2f0d8b11",
            "kind": "question",
            "service": "ai-assistant",
            "user_id": "u-42",
            "occurred_at": "2026-11-26T11:59:00+03:00",
            "latency_ms": 12.5,
            "properties": {"question": "  Как  провести документ?? "}
        })
    }

    fn fields(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn valid_event_is_parsed_and_normalised() {
        let e = validate(&good(), now()).unwrap();
        assert_eq!(e.kind, Kind::Question);
        assert_eq!(e.service, "ai-assistant");
        assert_eq!(e.user_id.as_deref(), Some("u-42"));
        assert_eq!(e.occurred_at.to_rfc3339(), "2026-11-26T08:59:00+00:00");
        assert_eq!(e.latency_ms, Some(12.5));
        assert_eq!(e.question.as_deref(), Some("как провести документ"));
    }

    #[test]
    fn optional_fields_may_be_absent_or_null() {
        let v = json!({
            "event_id": "6f1c1f9e-3c1a-4f57-9a52-0c8f2f0d8b11",
            "kind": "login",
            "service": "user-management",
            "user_id": null,
            "occurred_at": "2026-11-26T10:00:00Z"
        });
        let e = validate(&v, now()).unwrap();
        assert_eq!(e.user_id, None);
        assert_eq!(e.latency_ms, None);
        assert_eq!(e.properties, json!({}));
        assert_eq!(e.question, None);
    }

    #[test]
    fn every_kind_parses_and_unknown_kind_is_rejected() {
        for k in Kind::ALL {
            let mut v = good();
            v["kind"] = json!(k.as_str());
            assert_eq!(validate(&v, now()).unwrap().kind, k);
        }
        let mut v = good();
        v["kind"] = json!("click");
        let errs = validate(&v, now()).unwrap_err();
        assert_eq!(fields(&errs), ["kind"]);
        assert!(errs[0].message.contains("api_call"), "{}", errs[0].message);
    }

    #[test]
    fn all_problems_are_reported_together() {
        let v = json!({
            "event_id": "not-a-uuid",
            "kind": 7,
            "service": "",
            "occurred_at": "yesterday",
            "latency_ms": -1,
            "properties": [1, 2],
            "extra": true
        });
        let errs = validate(&v, now()).unwrap_err();
        let mut f = fields(&errs);
        f.sort();
        assert_eq!(
            f,
            [
                "event_id",
                "extra",
                "kind",
                "latency_ms",
                "occurred_at",
                "properties",
                "service"
            ]
        );
    }

    #[test]
    fn missing_required_fields() {
        let errs = validate(&json!({}), now()).unwrap_err();
        let mut f = fields(&errs);
        f.sort();
        assert_eq!(f, ["event_id", "kind", "occurred_at", "service"]);
        assert!(errs.iter().all(|e| e.message == "is required"));
    }

    #[test]
    fn non_object_event() {
        let errs = validate(&json!("hello"), now()).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("a string"));
    }

    #[test]
    fn future_timestamps_beyond_skew_are_rejected() {
        let mut v = good();
        v["occurred_at"] = json!("2026-11-26T12:04:59Z");
        assert!(validate(&v, now()).is_ok());
        v["occurred_at"] = json!("2026-11-26T12:05:01Z");
        let errs = validate(&v, now()).unwrap_err();
        assert_eq!(fields(&errs), ["occurred_at"]);
        v["occurred_at"] = json!("2027-01-01T00:00:00Z");
        assert!(validate(&v, now()).is_err());
        // No offset is not RFC 3339.
        v["occurred_at"] = json!("2026-11-26T10:00:00");
        assert!(validate(&v, now()).is_err());
    }

    #[test]
    fn latency_bounds() {
        let mut v = good();
        v["latency_ms"] = json!(0);
        assert_eq!(validate(&v, now()).unwrap().latency_ms, Some(0.0));
        v["latency_ms"] = json!(-0.5);
        assert_eq!(
            validate(&v, now()).unwrap_err()[0].message,
            "must not be negative"
        );
        v["latency_ms"] = json!(MAX_LATENCY_MS + 1.0);
        assert!(validate(&v, now()).is_err());
        v["latency_ms"] = json!("12");
        assert!(validate(&v, now()).is_err());
    }

    #[test]
    fn properties_limits() {
        let mut v = good();
        v["properties"] = json!({"blob": "x".repeat(MAX_PROPERTIES_BYTES)});
        let errs = validate(&v, now()).unwrap_err();
        assert_eq!(fields(&errs), ["properties"]);
        assert!(errs[0].message.contains("bytes"));

        let mut deep = json!(1);
        for _ in 0..MAX_PROPERTIES_DEPTH {
            deep = json!({ "a": deep });
        }
        v["properties"] = deep.clone();
        assert!(validate(&v, now()).is_ok());
        v["properties"] = json!({ "a": deep });
        assert!(validate(&v, now()).is_err());

        v["properties"] = json!({"s": "a\u{0000}b"});
        assert!(validate(&v, now()).is_err());

        v["properties"] = json!({"question": 5});
        assert_eq!(
            fields(&validate(&v, now()).unwrap_err()),
            ["properties.question"]
        );
    }

    #[test]
    fn service_and_user_id_rules() {
        let mut v = good();
        v["service"] = json!("1c-integration");
        assert!(validate(&v, now()).is_ok());
        v["service"] = json!("has space");
        assert!(validate(&v, now()).is_err());
        v["service"] = json!("x".repeat(MAX_SERVICE_LEN + 1));
        assert!(validate(&v, now()).is_err());

        let mut v = good();
        v["user_id"] = json!("");
        assert!(validate(&v, now()).is_err());
        v["user_id"] = json!(42);
        assert!(validate(&v, now()).is_err());
        v["user_id"] = json!("пользователь-1");
        assert!(validate(&v, now()).is_ok());
    }

    #[test]
    fn nil_uuid_is_rejected() {
        let mut v = good();
        v["event_id"] = json!("00000000-0000-0000-0000-000000000000");
        assert!(validate(&v, now()).is_err());
        assert_eq!(raw_event_id(&v), Some(Uuid::nil()));
        assert_eq!(raw_event_id(&json!({"event_id": "x"})), None);
    }

    #[test]
    fn question_normalisation() {
        assert_eq!(
            normalize_question("  Как\tПРОВЕСТИ\n документ?!  "),
            "как провести документ"
        );
        assert_eq!(normalize_question("Где моё Ёлочное…"), "где мое елочное");
        assert_eq!(normalize_question("???"), "");
        assert_eq!(normalize_question("What is 1C?"), "what is 1c");
        let long = "я".repeat(MAX_QUESTION_CHARS + 10);
        assert_eq!(
            normalize_question(&long).chars().count(),
            MAX_QUESTION_CHARS
        );
    }
}
