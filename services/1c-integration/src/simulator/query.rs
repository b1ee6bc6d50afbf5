//! `$filter` evaluation, `$orderby`, `$select`, paging over simulator rows.

use std::cmp::Ordering;

use serde_json::Value;

use super::store::{canon, Row};
use crate::odata::expr::{CmpOp, Expr, Literal, DATETIME_FORMAT};
use crate::odata::metadata::{Metadata, Property};

/// A value during evaluation. Strings compare case-insensitively, as 1C's
/// DBMS collation does.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
}

fn lit(l: &Literal) -> V {
    match l {
        Literal::Null => V::Null,
        Literal::Bool(b) => V::Bool(*b),
        Literal::Int(i) => V::Num(*i as f64),
        Literal::Double(d) => V::Num(*d),
        Literal::String(s) => V::Str(s.clone()),
        Literal::Guid(g) => V::Str(g.to_string()),
        Literal::DateTime(d) => V::Str(d.format(DATETIME_FORMAT).to_string()),
    }
}

fn from_json(v: Option<&Value>) -> V {
    match v {
        None | Some(Value::Null) => V::Null,
        Some(Value::Bool(b)) => V::Bool(*b),
        Some(Value::Number(n)) => V::Num(n.as_f64().unwrap_or(0.0)),
        Some(Value::String(s)) => V::Str(s.clone()),
        Some(other) => V::Str(other.to_string()),
    }
}

fn cmp_values(a: &V, b: &V) -> Option<Ordering> {
    match (a, b) {
        (V::Num(x), V::Num(y)) => x.partial_cmp(y),
        (V::Num(x), V::Str(s)) => s.parse::<f64>().ok().and_then(|y| x.partial_cmp(&y)),
        (V::Str(s), V::Num(y)) => s.parse::<f64>().ok().and_then(|x| x.partial_cmp(y)),
        (V::Str(x), V::Str(y)) => Some(x.to_lowercase().cmp(&y.to_lowercase())),
        (V::Bool(x), V::Bool(y)) => Some(x.cmp(y)),
        (V::Null, V::Null) => Some(Ordering::Equal),
        _ => None,
    }
}

fn as_str(v: &V) -> Result<String, String> {
    match v {
        V::Str(s) => Ok(s.clone()),
        V::Null => Ok(String::new()),
        V::Num(n) => Ok(n.to_string()),
        V::Bool(b) => Ok(b.to_string()),
    }
}

fn truthy(v: &V) -> Result<bool, String> {
    match v {
        V::Bool(b) => Ok(*b),
        V::Null => Ok(false),
        other => Err(format!(
            "ожидалось логическое выражение, получено {other:?}"
        )),
    }
}

fn eval(e: &Expr, row: &Row, props: &[Property]) -> Result<V, String> {
    Ok(match e {
        Expr::Lit(l) => lit(l),
        Expr::Field(f) => {
            if !props.iter().any(|p| &p.name == f) {
                return Err(format!("Неизвестное свойство \"{f}\" в $filter"));
            }
            from_json(row.get(f))
        }
        Expr::And(a, b) => {
            V::Bool(truthy(&eval(a, row, props)?)? && truthy(&eval(b, row, props)?)?)
        }
        Expr::Or(a, b) => V::Bool(truthy(&eval(a, row, props)?)? || truthy(&eval(b, row, props)?)?),
        Expr::Not(a) => V::Bool(!truthy(&eval(a, row, props)?)?),
        Expr::Cmp(a, op, b) => {
            let (x, y) = (eval(a, row, props)?, eval(b, row, props)?);
            let ord = cmp_values(&x, &y);
            V::Bool(match op {
                CmpOp::Eq => ord == Some(Ordering::Equal),
                CmpOp::Ne => ord != Some(Ordering::Equal),
                CmpOp::Gt => ord == Some(Ordering::Greater),
                CmpOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
                CmpOp::Lt => ord == Some(Ordering::Less),
                CmpOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
            })
        }
        Expr::Call(name, args) => {
            let vals = args
                .iter()
                .map(|a| eval(a, row, props))
                .collect::<Result<Vec<_>, _>>()?;
            let s = |i: usize| -> Result<String, String> {
                vals.get(i)
                    .ok_or_else(|| format!("{name}(): не хватает аргументов"))
                    .and_then(as_str)
            };
            match name.as_str() {
                "substringof" => V::Bool(s(1)?.to_lowercase().contains(&s(0)?.to_lowercase())),
                "startswith" => V::Bool(s(0)?.to_lowercase().starts_with(&s(1)?.to_lowercase())),
                "endswith" => V::Bool(s(0)?.to_lowercase().ends_with(&s(1)?.to_lowercase())),
                "tolower" => V::Str(s(0)?.to_lowercase()),
                "toupper" => V::Str(s(0)?.to_uppercase()),
                "length" => V::Num(s(0)?.chars().count() as f64),
                "trim" => V::Str(s(0)?.trim().to_string()),
                other => return Err(format!("Функция {other} не поддерживается в $filter")),
            }
        }
    })
}

