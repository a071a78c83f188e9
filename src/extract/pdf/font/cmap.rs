//! CMap streams: `/ToUnicode` maps and embedded `/Encoding` CMaps of composite fonts.

use super::super::lexer::{Lexer, Token};

/// At most this many entries are kept from one CMap: real ones have a few thousand, and the
/// cap bounds what a hostile stream can make us allocate.
const MAX_ENTRIES: usize = 100_000;

/// A valid code range of a given byte length (`begincodespacerange`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Codespace {
    pub len: u8,
    pub lo: u32,
    pub hi: u32,
}

impl Codespace {
    /// Whether the `len`-byte code `code` lies in this range, byte by byte as the spec says.
    fn contains(&self, code: u32, len: u8) -> bool {
        len == self.len
            && (0..u32::from(len)).all(|i| {
                let byte = |v: u32| (v >> (8 * i)) & 0xff;
                (byte(self.lo)..=byte(self.hi)).contains(&byte(code))
            })
    }
}

/// Where a range of codes maps to.
#[derive(Clone, Debug, PartialEq)]
enum Target {
    /// UTF-16 text for the first code; later codes add their offset to the last unit.
    Text(Vec<u16>),
    /// The CID of the first code; later codes add their offset.
    Cid(u32),
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    lo: u32,
    hi: u32,
    target: Target,
}

/// A parsed CMap. Unicode and CID entries are kept as ranges, never expanded.
#[derive(Clone, Debug, Default)]
pub(super) struct CMap {
    pub codespaces: Vec<Codespace>,
    unicode: Vec<Entry>,
    cids: Vec<Entry>,
    pub vertical: bool,
}

impl CMap {
    /// Parses a CMap. Never fails: whatever could be read is kept.
    pub fn parse(data: &[u8]) -> CMap {
        let mut parser = Parser::default();
        for token in Lexer::new(data) {
            parser.token(token);
            if parser.cmap.unicode.len() + parser.cmap.cids.len() > MAX_ENTRIES {
                break;
            }
        }
        let mut cmap = parser.cmap;
        cmap.unicode.sort_by_key(|e| e.lo);
        cmap.cids.sort_by_key(|e| e.lo);
        cmap
    }

    /// Whether the map has any code → Unicode entries.
    pub fn has_unicode(&self) -> bool {
        !self.unicode.is_empty()
    }

    /// Appends the text of `code`; false when the map does not cover it.
    pub fn push_unicode(&self, code: u32, out: &mut String) -> bool {
        let Some((entry, offset)) = find(&self.unicode, code) else {
            return false;
        };
        let Target::Text(units) = &entry.target else {
            return false;
        };
        let Some((last, head)) = units.split_last() else {
            return false;
        };
        let last = u32::from(*last).wrapping_add(offset) as u16;
        let units = head.iter().copied().chain(std::iter::once(last));
        out.extend(char::decode_utf16(units).map(|c| c.unwrap_or('\u{fffd}')));
        true
    }

    /// The CID of `code`, if the map has one.
    pub fn cid(&self, code: u32) -> Option<u32> {
        match find(&self.cids, code)? {
            (Entry { target: Target::Cid(start), .. }, offset) => Some(start.wrapping_add(offset)),
            _ => None,
        }
    }

    /// Splits the next code off `bytes` by the codespace ranges (ISO 32000-1, 9.7.6.2):
    /// returns the code and its byte length, or `None` when there are no ranges.
    pub fn next_code(&self, bytes: &[u8]) -> Option<(u32, usize)> {
        let shortest = self.codespaces.iter().map(|c| c.len).min()?;
        let mut code = 0u32;
        for (i, &b) in bytes.iter().take(4).enumerate() {
            code = code << 8 | u32::from(b);
            let len = i as u8 + 1;
            if self.codespaces.iter().any(|c| c.contains(code, len)) {
                return Some((code, usize::from(len)));
            }
        }
        // No range matched: consume the shortest code length so decoding moves on.
        let n = usize::from(shortest).min(bytes.len()).max(1);
        Some((bytes_to_code(&bytes[..n]), n))
    }
}

