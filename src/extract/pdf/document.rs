//! Opening a PDF with lopdf: header check, decryption, the page list and each page's
//! inherited attributes.

use lopdf::{Dictionary, Document, LoadOptions, Object, ObjectId};

use super::PdfError;
use super::geometry::PageFrame;
use super::objects::{self, StreamError};

/// How far into the file the `%PDF-` header may start (readers accept leading junk).
const HEADER_WINDOW: usize = 1024;
/// Bytes one object or cross-reference stream may inflate to while loading.
const MAX_LOAD_STREAM: usize = 64 << 20;
/// Levels of `/Parent` followed for inherited page attributes.
const MAX_TREE_DEPTH: usize = 64;
/// US Letter, for pages with no usable box.
const DEFAULT_BOX: [f32; 4] = [0.0, 0.0, 612.0, 792.0];

/// Whether the bytes start (near enough) with a PDF header.
pub(super) fn has_header(bytes: &[u8]) -> bool {
    let window = &bytes[..bytes.len().min(HEADER_WINDOW)];
    window.windows(5).any(|w| w == b"%PDF-")
}

/// Loads and, if needed, decrypts a document.
pub(super) fn open(bytes: &[u8], password: Option<&str>) -> Result<Document, PdfError> {
    let doc = match load(bytes, password) {
        // A password lopdf could not use: see whether we can (below).
        Err(lopdf::Error::InvalidPassword) if password.is_some() => load(bytes, None),
        other => other,
    }
    .map_err(load_error)?;
    // lopdf keeps its encryption state when it decrypted the file itself.
    if !doc.trailer.has(b"Encrypt") || doc.was_encrypted() {
        return Ok(recover_streams(doc, bytes));
    }
    // lopdf could not decrypt while loading, and then loads no objects at all. Two valid
    // shapes trip it up besides a wrong password: `/Encrypt` as a direct dictionary (it only
    // follows a reference) and a trailer without `/ID`. Load the objects as if the file were
    // not encrypted and decrypt them ourselves.
    let mut doc = recover_streams(load(&hide_encrypt(bytes), None).map_err(load_error)?, bytes);
    decrypt_here(&mut doc, password)?;
    Ok(doc)
}

/// Fills streams whose `/Length` is missing: lopdf leaves them empty, remembering where their
/// data starts (counted from the `%PDF-` header); the data runs to `endstream`, as every
/// reader assumes.
fn recover_streams(mut doc: Document, bytes: &[u8]) -> Document {
    let pending = |o: &Object| matches!(o, Object::Stream(s) if s.content.is_empty() && s.start_position.is_some());
    if !doc.objects.values().any(pending) {
        return doc;
    }
    let base = bytes.windows(5).position(|w| w == b"%PDF-").unwrap_or(0);
    // Found once, so many such streams cost one pass over the file, not one each.
    let ends: Vec<usize> = memchr_all(bytes, b"endstream");
    for obj in doc.objects.values_mut() {
        let Object::Stream(stream) = obj else {
            continue;
        };
        let start = match stream.start_position {
            Some(p) if stream.content.is_empty() => base.saturating_add(p),
            _ => continue,
        };
        let Some(&end) = ends.get(ends.partition_point(|&e| e < start)) else {
            continue;
        };
        let data = &bytes[start..end];
        let data = data.strip_suffix(b"\n").unwrap_or(data);
        let data = data.strip_suffix(b"\r").unwrap_or(data);
        stream.set_content(data.to_vec());
    }
    doc
}

/// Start offsets of every occurrence of `needle` (non-empty) in `haystack`, ascending.
fn memchr_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    let Some(&first) = needle.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = haystack.get(i..).and_then(|h| h.iter().position(|&b| b == first)) {
        let start = i + at;
        if haystack.get(start..start + needle.len()) == Some(needle) {
            out.push(start);
        }
        i = start + 1;
    }
    out
}

/// The trailer key we rename `/Encrypt` to: same length, so no offset in the file moves.
const HIDDEN_ENCRYPT: &[u8] = b"Encryp_";

