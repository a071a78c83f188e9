//! Small, total accessors over lopdf objects: a missing key, a dangling reference or a
//! wrong type all read as `None`, because a damaged file should lose one value, not a page.

use lopdf::{Dictionary, Document, Object, ObjectId, Stream};

/// Follows references (lopdf bounds the chain); `Null` when it dangles.
pub(super) fn resolve<'a>(doc: &'a Document, obj: &'a Object) -> &'a Object {
    doc.dereference(obj).map_or(&Object::Null, |(_, o)| o)
}

/// The resolved value of `key`.
pub(super) fn get<'a>(doc: &'a Document, dict: &'a Dictionary, key: &[u8]) -> Option<&'a Object> {
    dict.get(key).ok().map(|o| resolve(doc, o)).filter(|o| !o.is_null())
}

/// `key` as a dictionary (a stream's dictionary counts).
pub(super) fn dict<'a>(doc: &'a Document, dict: &'a Dictionary, key: &[u8]) -> Option<&'a Dictionary> {
    match get(doc, dict, key)? {
        Object::Dictionary(d) => Some(d),
        Object::Stream(s) => Some(&s.dict),
        _ => None,
    }
}

/// `key` as a name.
pub(super) fn name<'a>(doc: &'a Document, dict: &'a Dictionary, key: &[u8]) -> Option<&'a [u8]> {
    get(doc, dict, key)?.as_name().ok()
}

/// `key` as a finite number.
pub(super) fn number(doc: &Document, dict: &Dictionary, key: &[u8]) -> Option<f32> {
    get(doc, dict, key).and_then(|o| o.as_float().ok()).filter(|v| v.is_finite())
}

/// `key` as an array.
pub(super) fn array<'a>(doc: &'a Document, dict: &'a Dictionary, key: &[u8]) -> Option<&'a [Object]> {
    get(doc, dict, key)?.as_array().ok().map(Vec::as_slice)
}

/// The numbers of an array, resolving references; non-numbers read as `None`.
pub(super) fn numbers(doc: &Document, items: &[Object]) -> Vec<Option<f32>> {
    items.iter().map(|o| resolve(doc, o).as_float().ok().filter(|v| v.is_finite())).collect()
}

/// Why a stream's bytes could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamError {
    /// It decodes to more than the limit (a decompression bomb, or content too large to read).
    TooLarge,
    /// Its data or filters are unusable.
    Unreadable,
}

/// A stream's decoded bytes, at most `limit` of them (lopdf keeps what a corrupt Flate
/// stream decoded before the damage).
pub(super) fn decode(stream: &Stream, limit: usize) -> Result<Vec<u8>, StreamError> {
    match stream.decompressed_content_with_limit(limit) {
        Ok(bytes) => Ok(bytes),
        Err(lopdf::Error::Decompress(lopdf::DecompressError::MemoryLimitExceeded { .. })) => Err(StreamError::TooLarge),
        Err(_) => Err(StreamError::Unreadable),
    }
}

/// [`decode`] for streams whose loss costs a detail, not the text (fonts, CMaps): `None`
/// whatever went wrong.
pub(super) fn stream_bytes(stream: &Stream, limit: usize) -> Option<Vec<u8>> {
    decode(stream, limit).ok()
}

/// The id a value refers to, if it is a reference.
pub(super) fn reference(obj: &Object) -> Option<ObjectId> {
    obj.as_reference().ok()
}
