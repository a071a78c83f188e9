//! Markdown: the text is the (normalised) Markdown source itself, so the chunker can split on
//! headings, lists and code fences; this module only decides whether undeclared text is Markdown.

/// How many leading lines the heuristic looks at; structure shows early in real documents.
const SCAN_LINES: usize = 2_000;

/// Markdown constructs that plain prose (books, RFCs, plays) essentially never contains.
#[derive(Debug, Default)]
struct Signals {
    atx_headings: usize,
    fences: usize,
    inline_links: usize,
    reference_links: usize,
    table_rules: usize,
}

impl Signals {
    fn kinds(&self) -> usize {
        [self.atx_headings, self.fences, self.inline_links, self.reference_links, self.table_rules]
            .iter()
            .filter(|&&n| n > 0)
            .count()
    }
}

/// Whether text without a declared type looks like Markdown: at least two different strong
/// constructs (e.g. `# headings` and fenced code), or several ATX headings. Weak signals such as
/// backticks or `*` are ignored because prose uses them too (`alice29.txt` quotes with `` ` ``).
pub(crate) fn looks_like_markdown(text: &str) -> bool {
    let mut signals = Signals::default();
    for line in text.lines().take(SCAN_LINES) {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if indent <= 3 {
            signals.atx_headings += usize::from(is_atx_heading(trimmed));
            signals.fences += usize::from(trimmed.starts_with("```") || trimmed.starts_with("~~~"));
            signals.reference_links += usize::from(is_reference_definition(trimmed));
        }
        signals.inline_links += usize::from(has_inline_link(line));
        signals.table_rules += usize::from(is_table_rule(trimmed));
    }
    signals.kinds() >= 2 || signals.atx_headings >= 3
}

fn is_atx_heading(line: &str) -> bool {
    let hashes = line.bytes().take_while(|&b| b == b'#').count();
    (1..=6).contains(&hashes) && line[hashes..].starts_with([' ', '\t']) && !line[hashes..].trim().is_empty()
}

fn is_reference_definition(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    rest.split_once("]:").is_some_and(|(label, target)| {
        !label.is_empty() && target.starts_with([' ', '\t']) && !target.trim().is_empty()
    })
}

/// `[text](target)` with a non-empty text and a target without spaces before its end.
fn has_inline_link(line: &str) -> bool {
    let mut rest = line;
    while let Some(pos) = rest.find("](") {
        let before = &rest[..pos];
        let after = &rest[pos + 2..];
        let has_label = before.rfind('[').is_some_and(|open| pos > open + 1 && !before[open..].contains('\n'));
        let has_target = after.find(')').is_some_and(|close| close > 0 && !after[..close].starts_with(' '));
        if has_label && has_target {
            return true;
        }
        rest = after;
    }
    false
}

/// A pipe-table delimiter row (`|---|:--:|`) or a grid-table border (`+---+---+`).
fn is_table_rule(line: &str) -> bool {
    let line = line.trim_end();
    if line.len() < 5 {
        return false;
    }
    let pipe_row =
        line.contains('|') && line.contains("---") && line.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '));
    let grid_row = line.starts_with('+')
        && line.ends_with('+')
        && line.contains("---")
        && line.chars().all(|c| matches!(c, '+' | '-' | '=' | ':'));
    pipe_row || grid_row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_and_code_make_markdown() {
        let text = "# Title\n\nSome text.\n\n```rust\nfn main() {}\n```\n";
        assert!(looks_like_markdown(text));
    }

    #[test]
    fn prose_with_quotes_and_dashes_is_not_markdown() {
        let text = "`Well!' thought Alice to herself.\n\n-----\n\n* * *\n\n1. First\n";
        assert!(!looks_like_markdown(text));
    }

    #[test]
    fn links_and_tables_are_detected() {
        assert!(has_inline_link("see [the docs](https://example.com) now"));
        assert!(!has_inline_link("an empty [](label) and [x] (spaced)"));
        assert!(is_table_rule("|---|:---:|"));
        assert!(is_table_rule("+-----+-----+"));
        assert!(!is_table_rule("-----"));
    }
}
