//! Right-to-left text: glyphs are laid out left to right on the page (visual order), but
//! text must be stored first-letter-first (logical order) to be searchable.

use unicode_normalization::char::is_combining_mark;

/// Hebrew, Arabic, Syriac, Thaana, NKo and their presentation forms.
pub(super) fn is_rtl(c: char) -> bool {
    matches!(c as u32,
        0x0590..=0x05ff | 0x0600..=0x065f | 0x066a..=0x06ef | 0x06fa..=0x08ff
        | 0xfb1d..=0xfdff | 0xfe70..=0xfefc)
}

/// Characters that keep their left-to-right order inside right-to-left text.
fn is_ltr(c: char) -> bool {
    c.is_alphanumeric() && !is_rtl(c)
}

/// Converts a line from visual to logical order.
///
/// Reversal works on clusters: a glyph's text with the combining marks after it, so vowel
/// signs stay on their letter, and a glyph whose text is several characters (`whole`, byte
/// ranges into `line`) stays as the font's `/ToUnicode` wrote it, which is logical order.
/// The line reads right to left when more clusters start with a right-to-left letter than
/// with a left-to-right one: then it is reversed whole and left-to-right stretches (Latin
/// words, numbers) are turned back. Otherwise only right-to-left stretches are reversed.
pub(super) fn visual_to_logical(line: &str, whole: &[(usize, usize)]) -> String {
    let clusters = clusters(line, whole);
    let starts_with = |f: fn(char) -> bool| clusters.iter().filter(|c| c.chars().next().is_some_and(f)).count();
    let (rtl, ltr) = (starts_with(is_rtl), starts_with(is_ltr));
    let mut out = String::with_capacity(line.len());
    if rtl > ltr {
        let reversed: Vec<&str> = clusters.into_iter().rev().collect();
        reverse_stretches(&reversed, is_ltr, &mut out);
    } else {
        reverse_stretches(&clusters, is_rtl, &mut out);
    }
    out
}

/// Splits into clusters: a base character (or a `whole` range) with the combining marks
/// that follow it.
fn clusters<'a>(s: &'a str, whole: &[(usize, usize)]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    let mut start = 0;
    let mut ranges = whole.iter().peekable();
    for (i, c) in s.char_indices().skip(1) {
        while ranges.next_if(|r| r.1 <= i).is_some() {}
        let inside = ranges.peek().is_some_and(|r| r.0 < i);
        if !inside && !is_combining_mark(c) {
            out.push(&s[start..i]);
            start = i;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// Copies `clusters`, reversing each stretch that starts and ends with a cluster whose
/// base satisfies `strong` (spaces and punctuation between such clusters go with them).
fn reverse_stretches(clusters: &[&str], strong: fn(char) -> bool, out: &mut String) {
    let is_strong = |c: &&str| c.chars().next().is_some_and(strong);
    let mut i = 0;
    while i < clusters.len() {
        if !is_strong(&clusters[i]) {
            out.push_str(clusters[i]);
            i += 1;
            continue;
        }
        // The stretch runs to the last strong cluster before a character of the other
        // direction.
        let mut end = i;
        let mut j = i;
        while let Some(c) = clusters.get(j) {
            let base = c.chars().next().unwrap_or(' ');
            if strong(base) {
                end = j;
            } else if is_rtl(base) || is_ltr(base) {
                break;
            }
            j += 1;
        }
        clusters[i..=end].iter().rev().for_each(|c| out.push_str(c));
        i = end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arabic_line_is_reversed_keeping_marks_on_their_letters() {
        // Visual order of "حَبيبي" (ha, fatha, ba, ya, ba, ya), as laid out on the page.
        let visual = "يبيبح\u{64e}";
        assert_eq!(visual_to_logical(visual, &[]), "ح\u{64e}بيبي");
    }

    #[test]
    fn latin_words_keep_their_order_inside_arabic() {
        // Visual: [Arabic word 2] [habibi] [Arabic word 1]; mostly Arabic, so it reads
        // right to left.
        let visual = "ببب habibi حححححح";
        assert_eq!(visual_to_logical(visual, &[]), "حححححح habibi ببب");
    }

    #[test]
    fn arabic_inside_latin_is_reversed_alone() {
        assert_eq!(visual_to_logical("name: يبيبح here", &[]), "name: حبيبي here");
    }

    #[test]
    fn glyphs_with_several_characters_keep_their_order() {
        // One glyph whose /ToUnicode text is a whole word, already in logical order.
        let word = "حَبيبي";
        let line = format!("{word} ab");
        assert_eq!(visual_to_logical(&line, &[(0, word.len())]), line);
        let rtl_line = format!("بب{word}");
        let start = "بب".len();
        let expected = format!("{word}بب");
        assert_eq!(visual_to_logical(&rtl_line, &[(start, rtl_line.len())]), expected);
    }
}
