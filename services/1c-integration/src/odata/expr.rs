//! OData v3 `$filter` expressions as 1C understands them: typed literals
//! (`guid'…'`, `datetime'…'`, `'strings'` with `''` escaping, numbers,
//! `true`/`false`/`null`), a typed builder for the client and a parser for
//! the simulator (and for validating raw filters before sending them).

use std::fmt;

use chrono::NaiveDateTime;
use serde_json::Value;
use uuid::Uuid;

/// The empty reference 1C uses for "no value" in `*_Key` fields.
pub const EMPTY_GUID: &str = "00000000-0000-0000-0000-000000000000";
/// The empty date 1C uses for "no value" in date fields.
pub const EMPTY_DATE: &str = "0001-01-01T00:00:00";
/// 1C date-time format (no zone, second precision).
pub const DATETIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S";

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    Double(f64),
    String(String),
    Guid(Uuid),
    DateTime(NaiveDateTime),
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Null => f.write_str("null"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Double(d) => {
                if d.fract() == 0.0 && d.abs() < 1e15 {
                    write!(f, "{d:.1}")
                } else {
                    write!(f, "{d}")
                }
            }
            Literal::String(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Literal::Guid(g) => write!(f, "guid'{g}'"),
            Literal::DateTime(d) => write!(f, "datetime'{}'", d.format(DATETIME_FORMAT)),
        }
    }
}

impl From<&str> for Literal {
    fn from(s: &str) -> Self {
        Literal::String(s.to_string())
    }
}
impl From<String> for Literal {
    fn from(s: String) -> Self {
        Literal::String(s)
    }
}
impl From<Uuid> for Literal {
    fn from(g: Uuid) -> Self {
        Literal::Guid(g)
    }
}
impl From<NaiveDateTime> for Literal {
    fn from(d: NaiveDateTime) -> Self {
        Literal::DateTime(d)
    }
}
impl From<i64> for Literal {
    fn from(i: i64) -> Self {
        Literal::Int(i)
    }
}
impl From<i32> for Literal {
    fn from(i: i32) -> Self {
        Literal::Int(i.into())
    }
}
impl From<f64> for Literal {
    fn from(d: f64) -> Self {
        Literal::Double(d)
    }
}
impl From<bool> for Literal {
    fn from(b: bool) -> Self {
        Literal::Bool(b)
    }
}

pub fn parse_datetime(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim_end_matches('Z');
    NaiveDateTime::parse_from_str(s, DATETIME_FORMAT)
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M"))
        .ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
        }
    }
    pub fn parse(s: &str) -> Option<CmpOp> {
        Some(match s {
            "eq" => CmpOp::Eq,
            "ne" => CmpOp::Ne,
            "gt" => CmpOp::Gt,
            "ge" => CmpOp::Ge,
            "lt" => CmpOp::Lt,
            "le" => CmpOp::Le,
            _ => return None,
        })
    }
}

/// A typed `$filter` for the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Cmp {
        field: String,
        op: CmpOp,
        value: Literal,
    },
    SubstringOf {
        field: String,
        value: String,
    },
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
}

impl Filter {
    pub fn cmp(field: impl Into<String>, op: CmpOp, value: impl Into<Literal>) -> Filter {
        Filter::Cmp {
            field: field.into(),
            op,
            value: value.into(),
        }
    }
    pub fn eq(field: impl Into<String>, v: impl Into<Literal>) -> Filter {
        Self::cmp(field, CmpOp::Eq, v)
    }
    pub fn ne(field: impl Into<String>, v: impl Into<Literal>) -> Filter {
        Self::cmp(field, CmpOp::Ne, v)
    }
    pub fn gt(field: impl Into<String>, v: impl Into<Literal>) -> Filter {
        Self::cmp(field, CmpOp::Gt, v)
    }
    pub fn ge(field: impl Into<String>, v: impl Into<Literal>) -> Filter {
        Self::cmp(field, CmpOp::Ge, v)
    }
    pub fn lt(field: impl Into<String>, v: impl Into<Literal>) -> Filter {
        Self::cmp(field, CmpOp::Lt, v)
    }
    pub fn le(field: impl Into<String>, v: impl Into<Literal>) -> Filter {
        Self::cmp(field, CmpOp::Le, v)
    }
    /// `substringof('value', field)`.
    pub fn substringof(field: impl Into<String>, value: impl Into<String>) -> Filter {
        Filter::SubstringOf {
            field: field.into(),
            value: value.into(),
        }
    }
    pub fn and(self, other: Filter) -> Filter {
        match self {
            Filter::And(mut v) => {
                v.push(other);
                Filter::And(v)
            }
            f => Filter::And(vec![f, other]),
        }
    }
    pub fn or(self, other: Filter) -> Filter {
        match self {
            Filter::Or(mut v) => {
                v.push(other);
                Filter::Or(v)
            }
            f => Filter::Or(vec![f, other]),
        }
    }
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Filter {
        Filter::Not(Box::new(self))
    }