/// A copy of `bytes` with every `/Encrypt` key renamed (not `/EncryptMetadata`).
fn hide_encrypt(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let key = b"/Encrypt";
    let mut i = 0;
    while let Some(at) = out[i..].windows(key.len()).position(|w| w == key) {
        let start = i + at;
        let next = out.get(start + key.len()).copied();
        if next.is_none_or(|b| !b.is_ascii_alphanumeric()) {
            out[start + 1..start + key.len()].copy_from_slice(HIDDEN_ENCRYPT);
        }
        i = start + key.len();
    }
    out
}

fn load(bytes: &[u8], password: Option<&str>) -> lopdf::Result<Document> {
    let options = LoadOptions {
        password: password.map(str::to_owned),
        max_decompressed_size: Some(MAX_LOAD_STREAM),
        ..LoadOptions::default()
    };
    Document::load_mem_with_options(bytes, options)
}

fn load_error(e: lopdf::Error) -> PdfError {
    match e {
        lopdf::Error::InvalidPassword
        | lopdf::Error::Decryption(lopdf::encryption::DecryptionError::IncorrectPassword) => PdfError::Encrypted,
        lopdf::Error::Decryption(e) => PdfError::Corrupt(format!("cannot decrypt: {e}")),
        e => PdfError::Corrupt(format!("unreadable PDF structure: {e}")),
    }
}

/// Decrypts a document loaded with its `/Encrypt` hidden: puts the key back (as a reference,
/// which lopdf needs), gives a trailer without `/ID` an empty one (as other readers do),
/// and tries the empty password, then the given one.
fn decrypt_here(doc: &mut Document, password: Option<&str>) -> Result<(), PdfError> {
    let encrypt = doc.trailer.remove(HIDDEN_ENCRYPT);
    if encrypt.as_ref().is_some_and(|e| only_attachments(doc, e)) {
        return Ok(());
    }
    match encrypt {
        Some(Object::Dictionary(encrypt)) => {
            let id = doc.add_object(encrypt);
            doc.trailer.set("Encrypt", Object::Reference(id));
        }
        Some(reference) => doc.trailer.set("Encrypt", reference),
        None => return Err(PdfError::Corrupt("encryption dictionary not found".into())),
    }
    if doc.trailer.get(b"ID").is_err() {
        let empty = || Object::String(Vec::new(), lopdf::StringFormat::Hexadecimal);
        doc.trailer.set("ID", Object::Array(vec![empty(), empty()]));
    }
    let mut candidates = vec![""];
    candidates.extend(password);
    for pw in candidates {
        if doc.authenticate_password(pw).is_ok() {
            return doc.decrypt(pw).map_err(|e| PdfError::Corrupt(format!("cannot decrypt: {e}")));
        }
    }
    Err(PdfError::Encrypted)
}

/// Decodes the content streams of a page (`/Contents`: one stream or an array of them), at
/// most `limit` bytes of them together. An unreadable stream is skipped (the rest of the page
/// may still read); one past the limit fails the page: its text cannot be had without reading
/// it, and an empty page in its place would hide that.
pub(super) fn page_content(doc: &Document, page: &Dictionary, limit: usize) -> Result<Vec<u8>, StreamError> {
    let streams: Vec<&Object> = match page.get(b"Contents").map(|o| objects::resolve(doc, o)) {
        Ok(Object::Array(items)) => items.iter().map(|o| objects::resolve(doc, o)).collect(),
        Ok(o) => vec![o],
        Err(_) => Vec::new(),
    };
    let mut content = Vec::new();
    for stream in streams.into_iter().filter_map(|o| o.as_stream().ok()) {
        let room = limit.saturating_sub(content.len());
        match objects::decode(stream, room) {
            Ok(bytes) => {
                content.extend_from_slice(&bytes);
                // Streams of one page may split anywhere between tokens, never inside one.
                content.push(b'\n');
            }
            Err(StreamError::TooLarge) => return Err(StreamError::TooLarge),
            Err(StreamError::Unreadable) => {}
        }
    }
    Ok(content)
}

