//! Simple (single-byte) fonts: Type 1, TrueType, Type 3.

use lopdf::{Dictionary, Document, Object};

use super::super::data::{self, BaseEncoding, CoreFont};
use super::super::objects;
use super::{Code, ToUnicode};

/// Advance of a glyph we know nothing about, in em: close to the average Latin letter.
const DEFAULT_WIDTH: f32 = 0.5;

/// A single-byte font, decoded once into per-code text and widths.
#[derive(Debug)]
pub(super) struct SimpleFont {
    text: String,
    /// Code `c`'s text is `text[offsets[c]..offsets[c + 1]]`.
    offsets: Vec<u32>,
    /// Advance per code, in text space units.
    widths: Vec<f32>,
}

impl SimpleFont {
    /// Reads the font; also returns its glyph height relative to the font size.
    pub fn load(
        doc: &Document,
        dict: &Dictionary,
        subtype: &[u8],
        to_unicode: Option<&ToUnicode>,
    ) -> (SimpleFont, f32) {
        let (default_base, type3) = match subtype {
            b"TrueType" => (BaseEncoding::WinAnsi, false),
            b"Type3" => (BaseEncoding::Standard, true),
            _ => (BaseEncoding::Standard, false),
        };
        let encoding = Encoding::load(doc, dict, default_base);
        let mut text = String::new();
        let mut offsets = Vec::with_capacity(257);
        offsets.push(0);
        for code in 0..=255u8 {
            let found = to_unicode.is_some_and(|t| t.push(u32::from(code), &mut text));
            if !found {
                encoding.push_text(code, &mut text);
            }
            offsets.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
        }
        let (scale, size_scale) = if type3 { type3_scales(doc, dict) } else { (0.001, 1.0) };
        let mut font = SimpleFont { text, offsets, widths: Vec::new() };
        font.widths = font.load_widths(doc, dict, scale);
        (font, size_scale)
    }

    /// A Standard-encoded font with default widths.
    pub fn fallback() -> SimpleFont {
        let encoding = Encoding { base: BaseEncoding::Standard, differences: Vec::new() };
        let mut text = String::new();
        let mut offsets = vec![0];
        for code in 0..=255u8 {
            encoding.push_text(code, &mut text);
            offsets.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
        }
        SimpleFont { text, offsets, widths: vec![DEFAULT_WIDTH; 256] }
    }

    /// The text and advance of one code.
    pub fn code(&self, code: u8) -> Code<'_> {
        let i = usize::from(code);
        let range = |j: usize| self.offsets.get(j).map_or(0, |&o| o as usize);
        Code {
            text: self.text.get(range(i)..range(i + 1)).unwrap_or(""),
            width: self.widths.get(i).copied().unwrap_or(DEFAULT_WIDTH),
            word_space: code == b' ',
        }
    }

    fn text_of(&self, code: u8) -> &str {
        self.code(code).text
    }

    /// Per-code advances: `/Widths` where given, else the core font's metrics by character,
    /// else `/MissingWidth`, else a default.
    fn load_widths(&self, doc: &Document, dict: &Dictionary, scale: f32) -> Vec<f32> {
        let first = objects::number(doc, dict, b"FirstChar").unwrap_or(0.0).max(0.0) as usize;
        let listed = objects::array(doc, dict, b"Widths").map(|a| objects::numbers(doc, a)).unwrap_or_default();
        let core = objects::name(doc, dict, b"BaseFont").and_then(CoreFont::from_base_font);
        let missing = super::descriptor(doc, dict)
            .and_then(|d| objects::number(doc, d, b"MissingWidth"))
            .filter(|w| *w > 0.0)
            .map(|w| w * scale);
        (0..256usize)
            .map(|code| {
                let from_list =
                    code.checked_sub(first).and_then(|i| listed.get(i).copied().flatten()).map(|w| w * scale);
                let from_core = || {
                    let c = self.text_of(code as u8).chars().next()?;
                    core?.width(c).map(|w| w / 1000.0)
                };
                let w = from_list.or_else(from_core).or(missing).unwrap_or(DEFAULT_WIDTH);
                w.clamp(0.0, 10.0)
            })
            .collect()
    }
}