    /// The `$filter` text.
    pub fn to_odata(&self) -> String {
        match self {
            Filter::Cmp { field, op, value } => format!("{field} {} {value}", op.as_str()),
            Filter::SubstringOf { field, value } => {
                format!("substringof({}, {field})", Literal::String(value.clone()))
            }
            Filter::And(parts) => join(parts, " and "),
            Filter::Or(parts) => join(parts, " or "),
            Filter::Not(inner) => format!("not ({})", inner.to_odata()),
        }
    }

    /// A filter from simple JSON: `{"Field": value}` means eq;
    /// `{"Field": {"ge": value, "lt": value}}` uses operators (eq, ne, gt, ge,
    /// lt, le, substringof); several fields are joined with `and`;
    /// `{"or": [ {...}, {...} ]}` and `{"and": [...]}` nest. String values
    /// shaped like a GUID become `guid'…'`, like `2024-01-31T00:00:00`
    /// become `datetime'…'`; anything else stays a string.
    pub fn from_json(v: &Value) -> Result<Filter, String> {
        let obj = v
            .as_object()
            .ok_or_else(|| "a JSON filter must be an object".to_string())?;
        let mut parts = Vec::new();
        for (k, val) in obj {
            match k.as_str() {
                "or" | "and" => {
                    let arr = val
                        .as_array()
                        .ok_or_else(|| format!("\"{k}\" takes an array of filters"))?;
                    let subs = arr
                        .iter()
                        .map(Filter::from_json)
                        .collect::<Result<Vec<_>, _>>()?;
                    if subs.is_empty() {
                        return Err(format!("\"{k}\" needs at least one filter"));
                    }
                    parts.push(if k == "or" {
                        Filter::Or(subs)
                    } else {
                        Filter::And(subs)
                    });
                }
                "not" => parts.push(Filter::from_json(val)?.not()),
                field => {
                    check_field(field)?;
                    match val {
                        Value::Object(ops) => {
                            for (op, arg) in ops {
                                if op == "substringof" {
                                    let s = arg.as_str().ok_or_else(|| {
                                        format!("substringof on {field} needs a string")
                                    })?;
                                    parts.push(Filter::substringof(field, s));
                                } else {
                                    let op = CmpOp::parse(op).ok_or_else(|| {
                                        format!("unknown operator \"{op}\" on {field} (use eq, ne, gt, ge, lt, le, substringof)")
                                    })?;
                                    parts.push(Filter::cmp(field, op, json_literal(arg)?));
                                }
                            }
                        }
                        other => parts.push(Filter::eq(field, json_literal(other)?)),
                    }
                }
            }
        }
        match parts.len() {
            0 => Err("empty JSON filter".to_string()),
            1 => Ok(parts.pop().expect("one part")),
            _ => Ok(Filter::And(parts)),
        }
    }
}

fn check_field(field: &str) -> Result<(), String> {
    if !field.is_empty()
        && field
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '/')
    {
        Ok(())
    } else {
        Err(format!("\"{field}\" is not a valid field name"))
    }
}

/// A literal from a JSON value, guessing GUIDs and dates inside strings.
pub fn json_literal(v: &Value) -> Result<Literal, String> {
    Ok(match v {
        Value::Null => Literal::Null,
        Value::Bool(b) => Literal::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Literal::Int(i),
            None => Literal::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => {
            if s.len() == 36 {
                if let Ok(g) = Uuid::parse_str(s) {
                    return Ok(Literal::Guid(g));
                }
            }
            if s.len() >= 16 && s.as_bytes().get(10) == Some(&b'T') {
                if let Some(d) = parse_datetime(s) {
                    return Ok(Literal::DateTime(d));
                }
            }
            Literal::String(s.clone())
        }
        _ => return Err("filter values must be strings, numbers, booleans or null".into()),
    })
}

