//! Composite (Type 0 / CID) fonts: multi-byte codes, CIDs, and the ways to get Unicode
//! from them: `/ToUnicode`, a predefined CMap's character set, or Adobe's CID collections.

use encoding_rs::{BIG5, EUC_JP, EUC_KR, Encoding, GBK, SHIFT_JIS};
use lopdf::{Dictionary, Document, Object};

use super::super::data::Collection;
use super::super::objects;
use super::cmap::CMap;
use super::truetype::GlyphMap;
use super::{Code, MAX_FONT_STREAM, ToUnicode};

/// How the bytes of a string split into codes, and what those codes mean.
#[derive(Debug)]
enum Codes {
    /// Two-byte codes that are the CIDs themselves (`Identity-H`/`-V`).
    Identity,
    /// An embedded CMap with its own code ranges and CIDs.
    Embedded(CMap),
    /// A predefined CMap over a legacy character set: decode the bytes with it.
    Charset(&'static Encoding),
    /// A predefined Unicode CMap (`Uni…-UCS2/UTF16-H`).
    Utf16,
    /// `Uni…-UTF8-H`.
    Utf8,
    /// `Uni…-UTF32-H`.
    Utf32,
}

/// A Type 0 font with its descendant CID font.
#[derive(Debug)]
pub(super) struct CompositeFont {
    codes: Codes,
    to_unicode: Option<ToUnicode>,
    collection: Option<Collection>,
    /// The embedded font's own map, when nothing else gives Unicode.
    glyphs: Option<GlyphMap>,
    widths: Widths,
    pub vertical: bool,
}

impl CompositeFont {
    /// Reads the font; unknown or damaged parts fall back to `Identity-H`.
    pub fn load(doc: &Document, dict: &Dictionary, to_unicode: Option<ToUnicode>) -> CompositeFont {
        let (codes, vertical) = match objects::get(doc, dict, b"Encoding") {
            Some(Object::Name(name)) => predefined(name),
            Some(Object::Stream(s)) => {
                let cmap = objects::stream_bytes(s, MAX_FONT_STREAM).map(|b| CMap::parse(&b)).unwrap_or_default();
                let vertical = cmap.vertical;
                match cmap.codespaces.is_empty() {
                    true => (Codes::Identity, vertical),
                    false => (Codes::Embedded(cmap), vertical),
                }
            }
            _ => (Codes::Identity, false),
        };
        let descendant = objects::array(doc, dict, b"DescendantFonts")
            .and_then(|a| a.first())
            .map(|o| objects::resolve(doc, o))
            .and_then(|o| o.as_dict().ok());
        let collection = descendant.and_then(|d| collection(doc, d));
        let has_cids = matches!(codes, Codes::Identity | Codes::Embedded(_));
        let glyphs = match (&to_unicode, collection, descendant) {
            (None, None, Some(d)) if has_cids => GlyphMap::load(doc, d),
            _ => None,
        };
        let widths = descendant.map_or_else(Widths::default, |d| Widths::load(doc, d));
        CompositeFont { codes, to_unicode, collection, glyphs, widths, vertical }
    }

    /// A font whose strings are GBK text (see `gbk_system_font`).
    pub fn gbk() -> CompositeFont {
        CompositeFont {
            codes: Codes::Charset(GBK),
            to_unicode: None,
            collection: None,
            glyphs: None,
            widths: Widths::default(),
            vertical: false,
        }
    }

    /// Calls `each` for every code of `bytes`.
    pub fn each_code(&self, bytes: &[u8], scratch: &mut String, mut each: impl FnMut(Code<'_>)) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let (code, len) = self.next_code(rest);
            let len = len.clamp(1, rest.len());
            let (raw, tail) = rest.split_at(len);
            rest = tail;
            scratch.clear();
            let cid = self.cid(code);
            self.push_text(code, raw, cid, scratch);
            let width = match cid {
                Some(cid) => self.widths.get(cid),
                // Legacy character sets: single bytes are half-width forms.
                None if len == 1 => self.widths.default / 2.0,
                None => self.widths.default,
            };
            let width = if self.vertical { self.widths.vertical } else { width };
            each(Code { text: scratch, width, word_space: len == 1 && code == 32 });
        }
    }

