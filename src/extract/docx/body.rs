//! The WordprocessingML text walker, used for the main document, headers, footers, footnotes
//! and endnotes. A single streaming pass with an explicit stack (no recursion, so deeply nested
//! input cannot overflow the stack).
//!
//! What is text: `w:t` runs (including inserted `w:ins` and moved-to runs), tabs, breaks,
//! no-break hyphens, math runs (`m:t`), text boxes (`w:txbxContent`, taken once: the first
//! `mc:Choice` of an `mc:AlternateContent`, never its `mc:Fallback` copy). What is not: deleted
//! and moved-from runs, field instructions (`HYPERLINK "…"`, `PAGEREF`), property blocks,
//! separator footnotes. Comments live in their own part, which is never read.

use quick_xml::events::{BytesStart, Event};

use super::numbering::Numbering;
use super::xml::{self, DocxReader, Ns};
use crate::extract::error::ExtractError;
use crate::extract::output::{Break, TextBuilder};

/// WordprocessingML elements whose whole subtree is skipped.
const SKIPPED: &[&str] = &[
    "del",
    "moveFrom",
    "delText",
    "delInstrText",
    "instrText",
    "rPr",
    "sectPr",
    "tblPr",
    "trPr",
    "tcPr",
    "tblGrid",
    "sdtPr",
    "sdtEndPr",
    "fldData",
    "object",
    "customXmlPr",
    "smartTagPr",
];
/// Footnote/endnote types that are layout artefacts, not notes.
const SEPARATOR_NOTES: &[&str] = &["separator", "continuationSeparator", "continuationNotice"];

/// What an open element means to the walker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// An element whose text content is output (`w:t`, `m:t`).
    Text,
    /// Paragraph properties: read for list numbering, never output.
    ParagraphProps,
    /// A table (nesting is counted to decide between row/cell breaks and spaces).
    Table,
    /// `mc:AlternateContent`; `true` once one of its choices was taken.
    Alternate(bool),
    /// Anything else.
    Other,
}

/// Numbering reference collected from a paragraph's properties.
#[derive(Debug, Default)]
struct ListRef {
    num_id: Option<String>,
    level: usize,
}

/// Walks one part and appends its text to `out`.
pub(crate) struct Walker<'w> {
    out: &'w mut TextBuilder,
    numbering: &'w mut Numbering,
    stack: Vec<Frame>,
    /// Depth inside a skipped subtree (0 when not skipping).
    skip_depth: usize,
    /// Open paragraph-property elements (counted, so the check stays O(1) on deep input).
    props_depth: usize,
    table_depth: usize,
    list: ListRef,
    /// Set by a drop-cap paragraph (`w:framePr w:dropCap`): its letter belongs to the next
    /// paragraph's first word, so no break goes between them.
    glue_next_paragraph: bool,
}

impl<'w> Walker<'w> {
    /// A walker writing to `out`, numbering list items with `numbering`'s counters.
    pub(crate) fn new(out: &'w mut TextBuilder, numbering: &'w mut Numbering) -> Self {
        Self {
            out,
            numbering,
            stack: Vec::new(),
            skip_depth: 0,
            props_depth: 0,
            table_depth: 0,
            list: ListRef::default(),
            glue_next_paragraph: false,
        }
    }

    /// Appends the text of one WordprocessingML part.
    ///
    /// # Errors
    ///
    /// [`ExtractError::Corrupt`] for malformed XML, [`ExtractError::LimitExceeded`] over the
    /// character limit.
    pub(crate) fn walk(&mut self, xml: &str) -> Result<(), ExtractError> {
        let mut reader = DocxReader::new(xml);
        loop {
            let (ns, event) = reader.next()?;
            // Checked first: a part can end inside a skipped element (truncated XML), and the
            // reader keeps returning Eof (found by fuzzing: it looped forever).
            if matches!(event, Event::Eof) {
                break;
            }
            if self.skip_depth > 0 {
                self.skip_event(&event);
                continue;
            }
            match event {
                Event::Start(element) => self.start(ns, &element, false)?,
                Event::Empty(element) => self.start(ns, &element, true)?,
                Event::End(_) => self.end()?,
                Event::Text(text) => self.text(&text)?,
                Event::CData(text) => self.text(&text)?,
                Event::GeneralRef(reference) => {
                    if let Some(c) = xml::reference_text(&reference) {
                        self.text(c.encode_utf8(&mut [0u8; 4]))?;
                    }
                }
                _ => {}
            }
        }
        self.out.push_break(Break::Paragraph);
        Ok(())
    }

    fn skip_event(&mut self, event: &Event<'_>) {
        match event {
            Event::Start(_) => self.skip_depth += 1,
            Event::End(_) => self.skip_depth -= 1,
            _ => {}
        }
    }

    fn text(&mut self, text: &str) -> Result<(), ExtractError> {
        if self.stack.last() == Some(&Frame::Text) {
            self.out.push_str(text)?;
        }
        Ok(())
    }

