//! Unicode from an embedded TrueType font: for CID fonts with neither `/ToUnicode` nor a
//! known character collection, the font's own `cmap` table, read backwards (glyph → Unicode),
//! is the only record of what the glyphs are.

use std::collections::HashMap;

use lopdf::{Dictionary, Document, Object};

use super::super::objects;
use super::MAX_FONT_STREAM;

/// Glyph id → Unicode of a CID font's embedded TrueType program, with its CID → glyph map.
#[derive(Debug)]
pub(super) struct GlyphMap {
    unicode: HashMap<u16, char>,
    /// `/CIDToGIDMap` as a stream: two bytes per CID. `None` means identity.
    cid_to_gid: Option<Vec<u8>>,
}

impl GlyphMap {
    /// Reads the map of `cid_font` (a `/CIDFontType2` dictionary); `None` without a usable
    /// embedded font.
    pub fn load(doc: &Document, cid_font: &Dictionary) -> Option<GlyphMap> {
        let descriptor = objects::dict(doc, cid_font, b"FontDescriptor")?;
        let program = [&b"FontFile2"[..], b"FontFile3"]
            .iter()
            .find_map(|k| objects::get(doc, descriptor, k)?.as_stream().ok())?;
        let data = objects::stream_bytes(program, MAX_FONT_STREAM)?;
        let unicode = reverse_cmap(&data)?;
        let cid_to_gid = match objects::get(doc, cid_font, b"CIDToGIDMap") {
            Some(Object::Stream(s)) => objects::stream_bytes(s, MAX_FONT_STREAM),
            _ => None,
        };
        Some(GlyphMap { unicode, cid_to_gid })
    }

    /// The character drawn by a CID.
    pub fn char_of(&self, cid: u32) -> Option<char> {
        let gid = match &self.cid_to_gid {
            Some(map) => {
                let at = usize::try_from(cid).ok()?.checked_mul(2)?;
                let b = map.get(at..at + 2)?;
                u16::from_be_bytes([b[0], b[1]])
            }
            None => u16::try_from(cid).ok()?,
        };
        self.unicode.get(&gid).copied()
    }
}

/// Glyph id → the lowest Basic Multilingual Plane code point mapped to it by the font's
/// Unicode `cmap` subtables. Asking for each BMP code point bounds the work (65,536 lookups
/// per subtable), where walking the table's own ranges could take a crafted font 2^32 steps.
fn reverse_cmap(font: &[u8]) -> Option<HashMap<u16, char>> {
    let face = ttf_parser::RawFace::parse(font, 0).ok()?;
    let table = ttf_parser::cmap::Table::parse(face.table(ttf_parser::Tag::from_bytes(b"cmap"))?)?;
    let mut out: HashMap<u16, char> = HashMap::new();
    for sub in table.subtables.into_iter().filter(|s| s.is_unicode()).take(4) {
        for c in (0..=0xffffu32).filter_map(char::from_u32) {
            if let Some(gid) = sub.glyph_index(u32::from(c)) {
                out.entry(gid.0).or_insert(c);
            }
        }
    }
    (!out.is_empty()).then_some(out)
}