    fn next_code(&self, bytes: &[u8]) -> (u32, usize) {
        let two = || (u32::from(bytes[0]) << 8 | u32::from(*bytes.get(1).unwrap_or(&0)), 2);
        match &self.codes {
            Codes::Identity => two(),
            Codes::Embedded(cmap) => cmap.next_code(bytes).unwrap_or_else(two),
            Codes::Charset(enc) => charset_code(enc, bytes),
            Codes::Utf16 if (0xd8..0xdc).contains(&bytes[0]) && bytes.len() >= 4 => {
                (u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]), 4)
            }
            Codes::Utf16 => two(),
            Codes::Utf8 => {
                let len = match bytes[0] {
                    0xc0..=0xdf => 2,
                    0xe0..=0xef => 3,
                    0xf0..=0xf7 => 4,
                    _ => 1,
                };
                (0, len)
            }
            Codes::Utf32 => (0, 4),
        }
    }

    fn cid(&self, code: u32) -> Option<u32> {
        match &self.codes {
            Codes::Identity => Some(code),
            Codes::Embedded(cmap) => cmap.cid(code),
            _ => None,
        }
    }

    /// Text by the first source that knows: `/ToUnicode`, the character set, the collection.
    fn push_text(&self, code: u32, raw: &[u8], cid: Option<u32>, out: &mut String) {
        if self.to_unicode.as_ref().is_some_and(|t| t.push(code, out)) {
            return;
        }
        match &self.codes {
            Codes::Charset(enc) => {
                let (text, had_errors) = enc.decode_without_bom_handling(raw);
                if !had_errors {
                    out.push_str(&text);
                }
            }
            Codes::Utf16 => out.push_str(&encoding_rs::UTF_16BE.decode_without_bom_handling(raw).0),
            Codes::Utf8 => out.push_str(&String::from_utf8_lossy(raw)),
            Codes::Utf32 => {
                let v = raw.iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b));
                out.extend(char::from_u32(v));
            }
            Codes::Identity | Codes::Embedded(_) => {
                let by_collection = |cid| self.collection?.char_of(cid);
                let by_glyph = |cid| self.glyphs.as_ref()?.char_of(cid);
                out.extend(cid.and_then(|cid| by_collection(cid).or_else(|| by_glyph(cid))));
            }
        }
    }
}

/// A predefined CMap by name: how it splits codes and whether it is vertical.
fn predefined(name: &[u8]) -> (Codes, bool) {
    let vertical = name.ends_with(b"-V");
    let has = |part: &[u8]| name.windows(part.len()).any(|w| w == part);
    let codes = if name.starts_with(b"Identity") {
        Codes::Identity
    } else if has(b"UCS2") || has(b"UTF16") {
        Codes::Utf16
    } else if has(b"UTF8") {
        Codes::Utf8
    } else if has(b"UTF32") {
        Codes::Utf32
    } else if has(b"RKSJ") {
        Codes::Charset(SHIFT_JIS)
    } else if has(b"GB") {
        // GB-EUC, GBpc-EUC, GBK-EUC, GBK2K, GBT-EUC: GBK covers them all.
        Codes::Charset(GBK)
    } else if has(b"KSC") || has(b"UHC") {
        Codes::Charset(EUC_KR)
    } else if has(b"B5") {
        Codes::Charset(BIG5)
    } else if has(b"EUC") {
        Codes::Charset(EUC_JP)
    } else {
        Codes::Identity
    };
    (codes, vertical)
}

/// Splits one code off `bytes` by the lead-byte rules of a legacy multi-byte character set.
fn charset_code(enc: &Encoding, bytes: &[u8]) -> (u32, usize) {
    let lead = bytes[0];
    let len = if enc == SHIFT_JIS {
        if matches!(lead, 0x81..=0x9f | 0xe0..=0xfc) { 2 } else { 1 }
    } else if enc == EUC_JP {
        match lead {
            0x8f => 3,
            0x8e | 0xa1..=0xfe => 2,
            _ => 1,
        }
    } else if enc == GBK && matches!(bytes.get(1), Some(0x30..=0x39)) {
        4
    } else if (0x81..=0xfe).contains(&lead) {
        2
    } else {
        1
    };
    let len = len.min(bytes.len());
    let code = bytes[..len].iter().fold(0u32, |acc, &b| acc << 8 | u32::from(b));
    (code, len)
}

/// The Adobe collection of a CID font, when its CIDs can be mapped without `/ToUnicode`.
fn collection(doc: &Document, cid_font: &Dictionary) -> Option<Collection> {
    let info = objects::dict(doc, cid_font, b"CIDSystemInfo")?;
    let ordering = objects::get(doc, info, b"Ordering")?.as_str().ok()?;
    Collection::from_ordering(ordering)
}