/// Whether the security handler leaves strings and streams alone (`/StmF` and `/StrF`
/// `/Identity`), encrypting only embedded files: then the page content is plain.
fn only_attachments(doc: &Document, encrypt: &Object) -> bool {
    let Ok(dict) = objects::resolve(doc, encrypt).as_dict() else {
        return false;
    };
    let identity = |key: &[u8]| objects::name(doc, dict, key) == Some(b"Identity");
    identity(b"StmF") && identity(b"StrF")
}

/// The document's pages in order (lopdf bounds the walk of a looping page tree).
pub(super) fn pages(doc: &Document) -> Vec<ObjectId> {
    doc.page_iter().collect()
}

/// What the interpreter needs of one page.
pub(super) struct Page<'a> {
    pub dict: &'a Dictionary,
    pub resources: Option<&'a Dictionary>,
    pub frame: PageFrame,
}

/// A page's dictionary with its inherited resources and visible frame.
pub(super) fn page(doc: &Document, id: ObjectId) -> Option<Page<'_>> {
    let dict = doc.get_dictionary(id).ok()?;
    let resources = inherited(doc, dict, b"Resources").and_then(|o| o.as_dict().ok());
    let media = inherited(doc, dict, b"MediaBox").and_then(|o| page_box(doc, o)).unwrap_or(DEFAULT_BOX);
    let crop = inherited(doc, dict, b"CropBox")
        .and_then(|o| page_box(doc, o))
        .and_then(|c| intersect(c, media))
        .unwrap_or(media);
    let rotate = inherited(doc, dict, b"Rotate")
        .and_then(|o| o.as_float().ok())
        .filter(|r| r.is_finite())
        .map_or(0, |r| (r as i64 / 90) * 90);
    Some(Page { dict, resources, frame: PageFrame::new(crop, rotate) })
}

/// A page attribute from the page or the nearest ancestor that has it.
fn inherited<'a>(doc: &'a Document, page: &'a Dictionary, key: &[u8]) -> Option<&'a Object> {
    let mut node = page;
    for _ in 0..MAX_TREE_DEPTH {
        if let Some(v) = objects::get(doc, node, key) {
            return Some(v);
        }
        node = objects::dict(doc, node, b"Parent")?;
    }
    None
}

/// `[x0 y0 x1 y1]` normalised; `None` when unusable (missing numbers, empty, absurd).
fn page_box(doc: &Document, obj: &Object) -> Option<[f32; 4]> {
    let v: Vec<f32> = objects::numbers(doc, obj.as_array().ok()?).into_iter().collect::<Option<_>>()?;
    let [a, b, c, d] = v[..] else { return None };
    let r = [a.min(c), b.min(d), a.max(c), b.max(d)];
    let (w, h) = (r[2] - r[0], r[3] - r[1]);
    (w >= 1.0 && h >= 1.0 && w < 1e6 && h < 1e6).then_some(r)
}

fn intersect(a: [f32; 4], b: [f32; 4]) -> Option<[f32; 4]> {
    let r = [a[0].max(b[0]), a[1].max(b[1]), a[2].min(b[2]), a[3].min(b[3])];
    (r[2] - r[0] >= 1.0 && r[3] - r[1] >= 1.0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_may_follow_some_junk() {
        assert!(has_header(b"\xef\xbb\xbf%PDF-1.4\n"));
        assert!(!has_header(b"PK\x03\x04 not a pdf"));
        assert!(!has_header(b""));
    }

    #[test]
    fn encrypt_keys_are_hidden_without_moving_bytes() {
        let bytes = b"<</Encrypt 5 0 R/EncryptMetadata true>> /Encrypt<<>>";
        let hidden = hide_encrypt(bytes);
        assert_eq!(hidden.len(), bytes.len());
        assert_eq!(&hidden[..], b"<</Encryp_ 5 0 R/EncryptMetadata true>> /Encryp_<<>>");
    }

    #[test]
    fn crop_box_is_clamped_to_the_media_box() {
        assert_eq!(intersect([-10.0, 0.0, 700.0, 800.0], DEFAULT_BOX), Some([0.0, 0.0, 612.0, 792.0]));
        assert_eq!(intersect([700.0, 0.0, 800.0, 10.0], DEFAULT_BOX), None);
    }
}
