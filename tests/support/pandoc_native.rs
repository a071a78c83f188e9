//! Ground truth from pandoc's native format (`corpus/docx/pandoc/_expected_native/*.native`):
//! the words of its `Str "…"` tokens, and word recall of our text against them.
//!
//! Comment text is left out: pandoc renders comments (`Span ("",["comment-start"],…) [...]`)
//! inline, while extraction excludes comments by design.

use std::collections::HashMap;

/// One lexical token of the native format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(String),
    Open(char),
    Close,
    Other,
}

/// Inline containers whose content runs on without a break: `Str "m", Superscript [Str "2"]`
/// renders as "m2". Every other constructor (Space, SoftBreak, Para, Note, Quoted, …) and every
/// other list ends a word.
const INLINE_CONTAINERS: &[&str] =
    &["Emph", "Strong", "Underline", "Strikeout", "Superscript", "Subscript", "SmallCaps", "Span", "Link"];

/// An open bracket, as the word builder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// `(` of an inline container's attributes or a link's target: no text inside, no break.
    InlineTuple,
    /// `[` inside an inline tuple (class lists and the like).
    TupleList,
    /// `[` or `(` holding content (or structure); `true` for an inline container's content.
    Content(bool),
}

/// Builds words from the native token stream.
#[derive(Default)]
struct Words {
    words: Vec<String>,
    current: String,
    stack: Vec<Open>,
    /// The last constructor seen, until a bracket claims it.
    last_ident: Option<String>,
    /// Whether the previous token closed an inline container's content (a link's target tuple
    /// follows it).
    after_inline: bool,
}

impl Words {
    fn flush(&mut self) {
        self.words.extend(alphanumeric_words(&self.current));
        self.current.clear();
    }

    fn is_inline(name: Option<&String>) -> bool {
        name.is_some_and(|name| INLINE_CONTAINERS.contains(&name.as_str()))
    }

    fn open(&mut self, bracket: char) {
        let open = if self.stack.last() == Some(&Open::InlineTuple) || self.stack.last() == Some(&Open::TupleList) {
            Open::TupleList
        } else if bracket == '(' && (Self::is_inline(self.last_ident.as_ref()) || self.after_inline) {
            Open::InlineTuple
        } else {
            let inline = bracket == '[' && Self::is_inline(self.last_ident.take().as_ref());
            Open::Content(inline)
        };
        if open == Open::Content(false) {
            self.flush();
        }
        self.stack.push(open);
        self.after_inline = false;
    }

    fn close(&mut self) {
        let closed = self.stack.pop();
        if closed == Some(Open::Content(false)) {
            self.flush();
        }
        self.after_inline = closed == Some(Open::Content(true));
    }
}

/// The words (alphanumeric runs) of the text of `Str` and `Code` tokens outside comments, with
/// adjacent inline text joined as it renders.
pub fn str_words(native: &str) -> Vec<String> {
    let tokens = lex(native);
    let mut words = Words::default();
    let mut i = 0;
    while i < tokens.len() {
        match (&tokens[i], tokens.get(i + 1)) {
            (Token::Ident(name), Some(Token::Str(text))) if name == "Str" => {
                words.current.push_str(text);
                i += 2;
                continue;
            }
            (Token::Ident(name), Some(Token::Open('('))) if name == "Span" => {
                if let Some(after) = skip_comment_span(&tokens, i + 1) {
                    i = after;
                    continue;
                }
            }
            (Token::Ident(name), Some(Token::Open('('))) if name == "Code" || name == "CodeBlock" => {
                if let Some(close) = matching_close(&tokens, i + 1)
                    && let Some(Token::Str(code)) = tokens.get(close + 1)
                {
                    if name == "CodeBlock" {
                        words.flush();
                    }
                    words.current.push_str(code);
                    i = close + 2;
                    continue;
                }
            }
            _ => {}
        }
        match &tokens[i] {
            Token::Ident(name) => {
                if !INLINE_CONTAINERS.contains(&name.as_str()) {
                    words.flush();
                }
                words.last_ident = Some(name.clone());
                words.after_inline = false;
            }
            Token::Open(bracket) => words.open(*bracket),
            Token::Close => words.close(),
            _ => {}
        }
        i += 1;
    }
    words.flush();
    words.words
}

/// At the opening of a Span's attributes: if they mark a comment start, the index after the
/// span's content, else `None`.
fn skip_comment_span(tokens: &[Token], attrs_open: usize) -> Option<usize> {
    let attrs_close = matching_close(tokens, attrs_open)?;
    let is_comment = tokens[attrs_open..attrs_close].iter().any(|t| *t == Token::Str("comment-start".to_owned()));
    if !is_comment || tokens.get(attrs_close + 1) != Some(&Token::Open('[')) {
        return None;
    }
    Some(matching_close(tokens, attrs_close + 1)? + 1)
}

fn matching_close(tokens: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate().skip(open) {
        match token {
            Token::Open(_) => depth += 1,
            Token::Close => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn lex(native: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = native.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => tokens.push(Token::Str(haskell_string(&mut chars))),
            '[' | '(' => tokens.push(Token::Open(c)),
            ']' | ')' => tokens.push(Token::Close),
            c if c.is_alphabetic() => {
                let mut ident = String::from(c);
                while let Some(&next) = chars.peek().filter(|n| n.is_alphanumeric()) {
                    ident.push(next);
                    chars.next();
                }
                tokens.push(Token::Ident(ident));
            }
            c if c.is_whitespace() || c == ',' => {}
            _ => tokens.push(Token::Other),
        }
    }
    tokens
}

/// Reads a Haskell string literal body (after the opening quote) and unescapes it.
fn haskell_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    let mut out = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => unescape(chars, &mut out),
            c => out.push(c),
        }
    }
    out
}

fn unescape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, out: &mut String) {
    let Some(c) = chars.next() else { return };
    let numeric = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, radix: u32| {
        let mut digits = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_digit(radix)) {
            digits.push(d);
            chars.next();
        }
        u32::from_str_radix(&digits, radix).ok().and_then(char::from_u32)
    };
    match c {
        'n' => out.push('\n'),
        't' => out.push('\t'),
        '&' => {}
        'x' => out.extend(numeric(chars, 16)),
        'o' => out.extend(numeric(chars, 8)),
        d if d.is_ascii_digit() => {
            let mut digits = String::from(d);
            while let Some(&next) = chars.peek().filter(|n| n.is_ascii_digit()) {
                digits.push(next);
                chars.next();
            }
            out.extend(digits.parse().ok().and_then(char::from_u32));
        }
        other => out.push(other),
    }
}

/// Maximal runs of alphanumeric characters: punctuation and spacing differences between
/// pandoc's tokens and our text do not count, words do.
pub fn alphanumeric_words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_owned)
}

/// Fraction of `expected` words (as a multiset) found in `text`, and the missing ones.
pub fn word_recall(expected: &[String], text: &str) -> (f64, Vec<String>) {
    let mut available: HashMap<String, usize> = HashMap::new();
    for word in alphanumeric_words(text) {
        *available.entry(word).or_default() += 1;
    }
    let mut missing = Vec::new();
    for word in expected {
        match available.get_mut(word) {
            Some(count) if *count > 0 => *count -= 1,
            _ => missing.push(word.clone()),
        }
    }
    if expected.is_empty() {
        return (1.0, missing);
    }
    let found = expected.len() - missing.len();
    (found as f64 / expected.len() as f64, missing)
}