    /// Handles a start tag; `empty` elements (`<w:tab/>`) are opened and closed at once.
    fn start(&mut self, ns: Ns, element: &BytesStart<'_>, empty: bool) -> Result<(), ExtractError> {
        let name = xml::local(element);
        if self.should_skip(ns, name, element) {
            self.skip_depth = usize::from(!empty);
            return Ok(());
        }
        let frame = match ns {
            Ns::W => self.start_w(name, element)?,
            Ns::Math if name == "t" => Frame::Text,
            Ns::Mc => self.start_mc(name),
            _ => Frame::Other,
        };
        self.stack.push(frame);
        if empty {
            self.end()?;
        }
        Ok(())
    }

    fn should_skip(&self, ns: Ns, name: &str, element: &BytesStart<'_>) -> bool {
        match ns {
            Ns::W if self.in_props() => false,
            Ns::W => {
                SKIPPED.contains(&name)
                    || (matches!(name, "footnote" | "endnote")
                        && xml::w_attr(element, "type").is_some_and(|kind| SEPARATOR_NOTES.contains(&kind.as_str())))
            }
            Ns::Mc => match (name, self.stack.last()) {
                ("Choice" | "Fallback", Some(Frame::Alternate(taken))) => *taken,
                _ => false,
            },
            _ => false,
        }
    }

    fn start_mc(&mut self, name: &str) -> Frame {
        match name {
            "AlternateContent" => Frame::Alternate(false),
            _ => {
                // A Choice or Fallback being entered is the one taken for this AlternateContent.
                if let Some(Frame::Alternate(taken)) = self.stack.last_mut() {
                    *taken = true;
                }
                Frame::Other
            }
        }
    }

    fn start_w(&mut self, name: &str, element: &BytesStart<'_>) -> Result<Frame, ExtractError> {
        if self.in_props() {
            self.read_paragraph_props(name, element);
            return Ok(Frame::Other);
        }
        let frame = match name {
            "t" => Frame::Text,
            "pPr" => {
                self.props_depth += 1;
                Frame::ParagraphProps
            }
            "p" => {
                self.list = ListRef::default();
                if !std::mem::take(&mut self.glue_next_paragraph) {
                    self.out.push_break(self.paragraph_break());
                }
                Frame::Other
            }
            "tbl" => {
                self.out.push_break(self.paragraph_break());
                self.table_depth += 1;
                Frame::Table
            }
            "tr" => {
                self.out.push_break(self.nested_or(Break::Line));
                Frame::Other
            }
            "tc" => {
                self.out.push_break(self.nested_or(Break::Cell));
                Frame::Other
            }
            "footnote" | "endnote" | "txbxContent" => {
                self.out.push_break(Break::Paragraph);
                Frame::Other
            }
            _ => {
                self.inline_content(name)?;
                Frame::Other
            }
        };
        Ok(frame)
    }

    /// Run-level elements that stand for characters.
    fn inline_content(&mut self, name: &str) -> Result<(), ExtractError> {
        match name {
            "tab" | "ptab" => self.out.push_char('\t'),
            "br" | "cr" => {
                self.out.push_break(Break::Line);
                Ok(())
            }
            "noBreakHyphen" => self.out.push_char('-'),
            _ => Ok(()),
        }
    }

    fn read_paragraph_props(&mut self, name: &str, element: &BytesStart<'_>) {
        match name {
            "framePr" => {
                self.glue_next_paragraph =
                    xml::w_attr(element, "dropCap").is_some_and(|kind| matches!(kind.as_str(), "drop" | "margin"));
            }
            "numId" => self.list.num_id = xml::w_attr(element, "val"),
            "ilvl" => {
                self.list.level = xml::w_attr(element, "val").and_then(|v| v.parse().ok()).unwrap_or(0);
            }
            _ => {}
        }
    }

    fn end(&mut self) -> Result<(), ExtractError> {
        match self.stack.pop() {
            Some(Frame::ParagraphProps) => {
                self.props_depth -= 1;
                self.list_marker()
            }
            Some(Frame::Table) => {
                self.table_depth = self.table_depth.saturating_sub(1);
                self.out.push_break(self.paragraph_break());
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// After a paragraph's properties: a numbered paragraph starts with its list marker.
    fn list_marker(&mut self) -> Result<(), ExtractError> {
        let list = std::mem::take(&mut self.list);
        // numId 0 explicitly removes numbering inherited from a style.
        let Some(num_id) = list.num_id.filter(|id| id != "0") else {
            return Ok(());
        };
        match self.numbering.next_marker(&num_id, list.level) {
            Some(marker) => self.out.push_str(&marker),
            None => Ok(()),
        }
    }

    fn in_props(&self) -> bool {
        self.props_depth > 0
    }

    /// Paragraphs inside table cells are joined with spaces so that a row stays on one line.
    fn paragraph_break(&self) -> Break {
        self.nested_or(Break::Paragraph)
    }

    fn nested_or(&self, brk: Break) -> Break {
        match (self.table_depth, brk) {
            (0, _) => brk,
            (1, Break::Line | Break::Cell) => brk,
            _ => Break::Space,
        }
    }
}