/// CID advances from `/W` and `/DW`, in text space units.
#[derive(Debug)]
struct Widths {
    default: f32,
    /// Vertical advance (`/DW2`'s second entry), as a positive distance.
    vertical: f32,
    /// Sorted `(first CID, last CID, width)`.
    ranges: Vec<(u32, u32, f32)>,
}

impl Default for Widths {
    fn default() -> Widths {
        Widths { default: 1.0, vertical: 1.0, ranges: Vec::new() }
    }
}

impl Widths {
    fn load(doc: &Document, cid_font: &Dictionary) -> Widths {
        let default = objects::number(doc, cid_font, b"DW").map_or(1.0, |w| w / 1000.0);
        let vertical = objects::array(doc, cid_font, b"DW2")
            .and_then(|a| objects::numbers(doc, a).get(1).copied().flatten())
            .map_or(1.0, |w| (w / 1000.0).abs());
        let ranges = objects::array(doc, cid_font, b"W").map(|w| width_ranges(doc, w)).unwrap_or_default();
        Widths { default: default.clamp(0.0, 10.0), vertical: vertical.clamp(0.0, 10.0), ranges }
    }

    fn get(&self, cid: u32) -> f32 {
        let i = self.ranges.partition_point(|r| r.0 <= cid);
        match i.checked_sub(1).and_then(|i| self.ranges.get(i)) {
            Some(&(_, last, w)) if cid <= last => w,
            _ => self.default,
        }
    }
}

/// `/W`: `c [w1 w2 …]` lists widths from `c`; `c_first c_last w` gives one width to a range.
fn width_ranges(doc: &Document, items: &[Object]) -> Vec<(u32, u32, f32)> {
    let mut out = Vec::new();
    let mut pending: Vec<f32> = Vec::new();
    for item in items {
        match objects::resolve(doc, item) {
            Object::Array(list) if pending.len() == 1 => {
                let first = pending[0].max(0.0) as u32;
                for (i, w) in objects::numbers(doc, list).into_iter().enumerate() {
                    let cid = first.saturating_add(i as u32);
                    out.push((cid, cid, w.unwrap_or(1000.0) / 1000.0));
                }
                pending.clear();
            }
            o => match o.as_float() {
                Ok(v) if v.is_finite() => pending.push(v),
                _ => pending.clear(),
            },
        }
        if let [first, last, w] = pending[..] {
            if last >= first && first >= 0.0 {
                out.push((first as u32, last as u32, w / 1000.0));
            }
            pending.clear();
        }
    }
    out.sort_by_key(|r| r.0);
    out.iter_mut().for_each(|r| r.2 = r.2.clamp(0.0, 10.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(font: &CompositeFont, bytes: &[u8]) -> (String, Vec<f32>) {
        let (mut text, mut widths, mut scratch) = (String::new(), Vec::new(), String::new());
        font.each_code(bytes, &mut scratch, |c| {
            text.push_str(c.text);
            widths.push(c.width);
        });
        (text, widths)
    }

    fn font(codes: Codes, collection: Option<Collection>) -> CompositeFont {
        CompositeFont { codes, to_unicode: None, collection, glyphs: None, widths: Widths::default(), vertical: false }
    }

    #[test]
    fn shift_jis_codes_mix_single_and_double_bytes() {
        let (text, widths) = decode(&font(predefined(b"90ms-RKSJ-H").0, None), b"A\x82\xa0");
        assert_eq!(text, "Aあ");
        assert_eq!(widths, vec![0.5, 1.0]);
    }

    #[test]
    fn identity_cids_map_through_the_collection() {
        let (text, _) = decode(&font(Codes::Identity, Some(Collection::Japan1)), &[0x03, 0x4b]);
        assert_eq!(text, "あ");
    }

    #[test]
    fn w_arrays_give_lists_and_ranges() {
        let doc = Document::new();
        let w = vec![
            Object::Integer(1),
            Object::Array(vec![Object::Integer(500), Object::Integer(600)]),
            Object::Integer(10),
            Object::Integer(20),
            Object::Integer(250),
        ];
        let widths = Widths { ranges: width_ranges(&doc, &w), ..Widths::default() };
        assert_eq!((widths.get(2), widths.get(15), widths.get(21)), (0.6, 0.25, 1.0));
    }

    #[test]
    fn vertical_and_unicode_predefined_cmaps() {
        assert!(predefined(b"UniJIS-UCS2-V").1);
        let (text, _) = decode(&font(predefined(b"UniGB-UTF16-H").0, None), &[0x4e, 0x2d]);
        assert_eq!(text, "中");
    }
}
