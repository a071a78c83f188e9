//! Extraction: bytes → text. Type sniffing by content, per-format extractors (plain text,
//! Markdown, HTML, DOCX, PDF), limits, and the sandbox that runs all of it in a child process
//! with a timeout and a memory cap so a hostile or broken file costs one document, not the worker.
//!
//! Pure by design: nothing here knows the database, broker, cache or model.

mod docx;
mod error;
mod html;
mod limits;
mod markdown;
mod output;
pub mod pdf;
mod report;
mod sandbox;
mod sniff;
mod text;

use serde::{Deserialize, Serialize};

pub use error::{ByteLimit, ExtractError, Limit};
pub use limits::ExtractSettings;
pub use report::debug_report;
pub use sandbox::{CHILD_SUBCOMMAND, Fault, Sandbox, child_main};

use sniff::Sniffed;

/// The kind of document the text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocKind {
    /// Plain text.
    Text,
    /// Markdown (the text is the Markdown source).
    Markdown,
    /// HTML (the text is the visible text).
    Html,
    /// PDF (paged).
    Pdf,
    /// Word OOXML document.
    Docx,
}

impl DocKind {
    /// Lowercase name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Markdown => "markdown",
            Self::Html => "html",
            Self::Pdf => "pdf",
            Self::Docx => "docx",
        }
    }
}

impl std::fmt::Display for DocKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Byte range of one page inside [`Extracted::text`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageSpan {
    /// 1-based page number.
    pub number: u32,
    /// Start byte offset (inclusive).
    pub start: usize,
    /// End byte offset (exclusive).
    pub end: usize,
}

/// The text of a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extracted {
    /// What the content was detected as.
    pub kind: DocKind,
    /// The text: LF line endings, no control characters other than tab and LF.
    pub text: String,
    /// Page spans for paged kinds (PDF); empty otherwise.
    pub pages: Vec<PageSpan>,
    /// Pages whose text was garbled (fonts without a Unicode mapping) and was left out, by
    /// number; their spans are empty.
    #[serde(default)]
    pub garbled_pages: Vec<u32>,
}

impl Extracted {
    /// Page numbers with their byte ranges in `text`, the shape the chunker takes.
    pub fn page_ranges(&self) -> Vec<(u32, std::ops::Range<usize>)> {
        self.pages.iter().map(|p| (p.number, p.start..p.end)).collect()
    }
}

/// What the sender told us about a document. Only hints: content decides the type.
#[derive(Clone, Copy, Default)]
pub struct Hints<'a> {
    /// Original file name (its extension is a hint).
    pub filename: Option<&'a str>,
    /// Declared MIME type (a hint; its `charset` parameter is used for legacy text).
    pub content_type: Option<&'a str>,
    /// Password for encrypted documents.
    pub password: Option<&'a str>,
}

impl std::fmt::Debug for Hints<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hints")
            .field("filename", &self.filename)
            .field("content_type", &self.content_type)
            .field("password", &self.password.map(|_| "<redacted>"))
            .finish()
    }
}

/// Owned [`Hints`], for moving into the sandbox.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct OwnedHints {
    /// Original file name.
    pub filename: Option<String>,
    /// Declared MIME type.
    pub content_type: Option<String>,
    /// Password for encrypted documents.
    pub password: Option<String>,
}

impl OwnedHints {
    /// Borrowed view.
    pub fn as_hints(&self) -> Hints<'_> {
        Hints {
            filename: self.filename.as_deref(),
            content_type: self.content_type.as_deref(),
            password: self.password.as_deref(),
        }
    }
}

impl std::fmt::Debug for OwnedHints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_hints().fmt(f)
    }
}

impl From<Hints<'_>> for OwnedHints {
    fn from(hints: Hints<'_>) -> Self {
        Self {
            filename: hints.filename.map(str::to_owned),
            content_type: hints.content_type.map(str::to_owned),
            password: hints.password.map(str::to_owned),
        }
    }
}

