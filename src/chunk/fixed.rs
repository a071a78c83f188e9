//! `fixed`: windows of `max_tokens` tokens, `overlap_tokens` of them repeated from the window
//! before. Windows end on tiktoken piece boundaries (about one token) that are also grapheme
//! boundaries. They restart at paragraph sync points, so an edit does not shift every window
//! after it.

use super::counter::DocTokens;
use super::packer::{Core, Packer, Params};
use super::units::Level;

/// Cores of the whole document.
pub(crate) fn cores(doc: &mut DocTokens<'_>, params: &Params) -> Vec<Core> {
    let len = doc.text().len();
    let mut packer = Packer::new(doc, params, child);
    for group in packer.sync_groups(0..len, Level::Paragraph) {
        packer.sync();
        packer.pack_span(group, Level::Piece);
    }
    packer.finish()
}

/// Piece → grapheme → char.
fn child(level: Level) -> Level {
    match level {
        Level::Grapheme | Level::Char => Level::Char,
        _ => Level::Grapheme,
    }
}
