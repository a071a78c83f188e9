//! PDF text extraction: bytes in, one text per page out.
//!
//! lopdf parses the file structure and decrypts it; everything from the content streams on
//! is ours: a content interpreter that places every glyph (`interp`, `text`), font decoding
//! to Unicode (`font`), and a layout stage that rebuilds lines, columns and paragraphs in
//! reading order (`layout`), drops running heads and page numbers (`furniture`), and
//! normalises the text (NFKC). See the README for why this split was chosen.

// Explicit paths: the fuzz target compiles this file on its own with `#[path]`, and rustc
// then looks for child modules next to the file instead of in `pdf/`.
#[path = "pdf/annots.rs"]
mod annots;
#[path = "pdf/data.rs"]
mod data;
#[path = "pdf/document.rs"]
mod document;
#[path = "pdf/font.rs"]
mod font;
#[path = "pdf/furniture.rs"]
mod furniture;
#[path = "pdf/garbled.rs"]
pub mod garbled;
#[path = "pdf/geometry.rs"]
mod geometry;
#[path = "pdf/interp.rs"]
mod interp;
#[path = "pdf/layout.rs"]
mod layout;
#[path = "pdf/lexer.rs"]
mod lexer;
#[path = "pdf/objects.rs"]
mod objects;
#[path = "pdf/text.rs"]
mod text;

use std::panic::{AssertUnwindSafe, catch_unwind};

use unicode_normalization::UnicodeNormalization;

use interp::{Budget, DocCache, Interpreter};
use layout::Line;

/// Drawing operators run per document before giving up on it: about a second of work.
/// Real documents use a few thousand per page (freeculture.pdf: 420, slides: 4,800).
const MAX_OPERATORS: u64 = 40_000_000;

/// One page of extracted text, 1-based page number as printed by the PDF's page order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PdfPage {
    /// Position in the document's page order, starting at 1.
    pub number: u32,
    /// The page's text: lines separated by `\n`, paragraphs by a blank line; empty when
    /// the page has no extractable text or is garbled.
    pub text: String,
    /// The page's text was garbled (see [`garbled`]) and has been dropped.
    pub garbled: bool,
}

/// Why a PDF yielded no text. Every variant is permanent: retrying the same bytes gives the
/// same answer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PdfError {
    /// Needs a password we don't have, or the one given is wrong.
    #[error("the PDF is encrypted and no valid password was given")]
    Encrypted,
    /// Parsed fine, but no page has extractable text (an image-only scan, say).
    #[error("the PDF has no extractable text (image-only scan?)")]
    NoText,
    /// The bytes are not a PDF (no `%PDF-` header).
    #[error("not a PDF: no %PDF- header")]
    NotPdf,
    /// More pages than the limit allows.
    #[error("the PDF has {pages} pages, more than the limit of {max}")]
    TooManyPages {
        /// Pages in the document.
        pages: usize,
        /// The limit.
        max: usize,
    },
    /// More text than the limit allows; extraction stopped.
    #[error("the PDF's text is longer than the limit of {max} characters")]
    TooLong {
        /// The limit, in characters.
        max: usize,
    },
    /// A content stream or form decodes to more than the limit (a decompression bomb, or a
    /// page too large to read within the memory the extractor has).
    #[error("a content stream of the PDF decodes to more than the limit of {max} bytes")]
    StreamTooLarge {
        /// The limit, in bytes.
        max: usize,
    },
    /// Every page with text is garbled (fonts that map to no Unicode): nothing readable is left.
    #[error("no readable text: {pages} page(s) are garbled (fonts without a Unicode mapping; the document needs OCR)")]
    Garbled {
        /// Pages found garbled.
        pages: usize,
    },
    /// Anything else, said concisely for an operator.
    #[error("corrupt PDF: {0}")]
    Corrupt(String),
}

/// Bounds on what one document may produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PdfLimits {
    /// Documents with more pages fail with [`PdfError::TooManyPages`].
    pub max_pages: usize,
    /// Documents with more characters of text fail with [`PdfError::TooLong`].
    pub max_chars: usize,
    /// Bytes one page's content streams (or one form) may decode to; more fails with
    /// [`PdfError::StreamTooLarge`].
    pub max_stream_bytes: usize,
}

impl Default for PdfLimits {
    /// 2,000 pages, 20 million characters and 32 MiB per page: a long book and a dense
    /// vector map are well inside all three.
    fn default() -> PdfLimits {
        PdfLimits { max_pages: 2_000, max_chars: 20_000_000, max_stream_bytes: 32 << 20 }
    }
}

