//! Text out of quick-xml events.
//!
//! Since quick-xml 0.38 a reader no longer unescapes text: `A &amp; B`
//! arrives as `Text("A ")`, `GeneralRef("amp")`, `Text(" B")`. The parsers
//! here read with `trim_text(false)` (trimming each piece would eat the
//! spaces around a reference), append the pieces with [`text`] and
//! [`reference`], and trim the whole text of an element once it closes.

use quick_xml::events::{BytesRef, BytesText};

/// A text event's content (XML 1.0 line ends normalised).
pub fn text(t: &BytesText<'_>) -> Result<String, String> {
    t.xml10_content()
        .map(|c| c.into_owned())
        .map_err(|e| e.to_string())
}

/// The character a reference stands for: `&#1087;`/`&#x43F;` and the five
/// predefined entities (`lt`, `gt`, `amp`, `apos`, `quot`). Any other entity
/// is an error (documents here declare none).
pub fn reference(r: &BytesRef<'_>) -> Result<String, String> {
    if let Some(c) = r.resolve_char_ref().map_err(|e| e.to_string())? {
        return Ok(c.to_string());
    }
    let name = r.decode().map_err(|e| e.to_string())?;
    quick_xml::escape::resolve_xml_entity(&name)
        .map(str::to_string)
        .ok_or_else(|| format!("unknown entity &{name};"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quick_xml::events::Event;
    use quick_xml::Reader;

    fn all_text(xml: &str) -> String {
        let mut r = Reader::from_str(xml);
        let mut out = String::new();
        loop {
            match r.read_event().unwrap() {
                Event::Text(t) => out.push_str(&text(&t).unwrap()),
                Event::GeneralRef(g) => out.push_str(&reference(&g).unwrap()),
                Event::Eof => break,
                _ => {}
            }
        }
        out
    }

    #[test]
    fn references_keep_the_spaces_around_them() {
        assert_eq!(
            all_text("<a>Рога &amp; копыта &lt;ООО&gt; &#1087;&#x43F; &quot;x&apos;</a>"),
            "Рога & копыта <ООО> пп \"x'"
        );
    }

    #[test]
    fn unknown_entities_are_errors() {
        let mut r = Reader::from_str("<a>&nbsp;</a>");
        loop {
            match r.read_event().unwrap() {
                Event::GeneralRef(g) => {
                    assert!(reference(&g).unwrap_err().contains("nbsp"));
                    return;
                }
                Event::Eof => panic!("no reference event"),
                _ => {}
            }
        }
    }
}
