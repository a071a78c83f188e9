//! HTML: visible text through html5ever's spec-compliant tokenizer (entities decoded, scripts,
//! styles, templates and comments dropped, block elements turned into line/paragraph breaks).
//!
//! The tokenizer alone is enough: it streams (memory stays proportional to the text, not to a
//! DOM), and the sink switches it into raw-text states for `<script>`/`<style>` the way the tree
//! builder would, so their content never surfaces as text.

use std::cell::RefCell;

use encoding_rs::Encoding;
use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{BufferQueue, Tag, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts};

use super::error::ExtractError;
use super::output::{Break, TextBuilder};

/// Whether text is unmistakably an HTML document (doctype or root element at the start).
pub(crate) fn looks_like_html(text: &str) -> bool {
    let head: String = text
        .trim_start_matches(['\u{feff}', ' ', '\t', '\r', '\n'])
        .chars()
        .take(1024)
        .collect::<String>()
        .to_ascii_lowercase();
    head.starts_with("<!doctype html")
        || head.starts_with("<html")
        || (head.starts_with('<') && ["<html", "<head", "<body"].iter().any(|t| head.contains(t)))
}

/// The encoding a `<meta charset>` / `<meta http-equiv content="…charset=…">` names in the first
/// 1024 bytes (the window browsers pre-scan), used when the bytes are not UTF-8.
pub(crate) fn meta_charset(bytes: &[u8]) -> Option<&'static Encoding> {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]).to_ascii_lowercase();
    head.match_indices("<meta").find_map(|(pos, _)| {
        let tag = &head[pos..];
        let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
        let value = tag.split_once("charset=")?.1.trim_start_matches(['"', '\'']);
        let end = value
            .find(|c: char| c == '"' || c == '\'' || c == ';' || c == '/' || c.is_whitespace())
            .unwrap_or(value.len());
        Encoding::for_label(&value.as_bytes()[..end])
    })
}

/// Extracts the visible text of an HTML document.
///
/// # Errors
///
/// [`ExtractError::LimitExceeded`] over `max_chars`, [`ExtractError::NoText`] if nothing visible.
pub(crate) fn extract(html: &str, max_chars: usize) -> Result<String, ExtractError> {
    let sink = Sink(RefCell::new(State::new(max_chars)));
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(html));
    let tokenizer = Tokenizer::new(sink, TokenizerOpts::default());
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    let state = tokenizer.sink.0.into_inner();
    if let Some(err) = state.error {
        return Err(err);
    }
    let text = state.out.finish();
    super::text::check_text(&text, max_chars)?;
    Ok(text)
}

/// Elements whose content is never shown.
const HIDDEN_RAW: &[&str] = &["script", "style", "noscript", "iframe", "noembed", "noframes"];
/// Elements that start a new paragraph.
const PARAGRAPH_BLOCKS: &[&str] = &[
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "dl",
    "table",
    "blockquote",
    "pre",
    "xmp",
    "section",
    "article",
    "header",
    "footer",
    "nav",
    "aside",
    "main",
    "figure",
    "form",
    "fieldset",
    "address",
    "details",
    "hr",
    "title",
    "hgroup",
    "menu",
    "body",
];
/// Elements that start a new line.
const LINE_BLOCKS: &[&str] = &[
    "div",
    "li",
    "tr",
    "dt",
    "dd",
    "br",
    "figcaption",
    "summary",
    "legend",
    "caption",
    "option",
    "textarea",
    "center",
    "thead",
    "tbody",
    "tfoot",
];

struct Sink(RefCell<State>);

struct State {
    out: TextBuilder,
    error: Option<ExtractError>,
    /// Inside a raw element whose text is hidden (its name), until its end tag.
    hidden_raw: Option<&'static str>,
    /// Depth of `<template>` elements: their content is inert, never rendered.
    template_depth: usize,
    /// Depth of whitespace-preserving elements.
    pre_depth: usize,
    /// Open lists: `None` for bullets, `Some(next number)` for ordered lists.
    lists: Vec<Option<u64>>,
}

impl State {
    fn new(max_chars: usize) -> Self {
        Self {
            out: TextBuilder::new(max_chars),
            error: None,
            hidden_raw: None,
            template_depth: 0,
            pre_depth: 0,
            lists: Vec::new(),
        }
    }

    fn tag(&mut self, tag: &Tag) -> Result<TokenSinkResult<()>, ExtractError> {
        let name: &str = &tag.name;
        if let Some(hidden) = self.hidden_raw {
            if tag.kind == TagKind::EndTag && name == hidden {
                self.hidden_raw = None;
            }
            return Ok(TokenSinkResult::Continue);
        }
        if name == "template" {
            self.template_depth = match tag.kind {
                TagKind::StartTag => self.template_depth + 1,
                TagKind::EndTag => self.template_depth.saturating_sub(1),
            };
            return Ok(TokenSinkResult::Continue);
        }
        if self.template_depth > 0 {
            return Ok(TokenSinkResult::Continue);
        }
        match tag.kind {
            TagKind::StartTag => self.start_tag(tag),
            TagKind::EndTag => {
                self.end_tag(name);
                Ok(TokenSinkResult::Continue)
            }
        }
    }