/// The entry covering `code` and the code's offset in it. Ranges rarely overlap, so look at
/// the nearest few that start at or before `code`.
fn find(entries: &[Entry], code: u32) -> Option<(&Entry, u32)> {
    let end = entries.partition_point(|e| e.lo <= code);
    entries[..end].iter().rev().take(8).find(|e| code <= e.hi).map(|e| (e, code - e.lo))
}

fn bytes_to_code(bytes: &[u8]) -> u32 {
    bytes.iter().take(4).fold(0, |acc, &b| acc << 8 | u32::from(b))
}

fn utf16_units(bytes: &[u8]) -> Vec<u16> {
    bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])).collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Section {
    None,
    Codespace,
    BfChar,
    BfRange,
    CidChar,
    CidRange,
}

/// An operand kept until its section's entry is complete.
#[derive(Debug)]
enum Item {
    Bytes(Vec<u8>),
    Number(f32),
    Name(Vec<u8>),
    Array(Vec<Vec<u8>>),
}

#[derive(Default)]
struct Parser {
    cmap: CMap,
    section: Option<Section>,
    items: Vec<Item>,
    array: Option<Vec<Vec<u8>>>,
}

impl Parser {
    fn token(&mut self, token: Token<'_>) {
        match token {
            Token::Str(s) => match &mut self.array {
                Some(a) => a.push(s.into_owned()),
                None => self.items.push(Item::Bytes(s.into_owned())),
            },
            Token::Number(n) => self.items.push(Item::Number(n)),
            Token::Name(n) => self.items.push(Item::Name(n.into_owned())),
            Token::ArrayStart => self.array = Some(Vec::new()),
            Token::ArrayEnd => {
                if let Some(a) = self.array.take() {
                    self.items.push(Item::Array(a));
                }
            }
            Token::Keyword(k) => self.keyword(k),
            Token::DictStart | Token::DictEnd => {}
        }
        self.take_entries();
        if self.items.len() > 16 {
            // Garbage between sections: keep the operand buffer small.
            self.items.drain(..self.items.len() - 3);
        }
    }

    fn keyword(&mut self, k: &[u8]) {
        let section = match k {
            b"begincodespacerange" => Section::Codespace,
            b"beginbfchar" => Section::BfChar,
            b"beginbfrange" => Section::BfRange,
            b"begincidchar" => Section::CidChar,
            b"begincidrange" => Section::CidRange,
            b"def" => {
                if let [.., Item::Name(n), Item::Number(v)] = self.items.as_slice()
                    && n == b"WMode"
                {
                    self.cmap.vertical = *v == 1.0;
                }
                Section::None
            }
            _ => Section::None,
        };
        self.section = Some(section);
        self.items.clear();
    }

    fn take_entries(&mut self) {
        let need = match self.section {
            Some(Section::Codespace | Section::BfChar | Section::CidChar) => 2,
            Some(Section::BfRange | Section::CidRange) => 3,
            _ => return,
        };
        if self.items.len() < need {
            return;
        }
        let items: Vec<Item> = self.items.drain(..need).collect();
        match (self.section, items.as_slice()) {
            (Some(Section::Codespace), [Item::Bytes(lo), Item::Bytes(hi)]) => self.codespace(lo, hi),
            (Some(Section::BfChar), [Item::Bytes(src), dst]) => self.bf_char(src, dst),
            (Some(Section::BfRange), [Item::Bytes(lo), Item::Bytes(hi), dst]) => self.bf_range(lo, hi, dst),
            (Some(Section::CidChar), [Item::Bytes(src), Item::Number(cid)]) => {
                let code = bytes_to_code(src);
                self.push_cid(code, code, *cid);
            }
            (Some(Section::CidRange), [Item::Bytes(lo), Item::Bytes(hi), Item::Number(cid)]) => {
                self.push_cid(bytes_to_code(lo), bytes_to_code(hi), *cid);
            }
            _ => {}
        }
    }

