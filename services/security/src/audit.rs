//! The audit hash chain: canonical JSON, entry hashing and chain verification.
//!
//! Every entry carries a contiguous sequence number (`seq`, starting at 1) and
//! `hash = sha256(prev_hash || canonical_json(entry))`, where `prev_hash` is the
//! previous entry's hash (64 zeros for the first entry) and the canonical JSON
//! has object keys sorted and no insignificant whitespace. Editing a row breaks
//! its hash; deleting a row leaves a gap in `seq` (and breaks `prev_hash`);
//! deleting the tail is caught by comparing with the chain head record.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Serialises a JSON value canonically: object keys sorted by their UTF-8
/// bytes, no whitespace, strings escaped by serde_json. Independent of
/// serde_json's `preserve_order` feature.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Formats a timestamp the way it is hashed (microseconds, `Z`), matching the
/// precision PostgreSQL `timestamptz` keeps.
pub fn format_ts(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Truncates a timestamp to microseconds so that what is hashed at append time
/// equals what PostgreSQL returns later.
pub fn truncate_micros(ts: DateTime<Utc>) -> DateTime<Utc> {
    let micros = ts.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(ts)
}

/// The hashed content of one audit entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntryContent {
    pub seq: i64,
    pub ts: DateTime<Utc>,
    pub category: String,
    pub actor: String,
    pub action: String,
    pub resource: String,
    pub ip: Option<String>,
    pub detail: Value,
}

impl EntryContent {
    /// The canonical JSON document that is hashed.
    pub fn canonical(&self) -> String {
        let doc = serde_json::json!({
            "seq": self.seq,
            "ts": format_ts(&self.ts),
            "category": self.category,
            "actor": self.actor,
            "action": self.action,
            "resource": self.resource,
            "ip": self.ip,
            "detail": self.detail,
        });
        canonical_json(&doc)
    }

    /// `sha256(prev_hash || canonical_json(entry))`, hex encoded.
    pub fn hash(&self, prev_hash: &str) -> String {
        let mut h = Sha256::new();
        h.update(prev_hash.as_bytes());
        h.update(self.canonical().as_bytes());
        hex::encode(h.finalize())
    }
}

/// One stored row, as read back for verification.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub content: EntryContent,
    pub prev_hash: String,
    pub hash: String,
}

/// Why the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakReason {
    /// Entries with these sequence numbers are missing (deleted rows).
    MissingEntries { from: i64, to: i64 },
    /// The entry's content does not match its stored hash (edited row).
    HashMismatch,
    /// The entry's `prev_hash` is not the previous entry's hash.
    PrevHashMismatch,
    /// The chain ends before the recorded head (tail rows deleted).
    TruncatedTail { head_seq: i64 },
    /// The recorded head hash differs from the last entry's hash.
    HeadMismatch,
}

/// The first break found in a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainBreak {
    /// Sequence number of the first broken (or first missing) entry.
    pub first_broken_id: i64,
    pub reason: BreakReason,
}

