//! SmartArt: a diagram's text lives in its own data part (`word/diagrams/data1.xml`) as
//! DrawingML paragraphs, not in the body; it is visible text, so it is extracted too.

use quick_xml::events::Event;

use super::xml::{self, DocxReader, Ns};
use crate::extract::error::ExtractError;
use crate::extract::output::{Break, TextBuilder};

/// Appends the text of a diagram data part: each DrawingML paragraph (`a:p`) on its own line.
///
/// # Errors
///
/// [`ExtractError::Corrupt`] for malformed XML, [`ExtractError::LimitExceeded`] over the
/// character limit.
pub(crate) fn append_text(xml: &str, out: &mut TextBuilder) -> Result<(), ExtractError> {
    let mut reader = DocxReader::new(xml);
    let mut in_text = false;
    loop {
        let (ns, event) = reader.next()?;
        let drawing = ns == Ns::Drawing;
        match event {
            Event::Start(e) if drawing && xml::local(&e) == "t" => in_text = true,
            Event::End(e) if drawing && e.local_name().as_ref() == "t" => in_text = false,
            Event::End(e) if drawing && e.local_name().as_ref() == "p" => {
                out.push_break(Break::Line);
            }
            Event::Text(text) if in_text => out.push_str(&text)?,
            Event::GeneralRef(reference) if in_text => {
                if let Some(c) = xml::reference_text(&reference) {
                    out.push_char(c)?;
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    out.push_break(Break::Paragraph);
    Ok(())
}