    fn start_tag(&mut self, tag: &Tag) -> Result<TokenSinkResult<()>, ExtractError> {
        let name: &str = &tag.name;
        if let Some(hidden) = HIDDEN_RAW.iter().find(|&&h| h == name) {
            self.hidden_raw = Some(hidden);
            let kind = if name == "script" { RawKind::ScriptData } else { RawKind::Rawtext };
            return Ok(TokenSinkResult::RawData(kind));
        }
        self.block_break(name);
        match name {
            "pre" | "listing" => self.pre_depth += 1,
            "ul" | "menu" => self.lists.push(None),
            "ol" => self.lists.push(Some(list_start(tag))),
            "li" => self.list_marker()?,
            "td" | "th" => self.out.push_break(Break::Cell),
            _ => {}
        }
        Ok(match name {
            "title" | "textarea" => TokenSinkResult::RawData(RawKind::Rcdata),
            "xmp" => TokenSinkResult::RawData(RawKind::Rawtext),
            "plaintext" => TokenSinkResult::Plaintext,
            _ => TokenSinkResult::Continue,
        })
    }

    fn end_tag(&mut self, name: &str) {
        self.block_break(name);
        match name {
            "pre" | "listing" => self.pre_depth = self.pre_depth.saturating_sub(1),
            "ul" | "ol" | "menu" => {
                self.lists.pop();
            }
            _ => {}
        }
    }

    fn block_break(&mut self, name: &str) {
        if PARAGRAPH_BLOCKS.contains(&name) {
            self.out.push_break(Break::Paragraph);
        } else if LINE_BLOCKS.contains(&name) {
            self.out.push_break(Break::Line);
        }
    }

    fn list_marker(&mut self) -> Result<(), ExtractError> {
        let indent = "  ".repeat(self.lists.len().saturating_sub(1));
        let marker = match self.lists.last_mut() {
            Some(Some(next)) => {
                let marker = format!("{indent}{next}. ");
                *next += 1;
                marker
            }
            _ => format!("{indent}- "),
        };
        self.out.push_str(&marker)
    }

    fn characters(&mut self, text: &str) -> Result<(), ExtractError> {
        if self.hidden_raw.is_some() || self.template_depth > 0 {
            return Ok(());
        }
        if self.pre_depth > 0 {
            return self.out.push_str(text);
        }
        // Outside <pre>, any run of ASCII whitespace renders as one space.
        let is_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{c}');
        if text.starts_with(is_space) {
            self.out.push_break(Break::Space);
        }
        for (i, word) in text.split(is_space).filter(|w| !w.is_empty()).enumerate() {
            if i > 0 {
                self.out.push_break(Break::Space);
            }
            self.out.push_str(word)?;
        }
        if text.ends_with(is_space) {
            self.out.push_break(Break::Space);
        }
        Ok(())
    }
}

fn list_start(tag: &Tag) -> u64 {
    tag.attrs
        .iter()
        .find(|attr| &*attr.name.local == "start")
        .and_then(|attr| attr.value.trim().parse().ok())
        .unwrap_or(1)
}

impl TokenSink for Sink {
    type Handle = ();

    fn process_token(&self, token: Token, _line_number: u64) -> TokenSinkResult<()> {
        let mut state = self.0.borrow_mut();
        if state.error.is_some() {
            return TokenSinkResult::Continue;
        }
        let result = match token {
            Token::TagToken(tag) => state.tag(&tag),
            Token::CharacterTokens(text) => state.characters(&text).map(|()| TokenSinkResult::Continue),
            _ => Ok(TokenSinkResult::Continue),
        };
        result.unwrap_or_else(|err| {
            state.error = Some(err);
            TokenSinkResult::Continue
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_text_only_with_breaks_and_entities() {
        let html = "<!DOCTYPE html><html><head><title>T &amp; more</title>\
            <style>p { color: red }</style><script>if (a < b) { x = '</p>'; }</script></head>\
            <body><!-- hidden --><h1>Caf&eacute;</h1><p>one\n   two&nbsp;three</p>\
            <ul><li>a</li><li>b</li></ul><ol start=3><li>c</li></ol>\
            <table><tr><td>x</td><td>y</td></tr><tr><td>z</td></tr></table>\
            <template><p>inert</p></template><pre>  keep\n   this</pre></body></html>";
        let text = extract(html, 10_000).unwrap_or_default();
        assert_eq!(text, "T & more\n\nCafé\n\none two\u{a0}three\n\n- a\n- b\n\n3. c\n\nx | y\nz\n\n  keep\n   this");
    }

    #[test]
    fn script_only_page_has_no_text() {
        let html = "<html><script>document.write('hi')</script></html>";
        assert_eq!(extract(html, 100), Err(ExtractError::NoText));
    }

    #[test]
    fn meta_charset_is_found() {
        let bytes = b"<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=ISO-8859-2\">";
        assert_eq!(meta_charset(bytes).map(|e| e.name()), Some("ISO-8859-2"));
        assert_eq!(meta_charset(b"<meta charset='koi8-r'>").map(|e| e.name()), Some("KOI8-R"));
    }
}