/// Pure, in-process extraction (used by the sandbox child, by tests and by fuzz targets).
///
/// # Errors
///
/// See [`ExtractError`]; in-process extraction never returns the sandbox-only variants
/// (`TimedOut`, `Crashed`, `MemoryLimit`, `Internal`).
pub fn extract_in_process(
    bytes: &[u8],
    hints: &Hints<'_>,
    settings: &ExtractSettings,
) -> Result<Extracted, ExtractError> {
    if bytes.len() as u64 > settings.max_file_bytes {
        return Err(ExtractError::TooLarge(ByteLimit { bytes: bytes.len() as u64, max: settings.max_file_bytes }));
    }
    let declared = sniff::declared_kind(hints.filename, hints.content_type);
    match sniff::sniff(bytes) {
        Sniffed::Empty => Err(ExtractError::Empty),
        Sniffed::Pdf => extract_pdf(bytes, hints.password, settings),
        Sniffed::Zip => Ok(unpaged(DocKind::Docx, docx::extract(bytes, settings)?)),
        Sniffed::Ole if sniff::ole_is_encrypted_package(bytes) => Err(ExtractError::Encrypted),
        Sniffed::Ole => Err(unsupported("OLE compound file (legacy .doc/.xls/.ppt)", declared)),
        Sniffed::Binary(name) => Err(unsupported(name, declared)),
        Sniffed::Text => match declared {
            Some(kind @ (DocKind::Pdf | DocKind::Docx)) => Err(unsupported("text", Some(kind))),
            _ => extract_text_family(bytes, hints, declared, settings),
        },
    }
}

/// Names what the content is and, when the sender declared a binary document format the
/// content does not confirm, that mismatch too (e.g. a `.pdf` without a PDF header).
fn unsupported(detected: &str, declared: Option<DocKind>) -> ExtractError {
    let detected = match declared {
        Some(DocKind::Pdf) => format!("{detected} without a %PDF- header, declared as pdf"),
        Some(DocKind::Docx) => format!("{detected}, not a zip package, declared as docx"),
        _ => detected.to_owned(),
    };
    ExtractError::Unsupported { detected }
}

fn unpaged(kind: DocKind, text: String) -> Extracted {
    Extracted { kind, text, pages: Vec::new(), garbled_pages: Vec::new() }
}

/// Plain text, Markdown or HTML: an unmistakable HTML document is HTML whatever it was called;
/// otherwise the declared type decides, and undeclared text is Markdown when it looks like it.
fn extract_text_family(
    bytes: &[u8],
    hints: &Hints<'_>,
    declared: Option<DocKind>,
    settings: &ExtractSettings,
) -> Result<Extracted, ExtractError> {
    let charset = hints.content_type.and_then(text::charset_from_content_type).or_else(|| html::meta_charset(bytes));
    let decoded = text::decode(bytes, charset);
    let kind = if declared == Some(DocKind::Html) || html::looks_like_html(&decoded) {
        DocKind::Html
    } else {
        match declared {
            Some(kind) => kind,
            None if markdown::looks_like_markdown(&decoded) => DocKind::Markdown,
            None => DocKind::Text,
        }
    };
    let text = match kind {
        DocKind::Html => html::extract(&decoded, settings.max_chars)?,
        _ => {
            let text = text::normalize(&decoded);
            text::check_text(&text, settings.max_chars)?;
            text
        }
    };
    Ok(unpaged(kind, text))
}

fn extract_pdf(bytes: &[u8], password: Option<&str>, settings: &ExtractSettings) -> Result<Extracted, ExtractError> {
    let limits = pdf::PdfLimits {
        max_pages: settings.max_pages,
        max_chars: settings.max_chars,
        max_stream_bytes: usize::try_from(settings.pdf_max_stream_bytes).unwrap_or(usize::MAX),
    };
    let pages = pdf::extract_pdf(bytes, password, &limits).map_err(map_pdf_error)?;
    let mut text = String::new();
    let mut spans = Vec::with_capacity(pages.len());
    let garbled_pages = pages.iter().filter(|p| p.garbled).map(|p| p.number).collect();
    for page in pages {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        let start = text.len();
        text.push_str(text::normalize(&page.text).trim_end());
        spans.push(PageSpan { number: page.number, start, end: text.len() });
    }
    Ok(Extracted { kind: DocKind::Pdf, text, pages: spans, garbled_pages })
}

/// Maps the PDF extractor's errors. The catch-all keeps this compiling and correct if the PDF
/// module grows variants: anything unknown is reported as corruption with its message.
fn map_pdf_error(err: pdf::PdfError) -> ExtractError {
    match err {
        pdf::PdfError::Encrypted => ExtractError::Encrypted,
        pdf::PdfError::NoText => ExtractError::NoText,
        pdf::PdfError::NotPdf => ExtractError::Unsupported { detected: "not a PDF (no %PDF- header)".to_owned() },
        pdf::PdfError::TooManyPages { pages, max } => ExtractError::LimitExceeded(Limit::Pages { pages, max }),
        pdf::PdfError::TooLong { max: max_chars } => ExtractError::LimitExceeded(Limit::Chars { max: max_chars }),
        pdf::PdfError::StreamTooLarge { max } => ExtractError::LimitExceeded(Limit::PdfStream { max: max as u64 }),
        pdf::PdfError::Garbled { pages } => ExtractError::Garbled { pages: u32::try_from(pages).unwrap_or(u32::MAX) },
        other => ExtractError::Corrupt(other.to_string()),
    }
}