pub fn matches(e: &Expr, row: &Row, props: &[Property]) -> Result<bool, String> {
    truthy(&eval(e, row, props)?)
}

/// `$orderby=A desc,B` → [(A, true), (B, false)].
pub fn parse_orderby(s: &str, props: &[Property]) -> Result<Vec<(String, bool)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut words = part.split_whitespace();
        let field = words.next().unwrap_or_default().to_string();
        let desc = match words.next() {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => return Err(format!("Неверное направление сортировки {other}")),
        };
        if !props.iter().any(|p| p.name == field) {
            return Err(format!("Неизвестное свойство \"{field}\" в $orderby"));
        }
        out.push((field, desc));
    }
    Ok(out)
}

pub fn sort(rows: &mut [Row], order: &[(String, bool)]) {
    rows.sort_by(|a, b| {
        for (f, desc) in order {
            let o = cmp_values(&from_json(a.get(f)), &from_json(b.get(f))).unwrap_or_else(|| {
                canon(a.get(f).unwrap_or(&Value::Null))
                    .cmp(&canon(b.get(f).unwrap_or(&Value::Null)))
            });
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
}

pub fn parse_select(s: &str, props: &[Property]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for f in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if f == "*" {
            return Ok(props.iter().map(|p| p.name.clone()).collect());
        }
        if !props.iter().any(|p| p.name == f) {
            return Err(format!("Неизвестное свойство \"{f}\" в $select"));
        }
        out.push(f.to_string());
    }
    Ok(out)
}

/// A JSON value whose objects keep metadata property order when serialised
/// (serde_json's map would sort the keys).
#[derive(Debug, Clone)]
pub enum Out {
    Obj(Vec<(String, Out)>),
    Arr(Vec<Out>),
    Val(Value),
}

impl serde::Serialize for Out {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Out::Val(v) => v.serialize(s),
            Out::Arr(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for x in a {
                    seq.serialize_element(x)?;
                }
                seq.end()
            }
            Out::Obj(o) => {
                let mut m = s.serialize_map(Some(o.len()))?;
                for (k, v) in o {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

impl Out {
    pub fn push(&mut self, k: impl Into<String>, v: Out) {
        if let Out::Obj(o) = self {
            o.push((k.into(), v));
        }
    }
    pub fn insert_front(&mut self, k: impl Into<String>, v: Out) {
        if let Out::Obj(o) = self {
            o.insert(0, (k.into(), v));
        }
    }
}

/// The row with properties in metadata order, limited to `select`; nested
/// collections (tabular sections) ordered by their row type.
pub fn project(meta: &Metadata, row: &Row, props: &[Property], select: Option<&[String]>) -> Out {
    let mut out = Vec::new();
    for p in props {
        if select.is_none_or(|s| s.contains(&p.name)) {
            if let Some(v) = row.get(&p.name) {
                let o = match (p.collection_of().and_then(|t| meta.properties_of(t)), v) {
                    (Some(row_props), Value::Array(lines)) => Out::Arr(
                        lines
                            .iter()
                            .map(|l| match l.as_object() {
                                Some(l) => project(meta, l, row_props, None),
                                None => Out::Val(l.clone()),
                            })
                            .collect(),
                    ),
                    _ => Out::Val(v.clone()),
                };
                out.push((p.name.clone(), o));
            }
        }
    }
    Out::Obj(out)
}
