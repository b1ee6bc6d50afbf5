//! The simulator's infobase: catalogs, documents and an information register
//! stored as JSON objects shaped exactly as 1C's OData shows them; tabular
//! section sets and the accumulation register are derived views (register
//! movements come from posted documents). Optionally persisted to a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::odata::expr::{parse_datetime, DATETIME_FORMAT, EMPTY_DATE, EMPTY_GUID};
use crate::odata::metadata::{unqualify, Metadata, Property, SetKind};

pub type Row = Map<String, Value>;

/// Which documents move which accumulation register, and how.
pub struct MovementRule {
    pub document: &'static str,
    pub section: &'static str,
    pub register: &'static str,
    pub record_type: &'static str,
}

pub const MOVEMENT_RULES: &[MovementRule] = &[
    MovementRule {
        document: "Document_ПоступлениеТоваровУслуг",
        section: "Товары",
        register: "AccumulationRegister_ОстаткиТоваров",
        record_type: "Receipt",
    },
    MovementRule {
        document: "Document_РеализацияТоваровУслуг",
        section: "Товары",
        register: "AccumulationRegister_ОстаткиТоваров",
        record_type: "Expense",
    },
];

/// Fields a register row carries that are not dimensions or resources.
pub const REGISTER_SERVICE_FIELDS: &[&str] = &[
    "Recorder",
    "Recorder_Type",
    "Period",
    "LineNumber",
    "Active",
    "RecordType",
];

#[derive(Debug)]
pub enum StoreError {
    NotFound(String),
    BadRequest(String),
    Conflict(String),
    PreconditionFailed(String),
    Internal(String),
}

#[derive(Serialize, Deserialize, Default, Clone)]
pub struct Store {
    /// Stored sets (catalogs, documents, information registers).
    pub sets: BTreeMap<String, Vec<Row>>,
    pub version_counter: u64,
    pub number_counters: BTreeMap<String, u64>,
    #[serde(skip)]
    pub state_file: Option<PathBuf>,
}

pub fn now_1c() -> String {
    chrono::Local::now()
        .naive_local()
        .format(DATETIME_FORMAT)
        .to_string()
}

