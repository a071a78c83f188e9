//! Open Packaging Conventions: `[Content_Types].xml`, relationship parts and part-name
//! resolution, so the main document is found the way Word finds it (`_rels/.rels`), not at a
//! fixed path.

use std::collections::HashMap;

use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

use super::xml::w_attr as attribute;

/// One relationship of a part.
#[derive(Debug, Clone)]
pub(crate) struct Relationship {
    /// Relationship type URI; compare with [`Relationship::is`] (transitional and Strict URIs
    /// differ only before the last `/`).
    pub(crate) kind: String,
    /// Absolute part name of the target (without leading `/`), for internal targets.
    pub(crate) target: Option<String>,
}

impl Relationship {
    /// Whether the type URI ends with `/<name>` (e.g. `officeDocument`, `header`).
    pub(crate) fn is(&self, name: &str) -> bool {
        self.kind.rsplit('/').next() == Some(name)
    }
}

/// `[Content_Types].xml`: defaults by extension and overrides by part name.
#[derive(Debug, Default)]
pub(crate) struct ContentTypes {
    defaults: HashMap<String, String>,
    overrides: HashMap<String, String>,
}

impl ContentTypes {
    /// Parses the content-types part (a missing or broken part yields an empty table: the main
    /// document is then found by relationship or by its conventional name).
    pub(crate) fn parse(xml: &str) -> Self {
        let mut types = Self::default();
        for_each_element(xml, |element| {
            let attr = |name: &str| attribute(element, name);
            match element.local_name().as_ref() {
                "Default" => {
                    if let (Some(ext), Some(ct)) = (attr("Extension"), attr("ContentType")) {
                        types.defaults.insert(ext.to_ascii_lowercase(), ct);
                    }
                }
                "Override" => {
                    if let (Some(part), Some(ct)) = (attr("PartName"), attr("ContentType")) {
                        types.overrides.insert(part_key(&part), ct);
                    }
                }
                _ => {}
            }
        });
        types
    }

    /// The content type of a part.
    pub(crate) fn of(&self, part: &str) -> Option<&str> {
        let key = part_key(part);
        if let Some(ct) = self.overrides.get(&key) {
            return Some(ct);
        }
        let ext = key.rsplit_once('.')?.1;
        self.defaults.get(ext).map(String::as_str)
    }

    /// The first part whose override declares a content type matching `predicate`.
    pub(crate) fn find_part(&self, predicate: impl Fn(&str) -> bool) -> Option<String> {
        let mut parts: Vec<&String> =
            self.overrides.iter().filter(|(_, ct)| predicate(ct)).map(|(part, _)| part).collect();
        parts.sort();
        parts.first().map(|part| (*part).clone())
    }
}

/// Parses a relationships part; `source` is the part the relationships belong to (`""` for the
/// package), used to resolve relative targets.
pub(crate) fn parse_relationships(xml: &str, source: &str) -> Vec<Relationship> {
    let mut rels = Vec::new();
    for_each_element(xml, |element| {
        if element.local_name().as_ref() != "Relationship" {
            return;
        }
        let Some(kind) = attribute(element, "Type") else {
            return;
        };
        let external = attribute(element, "TargetMode").is_some_and(|m| m == "External");
        let target =
            attribute(element, "Target").filter(|_| !external).and_then(|target| resolve_target(source, &target));
        rels.push(Relationship { kind, target });
    });
    rels
}

/// The relationships part of a part: `word/document.xml` → `word/_rels/document.xml.rels`.
pub(crate) fn rels_part_of(part: &str) -> String {
    match part.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/_rels/{name}.rels"),
        None => format!("_rels/{part}.rels"),
    }
}

/// Resolves a relationship target against its source part: absolute targets start at the
/// package root, relative ones at the source's folder; `.`/`..` segments are applied and
/// `%XX` escapes decoded. `None` for targets that escape the root.
pub(crate) fn resolve_target(source: &str, target: &str) -> Option<String> {
    let target = percent_decode(target.split(['#', '?']).next().unwrap_or_default());
    let mut segments: Vec<&str> = Vec::new();
    if !target.starts_with('/')
        && let Some((dir, _)) = source.trim_start_matches('/').rsplit_once('/')
    {
        segments.extend(dir.split('/'));
    }
    for segment in target.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop()?;
            }
            other => segments.push(other),
        }
    }
    (!segments.is_empty()).then(|| segments.join("/"))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn part_key(part: &str) -> String {
    part.trim_start_matches('/').to_ascii_lowercase()
}

/// Calls `f` for every start or empty element of a small XML part; stops quietly at the first
/// syntax error (these parts are only used to locate other parts).
fn for_each_element(xml: &str, mut f: impl FnMut(&BytesStart<'_>)) {
    let mut reader = Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(Event::Start(element) | Event::Empty(element)) => f(&element),
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_resolve_relative_absolute_and_escaped() {
        assert_eq!(resolve_target("word/document.xml", "header1.xml").as_deref(), Some("word/header1.xml"));
        assert_eq!(resolve_target("", "/word/document2.xml").as_deref(), Some("word/document2.xml"));
        assert_eq!(
            resolve_target("word/document.xml", "../customXml/item%201.xml").as_deref(),
            Some("customXml/item 1.xml")
        );
        assert_eq!(resolve_target("word/document.xml", "../../x.xml"), None);
        assert_eq!(rels_part_of("word/document.xml"), "word/_rels/document.xml.rels");
    }

    #[test]
    fn relationships_and_content_types_parse() {
        let rels = parse_relationships(
            r#"<Relationships><Relationship Id="rId1" Type="http://purl.oclc.org/ooxml/officeDocument/relationships/officeDocument" Target="word/document.xml"/><Relationship Id="rId2" Type="x/hyperlink" Target="http://e.com" TargetMode="External"/></Relationships>"#,
            "",
        );
        assert!(rels[0].is("officeDocument"));
        assert_eq!(rels[0].target.as_deref(), Some("word/document.xml"));
        assert_eq!(rels[1].target, None);
        let types = ContentTypes::parse(
            r#"<Types><Default Extension="XML" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="main+xml"/></Types>"#,
        );
        assert_eq!(types.of("word/Document.xml"), Some("main+xml"));
        assert_eq!(types.of("word/styles.xml"), Some("application/xml"));
    }
}