fn join(parts: &[Filter], sep: &str) -> String {
    parts
        .iter()
        .map(|p| match p {
            Filter::And(_) | Filter::Or(_) => format!("({})", p.to_odata()),
            _ => p.to_odata(),
        })
        .collect::<Vec<_>>()
        .join(sep)
}

// ---------------------------------------------------------------- parser

/// A parsed `$filter` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Field(String),
    Lit(Literal),
    Cmp(Box<Expr>, CmpOp, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Call(String, Vec<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Lit(Literal),
    LParen,
    RParen,
    Comma,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let read_quoted = |i: &mut usize| -> Result<String, String> {
        // chars[*i] == '\''
        *i += 1;
        let mut v = String::new();
        loop {
            match chars.get(*i) {
                None => return Err("unterminated string literal".into()),
                Some('\'') if chars.get(*i + 1) == Some(&'\'') => {
                    v.push('\'');
                    *i += 2;
                }
                Some('\'') => {
                    *i += 1;
                    return Ok(v);
                }
                Some(c) => {
                    v.push(*c);
                    *i += 1;
                }
            }
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            out.push(Tok::LParen);
            i += 1;
        } else if c == ')' {
            out.push(Tok::RParen);
            i += 1;
        } else if c == ',' {
            out.push(Tok::Comma);
            i += 1;
        } else if c == '\'' {
            out.push(Tok::Lit(Literal::String(read_quoted(&mut i)?)));
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_digit() || matches!(chars[i], '.' | 'e' | 'E'))
            {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let mut is_double = text.contains(['.', 'e', 'E']);
            if i < chars.len() && matches!(chars[i], 'd' | 'D' | 'f' | 'F' | 'm' | 'M') {
                is_double = true;
                i += 1;
            } else if i < chars.len() && matches!(chars[i], 'l' | 'L') {
                i += 1;
            }
            let lit = if is_double {
                Literal::Double(text.parse().map_err(|_| format!("bad number {text}"))?)
            } else {
                Literal::Int(text.parse().map_err(|_| format!("bad number {text}"))?)
            };
            out.push(Tok::Lit(lit));
        } else if c.is_alphabetic() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '/' | '.' | '$'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if chars.get(i) == Some(&'\'') {
                let raw = read_quoted(&mut i)?;
                let lit = match word.as_str() {
                    "guid" => Literal::Guid(
                        Uuid::parse_str(&raw)
                            .map_err(|_| format!("bad guid literal guid'{raw}'"))?,
                    ),
                    "datetime" | "datetimeoffset" => Literal::DateTime(
                        parse_datetime(&raw)
                            .ok_or_else(|| format!("bad datetime literal '{raw}'"))?,
                    ),
                    "X" | "binary" | "time" => Literal::String(raw),
                    other => return Err(format!("unknown literal prefix {other}'…'")),
                };
                out.push(Tok::Lit(lit));
            } else {
                out.push(match word.as_str() {
                    "true" => Tok::Lit(Literal::Bool(true)),
                    "false" => Tok::Lit(Literal::Bool(false)),
                    "null" => Tok::Lit(Literal::Null),
                    _ => Tok::Ident(word),
                });
            }
        } else {
            return Err(format!("unexpected character '{c}' in $filter"));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(x)) if x == w)
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut l = self.and()?;
        while self.peek_word("or") {
            self.pos += 1;
            l = Expr::Or(Box::new(l), Box::new(self.and()?));
        }
        Ok(l)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut l = self.unary()?;
        while self.peek_word("and") {
            self.pos += 1;
            l = Expr::And(Box::new(l), Box::new(self.unary()?));
        }
        Ok(l)
    }
    fn unary(&mut self) -> Result<Expr, String> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        let l = self.primary()?;
        if let Some(Tok::Ident(w)) = self.peek() {
            if let Some(op) = CmpOp::parse(w) {
                self.pos += 1;
                let r = self.primary()?;
                return Ok(Expr::Cmp(Box::new(l), op, Box::new(r)));
            }
        }
        Ok(l)
    }
    fn primary(&mut self) -> Result<Expr, String> {
        match self.next() {
            Some(Tok::LParen) => {
                let e = self.or()?;
                match self.next() {
                    Some(Tok::RParen) => Ok(e),
                    _ => Err("missing ')'".into()),
                }
            }
            Some(Tok::Lit(l)) => Ok(Expr::Lit(l)),
            Some(Tok::Ident(name)) => {
                if self.peek() == Some(&Tok::LParen) {
                    self.pos += 1;
                    let mut args = Vec::new();
                    if self.peek() == Some(&Tok::RParen) {
                        self.pos += 1;
                    } else {
                        loop {
                            args.push(self.or()?);
                            match self.next() {
                                Some(Tok::Comma) => continue,
                                Some(Tok::RParen) => break,
                                _ => return Err(format!("bad arguments to {name}()")),
                            }
                        }
                    }
                    Ok(Expr::Call(name, args))
                } else {
                    Ok(Expr::Field(name))
                }
            }
            Some(t) => Err(format!("unexpected {t:?} in $filter")),
            None => Err("unexpected end of $filter".into()),
        }
    }
}

