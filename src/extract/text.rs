//! Plain text: encoding detection (BOM, UTF-8, declared charset, windows-1252 fallback) and
//! newline/control-character normalisation shared by the text-based formats.

use encoding_rs::{Encoding, UTF_8, WINDOWS_1252};

use super::error::{ExtractError, Limit};
use super::output::is_dropped_control;

/// Decodes bytes to text.
///
/// Order: a byte-order mark decides (UTF-8, UTF-16 LE/BE); then valid UTF-8; then mostly-valid
/// UTF-8 (a few bad bytes in a UTF-8 file should not turn every accented letter into mojibake);
/// then the charset the sender declared or the document names (`fallback`); then
/// windows-1252, the superset of Latin-1 that legacy Western files almost always are.
pub(crate) fn decode(bytes: &[u8], fallback: Option<&'static Encoding>) -> String {
    if let Some((encoding, bom_len)) = Encoding::for_bom(bytes) {
        let body = bytes.get(bom_len..).unwrap_or_default();
        return encoding.decode_without_bom_handling(body).0.into_owned();
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        return text.to_owned();
    }
    let encoding = if mostly_utf8(bytes) { UTF_8 } else { fallback.unwrap_or(WINDOWS_1252) };
    encoding.decode_without_bom_handling(bytes).0.into_owned()
}

/// Whether invalid sequences are rare next to valid multi-byte characters (a damaged UTF-8
/// file rather than a legacy single-byte one, where nearly every high byte is "invalid").
fn mostly_utf8(bytes: &[u8]) -> bool {
    let (mut multibyte, mut invalid) = (0usize, 0usize);
    for chunk in bytes.utf8_chunks() {
        multibyte += chunk.valid().chars().filter(|c| !c.is_ascii()).count();
        invalid += usize::from(!chunk.invalid().is_empty());
    }
    multibyte >= 4 * invalid.max(1)
}

/// The encoding named by a `charset=` parameter of a MIME content type, if any.
pub(crate) fn charset_from_content_type(content_type: &str) -> Option<&'static Encoding> {
    content_type.split(';').skip(1).find_map(|param| {
        let (key, value) = param.split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("charset") {
            return None;
        }
        Encoding::for_label(value.trim().trim_matches(['"', '\'']).as_bytes())
    })
}

/// Normalises line endings (CRLF and lone CR become LF, form feed becomes LF), drops a leading
/// BOM and control characters other than tab and line feed.
pub(crate) fn normalize(text: &str) -> String {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                chars.next_if_eq(&'\n');
                out.push('\n');
            }
            '\u{c}' => out.push('\n'),
            c if is_dropped_control(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Checks the character limit and that there is any text at all.
///
/// # Errors
///
/// [`ExtractError::NoText`] for whitespace-only text, [`ExtractError::LimitExceeded`] over
/// `max_chars`.
pub(crate) fn check_text(text: &str, max_chars: usize) -> Result<(), ExtractError> {
    if text.trim().is_empty() {
        return Err(ExtractError::NoText);
    }
    // Byte length bounds the character count from above, so most texts skip the count.
    if text.len() > max_chars && text.chars().count() > max_chars {
        return Err(ExtractError::LimitExceeded(Limit::Chars { max: max_chars }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_with_bom_is_decoded() {
        let mut le = vec![0xFF, 0xFE];
        le.extend("héllo".encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(decode(&le, None), "héllo");
        let mut be = vec![0xFE, 0xFF];
        be.extend("héllo".encode_utf16().flat_map(u16::to_be_bytes));
        assert_eq!(decode(&be, None), "héllo");
    }

    #[test]
    fn latin1_bytes_fall_back_to_windows_1252() {
        assert_eq!(decode(b"caf\xe9 \x80", None), "café €");
    }

    #[test]
    fn a_stray_bad_byte_in_utf8_keeps_utf8() {
        let bytes = b"\xc3\xa9t\xc3\xa9 \xc3\xa0 la fa\xc3\xa7on na\xc3\xafve \xff end";
        assert!(decode(bytes, None).starts_with("été à la façon naïve"));
    }

    #[test]
    fn declared_charset_is_used_for_non_utf8() {
        let koi8 = charset_from_content_type("text/plain; charset=\"KOI8-R\"");
        assert_eq!(decode(b"\xf0\xd2\xc9\xd7\xc5\xd4", koi8), "Привет");
    }

    #[test]
    fn line_endings_and_controls_are_normalised() {
        assert_eq!(normalize("\u{feff}a\r\nb\rc\u{c}d\u{0}e\tf"), "a\nb\nc\nde\tf");
    }
}