/// Extracts the text of every page.
///
/// Pure: no I/O and no global state. Pages without text are kept (with empty text) so
/// page numbers stay right.
///
/// # Errors
///
/// [`PdfError::NotPdf`] without a PDF header, [`PdfError::Encrypted`] when no valid
/// password is available, [`PdfError::TooManyPages`] / [`PdfError::TooLong`] past the
/// limits, [`PdfError::NoText`] when no page has text, [`PdfError::Corrupt`] otherwise.
pub fn extract_pdf(bytes: &[u8], password: Option<&str>, limits: &PdfLimits) -> Result<Vec<PdfPage>, PdfError> {
    if !document::has_header(bytes) {
        return Err(PdfError::NotPdf);
    }
    // lopdf is hardened but not proven panic-free on hostile input; a panic there must
    // cost this document only.
    catch_unwind(AssertUnwindSafe(|| extract(bytes, password, limits)))
        .unwrap_or_else(|_| Err(PdfError::Corrupt("the PDF parser failed on malformed data".into())))
}

fn extract(bytes: &[u8], password: Option<&str>, limits: &PdfLimits) -> Result<Vec<PdfPage>, PdfError> {
    let doc = document::open(bytes, password)?;
    let ids = document::pages(&doc);
    if ids.is_empty() {
        return Err(PdfError::Corrupt("the document has no pages".into()));
    }
    if ids.len() > limits.max_pages {
        return Err(PdfError::TooManyPages { pages: ids.len(), max: limits.max_pages });
    }
    // Layout and furniture removal change the count a little; the exact check is on the
    // final text, this one only stops runaway work early.
    let glyph_cap = limits.max_chars.saturating_mul(2).saturating_add(10_000);
    let mut budget = Budget {
        operators: MAX_OPERATORS,
        glyphs: u64::try_from(glyph_cap).unwrap_or(u64::MAX),
        max_stream: limits.max_stream_bytes,
        oversized_stream: false,
    };
    let mut cache = DocCache::default();
    let mut pages: Vec<Vec<Line>> = Vec::with_capacity(ids.len());
    let mut heights = Vec::with_capacity(ids.len());
    for id in ids {
        let (lines, height) = read_page(&doc, id, &mut cache, &mut budget);
        if budget.oversized_stream {
            return Err(PdfError::StreamTooLarge { max: limits.max_stream_bytes });
        }
        if budget.glyphs == 0 {
            return Err(PdfError::TooLong { max: limits.max_chars });
        }
        if budget.operators == 0 {
            return Err(PdfError::Corrupt(format!("more than {MAX_OPERATORS} drawing operations")));
        }
        pages.push(lines);
        heights.push(height);
    }
    furniture::strip(&mut pages, &heights);
    finish(pages, limits)
}

/// One page's lines in reading order, and its height; a page whose dictionary cannot be
/// read is empty (so later pages keep their numbers).
fn read_page(
    doc: &lopdf::Document,
    id: lopdf::ObjectId,
    cache: &mut DocCache,
    budget: &mut Budget,
) -> (Vec<Line>, f32) {
    let Some(page) = document::page(doc, id) else {
        return (Vec::new(), 0.0);
    };
    let Ok(content) = document::page_content(doc, page.dict, budget.max_stream) else {
        budget.oversized_stream = true;
        return (Vec::new(), 0.0);
    };
    let mut interp = Interpreter::new(doc, cache, budget, page.frame.to_display);
    interp.run(&content, page.resources);
    annots::draw(&mut interp, doc, page.dict);
    let glyphs = interp.finish();
    let lines = layout::page_lines(&glyphs, page.frame.width, page.frame.height);
    (lines, page.frame.height)
}

/// Renders, normalises and checks the pages.
fn finish(pages: Vec<Vec<Line>>, limits: &PdfLimits) -> Result<Vec<PdfPage>, PdfError> {
    let mut total = 0usize;
    let mut out = Vec::with_capacity(pages.len());
    for (i, lines) in pages.into_iter().enumerate() {
        let text = render(&lines);
        total = total.saturating_add(text.chars().count());
        if total > limits.max_chars {
            return Err(PdfError::TooLong { max: limits.max_chars });
        }
        let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let garbled = garbled::is_garbled(&text);
        let text = if garbled { String::new() } else { text };
        out.push(PdfPage { number, text, garbled });
    }
    if out.iter().all(|p| p.text.is_empty()) {
        let garbled = out.iter().filter(|p| p.garbled).count();
        return Err(if garbled > 0 { PdfError::Garbled { pages: garbled } } else { PdfError::NoText });
    }
    Ok(out)
}

/// Joins a page's lines: `\n` between lines, a blank line before a paragraph; NFKC, so
/// ligatures, full-width forms and presentation forms become plain letters.
fn render(lines: &[Line]) -> String {
    let mut raw = String::new();
    for line in lines {
        if !raw.is_empty() {
            raw.push_str(if line.para_start { "\n\n" } else { "\n" });
        }
        raw.push_str(line.text.trim());
    }
    raw.nfkc().filter(|&c| !c.is_control() || c == '\n').collect::<String>().trim().to_owned()
}
