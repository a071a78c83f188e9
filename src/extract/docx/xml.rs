//! Namespace-aware XML reading for WordprocessingML parts. Elements are matched on namespace
//! URIs, never on prefixes (`ns0:p` is as good as `w:p`), and both the transitional and the
//! Strict (ISO 29500) URIs are accepted.

use quick_xml::NsReader;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};

use crate::extract::error::ExtractError;

/// The namespaces the text walker cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ns {
    /// WordprocessingML main.
    W,
    /// Markup compatibility (`mc:AlternateContent`).
    Mc,
    /// Office math.
    Math,
    /// DrawingML main (SmartArt and shape text).
    Drawing,
    /// Anything else (drawing, VML, Word 2010+ extensions, …).
    Other,
}

const W_URIS: &[&str] = &[
    "http://schemas.openxmlformats.org/wordprocessingml/2006/main",
    "http://purl.oclc.org/ooxml/wordprocessingml/main",
];
const MC_URI: &str = "http://schemas.openxmlformats.org/markup-compatibility/2006";
const MATH_URIS: &[&str] =
    &["http://schemas.openxmlformats.org/officeDocument/2006/math", "http://purl.oclc.org/ooxml/officeDocument/math"];
const DRAWING_URIS: &[&str] =
    &["http://schemas.openxmlformats.org/drawingml/2006/main", "http://purl.oclc.org/ooxml/drawingml/main"];
/// Bound on simultaneous namespace declarations: fuzzed parts can declare millions of them.
const MAX_NAMESPACE_BINDINGS: usize = 4096;

fn classify(resolved: &ResolveResult<'_>) -> Ns {
    let ResolveResult::Bound(Namespace(uri)) = resolved else {
        return Ns::Other;
    };
    if W_URIS.contains(uri) {
        Ns::W
    } else if *uri == MC_URI {
        Ns::Mc
    } else if MATH_URIS.contains(uri) {
        Ns::Math
    } else if DRAWING_URIS.contains(uri) {
        Ns::Drawing
    } else {
        Ns::Other
    }
}

/// A streaming reader over one XML part.
pub(crate) struct DocxReader<'a> {
    reader: NsReader<&'a [u8]>,
}

impl<'a> DocxReader<'a> {
    /// Reader over a part's text (DTDs are reported as events and never processed).
    pub(crate) fn new(xml: &'a str) -> Self {
        let mut reader = NsReader::from_str(xml);
        reader.resolver_mut().set_max_namespace_bindings(MAX_NAMESPACE_BINDINGS);
        Self { reader }
    }

    /// The next event with the namespace of its element (`Ns::Other` for non-element events).
    ///
    /// # Errors
    ///
    /// [`ExtractError::Corrupt`] for malformed XML.
    pub(crate) fn next(&mut self) -> Result<(Ns, Event<'a>), ExtractError> {
        let position = self.reader.buffer_position();
        match self.reader.read_resolved_event() {
            Ok((resolved, event)) => Ok((classify(&resolved), event)),
            Err(err) => Err(ExtractError::Corrupt(format!("malformed XML near byte {position}: {err}"))),
        }
    }

    /// The next WordprocessingML start/empty element with its local name; `None` at the end.
    ///
    /// # Errors
    ///
    /// [`ExtractError::Corrupt`] for malformed XML.
    pub(crate) fn next_w(&mut self) -> Result<Option<(String, Event<'a>)>, ExtractError> {
        loop {
            match self.next()? {
                (_, Event::Eof) => return Ok(None),
                (Ns::W, event @ (Event::Start(_) | Event::Empty(_))) => {
                    let name = match &event {
                        Event::Start(e) | Event::Empty(e) => local(e).to_owned(),
                        _ => String::new(),
                    };
                    return Ok(Some((name, event)));
                }
                _ => {}
            }
        }
    }
}

/// An element's local name.
pub(crate) fn local<'e>(element: &'e BytesStart<'_>) -> &'e str {
    let name = element.name().0;
    name.rsplit_once(':').map_or(name, |(_, local)| local)
}

/// An attribute's value by local name (any prefix), with character references and the
/// predefined entities resolved; values with other references are returned raw.
pub(crate) fn w_attr(element: &BytesStart<'_>, name: &str) -> Option<String> {
    element.attributes().flatten().find_map(|attr| {
        (attr.key.local_name().as_ref() == name).then(|| {
            attr.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_or_else(|_| attr.value.to_string(), |v| v.into_owned())
        })
    })
}

/// The text of an entity or character reference: character references and the five
/// predefined XML entities resolve; anything else (a DTD-declared entity, internal or
/// external) resolves to nothing — entities are never expanded, so neither remote content nor
/// "billion laughs" expansion can reach the output.
pub(crate) fn reference_text(reference: &BytesRef<'_>) -> Option<char> {
    if let Ok(Some(c)) = reference.resolve_char_ref() {
        return Some(c);
    }
    match reference.as_ref() {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_do_not_matter_only_uris() {
        let xml =
            r#"<ns0:p xmlns:ns0="http://purl.oclc.org/ooxml/wordprocessingml/main"><x:p xmlns:x="urn:other"/></ns0:p>"#;
        let mut reader = DocxReader::new(xml);
        let (ns, event) = reader.next().unwrap_or((Ns::Other, Event::Eof));
        assert_eq!(ns, Ns::W);
        assert!(matches!(event, Event::Start(ref e) if local(e) == "p"));
        let (ns, _) = reader.next().unwrap_or((Ns::W, Event::Eof));
        assert_eq!(ns, Ns::Other);
    }

    #[test]
    fn only_predefined_and_character_references_resolve() {
        assert_eq!(reference_text(&BytesRef::new("amp")), Some('&'));
        assert_eq!(reference_text(&BytesRef::new("#x41")), Some('A'));
        assert_eq!(reference_text(&BytesRef::new("lol9")), None);
        assert_eq!(reference_text(&BytesRef::new("#0")), None);
    }
}
