//! Fonts: how a shown string splits into character codes, and what text and advance width
//! each code has.

// Explicit paths, for the fuzz target's `#[path]` build (see `pdf.rs`).
#[path = "font/cmap.rs"]
mod cmap;
#[path = "font/composite.rs"]
mod composite;
#[path = "font/simple.rs"]
mod simple;
#[path = "font/truetype.rs"]
mod truetype;

use lopdf::{Dictionary, Document, Object};

use super::objects;
use cmap::CMap;
use composite::CompositeFont;
use simple::SimpleFont;

/// Bytes of one embedded CMap or font program we are willing to decode.
const MAX_FONT_STREAM: usize = 16 << 20;

/// One character code of a shown string.
#[derive(Debug)]
pub(super) struct Code<'t> {
    /// Its Unicode text; empty when the font gives no way to know it.
    pub text: &'t str,
    /// Advance in text space units (1.0 = the font size).
    pub width: f32,
    /// Single-byte code 32: word spacing (`Tw`) applies to it.
    pub word_space: bool,
}

#[derive(Debug)]
enum Kind {
    Simple(SimpleFont),
    Composite(CompositeFont),
}

/// A font ready to decode strings.
#[derive(Debug)]
pub(super) struct Font {
    kind: Kind,
    /// Vertical writing mode: glyphs advance downwards.
    pub vertical: bool,
    /// Glyph height relative to the font size; 1 except for Type 3 fonts with odd matrices.
    pub size_scale: f32,
}

impl Font {
    /// Reads a font dictionary. Never fails: what cannot be read falls back to defaults, so
    /// text keeps flowing even when a font is damaged.
    pub fn load(doc: &Document, dict: &Dictionary) -> Font {
        let subtype = objects::name(doc, dict, b"Subtype").unwrap_or(b"Type1");
        let to_unicode = load_to_unicode(doc, dict);
        if subtype == b"Type0" {
            let font = CompositeFont::load(doc, dict, to_unicode);
            let vertical = font.vertical;
            return Font { kind: Kind::Composite(font), vertical, size_scale: 1.0 };
        }
        if to_unicode.is_none() && gbk_system_font(doc, dict, subtype) {
            return Font { kind: Kind::Composite(CompositeFont::gbk()), vertical: false, size_scale: 1.0 };
        }
        let (font, size_scale) = SimpleFont::load(doc, dict, subtype, to_unicode.as_ref());
        Font { kind: Kind::Simple(font), vertical: false, size_scale }
    }

    /// A stand-in for a missing or unreadable font: Standard-encoded, half-em glyphs.
    pub fn fallback() -> Font {
        Font { kind: Kind::Simple(SimpleFont::fallback()), vertical: false, size_scale: 1.0 }
    }

    /// Calls `each` for every code in `bytes`, in order.
    pub fn each_code(&self, bytes: &[u8], scratch: &mut String, mut each: impl FnMut(Code<'_>)) {
        match &self.kind {
            Kind::Simple(f) => bytes.iter().for_each(|&b| each(f.code(b))),
            Kind::Composite(f) => f.each_code(bytes, scratch, each),
        }
    }
}

/// The font's `/ToUnicode` map, if it has a usable one.
fn load_to_unicode(doc: &Document, dict: &Dictionary) -> Option<ToUnicode> {
    match objects::get(doc, dict, b"ToUnicode")? {
        Object::Stream(s) => {
            let cmap = CMap::parse(&objects::stream_bytes(s, MAX_FONT_STREAM)?);
            cmap.has_unicode().then_some(ToUnicode::Map(cmap))
        }
        // Not allowed by the spec, but some producers mean "codes are UTF-16".
        Object::Name(n) if n.starts_with(b"Identity") => Some(ToUnicode::Identity),
        _ => None,
    }
}

/// Where a font's codes get their Unicode text when it says so explicitly.
#[derive(Debug)]
enum ToUnicode {
    Map(CMap),
    Identity,
}

impl ToUnicode {
    /// Appends the text of `code`; false when the map does not cover it or maps it to
    /// nothing useful (NUL), so the caller can try the encoding instead.
    fn push(&self, code: u32, out: &mut String) -> bool {
        let before = out.len();
        let found = match self {
            ToUnicode::Map(m) => m.push_unicode(code, out),
            ToUnicode::Identity => char::from_u32(code).map(|c| out.push(c)).is_some(),
        };
        if found && out[before..].chars().all(|c| c == '\0') {
            out.truncate(before);
            return false;
        }
        found
    }
}

/// A TrueType font named in GBK (such as `黑体`, SimHei) and not embedded: the viewer uses the
/// system font of that name, whose native encoding is GBK, so strings are GBK text even
/// though the font claims single-byte codes. Acrobat and pdf.js read such files this way.
fn gbk_system_font(doc: &Document, dict: &Dictionary, subtype: &[u8]) -> bool {
    let Some(name) = objects::name(doc, dict, b"BaseFont") else {
        return false;
    };
    let embedded = descriptor(doc, dict).is_some_and(|d| d.has(b"FontFile2"));
    let non_ascii = !name.is_ascii();
    subtype == b"TrueType" && !embedded && non_ascii && !encoding_rs::GBK.decode_without_bom_handling(name).1
}

fn descriptor<'a>(doc: &'a Document, dict: &'a Dictionary) -> Option<&'a Dictionary> {
    objects::dict(doc, dict, b"FontDescriptor")
}
