//! List numbering (`word/numbering.xml`): list markers (`1.`, `a)`, `•`) are not in the text
//! runs, Word generates them; we regenerate simple ones so list items keep their numbers.

use std::collections::HashMap;

use quick_xml::events::Event;

use super::xml::{self, DocxReader};

/// Deepest list level Word supports (levels 0..=8).
const LEVELS: usize = 9;

#[derive(Debug, Clone)]
struct Level {
    format: String,
    text: String,
    start: u32,
}

impl Default for Level {
    fn default() -> Self {
        Self { format: "decimal".to_owned(), text: String::new(), start: 1 }
    }
}

/// Parsed numbering definitions plus the running counters of the document being read.
#[derive(Debug, Default)]
pub(crate) struct Numbering {
    /// `abstractNumId` → its levels.
    abstract_levels: HashMap<String, Vec<Level>>,
    /// `numId` → (`abstractNumId`, per-level start overrides).
    instances: HashMap<String, (String, HashMap<usize, u32>)>,
    /// Counters per abstract definition (instances of one definition continue each other).
    counters: HashMap<String, [Option<u32>; LEVELS]>,
    /// Instances whose start overrides were already applied.
    started: std::collections::HashSet<String>,
}

impl Numbering {
    /// Parses `numbering.xml`; malformed parts yield whatever was read before the error.
    pub(crate) fn parse(source: &str) -> Self {
        let mut numbering = Self::default();
        let mut reader = DocxReader::new(source);
        let mut current_abstract: Option<String> = None;
        let mut current_num: Option<String> = None;
        let mut current_level: Option<usize> = None;
        while let Ok(Some((name, event))) = reader.next_w() {
            let (Event::Start(element) | Event::Empty(element)) = &event else {
                continue;
            };
            let val = xml::w_attr(element, "val");
            match name.as_str() {
                "abstractNum" => current_abstract = xml::w_attr(element, "abstractNumId"),
                "num" => current_num = xml::w_attr(element, "numId"),
                "lvl" | "lvlOverride" => {
                    current_level = xml::w_attr(element, "ilvl").and_then(|l| l.parse().ok()).filter(|&l| l < LEVELS);
                }
                "abstractNumId" => {
                    if let (Some(num), Some(abs)) = (&current_num, val) {
                        numbering.instances.insert(num.clone(), (abs, HashMap::new()));
                    }
                }
                "startOverride" => {
                    let start = val.and_then(|v| v.parse().ok());
                    let instance = current_num.as_ref().and_then(|n| numbering.instances.get_mut(n));
                    if let (Some((_, overrides)), Some(level), Some(start)) = (instance, current_level, start) {
                        overrides.insert(level, start);
                    }
                }
                "start" | "numFmt" | "lvlText" => {
                    if let (Some(abs), Some(level)) = (&current_abstract, current_level) {
                        numbering.set_level_field(abs, level, &name, val.unwrap_or_default());
                    }
                }
                _ => {}
            }
        }
        numbering
    }

    fn set_level_field(&mut self, abs: &str, level: usize, field: &str, value: String) {
        let levels = self.abstract_levels.entry(abs.to_owned()).or_insert_with(|| vec![Level::default(); LEVELS]);
        let slot = &mut levels[level];
        match field {
            "start" => slot.start = value.parse().unwrap_or(1),
            "numFmt" => slot.format = value,
            _ => slot.text = value,
        }
    }

    /// Advances the counter of list `num_id` at `level` and returns the item's marker
    /// (indented by level), or `None` when the paragraph is not a numbered item.
    pub(crate) fn next_marker(&mut self, num_id: &str, level: usize) -> Option<String> {
        let level = level.min(LEVELS - 1);
        // Disjoint field borrows: no per-paragraph clones of the definitions.
        let (abs, overrides) = self.instances.get(num_id)?;
        let levels = self.abstract_levels.get(abs).map_or(&[][..], Vec::as_slice);
        if !self.counters.contains_key(abs) {
            self.counters.insert(abs.clone(), [None; LEVELS]);
        }
        let counters = self.counters.get_mut(abs)?;
        if !self.started.contains(num_id) {
            self.started.insert(num_id.to_owned());
            for (&lvl, &start) in overrides {
                counters[lvl] = start.checked_sub(1);
            }
        }
        let start = |lvl: usize| levels.get(lvl).map_or(1, |l| l.start);
        counters[level] = Some(counters[level].map_or(start(level), |n| n.saturating_add(1)));
        for deeper in counters.iter_mut().skip(level + 1) {
            *deeper = None;
        }
        let snapshot = *counters;
        let marker = render_marker(levels, level, &snapshot, start);
        let indent = "  ".repeat(level);
        Some(format!("{indent}{marker} "))
    }
}

