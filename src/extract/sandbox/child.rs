//! The child side (`ragpipe extract-child`): read a request, cap our own memory (once, before
//! the first document), extract, write the reply, and wait for the next request until stdin
//! ends. Single-threaded and without an async runtime, so that the address space measured
//! before the cap is the real baseline.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use super::protocol::{self, Fault, RequestHeader, Response};
use crate::extract::{ByteLimit, ExtractError, extract_in_process};

/// Exit codes for the child's own failures, before or after extraction (never the document's
/// fault: the parent reports them as `Internal`, with the stderr line that explains them).
pub(super) const EXIT_BAD_REQUEST: u8 = 2;
pub(super) const EXIT_NO_LIMIT: u8 = 3;
pub(super) const EXIT_WRITE_FAILED: u8 = 4;

/// Body of the hidden `ragpipe extract-child` subcommand: serve extraction requests from stdin
/// until it ends, each answered on stdout, under a memory cap applied to this process.
///
/// Call it before any runtime or thread pool starts (the memory cap counts their reservations).
pub fn child_main() -> ExitCode {
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    // The address space the cap was set from, and the allowance above it.
    let mut limit: Option<(u64, u64)> = None;
    loop {
        let header = match protocol::read_header(&mut stdin) {
            Ok(Some(header)) => header,
            Ok(None) => return ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("extract-child: bad request header: {err}");
                return ExitCode::from(EXIT_BAD_REQUEST);
            }
        };
        if limit.is_none() {
            match limit_resources(header.settings.max_memory_mb) {
                Ok(applied) => limit = Some(applied),
                Err(err) => {
                    eprintln!("extract-child: cannot apply the memory limit: {err}");
                    return ExitCode::from(EXIT_NO_LIMIT);
                }
            }
        }
        let reply = match read_document(&mut stdin, &header) {
            Ok(bytes) => {
                if let Some(fault) = header.fault {
                    trigger(fault);
                }
                extract_in_process(&bytes, &header.hints.as_hints(), &header.settings)
            }
            Err(err) => Err(err),
        };
        // Memory the allocator kept from this document is headroom the next one lacks: past a
        // quarter of the allowance, a fresh child gives the next document its full allowance.
        let retire = match (limit, current_address_space()) {
            (Some((baseline, allowance)), Some(now)) => now.saturating_sub(baseline) > allowance / 4,
            _ => true,
        };
        let written = protocol::encode_response(&Response { reply, retire }).and_then(|frame| {
            stdout.write_all(&frame)?;
            stdout.flush()
        });
        if let Err(err) = written {
            eprintln!("extract-child: cannot write the reply: {err}");
            return ExitCode::from(EXIT_WRITE_FAILED);
        }
    }
}

fn read_document(stdin: &mut impl Read, header: &RequestHeader) -> Result<Vec<u8>, ExtractError> {
    let max = header.settings.max_file_bytes;
    let len = usize::try_from(header.len)
        .ok()
        .filter(|_| header.len <= max)
        .ok_or(ExtractError::TooLarge(ByteLimit { bytes: header.len, max }))?;
    protocol::read_body(stdin, len).map_err(|err| ExtractError::Internal(format!("cannot read the document: {err}")))
}

/// Caps the address space at the current size plus `max_memory_mb`, so the allowance is what
/// the extractor may use, whatever the binary's own footprint (a binary linking FAISS/BLAS
/// maps far more at start-up than this crate alone). Also disables core dumps: a crashing
/// parser must not write hundreds of MiB to disk. Returns the baseline and the allowance.
fn limit_resources(max_memory_mb: u64) -> std::io::Result<(u64, u64)> {
    let baseline = current_address_space().unwrap_or(0);
    let allowance = max_memory_mb.saturating_mul(1024 * 1024);
    // SAFETY: setrlimit only reads the struct passed by reference during the call.
    check(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlimit(baseline.saturating_add(allowance))) })?;
    // SAFETY: as above.
    check(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &rlimit(0)) })?;
    Ok((baseline, allowance))
}

fn rlimit(value: u64) -> libc::rlimit {
    libc::rlimit { rlim_cur: value as libc::rlim_t, rlim_max: value as libc::rlim_t }
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Virtual size of this process in bytes (`/proc/self/statm`, first field, in pages).
fn current_address_space() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages.saturating_mul(u64::try_from(page_size).ok()?))
}

/// Produces the requested failure; none of them returns.
fn trigger(fault: Fault) {
    match fault {
        Fault::Panic => panic!("injected fault: panic"),
        Fault::Abort => std::process::abort(),
        Fault::Segfault => {
            // Rust's runtime handles SIGSEGV to detect stack overflows and returns for any other
            // fault expecting it to recur; a raised signal does not recur, so restore the
            // default action first.
            // SAFETY: resetting a signal to its default action and raising it at ourselves is
            // exactly the crash being simulated.
            unsafe {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
            }
        }
        Fault::StackOverflow => {
            std::hint::black_box(recurse(0));
        }
        Fault::Hang => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Fault::Allocate => allocate_forever(),
        Fault::FloodOutput => {
            let mut stdout = std::io::stdout().lock();
            let block = vec![b'x'; 64 * 1024];
            while stdout.write_all(&block).is_ok() {}
        }
    }
}

/// Recursion with a large frame; `black_box` keeps the optimiser from turning it into a loop.
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth as u8; 4096]);
    if depth == u64::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_add(u64::from(frame[usize::from(frame[0])]))
}

/// Grows like a leaking parser until the allocator fails (Rust then aborts with
/// "memory allocation of N bytes failed").
fn allocate_forever() {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 16 * 1024 * 1024]);
        std::hint::black_box(&hoard);
    }
}