/// Canonical comparable text of a JSON scalar (GUIDs lower-cased).
pub fn canon(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_lowercase(),
        Value::Null => String::new(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// A number as 1C writes it: whole values without a fraction.
pub fn num(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

/// Default value of a property as 1C shows an empty field.
pub fn default_for(p: &Property) -> Value {
    if p.collection_of().is_some() {
        return json!([]);
    }
    match p.type_name.as_str() {
        "Edm.Guid" => json!(EMPTY_GUID),
        "Edm.Boolean" => json!(false),
        "Edm.Double" | "Edm.Decimal" | "Edm.Single" | "Edm.Int32" | "Edm.Int16" => json!(0),
        "Edm.Int64" => json!("0"),
        "Edm.DateTime" => json!(EMPTY_DATE),
        _ => json!(""),
    }
}

/// Converts an incoming value to the stored representation for its type.
pub fn coerce(p: &Property, v: &Value) -> Result<Value, String> {
    let bad = || {
        format!(
            "Неверное значение свойства {}: ожидается {}",
            p.name, p.type_name
        )
    };
    if v.is_null() {
        return Ok(default_for(p));
    }
    Ok(match p.type_name.as_str() {
        "Edm.Guid" => {
            let s = v.as_str().ok_or_else(bad)?;
            json!(Uuid::parse_str(s).map_err(|_| bad())?.to_string())
        }
        "Edm.Boolean" => json!(v.as_bool().ok_or_else(bad)?),
        "Edm.Double" | "Edm.Decimal" | "Edm.Single" => match v {
            Value::Number(n) => num(n.as_f64().ok_or_else(bad)?),
            Value::String(s) => num(s.parse::<f64>().map_err(|_| bad())?),
            _ => return Err(bad()),
        },
        "Edm.Int32" | "Edm.Int16" => json!(match v {
            Value::Number(n) => n.as_i64().ok_or_else(bad)?,
            Value::String(s) => s.parse::<i64>().map_err(|_| bad())?,
            _ => return Err(bad()),
        }),
        "Edm.Int64" => json!(match v {
            Value::Number(n) => n.as_i64().ok_or_else(bad)?,
            Value::String(s) => s.parse::<i64>().map_err(|_| bad())?,
            _ => return Err(bad()),
        }
        .to_string()),
        "Edm.DateTime" => {
            let s = v.as_str().ok_or_else(bad)?;
            json!(parse_datetime(s)
                .ok_or_else(bad)?
                .format(DATETIME_FORMAT)
                .to_string())
        }
        _ => json!(v.as_str().ok_or_else(bad)?),
    })
}

impl Store {
    pub fn load_or_seed(meta: &Metadata, state_file: Option<PathBuf>) -> anyhow::Result<Store> {
        if let Some(path) = &state_file {
            if path.exists() {
                let text = std::fs::read_to_string(path)?;
                let mut s: Store = serde_json::from_str(&text).map_err(|e| {
                    anyhow::anyhow!("state file {} is corrupt: {e}", path.display())
                })?;
                s.state_file = state_file;
                return Ok(s);
            }
        }
        let mut s = Store {
            state_file,
            ..Default::default()
        };
        super::seed::seed(&mut s, meta).map_err(|e| anyhow::anyhow!("seeding failed: {e:?}"))?;
        s.persist().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(s)
    }

    /// Writes the state file atomically (temp file + rename).
    pub fn persist(&self) -> Result<(), StoreError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let text = serde_json::to_vec(self).map_err(|e| StoreError::Internal(e.to_string()))?;
        let tmp = tmp_path(path);
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| StoreError::Internal(format!("cannot save state: {e}")))
    }

    pub fn next_version(&mut self) -> String {
        self.version_counter += 1;
        base64::engine::general_purpose::STANDARD.encode(self.version_counter.to_be_bytes())
    }

    fn next_number(&mut self, set: &str, kind: SetKind) -> String {
        let n = self.number_counters.entry(set.to_string()).or_insert(0);
        *n += 1;
        match kind {
            SetKind::Document => format!("0000-{:06}", *n),
            _ => format!("00-{:08}", *n),
        }
    }

    /// Rows of any set: stored, or derived for tabular sections and
    /// accumulation registers.
    pub fn rows(&self, meta: &Metadata, set: &str) -> Result<Vec<Row>, StoreError> {
        let es = meta
            .set(set)
            .ok_or_else(|| StoreError::NotFound(format!("Не найден набор сущностей {set}")))?;
        match es.kind {
            SetKind::TabularSection => {
                let owner = es.owner.as_deref().unwrap_or_default();
                let section = es.section.as_deref().unwrap_or_default();
                Ok(self
                    .sets
                    .get(owner)
                    .into_iter()
                    .flatten()
                    .flat_map(|doc| {
                        doc.get(section)
                            .and_then(|v| v.as_array())
                            .cloned()
                            .unwrap_or_default()
                    })
                    .filter_map(|v| v.as_object().cloned())
                    .collect())
            }
            SetKind::AccumulationRegister => {
                let mut by_recorder: Vec<Row> = Vec::new();
                for m in self.movements(meta, set) {
                    let rec = m.get("Recorder").cloned().unwrap_or_default();
                    if let Some(rs) = by_recorder
                        .iter_mut()
                        .find(|r| r.get("Recorder") == Some(&rec))
                    {
                        if let Some(Value::Array(a)) = rs.get_mut("RecordSet") {
                            a.push(Value::Object(m));
                        }
                    } else {
                        let mut rs = Row::new();
                        rs.insert("Recorder".into(), rec);
                        rs.insert(
                            "Recorder_Type".into(),
                            m.get("Recorder_Type").cloned().unwrap_or_default(),
                        );
                        rs.insert("RecordSet".into(), json!([m]));
                        by_recorder.push(rs);
                    }
                }
                Ok(by_recorder)
            }
            _ => Ok(self.sets.get(set).cloned().unwrap_or_default()),
        }
    }

    /// Movements of an accumulation register from posted documents.
    pub fn movements(&self, meta: &Metadata, register: &str) -> Vec<Row> {
        let row_fields: Vec<Property> = meta
            .entity_type_of(register)
            .and_then(|t| t.property("RecordSet"))
            .and_then(|p| p.collection_of())
            .and_then(|t| meta.properties_of(t))
            .map(|p| p.to_vec())
            .unwrap_or_default();
        let mut out = Vec::new();
        for rule in MOVEMENT_RULES.iter().filter(|r| r.register == register) {
            let ty = format!("{}.{}", meta.namespace, rule.document);
            for doc in self.sets.get(rule.document).into_iter().flatten() {
                if doc.get("Posted") != Some(&json!(true)) {
                    continue;
                }
                let lines = doc
                    .get(rule.section)
                    .and_then(|v| v.as_array())
                    .cloned()
                    .unwrap_or_default();
                for (i, line) in lines.iter().enumerate() {
                    let line = line.as_object().cloned().unwrap_or_default();
                    let mut m = Row::new();
                    for p in &row_fields {
                        let v = match p.name.as_str() {
                            "Recorder" => doc.get("Ref_Key").cloned().unwrap_or_default(),
                            "Recorder_Type" => json!(ty),
                            "Period" => doc.get("Date").cloned().unwrap_or(json!(EMPTY_DATE)),
                            "LineNumber" => json!((i + 1).to_string()),
                            "Active" => json!(true),
                            "RecordType" => json!(rule.record_type),
                            f => line
                                .get(f)
                                .or_else(|| doc.get(f))
                                .cloned()
                                .unwrap_or_else(|| default_for(p)),
                        };
                        m.insert(p.name.clone(), v);
                    }
                    out.push(m);
                }
            }
        }
        out
    }

    pub fn is_stored(meta: &Metadata, set: &str) -> bool {
        meta.set(set).is_some_and(|s| {
            !matches!(
                s.kind,
                SetKind::TabularSection | SetKind::AccumulationRegister | SetKind::Other
            )
        })
    }

    fn position(&self, set: &str, key: &[(String, Value)]) -> Option<usize> {
        self.sets.get(set)?.iter().position(|row| {
            key.iter()
                .all(|(k, v)| row.get(k).map(canon) == Some(canon(v)))
        })
    }

    pub fn get(
        &self,
        meta: &Metadata,
        set: &str,
        key: &[(String, Value)],
    ) -> Result<Row, StoreError> {
        self.rows(meta, set)?
            .into_iter()
            .find(|row| {
                key.iter()
                    .all(|(k, v)| row.get(k).map(canon) == Some(canon(v)))
            })
            .ok_or_else(|| not_found(set, key))
    }

    /// Builds a full object from defaults + input, validating every field.
    fn normalize(
        meta: &Metadata,
        set: &str,
        base: Option<&Row>,
        input: &Row,
    ) -> Result<Row, StoreError> {
        let et = meta
            .entity_type_of(set)
            .ok_or_else(|| StoreError::NotFound(format!("Не найден набор сущностей {set}")))?;
        let mut row = match base {
            Some(b) => b.clone(),
            None => et
                .properties
                .iter()
                .map(|p| (p.name.clone(), default_for(p)))
                .collect(),
        };
        for (k, v) in input {
            if k.starts_with("odata.") || k.contains('@') {
                continue;
            }
            let p = et.property(k).ok_or_else(|| {
                StoreError::BadRequest(format!("Неизвестное свойство \"{k}\" у типа {}", et.name))
            })?;
            if matches!(
                k.as_str(),
                "DataVersion" | "Predefined" | "PredefinedDataName"
            ) {
                continue;
            }
            let value = match p.collection_of() {
                Some(row_type) => {
                    let props = meta.properties_of(row_type).unwrap_or_default();
                    let arr = v.as_array().ok_or_else(|| {
                        StoreError::BadRequest(format!("Свойство {k} должно быть массивом строк"))
                    })?;
                    let mut lines = Vec::new();
                    for (i, line) in arr.iter().enumerate() {
                        let line = line.as_object().ok_or_else(|| {
                            StoreError::BadRequest(format!(
                                "Строка {} табличной части {k} должна быть объектом",
                                i + 1
                            ))
                        })?;
                        let mut out: Row = props
                            .iter()
                            .map(|p| (p.name.clone(), default_for(p)))
                            .collect();
                        for (lk, lv) in line {
                            let lp = props.iter().find(|p| &p.name == lk).ok_or_else(|| {
                                StoreError::BadRequest(format!(
                                    "Неизвестное свойство \"{lk}\" в табличной части {k}"
                                ))
                            })?;
                            out.insert(lk.clone(), coerce(lp, lv).map_err(StoreError::BadRequest)?);
                        }
                        out.insert("LineNumber".into(), json!((i + 1).to_string()));
                        lines.push(Value::Object(out));
                    }
                    Value::Array(lines)
                }
                None => coerce(p, v).map_err(StoreError::BadRequest)?,
            };
            row.insert(k.clone(), value);
        }
        Ok(row)
    }

    /// Business rules 1C objects apply before writing.
    fn before_write(
        &mut self,
        meta: &Metadata,
        set: &str,
        row: &mut Row,
    ) -> Result<(), StoreError> {
        let kind = SetKind::from_prefix(set);
        let key = row
            .get("Ref_Key")
            .and_then(|v| v.as_str())
            .unwrap_or(EMPTY_GUID)
            .to_string();
        if kind == SetKind::Document {
            let mut total = 0.0;
            let et = meta.entity_type_of(set).cloned().unwrap_or_default();
            for p in et.properties.iter().filter(|p| p.collection_of().is_some()) {
                if let Some(Value::Array(lines)) = row.get_mut(&p.name) {
                    for line in lines.iter_mut().filter_map(|l| l.as_object_mut()) {
                        line.insert("Ref_Key".into(), json!(key));
                        let qty = line
                            .get("Количество")
                            .and_then(|v| v.as_f64())
                            .unwrap_or(0.0);
                        let price = line.get("Цена").and_then(|v| v.as_f64()).unwrap_or(0.0);
                        let mut sum = line.get("Сумма").and_then(|v| v.as_f64()).unwrap_or(0.0);
                        if sum == 0.0 && qty * price != 0.0 {
                            sum = (qty * price * 100.0).round() / 100.0;
                            line.insert("Сумма".into(), num(sum));
                        }
                        total += sum;
                    }
                }
            }
            if et.property("СуммаДокумента").is_some() {
                row.insert(
                    "СуммаДокумента".into(),
                    num((total * 100.0).round() / 100.0),
                );
            }
            if row
                .get("Number")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .is_empty()
            {
                let n = self.next_number(set, kind);
                row.insert("Number".into(), json!(n));
            }
            if row.get("Date").and_then(|v| v.as_str()) == Some(EMPTY_DATE) {
                row.insert("Date".into(), json!(now_1c()));
            }
            if row.get("Posted") == Some(&json!(true))
                && row.get("DeletionMark") == Some(&json!(true))
            {
                row.insert("Posted".into(), json!(false));
            }
        }
        if kind == SetKind::Catalog
            && row
                .get("Code")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .is_empty()
            && row.contains_key("Code")
        {
            let n = self.next_number(set, kind);
            row.insert("Code".into(), json!(n));
        }
        if row.contains_key("DataVersion") {
            let v = self.next_version();
            row.insert("DataVersion".into(), json!(v));
        }
        Ok(())
    }

    pub fn create(&mut self, meta: &Metadata, set: &str, input: &Row) -> Result<Row, StoreError> {
        if !Self::is_stored(meta, set) {
            return Err(read_only(set));
        }
        let et = meta.entity_type_of(set).cloned().unwrap_or_default();
        let mut row = Self::normalize(meta, set, None, input)?;
        if et.keys == ["Ref_Key"] {
            let given = row
                .get("Ref_Key")
                .and_then(|v| v.as_str())
                .unwrap_or(EMPTY_GUID);
            if given == EMPTY_GUID {
                row.insert("Ref_Key".into(), json!(Uuid::new_v4().to_string()));
            }
        }
        let key: Vec<(String, Value)> = et
            .keys
            .iter()
            .map(|k| (k.clone(), row.get(k).cloned().unwrap_or_default()))
            .collect();
        if self.position(set, &key).is_some() {
            return Err(StoreError::Conflict(format!(
                "Запись с таким ключом уже существует: {set}({})",
                key_text(&key)
            )));
        }
        self.before_write(meta, set, &mut row)?;
        self.sets
            .entry(set.to_string())
            .or_default()
            .push(row.clone());
        self.persist()?;
        Ok(row)
    }

    pub fn update(
        &mut self,
        meta: &Metadata,
        set: &str,
        key: &[(String, Value)],
        input: &Row,
        if_match: Option<&str>,
    ) -> Result<Row, StoreError> {
        if !Self::is_stored(meta, set) {
            return Err(read_only(set));
        }
        let idx = self.position(set, key).ok_or_else(|| not_found(set, key))?;
        let current = self.sets[set][idx].clone();
        check_if_match(&current, if_match)?;
        for k in meta
            .entity_type_of(set)
            .map(|t| t.keys.clone())
            .unwrap_or_default()
        {
            if let Some(v) = input.get(&k) {
                if current.get(&k).map(canon) != Some(canon(v)) {
                    return Err(StoreError::BadRequest(format!(
                        "Ключевое свойство {k} изменять нельзя"
                    )));
                }
            }
        }
        let mut row = Self::normalize(meta, set, Some(&current), input)?;
        self.before_write(meta, set, &mut row)?;
        self.sets.get_mut(set).expect("set exists")[idx] = row.clone();
        self.persist()?;
        Ok(row)
    }

    pub fn delete(
        &mut self,
        meta: &Metadata,
        set: &str,
        key: &[(String, Value)],
        if_match: Option<&str>,
    ) -> Result<(), StoreError> {
        if !Self::is_stored(meta, set) {
            return Err(read_only(set));
        }
        let idx = self.position(set, key).ok_or_else(|| not_found(set, key))?;
        check_if_match(&self.sets[set][idx], if_match)?;
        self.sets.get_mut(set).expect("set exists").remove(idx);
        self.persist()
    }

    /// `Post` / `Unpost` of a document.
    pub fn set_posted(
        &mut self,
        meta: &Metadata,
        set: &str,
        key: &[(String, Value)],
        posted: bool,
    ) -> Result<(), StoreError> {
        if SetKind::from_prefix(set) != SetKind::Document
            || meta.set(set).map(|s| s.kind) != Some(SetKind::Document)
        {
            return Err(StoreError::BadRequest(format!(
                "Проведение возможно только для документов, {set} не является документом"
            )));
        }
        let idx = self.position(set, key).ok_or_else(|| not_found(set, key))?;
        let mut row = self.sets[set][idx].clone();
        if posted && row.get("DeletionMark") == Some(&json!(true)) {
            return Err(StoreError::BadRequest(format!(
                "Помеченный на удаление документ не может быть проведен: {set}({})",
                key_text(key)
            )));
        }
        row.insert("Posted".into(), json!(posted));
        self.before_write(meta, set, &mut row)?;
        self.sets.get_mut(set).expect("set exists")[idx] = row;
        self.persist()
    }

    /// Register record types helper: dimensions and resources of a register.
    pub fn register_fields(meta: &Metadata, register: &str) -> (Vec<Property>, Vec<Property>) {
        let fields: Vec<Property> = meta
            .entity_type_of(register)
            .and_then(|t| t.property("RecordSet"))
            .and_then(|p| p.collection_of())
            .and_then(|t| meta.properties_of(t))
            .map(|p| p.to_vec())
            .unwrap_or_default();
        let dims = fields
            .iter()
            .filter(|p| {
                !REGISTER_SERVICE_FIELDS.contains(&p.name.as_str()) && p.type_name == "Edm.Guid"
            })
            .cloned()
            .collect();
        let res = fields
            .iter()
            .filter(|p| {
                !REGISTER_SERVICE_FIELDS.contains(&p.name.as_str()) && p.type_name == "Edm.Double"
            })
            .cloned()
            .collect();
        (dims, res)
    }

    /// Entity set type name as `Recorder_Type` shows it.
    pub fn type_name(meta: &Metadata, set: &str) -> String {
        meta.set(set)
            .map(|s| format!("{}.{}", meta.namespace, unqualify(&s.entity_type)))
            .unwrap_or_default()
    }
}

fn tmp_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

fn check_if_match(row: &Row, if_match: Option<&str>) -> Result<(), StoreError> {
    let Some(tag) = if_match else { return Ok(()) };
    let tag = tag.trim();
    if tag == "*" {
        return Ok(());
    }
    let tag = tag
        .trim_start_matches("W/")
        .trim_matches('"')
        .trim_matches('\'');
    let current = row
        .get("DataVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if tag != current {
        return Err(StoreError::PreconditionFailed(format!(
            "Версия данных объекта изменилась (DataVersion {current}, в запросе {tag}): объект изменен другим пользователем"
        )));
    }
    Ok(())
}

/// A stored value written back as an OData literal.
fn value_literal(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() == 36 && Uuid::parse_str(s).is_ok() => format!("guid'{s}'"),
        Value::String(s) if parse_datetime(s).is_some() && s.as_bytes().get(10) == Some(&b'T') => {
            format!("datetime'{s}'")
        }
        Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        other => other.to_string(),
    }
}

pub fn key_text(key: &[(String, Value)]) -> String {
    if key.len() == 1 && key[0].0 == "Ref_Key" {
        return format!("guid'{}'", canon(&key[0].1));
    }
    key.iter()
        .map(|(k, v)| format!("{k}={}", value_literal(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn not_found(set: &str, key: &[(String, Value)]) -> StoreError {
    StoreError::NotFound(format!("Не найден объект {set}({})", key_text(key)))
}

fn read_only(set: &str) -> StoreError {
    StoreError::BadRequest(format!("Набор сущностей {set} доступен только для чтения"))
}
