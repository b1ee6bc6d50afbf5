//! Durations ("30s", "1m30s", "250ms") and memory sizes ("256M", "1G", "512Mi")
//! as they are written in stack.toml: parsed strictly, printed canonically.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Marker prefixes: the loader classifies deserialisation errors by them.
pub const BAD_DURATION: &str = "invalid duration";
pub const BAD_MEMORY: &str = "invalid memory size";

/// A duration with millisecond precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub u64);

impl Duration {
    pub fn from_secs(s: u64) -> Self {
        Duration(s * 1000)
    }
    pub fn millis(self) -> u64 {
        self.0
    }
    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
    pub fn nanos(self) -> i64 {
        (self.0 as i64).saturating_mul(1_000_000)
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let fail = |why: &str| {
            Err(format!(
                "{BAD_DURATION} `{s}`: {why}; write a number with a unit, e.g. \"500ms\", \"30s\", \"5m\", \"1h30m\""
            ))
        };
        if t.is_empty() {
            return fail("it is empty");
        }
        let bytes = t.as_bytes();
        let mut i = 0;
        let mut total: u64 = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if start == i {
                return fail("expected a number");
            }
            let n: u64 = match t[start..i].parse() {
                Ok(n) => n,
                Err(_) => return fail("the number is too large"),
            };
            let ustart = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let factor = match &t[ustart..i] {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => return fail("a unit is missing"),
                _ => return fail("unknown unit (use ms, s, m, h or d)"),
            };
            total = match n.checked_mul(factor).and_then(|v| total.checked_add(v)) {
                Some(v) => v,
                None => return fail("it is too large"),
            };
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            return write!(f, "0s");
        }
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let mut s = ms / 1000;
        let h = s / 3600;
        s %= 3600;
        let m = s / 60;
        s %= 60;
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d).map_err(|_| {
            de::Error::custom(format!("{BAD_DURATION}: expected a string such as \"30s\""))
        })?;
        Duration::parse(&s).map_err(de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A memory size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Memory(pub u64);

const KI: u64 = 1024;

impl Memory {
    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let fail = |why: &str| {
            Err(format!(
                "{BAD_MEMORY} `{s}`: {why}; write a whole number with a unit, e.g. \"512M\", \"1G\", \"256Mi\""
            ))
        };
        let digits = t.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return fail("expected a number");
        }
        let n: u64 = match t[..digits].parse() {
            Ok(n) => n,
            Err(_) => return fail("the number is too large"),
        };
        let unit = t[digits..].trim();
        let factor = match unit {
            "" | "b" | "B" => 1,
            "k" | "K" | "KB" | "Ki" | "KiB" => KI,
            "m" | "M" | "MB" | "Mi" | "MiB" => KI * KI,
            "g" | "G" | "GB" | "Gi" | "GiB" => KI * KI * KI,
            "t" | "T" | "TB" | "Ti" | "TiB" => KI * KI * KI * KI,
            _ => return fail("unknown unit (use K, M, G or T)"),
        };
        match n.checked_mul(factor) {
            Some(0) => fail("it must be greater than zero"),
            Some(v) => Ok(Memory(v)),
            None => fail("it is too large"),
        }
    }

    /// Mebibytes, rounded down (Kubernetes `Mi`, engine limits are bytes).
    pub fn mib(self) -> u64 {
        self.0 / (KI * KI)
    }

    /// `pct` percent of this size, rounded down to whole MiB when that is exact enough.
    pub fn percent(self, pct: u8) -> Memory {
        let v = self.0 / 100 * pct as u64 + (self.0 % 100) * pct as u64 / 100;
        Memory(v.max(1))
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, size) in [("G", KI * KI * KI), ("M", KI * KI), ("K", KI)] {
            if b >= size && b.is_multiple_of(size) {
                return write!(f, "{}{unit}", b / size);
            }
        }
        write!(f, "{b}")
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d).map_err(|_| {
            de::Error::custom(format!("{BAD_MEMORY}: expected a string such as \"512M\""))
        })?;
        Memory::parse(&s).map_err(de::Error::custom)
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        for (s, ms, back) in [
            ("30s", 30_000, "30s"),
            ("1m30s", 90_000, "1m30s"),
            ("250ms", 250, "250ms"),
            ("2h", 7_200_000, "2h"),
            ("0s", 0, "0s"),
            ("1d", 86_400_000, "24h"),
        ] {
            let d = Duration::parse(s).unwrap();
            assert_eq!(d.millis(), ms, "{s}");
            assert_eq!(d.to_string(), back);
        }
    }

    #[test]
    fn bad_durations_are_rejected_with_a_hint() {
        for s in ["", "30", "s", "3x", "1.5s", "-1s", "99999999999999999999s"] {
            let e = Duration::parse(s).unwrap_err();
            assert!(e.starts_with(BAD_DURATION), "{e}");
            assert!(e.contains("e.g."), "{e}");
        }
    }

    #[test]
    fn memory_parse_print_and_percent() {
        assert_eq!(Memory::parse("256M").unwrap().bytes(), 256 * 1024 * 1024);
        assert_eq!(Memory::parse("1Gi").unwrap().to_string(), "1G");
        assert_eq!(Memory::parse("1536M").unwrap().to_string(), "1536M");
        assert_eq!(
            Memory::parse("512M").unwrap().percent(50).to_string(),
            "256M"
        );
        assert_eq!(Memory::parse("1G").unwrap().mib(), 1024);
        for s in ["", "M", "12Q", "0M", "1.5G", "99999999999999999999G"] {
            assert!(Memory::parse(s).unwrap_err().starts_with(BAD_MEMORY), "{s}");
        }
    }
}