/// A Type 3 font's glyph-space scale for widths, and its glyph height relative to the size.
fn type3_scales(doc: &Document, dict: &Dictionary) -> (f32, f32) {
    let m = objects::array(doc, dict, b"FontMatrix").map(|a| objects::numbers(doc, a)).unwrap_or_default();
    let a = m.first().copied().flatten().unwrap_or(0.001);
    let d = m.get(3).copied().flatten().unwrap_or(0.001);
    (a.abs(), (d.abs() * 1000.0).clamp(0.01, 100.0))
}

/// `/Encoding` of a simple font: a base encoding plus `/Differences`.
struct Encoding<'a> {
    base: BaseEncoding,
    differences: Vec<(u8, &'a [u8])>,
}

impl<'a> Encoding<'a> {
    fn load(doc: &'a Document, dict: &'a Dictionary, default: BaseEncoding) -> Encoding<'a> {
        let mut enc = Encoding { base: default, differences: Vec::new() };
        match objects::get(doc, dict, b"Encoding") {
            Some(Object::Name(n)) => enc.base = BaseEncoding::from_name(n).unwrap_or(default),
            Some(Object::Dictionary(d)) => {
                if let Some(base) = objects::name(doc, d, b"BaseEncoding") {
                    enc.base = BaseEncoding::from_name(base).unwrap_or(default);
                }
                if let Some(diffs) = objects::array(doc, d, b"Differences") {
                    enc.differences = differences(doc, diffs);
                }
            }
            _ => {}
        }
        enc
    }

    fn push_text(&self, code: u8, out: &mut String) {
        // Later entries override earlier ones, as a reader applying them in order would.
        let named = self.differences.iter().rev().find(|(c, _)| *c == code);
        if let Some((_, name)) = named
            && data::push_glyph_name(name, out)
        {
            return;
        }
        let fallback = || match code {
            0..=0x1f | 0x7f => None,
            _ => BaseEncoding::WinAnsi.char_of(code),
        };
        if let Some(c) = self.base.char_of(code).or_else(fallback) {
            out.push(c);
        }
    }
}

/// `[code /name /name … code /name …]` as (code, name) pairs.
fn differences<'a>(doc: &'a Document, items: &'a [Object]) -> Vec<(u8, &'a [u8])> {
    let mut out = Vec::new();
    let mut code: Option<i64> = None;
    for item in items {
        match objects::resolve(doc, item) {
            Object::Integer(n) => code = Some(*n),
            Object::Real(n) => code = Some(*n as i64),
            Object::Name(name) => {
                if let Some(c) = code.and_then(|c| u8::try_from(c).ok()) {
                    out.push((c, name.as_slice()));
                }
                code = code.map(|c| c + 1);
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lopdf::dictionary;

    #[test]
    fn differences_override_the_base_encoding() {
        let doc = Document::new();
        let font = dictionary! {
            "Subtype" => "Type1",
            "BaseFont" => "Times-Roman",
            "Encoding" => dictionary! {
                "BaseEncoding" => "WinAnsiEncoding",
                "Differences" => vec![Object::Integer(65), "fi".into(), "uni00E9".into()],
            },
        };
        let (f, _) = SimpleFont::load(&doc, &font, b"Type1", None);
        assert_eq!(f.code(65).text, "\u{fb01}");
        assert_eq!(f.code(66).text, "é");
        assert_eq!(f.code(0x93).text, "\u{201c}");
        // No /Widths: the core metrics of Times-Roman apply (`C` is 667/1000 em).
        assert!((f.code(67).width - 0.667).abs() < 1e-6);
        assert!(f.code(b' ').word_space);
    }

    #[test]
    fn widths_array_starts_at_first_char() {
        let doc = Document::new();
        let font = dictionary! {
            "Subtype" => "TrueType",
            "FirstChar" => 32,
            "Widths" => vec![Object::Integer(250), Object::Integer(333)],
        };
        let (f, _) = SimpleFont::load(&doc, &font, b"TrueType", None);
        assert!((f.code(33).width - 0.333).abs() < 1e-6);
        assert_eq!(f.code(34).width, DEFAULT_WIDTH);
    }
}
