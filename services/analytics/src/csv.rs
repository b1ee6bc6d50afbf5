//! A small RFC 4180 CSV writer (UTF-8, CRLF line endings).
//!
//! A field is quoted when it contains a comma, a double quote, CR or LF, or
//! starts/ends with a space; quotes inside are doubled. Text is written as
//! UTF-8 untouched, so Cyrillic survives as is.

/// Append one CSV field (without separator) to `out`.
pub fn push_field(out: &mut String, field: &str) {
    let needs_quotes = field
        .bytes()
        .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
        || field.starts_with(' ')
        || field.ends_with(' ');
    if needs_quotes {
        out.push('"');
        for c in field.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// Append one CSV record (fields joined by commas, ending in CRLF) to `out`.
pub fn push_record<'a, I>(out: &mut String, fields: I)
where
    I: IntoIterator<Item = &'a str>,
{
    for (i, f) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_field(out, f);
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[&str]) -> String {
        let mut s = String::new();
        push_record(&mut s, fields.iter().copied());
        s
    }

    #[test]
    fn plain_fields_are_not_quoted() {
        assert_eq!(record(&["a", "b c", "", "42"]), "a,b c,,42\r\n");
    }

    #[test]
    fn special_characters_are_quoted() {
        assert_eq!(record(&["a,b"]), "\"a,b\"\r\n");
        assert_eq!(record(&["say \"hi\""]), "\"say \"\"hi\"\"\"\r\n");
        assert_eq!(record(&["line1\nline2"]), "\"line1\nline2\"\r\n");
        assert_eq!(record(&["cr\rlf"]), "\"cr\rlf\"\r\n");
        assert_eq!(record(&[" padded "]), "\" padded \"\r\n");
        assert_eq!(record(&["\""]), "\"\"\"\"\r\n");
    }

    #[test]
    fn cyrillic_is_kept_as_utf8() {
        let s = record(&["Привет, мир", "Ёжик \"в\" тумане", "документ"]);
        assert_eq!(s, "\"Привет, мир\",\"Ёжик \"\"в\"\" тумане\",документ\r\n");
        assert!(s.as_bytes().starts_with("\"Привет".as_bytes()));
    }

    /// Parse back with a minimal RFC 4180 reader to prove round trips.
    fn parse(input: &str) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        let mut row = Vec::new();
        let mut field = String::new();
        let mut chars = input.chars().peekable();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            if quoted {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        quoted = false;
                    }
                } else {
                    field.push(c);
                }
            } else {
                match c {
                    '"' => quoted = true,
                    ',' => row.push(std::mem::take(&mut field)),
                    '\r' if chars.peek() == Some(&'\n') => {
                        chars.next();
                        row.push(std::mem::take(&mut field));
                        rows.push(std::mem::take(&mut row));
                    }
                    _ => field.push(c),
                }
            }
        }
        rows
    }

    #[test]
    fn round_trip() {
        let data = [
            vec!["id", "text"],
            vec!["1", "Как, \"провести\"\r\nдокумент?"],
            vec!["2", ""],
            vec!["3", " , "],
        ];
        let mut s = String::new();
        for r in &data {
            push_record(&mut s, r.iter().copied());
        }
        let parsed = parse(&s);
        let expected: Vec<Vec<String>> = data
            .iter()
            .map(|r| r.iter().map(|f| f.to_string()).collect())
            .collect();
        assert_eq!(parsed, expected);
    }
}
