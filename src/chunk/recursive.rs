//! `recursive`: a hierarchy of separators, as in LangChain's recursive splitter: paragraphs,
//! then lines, sentences, words and graphemes, each used only for a piece too big at the level
//! above.

use super::counter::DocTokens;
use super::packer::{Core, Packer, Params};
use super::units::Level;

/// Cores of the whole document.
pub(crate) fn cores(doc: &mut DocTokens<'_>, params: &Params) -> Vec<Core> {
    Packer::new(doc, params, child).pack_document(Level::Paragraph)
}

/// Paragraph → line → sentence → word → grapheme → char.
fn child(level: Level) -> Level {
    match level {
        Level::Paragraph | Level::Block => Level::Line,
        Level::Line => Level::Sentence,
        Level::Sentence => Level::Word,
        Level::Word | Level::Piece => Level::Grapheme,
        Level::Grapheme | Level::Char => Level::Char,
    }
}
