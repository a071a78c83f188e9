//! A forgiving tokenizer for content streams and CMaps.
//!
//! Written here rather than using lopdf's content parser because that one rejects a whole
//! stream on the first bad token, allocates every operation up front, and recurses into
//! nested arrays; this one skips what it cannot read, streams tokens, and never recurses.

use std::borrow::Cow;

/// One lexical token. Borrowed from the input where no unescaping is needed.
#[derive(Debug, PartialEq)]
pub(super) enum Token<'a> {
    Number(f32),
    Name(Cow<'a, [u8]>),
    Str(Cow<'a, [u8]>),
    ArrayStart,
    ArrayEnd,
    DictStart,
    DictEnd,
    /// An operator or other bare word (`Tj`, `true`, `begincmap`, …).
    Keyword(&'a [u8]),
}

/// Iterates over the tokens of `data`.
pub(super) struct Lexer<'a> {
    data: &'a [u8],
    pos: usize,
}

fn is_white(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\x0c' | b'\0')
}

fn is_delim(b: u8) -> bool {
    matches!(b, b'(' | b')' | b'<' | b'>' | b'[' | b']' | b'{' | b'}' | b'/' | b'%')
}

fn is_regular(b: u8) -> bool {
    !is_white(b) && !is_delim(b)
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

impl<'a> Lexer<'a> {
    pub fn new(data: &'a [u8]) -> Lexer<'a> {
        Lexer { data, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    fn skip_white_and_comments(&mut self) {
        while let Some(b) = self.peek() {
            if is_white(b) {
                self.pos += 1;
            } else if b == b'%' {
                while self.peek().is_some_and(|c| c != b'\n' && c != b'\r') {
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    fn take_regular(&mut self) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(is_regular) {
            self.pos += 1;
        }
        &self.data[start..self.pos]
    }

    fn name(&mut self) -> Token<'a> {
        self.pos += 1;
        let raw = self.take_regular();
        if !raw.contains(&b'#') {
            return Token::Name(Cow::Borrowed(raw));
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        while let Some(&b) = raw.get(i) {
            let escaped = raw.get(i + 1..i + 3).and_then(|h| Some(hex_val(h[0])? << 4 | hex_val(h[1])?));
            match (b, escaped) {
                (b'#', Some(v)) => {
                    out.push(v);
                    i += 3;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        Token::Name(Cow::Owned(out))
    }

    fn hex_string(&mut self) -> Token<'a> {
        self.pos += 1;
        let mut out = Vec::new();
        let mut high: Option<u8> = None;
        while let Some(b) = self.peek() {
            self.pos += 1;
            if b == b'>' {
                break;
            }
            let Some(v) = hex_val(b) else { continue };
            match high.take() {
                Some(h) => out.push(h << 4 | v),
                None => high = Some(v),
            }
        }
        // An odd digit count means a trailing 0 (ISO 32000-1, 7.3.4.3).
        if let Some(h) = high {
            out.push(h << 4);
        }
        Token::Str(Cow::Owned(out))
    }

    fn literal_string(&mut self) -> Token<'a> {
        self.pos += 1;
        let start = self.pos;
        let mut depth = 0usize;
        let mut plain = true;
        while let Some(b) = self.peek() {
            match b {
                b'\\' => {
                    plain = false;
                    self.pos += 1;
                }
                b'(' => depth += 1,
                b')' if depth == 0 => break,
                b')' => depth -= 1,
                b'\r' => plain = false,
                _ => {}
            }
            self.pos += 1;
        }
        let end = self.pos.min(self.data.len());
        self.pos = (self.pos + 1).min(self.data.len());
        let raw = &self.data[start..end];
        if plain { Token::Str(Cow::Borrowed(raw)) } else { Token::Str(Cow::Owned(unescape(raw))) }
    }

    fn number_or_keyword(&mut self) -> Token<'a> {
        let word = self.take_regular();
        match parse_number(word) {
            Some(n) => Token::Number(n),
            None => Token::Keyword(word),
        }
    }

    /// Skips the binary data of an inline image, just after its `ID` operator.
    ///
    /// The data has no length we can trust, so (like every reader) look for `EI` between
    /// white space; a stray `EI` inside the data costs at most some garbage operators.
    pub fn skip_inline_image_data(&mut self) {
        let data = self.data;
        let mut i = self.pos + 1;
        while i + 1 < data.len() {
            if data[i] == b'E'
                && data[i + 1] == b'I'
                && is_white(data[i - 1])
                && data.get(i + 2).is_none_or(|&b| is_white(b) || is_delim(b))
            {
                self.pos = i + 2;
                return;
            }
            i += 1;
        }
        self.pos = data.len();
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        loop {
            self.skip_white_and_comments();
            let b = self.peek()?;
            let next = self.data.get(self.pos + 1).copied();
            let token = match (b, next) {
                (b'/', _) => self.name(),
                (b'(', _) => self.literal_string(),
                (b'<', Some(b'<')) => {
                    self.pos += 2;
                    Token::DictStart
                }
                (b'>', Some(b'>')) => {
                    self.pos += 2;
                    Token::DictEnd
                }
                (b'<', _) => self.hex_string(),
                (b'[', _) => {
                    self.pos += 1;
                    Token::ArrayStart
                }
                (b']', _) => {
                    self.pos += 1;
                    Token::ArrayEnd
                }
                _ if is_regular(b) => self.number_or_keyword(),
                _ => {
                    // A stray delimiter (`)`, `>`, braces): skip it and carry on.
                    self.pos += 1;
                    continue;
                }
            };
            return Some(token);
        }
    }
}

/// Parses a PDF number leniently (`+.5`, `-3.`, `4.2.1` as 4.2); `None` if not numeric.
pub(super) fn parse_number(word: &[u8]) -> Option<f32> {
    let (neg, digits) = match word.first()? {
        b'-' => (true, &word[1..]),
        b'+' => (false, &word[1..]),
        _ => (false, word),
    };
    // Some producers write `--5`; treat repeated signs as one.
    let digits = match digits.first() {
        Some(b'-' | b'+') => &digits[1..],
        _ => digits,
    };
    let mut value = 0f64;
    let mut scale = 0f64;
    let mut seen_digit = false;
    for &b in digits {
        match b {
            b'0'..=b'9' if scale == 0.0 => {
                value = value * 10.0 + f64::from(b - b'0');
                seen_digit = true;
            }
            b'0'..=b'9' => {
                value += f64::from(b - b'0') * scale;
                scale /= 10.0;
                seen_digit = true;
            }
            b'.' if scale == 0.0 => scale = 0.1,
            b'.' => break,
            _ => return None,
        }
    }
    // Clamp so later arithmetic never meets infinities from absurd operands.
    let v = (if neg { -value } else { value }).clamp(-1e9, 1e9) as f32;
    seen_digit.then_some(v)
}

fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        i += 1;
        match b {
            b'\\' => {
                let Some(&e) = raw.get(i) else { break };
                i += 1;
                match e {
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'\r' => i += usize::from(raw.get(i) == Some(&b'\n')),
                    b'\n' => {}
                    b'0'..=b'7' => {
                        let mut v = u32::from(e - b'0');
                        for _ in 0..2 {
                            match raw.get(i) {
                                Some(&d @ b'0'..=b'7') => {
                                    v = v * 8 + u32::from(d - b'0');
                                    i += 1;
                                }
                                _ => break,
                            }
                        }
                        out.push((v & 0xff) as u8);
                    }
                    other => out.push(other),
                }
            }
            // An unescaped end of line inside a string reads as a single \n.
            b'\r' => {
                i += usize::from(raw.get(i) == Some(&b'\n'));
                out.push(b'\n');
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(s: &[u8]) -> Vec<Token<'_>> {
        Lexer::new(s).collect()
    }

    #[test]
    fn reads_operators_operands_and_strings() {
        let t = tokens(b"BT /F1 12 Tf (a\\(b\\)c) Tj [(x) -250 <4142>] TJ ET");
        assert_eq!(t[1], Token::Name(Cow::Borrowed(b"F1")));
        assert_eq!(t[2], Token::Number(12.0));
        assert_eq!(t[4], Token::Str(Cow::Owned(b"a(b)c".to_vec())));
        assert_eq!(t[8], Token::Number(-250.0));
        assert_eq!(t[9], Token::Str(Cow::Owned(b"AB".to_vec())));
        assert_eq!(t.last(), Some(&Token::Keyword(b"ET")));
    }

    #[test]
    fn octal_escapes_nested_parens_and_odd_hex() {
        let t = tokens(b"(\\101\\60x(y)) <414>");
        assert_eq!(t[0], Token::Str(Cow::Owned(b"A0x(y)".to_vec())));
        assert_eq!(t[1], Token::Str(Cow::Owned(vec![0x41, 0x40])));
    }

    #[test]
    fn numbers_are_lenient_and_words_are_not_numbers() {
        assert_eq!(parse_number(b"-.5"), Some(-0.5));
        assert_eq!(parse_number(b"--3"), Some(-3.0));
        assert_eq!(parse_number(b"4."), Some(4.0));
        assert_eq!(parse_number(b"1e5"), None);
        assert_eq!(parse_number(b"-"), None);
        assert_eq!(parse_number(b"99999999999999"), Some(1e9));
    }

    #[test]
    fn name_escapes_and_comments() {
        let t = tokens(b"% comment\n/A#20B Do");
        assert_eq!(t[0], Token::Name(Cow::Owned(b"A B".to_vec())));
        assert_eq!(t[1], Token::Keyword(b"Do"));
    }

    #[test]
    fn inline_image_data_is_skipped() {
        let mut lx = Lexer::new(b"BI /W 1 ID \xffEI\x01 \nEI (after) Tj");
        for tok in lx.by_ref() {
            if tok == Token::Keyword(b"ID") {
                break;
            }
        }
        lx.skip_inline_image_data();
        assert_eq!(lx.next(), Some(Token::Str(Cow::Borrowed(b"after"))));
    }

    #[test]
    fn garbage_and_unterminated_input_end_cleanly() {
        assert!(tokens(b")>}{ (unterminated").len() == 1);
        assert_eq!(tokens(b"<4"), vec![Token::Str(Cow::Owned(vec![0x40]))]);
    }
}
