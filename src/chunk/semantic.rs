//! `semantic`: paragraphs packed up to the budget; a paragraph is cut at sentences only if it
//! alone exceeds the budget, a sentence at line breaks and then words only if it alone does,
//! then graphemes.

use super::counter::DocTokens;
use super::packer::{Core, Packer, Params};
use super::units::Level;

/// Cores of the whole document.
pub(crate) fn cores(doc: &mut DocTokens<'_>, params: &Params) -> Vec<Core> {
    Packer::new(doc, params, child).pack_document(Level::Paragraph)
}

/// Paragraph → sentence → line → word → grapheme → char.
fn child(level: Level) -> Level {
    match level {
        Level::Paragraph | Level::Block => Level::Sentence,
        Level::Sentence => Level::Line,
        Level::Line => Level::Word,
        Level::Word | Level::Piece => Level::Grapheme,
        Level::Grapheme | Level::Char => Level::Char,
    }
}