fn render_marker(
    levels: &[Level],
    level: usize,
    counters: &[Option<u32>; LEVELS],
    start: impl Fn(usize) -> u32,
) -> String {
    let Some(def) = levels.get(level) else {
        return "-".to_owned();
    };
    match def.format.as_str() {
        "bullet" => bullet(&def.text),
        "none" => String::new(),
        _ if def.text.is_empty() => format_number(&def.format, counters[level].unwrap_or(1)),
        _ => {
            let mut text = def.text.clone();
            for (lvl, counter) in counters.iter().enumerate().take(level + 1).rev() {
                let format = levels.get(lvl).map_or("decimal", |l| l.format.as_str());
                let value = counter.unwrap_or_else(|| start(lvl));
                text = text.replace(&format!("%{}", lvl + 1), &format_number(format, value));
            }
            text
        }
    }
}

/// Bullets are usually private-use glyphs of the Symbol/Wingdings fonts; show those as `•`.
fn bullet(text: &str) -> String {
    let visible: String = text.chars().map(|c| if ('\u{e000}'..='\u{f8ff}').contains(&c) { '•' } else { c }).collect();
    if visible.trim().is_empty() { "•".to_owned() } else { visible }
}

fn format_number(format: &str, n: u32) -> String {
    match format {
        "lowerLetter" => letters(n).to_lowercase(),
        "upperLetter" => letters(n),
        "lowerRoman" => roman(n).to_lowercase(),
        "upperRoman" => roman(n),
        "decimalZero" => format!("{n:02}"),
        _ => n.to_string(),
    }
}

/// Word's letter numbering: A..Z, then AA..ZZ, AAA.. (the letter repeats).
fn letters(n: u32) -> String {
    let n = n.max(1) - 1;
    let letter = char::from(b'A' + (n % 26) as u8);
    std::iter::repeat_n(letter, (n / 26 + 1).min(10) as usize).collect()
}

fn roman(mut n: u32) -> String {
    if n == 0 || n > 3999 {
        return n.to_string();
    }
    const TABLE: [(u32, &str); 13] = [
        (1000, "M"),
        (900, "CM"),
        (500, "D"),
        (400, "CD"),
        (100, "C"),
        (90, "XC"),
        (50, "L"),
        (40, "XL"),
        (10, "X"),
        (9, "IX"),
        (5, "V"),
        (4, "IV"),
        (1, "I"),
    ];
    let mut out = String::new();
    for (value, digits) in TABLE {
        while n >= value {
            out.push_str(digits);
            n -= value;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NUMBERING: &str = r#"<w:numbering xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">
      <w:abstractNum w:abstractNumId="0">
        <w:lvl w:ilvl="0"><w:start w:val="1"/><w:numFmt w:val="decimal"/><w:lvlText w:val="%1."/></w:lvl>
        <w:lvl w:ilvl="1"><w:start w:val="1"/><w:numFmt w:val="lowerLetter"/><w:lvlText w:val="%1.%2)"/></w:lvl>
      </w:abstractNum>
      <w:abstractNum w:abstractNumId="1">
        <w:lvl w:ilvl="0"><w:numFmt w:val="bullet"/><w:lvlText w:val="&#xF0B7;"/></w:lvl>
      </w:abstractNum>
      <w:num w:numId="1"><w:abstractNumId w:val="0"/></w:num>
      <w:num w:numId="2"><w:abstractNumId w:val="1"/></w:num>
    </w:numbering>"#;

    #[test]
    fn markers_count_nest_and_reset() {
        let mut numbering = Numbering::parse(NUMBERING);
        assert_eq!(numbering.next_marker("1", 0).as_deref(), Some("1. "));
        assert_eq!(numbering.next_marker("1", 1).as_deref(), Some("  1.a) "));
        assert_eq!(numbering.next_marker("1", 1).as_deref(), Some("  1.b) "));
        assert_eq!(numbering.next_marker("1", 0).as_deref(), Some("2. "));
        assert_eq!(numbering.next_marker("1", 1).as_deref(), Some("  2.a) "));
        assert_eq!(numbering.next_marker("2", 0).as_deref(), Some("• "));
        assert_eq!(numbering.next_marker("9", 0), None);
    }

    #[test]
    fn numbers_format_as_letters_and_roman() {
        assert_eq!(letters(27), "AA");
        assert_eq!(roman(1994), "MCMXCIV");
    }
}
