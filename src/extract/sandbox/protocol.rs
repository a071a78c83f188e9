//! Parent ↔ child wire format. A child serves requests one after another until its stdin ends.
//!
//! stdin:  per request, `u32` little-endian header length, the header as JSON
//!         ([`RequestHeader`]), then exactly `header.len` document bytes.
//! stdout: per request, `u32` little-endian length, then that many bytes of JSON
//!         ([`Response`]: `{"reply": {"Ok": Extracted} | {"Err": ExtractError}, "retire": bool}`).
//! A child that dies instead of answering is classified from its exit status and its (bounded)
//! stderr. End of stdin at a request boundary makes it exit with status 0.

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::extract::{ExtractError, ExtractSettings, Extracted, OwnedHints};

/// Upper bound on the header, so a garbled stream cannot make the child allocate much before
/// its memory cap is in place.
const MAX_HEADER_BYTES: u32 = 64 * 1024;

/// Deterministic failures the child can be asked to produce, so the sandbox's handling of
/// crashes, hangs and memory blow-ups is tested for real. Only reachable through
/// [`crate::extract::Sandbox::with_fault`]: nothing in a document or message can select one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// `panic!` in the child.
    Panic,
    /// `std::process::abort()`.
    Abort,
    /// The child raises SIGSEGV.
    Segfault,
    /// Unbounded recursion until the stack guard page is hit.
    StackOverflow,
    /// Sleep forever (until the timeout kills it).
    Hang,
    /// Allocate and touch memory until allocation fails.
    Allocate,
    /// Write to stdout without end (tests the output cap).
    FloodOutput,
}

/// What the parent sends before the document bytes.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RequestHeader {
    /// Limits the child applies (memory cap and extraction limits).
    pub(crate) settings: ExtractSettings,
    /// The sender's hints.
    pub(crate) hints: OwnedHints,
    /// Number of document bytes that follow the header.
    pub(crate) len: u64,
    /// A failure to produce instead of extracting (tests only).
    pub(crate) fault: Option<Fault>,
}

/// The child's reply.
pub(crate) type Reply = Result<Extracted, ExtractError>;

/// What the child writes back for one request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Response {
    pub(crate) reply: Reply,
    /// The child asks to be replaced: it holds more memory than a fresh one would.
    pub(crate) retire: bool,
}

/// Serialises a response with its length prefix.
///
/// # Errors
///
/// When the response cannot be encoded (never for the types involved) or is over 4 GiB.
pub(crate) fn encode_response(response: &Response) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0u8; 4];
    serde_json::to_writer(&mut out, response).map_err(std::io::Error::other)?;
    let len = u32::try_from(out.len() - 4).map_err(std::io::Error::other)?;
    out[..4].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

/// Serialises the header with its length prefix.
///
/// # Errors
///
/// [`ExtractError::Internal`] if the header cannot be encoded or is over the size bound.
pub(crate) fn encode_header(header: &RequestHeader) -> Result<Vec<u8>, ExtractError> {
    let json =
        serde_json::to_vec(header).map_err(|err| ExtractError::Internal(format!("cannot encode request: {err}")))?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|&len| len <= MAX_HEADER_BYTES)
        .ok_or_else(|| ExtractError::Internal("request header too large".to_owned()))?;
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Reads the next length-prefixed header; `None` when the input ends before one begins.
///
/// # Errors
///
/// I/O errors, input ending inside a header, an oversized length or invalid JSON.
pub(crate) fn read_header(input: &mut impl Read) -> std::io::Result<Option<RequestHeader>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match input.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("request header of {len} bytes is over the {MAX_HEADER_BYTES} byte bound"),
        ));
    }
    let mut json = vec![0u8; len as usize];
    input.read_exact(&mut json)?;
    serde_json::from_slice(&json).map(Some).map_err(std::io::Error::other)
}

/// Reads exactly `len` document bytes.
///
/// # Errors
///
/// I/O errors, including a stream shorter than announced.
pub(crate) fn read_body(input: &mut impl Read, len: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len).map_err(std::io::Error::other)?;
    input.take(len as u64).read_to_end(&mut bytes)?;
    if bytes.len() != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("expected {len} document bytes, got {}", bytes.len()),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_with_its_length_prefix() {
        let header = RequestHeader {
            settings: ExtractSettings::default(),
            hints: OwnedHints { filename: Some("a.txt".into()), ..OwnedHints::default() },
            len: 3,
            fault: Some(Fault::Hang),
        };
        let mut wire = encode_header(&header).unwrap_or_default();
        wire.extend_from_slice(b"abc");
        let mut input = wire.as_slice();
        let back = read_header(&mut input).ok().flatten();
        assert_eq!(back.as_ref().and_then(|h| h.fault), Some(Fault::Hang));
        assert_eq!(read_body(&mut input, 3).ok().as_deref(), Some(&b"abc"[..]));
        assert!(matches!(read_header(&mut input), Ok(None)), "the end of input between requests is no error");
        let mut torn: &[u8] = &[1, 0];
        assert!(read_header(&mut torn).is_err(), "the end of input inside a header is");
    }

    #[test]
    fn oversized_header_length_is_refused() {
        let mut input: &[u8] = &[0xFF, 0xFF, 0xFF, 0x7F];
        assert!(read_header(&mut input).is_err());
    }
}
