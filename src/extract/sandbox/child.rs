//! The child side (`ragpipe extract-child`): read the request, cap our own memory, extract,
//! write the reply, exit. Single-threaded and without an async runtime, so that the address
//! space measured before the cap is the real baseline.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use super::protocol::{self, Fault, Reply, RequestHeader};
use crate::extract::{ByteLimit, ExtractError, extract_in_process};

/// Exit codes for the child's own failures, before or after extraction (never the document's
/// fault: the parent reports them as `Internal`, with the stderr line that explains them).
pub(super) const EXIT_BAD_REQUEST: u8 = 2;
pub(super) const EXIT_NO_LIMIT: u8 = 3;
pub(super) const EXIT_WRITE_FAILED: u8 = 4;

/// Body of the hidden `ragpipe extract-child` subcommand: read the request from stdin, apply
/// the memory cap to this process, extract, write the result to stdout, exit.
///
/// Call it before any runtime or thread pool starts (the memory cap counts their reservations).
pub fn child_main() -> ExitCode {
    let mut stdin = std::io::stdin().lock();
    let header = match protocol::read_header(&mut stdin) {
        Ok(header) => header,
        Err(err) => {
            eprintln!("extract-child: bad request header: {err}");
            return ExitCode::from(EXIT_BAD_REQUEST);
        }
    };
    if let Err(err) = limit_resources(header.settings.max_memory_mb) {
        eprintln!("extract-child: cannot apply the memory limit: {err}");
        return ExitCode::from(EXIT_NO_LIMIT);
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
    match write_reply(&reply) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("extract-child: cannot write the reply: {err}");
            ExitCode::from(EXIT_WRITE_FAILED)
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

fn write_reply(reply: &Reply) -> std::io::Result<()> {
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer(&mut stdout, reply).map_err(std::io::Error::other)?;
    stdout.flush()
}

/// Caps the address space at the current size plus `max_memory_mb`, so the allowance is what
/// the extractor may use, whatever the binary's own footprint (a binary linking FAISS/BLAS
/// maps far more at start-up than this crate alone). Also disables core dumps: a crashing
/// parser must not write hundreds of MiB to disk.
fn limit_resources(max_memory_mb: u64) -> std::io::Result<()> {
    let baseline = current_address_space().unwrap_or(0);
    let cap = baseline.saturating_add(max_memory_mb.saturating_mul(1024 * 1024));
    // SAFETY: setrlimit only reads the struct passed by reference during the call.
    check(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlimit(cap)) })?;
    // SAFETY: as above.
    check(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &rlimit(0)) })
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