/// Incremental verifier: feed entries in `seq` order, then call `finish`.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: i64,
    prev_hash: String,
    checked: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    pub fn new() -> Self {
        Self {
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_string(),
            checked: 0,
        }
    }

    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Checks the next entry; returns the first break, if this entry has one.
    pub fn push(&mut self, e: &StoredEntry) -> Result<(), ChainBreak> {
        let seq = e.content.seq;
        if seq != self.expected_seq {
            return Err(ChainBreak {
                first_broken_id: self.expected_seq,
                reason: BreakReason::MissingEntries {
                    from: self.expected_seq,
                    to: seq - 1,
                },
            });
        }
        if e.prev_hash != self.prev_hash {
            return Err(ChainBreak {
                first_broken_id: seq,
                reason: BreakReason::PrevHashMismatch,
            });
        }
        if e.content.hash(&e.prev_hash) != e.hash {
            return Err(ChainBreak {
                first_broken_id: seq,
                reason: BreakReason::HashMismatch,
            });
        }
        self.prev_hash = e.hash.clone();
        self.expected_seq += 1;
        self.checked += 1;
        Ok(())
    }

    /// Compares the end of the chain with the recorded head (`None` when no
    /// entry was ever appended).
    pub fn finish(&self, head: Option<(i64, &str)>) -> Result<(), ChainBreak> {
        let last_seq = self.expected_seq - 1;
        match head {
            None if last_seq == 0 => Ok(()),
            None => Err(ChainBreak {
                first_broken_id: 1,
                reason: BreakReason::HeadMismatch,
            }),
            Some((head_seq, _)) if head_seq > last_seq => Err(ChainBreak {
                first_broken_id: last_seq + 1,
                reason: BreakReason::TruncatedTail { head_seq },
            }),
            Some((head_seq, head_hash)) if head_seq != last_seq || head_hash != self.prev_hash => {
                Err(ChainBreak {
                    first_broken_id: head_seq.max(1),
                    reason: BreakReason::HeadMismatch,
                })
            }
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: i64) -> Vec<StoredEntry> {
        let mut prev = GENESIS_HASH.to_string();
        let mut out = Vec::new();
        for seq in 1..=n {
            let content = EntryContent {
                seq,
                ts: truncate_micros(Utc::now()),
                category: "audit".into(),
                actor: format!("user-{seq}"),
                action: "login".into(),
                resource: "session".into(),
                ip: Some("10.0.0.1".into()),
                detail: json!({"z": 1, "a": [1, {"y": true, "b": null}]}),
            };
            let hash = content.hash(&prev);
            out.push(StoredEntry {
                content,
                prev_hash: prev.clone(),
                hash: hash.clone(),
            });
            prev = hash;
        }
        out
    }

    fn verify(entries: &[StoredEntry], head: Option<(i64, &str)>) -> Result<u64, ChainBreak> {
        let mut v = ChainVerifier::new();
        for e in entries {
            v.push(e)?;
        }
        v.finish(head)?;
        Ok(v.checked())
    }

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let v = json!({"b": 1, "a": {"d": [3, {"f": 1, "e": 2}], "c": "x\"y"}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":"x\"y","d":[3,{"e":2,"f":1}]},"b":1}"#
        );
    }

    #[test]
    fn canonical_json_survives_round_trip() {
        let v = json!({"n": 1.5, "big": 12345678901234i64, "s": "é\n", "neg": -0.25});
        let c = canonical_json(&v);
        let back: Value = serde_json::from_str(&c).unwrap();
        assert_eq!(canonical_json(&back), c);
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        let head = c.last().map(|e| (e.content.seq, e.hash.as_str()));
        assert_eq!(verify(&c, head), Ok(5));
        assert_eq!(verify(&[], None), Ok(0));
    }

    #[test]
    fn edited_entry_is_detected() {
        let mut c = chain(5);
        c[2].content.actor = "mallory".into();
        let head = (5, c[4].hash.clone());
        let err = verify(&c, Some((head.0, &head.1))).unwrap_err();
        assert_eq!(err.first_broken_id, 3);
        assert_eq!(err.reason, BreakReason::HashMismatch);
    }

    #[test]
    fn edited_entry_with_recomputed_hash_is_detected_at_next() {
        let mut c = chain(5);
        c[1].content.detail = json!({"forged": true});
        c[1].hash = c[1].content.hash(&c[1].prev_hash);
        let head = (5, c[4].hash.clone());
        let err = verify(&c, Some((head.0, &head.1))).unwrap_err();
        assert_eq!(err.first_broken_id, 3);
        assert_eq!(err.reason, BreakReason::PrevHashMismatch);
    }

    #[test]
    fn deleted_entry_is_detected_as_gap() {
        let mut c = chain(6);
        c.remove(3); // seq 4
        let head = (6, c[4].hash.clone());
        let err = verify(&c, Some((head.0, &head.1))).unwrap_err();
        assert_eq!(err.first_broken_id, 4);
        assert_eq!(err.reason, BreakReason::MissingEntries { from: 4, to: 4 });
    }

    #[test]
    fn deleted_first_entry_is_detected() {
        let mut c = chain(3);
        c.remove(0);
        let head = (3, c[1].hash.clone());
        let err = verify(&c, Some((head.0, &head.1))).unwrap_err();
        assert_eq!(err.first_broken_id, 1);
    }

    #[test]
    fn truncated_tail_is_detected_via_head() {
        let c = chain(4);
        let head = (4, c[3].hash.clone());
        let err = verify(&c[..3], Some((head.0, &head.1))).unwrap_err();
        assert_eq!(err.first_broken_id, 4);
        assert_eq!(err.reason, BreakReason::TruncatedTail { head_seq: 4 });
        let err = verify(&[], Some((head.0, &head.1))).unwrap_err();
        assert_eq!(err.first_broken_id, 1);
    }

    #[test]
    fn timestamps_hash_at_microsecond_precision() {
        let ts = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        assert_eq!(
            format_ts(&truncate_micros(ts)),
            "2023-11-14T22:13:20.123456Z"
        );
    }
}