    fn codespace(&mut self, lo: &[u8], hi: &[u8]) {
        if (1..=4).contains(&lo.len()) && lo.len() == hi.len() {
            self.cmap.codespaces.push(Codespace { len: lo.len() as u8, lo: bytes_to_code(lo), hi: bytes_to_code(hi) });
        }
    }

    fn bf_char(&mut self, src: &[u8], dst: &Item) {
        let code = bytes_to_code(src);
        let units = match dst {
            Item::Bytes(b) => utf16_units(b),
            Item::Name(n) => {
                let mut s = String::new();
                if !super::super::data::push_glyph_name(n, &mut s) {
                    return;
                }
                s.encode_utf16().collect()
            }
            _ => return,
        };
        self.push_text(code, code, units);
    }

    fn bf_range(&mut self, lo: &[u8], hi: &[u8], dst: &Item) {
        let (lo, hi) = (bytes_to_code(lo), bytes_to_code(hi));
        if hi < lo {
            return;
        }
        match dst {
            Item::Bytes(b) => self.push_text(lo, hi, utf16_units(b)),
            Item::Array(targets) => {
                for (code, t) in (lo..=hi).zip(targets) {
                    self.push_text(code, code, utf16_units(t));
                }
            }
            _ => {}
        }
    }

    fn push_text(&mut self, lo: u32, hi: u32, units: Vec<u16>) {
        if !units.is_empty() {
            let target = Target::Text(units);
            self.cmap.unicode.push(Entry { lo, hi, target });
        }
    }

    fn push_cid(&mut self, lo: u32, hi: u32, cid: f32) {
        if hi >= lo && cid >= 0.0 {
            let target = Target::Cid(cid as u32);
            self.cmap.cids.push(Entry { lo, hi, target });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap
        /WMode 1 def
        1 begincodespacerange <0000> <FFFF> endcodespacerange
        2 beginbfchar <0003> <0020> <0010> <00660069> endbfchar
        2 beginbfrange <0020> <0022> <0041> <0030> <0031> [<0078> <D83DDE00>] endbfrange
        1 begincidrange <8140> <817e> 633 endcidrange
        endcmap";

    fn text(cmap: &CMap, code: u32) -> Option<String> {
        let mut s = String::new();
        cmap.push_unicode(code, &mut s).then_some(s)
    }

    #[test]
    fn chars_ranges_and_arrays_map_to_text() {
        let cmap = CMap::parse(SAMPLE);
        assert_eq!(text(&cmap, 3).as_deref(), Some(" "));
        assert_eq!(text(&cmap, 0x10).as_deref(), Some("fi"));
        assert_eq!(text(&cmap, 0x22).as_deref(), Some("C"));
        assert_eq!(text(&cmap, 0x31).as_deref(), Some("😀"));
        assert_eq!(text(&cmap, 0x23), None);
        assert!(cmap.vertical);
    }

    #[test]
    fn cid_ranges_and_codespaces_split_codes() {
        let cmap = CMap::parse(SAMPLE);
        assert_eq!(cmap.cid(0x8141), Some(634));
        assert_eq!(cmap.next_code(&[0x81, 0x41, 0x20]), Some((0x8141, 2)));
        let mixed = CMap::parse(b"2 begincodespacerange <00> <80> <8140> <9ffc> endcodespacerange");
        assert_eq!(mixed.next_code(&[0x41, 0x81]), Some((0x41, 1)));
        assert_eq!(mixed.next_code(&[0x81, 0x40]), Some((0x8140, 2)));
    }

    #[test]
    fn garbage_is_ignored() {
        let cmap = CMap::parse(b"beginbfrange <05> <01> <41> ] >> endbfrange");
        assert!(!cmap.has_unicode());
        assert_eq!(CMap::parse(b"").next_code(b"ab"), None);
    }
}
