//! Type detection by content (magic bytes and structure). File names and declared content types
//! are only hints, used to pick between text flavours and to name a mismatch.

use super::DocKind;

/// What the bytes are, judged by content alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// No bytes at all.
    Empty,
    /// A `%PDF-` header near the start.
    Pdf,
    /// A zip archive (DOCX candidate; the DOCX reader decides).
    Zip,
    /// An OLE2 compound file: legacy Office binaries, or an encrypted OOXML package.
    Ole,
    /// A recognised non-document binary format, or data that is not text.
    Binary(&'static str),
    /// Something that decodes as text (plain, Markdown or HTML).
    Text,
}

/// PDF readers accept junk before the header; 1024 bytes is the window Acrobat tolerates.
const PDF_HEADER_WINDOW: usize = 1024;
const OLE_MAGIC: &[u8] = b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1";

/// Binary formats we recognise only to name them in the failure.
const BINARY_MAGIC: &[(&[u8], &str)] = &[
    (b"\x89PNG\r\n\x1a\n", "png image"),
    (b"\xFF\xD8\xFF", "jpeg image"),
    (b"GIF87a", "gif image"),
    (b"GIF89a", "gif image"),
    (b"II*\0", "tiff image"),
    (b"MM\0*", "tiff image"),
    (b"\x1F\x8B", "gzip archive"),
    (b"7z\xBC\xAF\x27\x1C", "7z archive"),
    (b"Rar!\x1A\x07", "rar archive"),
    (b"\xFD7zXZ\0", "xz archive"),
    (b"BZh", "bzip2 archive"),
    (b"\x7FELF", "ELF executable"),
    (b"{\\rtf", "rtf document"),
    (b"%!PS", "postscript document"),
    (b"OggS", "ogg media"),
    (b"fLaC", "flac audio"),
    (b"ID3", "mp3 audio"),
];

/// Classifies bytes by content.
pub(crate) fn sniff(bytes: &[u8]) -> Sniffed {
    if bytes.is_empty() {
        return Sniffed::Empty;
    }
    let head = &bytes[..bytes.len().min(PDF_HEADER_WINDOW)];
    if memfind(head, b"%PDF-").is_some() {
        return Sniffed::Pdf;
    }
    if [b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"].iter().any(|magic| bytes.starts_with(*magic)) {
        return Sniffed::Zip;
    }
    if bytes.starts_with(OLE_MAGIC) {
        return Sniffed::Ole;
    }
    if let Some((_, name)) = BINARY_MAGIC.iter().find(|(magic, _)| bytes.starts_with(magic)) {
        return Sniffed::Binary(name);
    }
    if is_riff_webp(bytes) {
        return Sniffed::Binary("webp image");
    }
    if encoding_rs::Encoding::for_bom(bytes).is_some() || !looks_binary(bytes) {
        return Sniffed::Text;
    }
    Sniffed::Binary("binary data")
}

fn is_riff_webp(bytes: &[u8]) -> bool {
    bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP")
}

/// Whether data is not text: any NUL byte in the first 64 KiB, or more than 1 % control bytes
/// other than the whitespace and escape controls text files carry (tab, LF, CR, FF, ESC).
fn looks_binary(bytes: &[u8]) -> bool {
    let window = &bytes[..bytes.len().min(64 * 1024)];
    if window.contains(&0) {
        return true;
    }
    let controls = bytes.iter().filter(|&&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0C | 0x1B)).count();
    controls * 100 > bytes.len()
}

/// Whether an OLE2 compound file is an encrypted OOXML package: Office stores an encrypted
/// DOCX/XLSX as OLE with `EncryptionInfo` and `EncryptedPackage` streams, whose names appear
/// UTF-16LE in the directory sectors.
pub(crate) fn ole_is_encrypted_package(bytes: &[u8]) -> bool {
    let name: Vec<u8> = "EncryptedPackage".encode_utf16().flat_map(u16::to_le_bytes).collect();
    memfind(bytes, &name).is_some()
}

/// Position of `needle` in `haystack`.
pub(crate) fn memfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The document kind the sender declared (content type first, then file extension), if any.
pub(crate) fn declared_kind(filename: Option<&str>, content_type: Option<&str>) -> Option<DocKind> {
    content_type.and_then(kind_from_content_type).or_else(|| filename.and_then(kind_from_filename))
}

fn kind_from_content_type(content_type: &str) -> Option<DocKind> {
    let essence = content_type.split(';').next()?.trim().to_ascii_lowercase();
    Some(match essence.as_str() {
        "application/pdf" | "application/x-pdf" => DocKind::Pdf,
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
        | "application/vnd.ms-word.document.macroenabled.12" => DocKind::Docx,
        "text/html" | "application/xhtml+xml" => DocKind::Html,
        "text/markdown" | "text/x-markdown" => DocKind::Markdown,
        "text/plain" => DocKind::Text,
        _ => return None,
    })
}

fn kind_from_filename(filename: &str) -> Option<DocKind> {
    let (_, ext) = filename.rsplit_once('.')?;
    Some(match ext.to_ascii_lowercase().as_str() {
        "pdf" => DocKind::Pdf,
        "docx" | "docm" | "dotx" | "dotm" => DocKind::Docx,
        "html" | "htm" | "xhtml" => DocKind::Html,
        "md" | "markdown" | "mdown" | "mkd" | "mkdn" => DocKind::Markdown,
        "txt" | "text" => DocKind::Text,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_decides_not_the_name() {
        assert_eq!(sniff(b""), Sniffed::Empty);
        assert_eq!(sniff(b"junk\n%PDF-1.7\n"), Sniffed::Pdf);
        assert_eq!(sniff(b"PK\x03\x04rest"), Sniffed::Zip);
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nxx"), Sniffed::Binary("png image"));
        assert_eq!(sniff(b"plain words\r\n"), Sniffed::Text);
        assert_eq!(sniff(b"\xFF\xFEa\0b\0"), Sniffed::Text);
        assert_eq!(sniff(b"abc\0def"), Sniffed::Binary("binary data"));
    }

    #[test]
    fn declared_kind_prefers_content_type_then_extension() {
        assert_eq!(declared_kind(Some("a.PDF"), None), Some(DocKind::Pdf));
        assert_eq!(declared_kind(Some("a.pdf"), Some("text/markdown; charset=utf-8")), Some(DocKind::Markdown));
        assert_eq!(declared_kind(Some("a.md"), Some("application/octet-stream")), Some(DocKind::Markdown));
        assert_eq!(declared_kind(Some("noext"), None), None);
    }
}
