//! A text builder shared by the structured extractors (DOCX, HTML): it places paragraph, line and
//! cell breaks lazily, so empty paragraphs never pile up blank lines, and it enforces the
//! character limit while the text grows rather than after the whole document is in memory.

use super::error::{ExtractError, Limit};

/// Strength of a break between two pieces of text; a stronger pending break absorbs a weaker one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Break {
    /// No separator.
    None,
    /// A single space (inline boundary, e.g. between paragraphs inside a table cell).
    Space,
    /// Table cell boundary.
    Cell,
    /// Line break.
    Line,
    /// Paragraph break (a blank line, which chunkers treat as a paragraph boundary).
    Paragraph,
}

impl Break {
    fn separator(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Space => " ",
            Self::Cell => " | ",
            Self::Line => "\n",
            Self::Paragraph => "\n\n",
        }
    }
}

/// Whether a character is dropped from extracted text: C0/C1 controls other than tab and line
/// feed never carry text, and NUL in particular cannot be stored in a PostgreSQL `text` column.
pub(crate) fn is_dropped_control(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

/// Accumulates extracted text with lazily placed breaks and a character limit.
#[derive(Debug)]
pub(crate) struct TextBuilder {
    text: String,
    pending: Break,
    chars: usize,
    max_chars: usize,
}

impl TextBuilder {
    /// An empty builder that fails once more than `max_chars` characters were written.
    pub(crate) fn new(max_chars: usize) -> Self {
        Self { text: String::new(), pending: Break::None, chars: 0, max_chars }
    }

    /// Requests a break before the next text; the strongest request since the last text wins.
    pub(crate) fn push_break(&mut self, brk: Break) {
        self.pending = self.pending.max(brk);
    }

    /// Appends text (control characters dropped), first writing any pending break.
    ///
    /// # Errors
    ///
    /// [`ExtractError::LimitExceeded`] once the text exceeds the character limit.
    pub(crate) fn push_str(&mut self, piece: &str) -> Result<(), ExtractError> {
        if piece.is_empty() {
            return Ok(());
        }
        self.flush_break()?;
        for c in piece.chars().filter(|&c| !is_dropped_control(c)) {
            self.text.push(c);
            self.chars += 1;
        }
        self.check_limit()
    }

    /// Appends a single character (see [`Self::push_str`]).
    pub(crate) fn push_char(&mut self, c: char) -> Result<(), ExtractError> {
        let mut buf = [0u8; 4];
        self.push_str(c.encode_utf8(&mut buf))
    }

    /// The text so far, without trailing whitespace or pending breaks.
    pub(crate) fn finish(mut self) -> String {
        let trimmed = self.text.trim_end().len();
        self.text.truncate(trimmed);
        self.text
    }

    fn flush_break(&mut self) -> Result<(), ExtractError> {
        let brk = std::mem::replace(&mut self.pending, Break::None);
        if self.text.is_empty() {
            return Ok(());
        }
        let mut separator = brk.separator();
        if brk == Break::Space && self.text.ends_with(char::is_whitespace) {
            separator = "";
        }
        if brk >= Break::Line {
            // A break replaces trailing spaces/tabs rather than leaving them at line ends.
            let kept = self.text.trim_end_matches([' ', '\t']).len();
            self.chars -= self.text[kept..].chars().count();
            self.text.truncate(kept);
        }
        self.text.push_str(separator);
        self.chars += separator.chars().count();
        self.check_limit()
    }

    fn check_limit(&self) -> Result<(), ExtractError> {
        if self.chars > self.max_chars {
            return Err(ExtractError::LimitExceeded(Limit::Chars { max: self.max_chars }));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strongest_pending_break_wins_and_no_leading_or_trailing_breaks() {
        let mut out = TextBuilder::new(100);
        out.push_break(Break::Paragraph);
        let _ = out.push_str("a");
        out.push_break(Break::Line);
        out.push_break(Break::Paragraph);
        out.push_break(Break::Space);
        let _ = out.push_str("b");
        out.push_break(Break::Cell);
        let _ = out.push_str("c\u{0}\u{7}");
        out.push_break(Break::Paragraph);
        assert_eq!(out.finish(), "a\n\nb | c");
    }

    #[test]
    fn character_limit_is_enforced_while_writing() {
        let mut out = TextBuilder::new(3);
        assert!(out.push_str("abc").is_ok());
        assert!(matches!(out.push_str("d"), Err(ExtractError::LimitExceeded(Limit::Chars { max: 3 }))));
    }
}