/// Parses a `$filter` (or a register `Condition`).
pub fn parse_filter(s: &str) -> Result<Expr, String> {
    let toks = lex(s)?;
    if toks.is_empty() {
        return Err("empty $filter".into());
    }
    let mut p = Parser { toks, pos: 0 };
    let e = p.or()?;
    if p.pos < p.toks.len() {
        return Err(format!("unexpected {:?} in $filter", p.toks[p.pos]));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_produces_v3_literals() {
        let g = Uuid::parse_str("a1b2c3d4-0000-0000-0000-000000000001").unwrap();
        let d = parse_datetime("2024-03-01T00:00:00").unwrap();
        let f = Filter::eq("Контрагент_Key", g)
            .and(Filter::ge("Date", d))
            .and(Filter::substringof("Description", "О'Кей").or(Filter::eq("Posted", true)));
        assert_eq!(
            f.to_odata(),
            "Контрагент_Key eq guid'a1b2c3d4-0000-0000-0000-000000000001' and Date ge datetime'2024-03-01T00:00:00' and (substringof('О''Кей', Description) or Posted eq true)"
        );
        assert_eq!(Filter::gt("Цена", 10.0).to_odata(), "Цена gt 10.0");
    }

    #[test]
    fn builder_output_parses_back() {
        let f = Filter::eq("Description", "Молоко 'Весёлый молочник'").and(
            Filter::lt("Количество", 5)
                .or(Filter::ne("DeletionMark", true))
                .not(),
        );
        let e = parse_filter(&f.to_odata()).unwrap();
        match e {
            Expr::And(l, r) => {
                assert_eq!(
                    *l,
                    Expr::Cmp(
                        Box::new(Expr::Field("Description".into())),
                        CmpOp::Eq,
                        Box::new(Expr::Lit(Literal::String(
                            "Молоко 'Весёлый молочник'".into()
                        )))
                    )
                );
                assert!(matches!(*r, Expr::Not(_)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn json_filter() {
        let v = serde_json::json!({
            "Posted": true,
            "Date": {"ge": "2024-01-01T00:00:00"},
            "Контрагент_Key": "a1b2c3d4-0000-0000-0000-000000000001",
            "Description": {"substringof": "ООО"}
        });
        let s = Filter::from_json(&v).unwrap().to_odata();
        assert!(s.contains("Date ge datetime'2024-01-01T00:00:00'"), "{s}");
        assert!(s.contains("Контрагент_Key eq guid'a1b2c3d4-0000-0000-0000-000000000001'"));
        assert!(s.contains("substringof('ООО', Description)"));
        assert!(s.contains("Posted eq true"));
        assert!(Filter::from_json(&serde_json::json!({"A": {"like": 1}})).is_err());
        assert!(Filter::from_json(&serde_json::json!({"A; drop": 1})).is_err());
    }

    #[test]
    fn parser_rejects_garbage() {
        assert!(parse_filter("Description eq").is_err());
        assert!(parse_filter("guid'nope' eq Ref_Key").is_err());
        assert!(parse_filter("(A eq 1").is_err());
        assert!(parse_filter("A eq 1 B").is_err());
    }
}
