//! Telling a page of text from a page of glyph garbage.
//!
//! A font that maps its codes to no Unicode (a subset font with no `/ToUnicode` and no usable
//! glyph names) decodes by its raw code values, which read as punctuation and symbols (`%`,
//! `&`, `’` …), control or private-use characters. Indexed, such a page is chunks that match
//! nothing and mislead whatever they are returned to. Readable text in any script is mostly
//! letters and digits (Unicode's alphabetic and numeric classes cover Latin, Greek, Cyrillic,
//! Arabic, Hebrew, Indic scripts and CJK alike); a garbled page is mostly not. This is also where
//! an OCR fallback would attach: it would read the pages this marks.

/// Non-space characters a page needs before it is judged: a caption or a lone page number
/// says too little either way, and is kept.
const MIN_CHARS: usize = 40;

/// Share of letters and digits among non-space characters below which a page is garbled.
/// Of the shared corpus's 409 PDF pages long enough to judge, the lowest scores 0.63 (a slide
/// of notation) and all others 0.75 or more; text decoded by raw codes scores near 0.
const MIN_READABLE_SHARE: f64 = 0.5;

/// Whether `text` (one page) is too garbled to index.
pub fn is_garbled(text: &str) -> bool {
    readable_share(text).is_some_and(|share| share < MIN_READABLE_SHARE)
}

/// The share of letters and digits among the non-space characters of `text`; `None` when it
/// has fewer than [`MIN_CHARS`] of them. Private-use characters and U+FFFD are letters of no
/// script. A run of one symbol counts once: dot leaders of a table of contents and rules drawn
/// with `-` or `_` are layout, not text.
pub fn readable_share(text: &str) -> Option<f64> {
    let (mut total, mut readable) = (0usize, 0usize);
    let mut previous = None;
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        let repeated = previous == Some(c);
        previous = Some(c);
        if c.is_alphanumeric() {
            readable += 1;
        } else if repeated {
            continue;
        }
        total += 1;
    }
    (total >= MIN_CHARS).then(|| readable as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prose_in_any_script_is_readable() {
        for text in [
            "The quick brown fox jumps over the lazy dog, again and again (twice: 2×).",
            "Съешь же ещё этих мягких французских булок, да выпей же чаю, пожалуйста.",
            "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所で泣いていた事だけは記憶している。",
            "نص عربي قصير للاختبار فقط، يتكون من كلمات عادية ومقروءة تماما هنا.",
            "| Year | Revenue | Cost |\n| 2021 | 1,234.50 | (12.5)% |\n| 2022 | 2,345.75 | (13.1)% |",
        ] {
            assert!(!is_garbled(text), "{text}");
        }
    }

    #[test]
    fn raw_code_values_are_garbled() {
        let garbage = "%&’ )*+ ,-./ %&’( )% &’()* +,-./0 12%& ’()*+ ,- ./%&’ ()*+, -./ %&’( )*";
        assert!(is_garbled(garbage));
        let private_use: String = ('\u{e000}'..'\u{e040}').collect();
        assert!(is_garbled(&private_use));
    }

    #[test]
    fn dot_leaders_and_rules_are_layout() {
        let contents = "Table of Contents\nHeading........................................1\n\
                        Page 2 Heading.................................2\n______________________________";
        assert!(!is_garbled(contents));
    }

    #[test]
    fn short_pages_are_not_judged() {
        assert!(!is_garbled("%&’ )*+ ,-./"));
        assert_eq!(readable_share("— 12 —"), None);
    }
}
