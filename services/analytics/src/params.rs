//! Query-string parameters shared by the read endpoints.
//!
//! `from` and `to` accept either an RFC 3339 timestamp or a calendar date
//! (`YYYY-MM-DD`, UTC). The range is half-open `[from, to)`: a date as `from`
//! means that day's 00:00 UTC, a date as `to` means the *end* of that day
//! (so `from=2026-11-01&to=2026-11-01` is the whole of 1 November).

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};

use crate::event::Kind;
use axum::http::StatusCode;
use kit::ApiError;

/// Default and largest `limit` of the top-N endpoints.
pub const DEFAULT_LIMIT: i64 = 10;
pub const MAX_LIMIT: i64 = 1000;
/// Default span of `/usage/daily` when `from` is not given.
pub const DEFAULT_DAILY_DAYS: i64 = 30;
/// Largest span of `/usage/daily` (it returns one row per day).
pub const MAX_DAILY_DAYS: i64 = 3660;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeRange {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy)]
enum Bound {
    From,
    To,
}

fn parse_bound(name: &str, raw: &str, bound: Bound) -> Result<DateTime<Utc>, ApiError> {
    let raw = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        let start = d.and_time(NaiveTime::MIN).and_utc();
        return Ok(match bound {
            Bound::From => start,
            Bound::To => start + Duration::days(1),
        });
    }
    Err(bad_request(
        "invalid_parameter",
        format!("`{name}` must be an RFC 3339 timestamp or a date YYYY-MM-DD, got {raw:?}"),
    ))
}

impl TimeRange {
    /// Parse optional `from`/`to`; empty strings count as absent.
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<TimeRange, ApiError> {
        let from = match from.filter(|s| !s.trim().is_empty()) {
            Some(s) => Some(parse_bound("from", s, Bound::From)?),
            None => None,
        };
        let to = match to.filter(|s| !s.trim().is_empty()) {
            Some(s) => Some(parse_bound("to", s, Bound::To)?),
            None => None,
        };
        if let (Some(f), Some(t)) = (from, to) {
            if f >= t {
                return Err(bad_request("invalid_range", "`from` must be before `to`"));
            }
        }
        Ok(TimeRange { from, to })
    }
}

/// The concrete day span of `/usage/daily`: `[from, to)` plus the first and
/// last calendar day (UTC) it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaySpan {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
}

impl DaySpan {
    /// Defaults: `to` = now, `from` = the start of the day
    /// [`DEFAULT_DAILY_DAYS`] - 1 days before `to`'s day.
    pub fn resolve(range: TimeRange, now: DateTime<Utc>) -> Result<DaySpan, ApiError> {
        let to = range.to.unwrap_or(now);
        let from = match range.from {
            Some(f) => f,
            None => {
                let last = (to - Duration::microseconds(1)).date_naive();
                (last - Duration::days(DEFAULT_DAILY_DAYS - 1))
                    .and_time(NaiveTime::MIN)
                    .and_utc()
            }
        };
        if from >= to {
            return Err(bad_request("invalid_range", "`from` must be before `to`"));
        }
        let first_day = from.date_naive();
        let last_day = (to - Duration::microseconds(1)).date_naive();
        if (last_day - first_day).num_days() + 1 > MAX_DAILY_DAYS {
            return Err(bad_request(
                "invalid_range",
                format!("the range spans more than {MAX_DAILY_DAYS} days"),
            ));
        }
        Ok(DaySpan {
            from,
            to,
            first_day,
            last_day,
        })
    }
}

/// A 400 with a specific error code.
pub fn bad_request(code: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

pub fn parse_limit(raw: Option<&str>) -> Result<i64, ApiError> {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(bad_request(
                "invalid_parameter",
                format!("`limit` must be an integer from 1 to {MAX_LIMIT}, got {s:?}"),
            )),
        },
    }
}

pub fn parse_kind(raw: Option<&str>) -> Result<Option<Kind>, ApiError> {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => Kind::parse(s).map(Some).ok_or_else(|| {
            bad_request(
                "invalid_parameter",
                format!("`kind` must be one of {}, got {s:?}", Kind::list()),
            )
        }),
    }
}

pub fn parse_service(raw: Option<&str>) -> Option<String> {
    raw.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn dates_and_timestamps() {
        let r = TimeRange::parse(Some("2026-11-01"), Some("2026-11-01")).unwrap();
        assert_eq!(r.from, Some(t("2026-11-01T00:00:00Z")));
        assert_eq!(r.to, Some(t("2026-11-02T00:00:00Z")));
        let r = TimeRange::parse(Some("2026-11-01T10:00:00+03:00"), None).unwrap();
        assert_eq!(r.from, Some(t("2026-11-01T07:00:00Z")));
        assert_eq!(r.to, None);
        assert_eq!(
            TimeRange::parse(Some(""), None).unwrap(),
            TimeRange::default()
        );
    }

    #[test]
    fn bad_ranges() {
        let e = TimeRange::parse(Some("yesterday"), None).unwrap_err();
        assert_eq!(e.code, "invalid_parameter");
        let e = TimeRange::parse(Some("2026-11-02"), Some("2026-11-01")).unwrap_err();
        assert_eq!(e.code, "invalid_range");
    }

    #[test]
    fn day_span_defaults_to_thirty_days_ending_now() {
        let now = t("2026-11-26T12:00:00Z");
        let s = DaySpan::resolve(TimeRange::default(), now).unwrap();
        assert_eq!(s.to, now);
        assert_eq!(s.last_day.to_string(), "2026-11-26");
        assert_eq!(s.first_day.to_string(), "2026-10-28");
        assert_eq!(
            (s.last_day - s.first_day).num_days() + 1,
            DEFAULT_DAILY_DAYS
        );
        assert_eq!(s.from, t("2026-10-28T00:00:00Z"));
    }

    #[test]
    fn day_span_with_dates() {
        let r = TimeRange::parse(Some("2026-11-01"), Some("2026-11-03")).unwrap();
        let s = DaySpan::resolve(r, t("2026-11-26T12:00:00Z")).unwrap();
        assert_eq!(s.first_day.to_string(), "2026-11-01");
        assert_eq!(s.last_day.to_string(), "2026-11-03");
        let r = TimeRange::parse(Some("2000-01-01"), Some("2026-11-03")).unwrap();
        assert!(DaySpan::resolve(r, t("2026-11-26T12:00:00Z")).is_err());
        // Only `from`, after now: from >= to.
        let r = TimeRange::parse(Some("2027-01-01"), None).unwrap();
        assert!(DaySpan::resolve(r, t("2026-11-26T12:00:00Z")).is_err());
    }

    #[test]
    fn limits_and_kinds() {
        assert_eq!(parse_limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(parse_limit(Some("5")).unwrap(), 5);
        assert!(parse_limit(Some("0")).is_err());
        assert!(parse_limit(Some("1001")).is_err());
        assert!(parse_limit(Some("ten")).is_err());
        assert_eq!(parse_kind(Some("api_call")).unwrap(), Some(Kind::ApiCall));
        assert_eq!(parse_kind(Some("")).unwrap(), None);
        assert!(parse_kind(Some("nope")).is_err());
        assert_eq!(parse_service(Some(" ai ")), Some("ai".into()));
        assert_eq!(parse_service(Some("")), None);
    }
}
