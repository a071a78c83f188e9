//! The parent side of sandboxed extraction: documents are extracted in child processes
//! (`<program> extract-child`), each in its own process group, with a wall-clock timeout, a
//! memory cap (applied by the child to itself), a cap on the reply size and a bounded stderr. A
//! panic, abort, segfault, stack overflow, hang or memory blow-up in a parser becomes a named
//! [`ExtractError`] for that document; the worker carries on.
//!
//! Starting a child costs more than extracting a small document, so a child serves up to
//! `documents_per_child` documents before it is replaced. Any failure of the child itself
//! (crash, timeout, memory, a malformed reply) ends it, and a child that crashed or ran out of
//! memory after earlier documents gets that document again in a fresh child: a document's outcome
//! never depends on what the child read before it.

mod child;
mod protocol;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

pub use child::child_main;
pub use protocol::Fault;
use protocol::{RequestHeader, Response};

use super::{ByteLimit, ExtractError, ExtractSettings, Extracted, Limit, OwnedHints};

/// The hidden subcommand the child runs.
pub const CHILD_SUBCOMMAND: &str = "extract-child";
/// How much of the child's stderr is kept for classifying a failure.
const MAX_STDERR_BYTES: usize = 64 * 1024;
/// Idle children kept for reuse, whatever the concurrency.
const MAX_IDLE_CHILDREN: usize = 16;

/// Runs extraction in child processes of `program` (the ragpipe binary itself). Clones share
/// their idle children.
#[derive(Debug, Clone)]
pub struct Sandbox {
    program: PathBuf,
    settings: ExtractSettings,
    fault: Option<Fault>,
    idle: Arc<Mutex<Vec<Extractor>>>,
    started: Arc<AtomicU64>,
}

impl Sandbox {
    /// A sandbox running `program extract-child` with `settings`. The worker passes
    /// [`std::env::current_exe`]; tests pass `env!("CARGO_BIN_EXE_ragpipe")`.
    pub fn new(program: PathBuf, settings: ExtractSettings) -> Self {
        Self { program, settings, fault: None, idle: Arc::default(), started: Arc::default() }
    }

    /// A sandbox running the current executable.
    ///
    /// # Errors
    ///
    /// When the path of the running binary cannot be determined.
    pub fn current_exe(settings: ExtractSettings) -> std::io::Result<Self> {
        Ok(Self::new(std::env::current_exe()?, settings))
    }

    /// Makes every child produce `fault` instead of extracting: for tests of the failure
    /// handling only. The clone shares the idle children of the sandbox it came from.
    #[doc(hidden)]
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// The limits this sandbox applies.
    pub fn settings(&self) -> &ExtractSettings {
        &self.settings
    }

    /// Child processes this sandbox (and its clones) started so far.
    pub fn children_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Extracts a document in a child process. Async: the child runs in parallel and this
    /// future only waits on pipes and timers, never blocking the runtime's threads. Dropping
    /// the future kills the child.
    ///
    /// # Errors
    ///
    /// Whatever extraction reports, plus `TimedOut`, `Crashed`, `MemoryLimit`,
    /// `LimitExceeded(Output)` from the sandbox, and `Internal` if the child cannot be started.
    pub async fn extract(&self, bytes: Arc<[u8]>, hints: OwnedHints) -> Result<Extracted, ExtractError> {
        let max = self.settings.max_file_bytes;
        if bytes.len() as u64 > max {
            return Err(ExtractError::TooLarge(ByteLimit { bytes: bytes.len() as u64, max }));
        }
        let header = protocol::encode_header(&RequestHeader {
            settings: self.settings.clone(),
            hints,
            len: bytes.len() as u64,
            fault: self.fault,
        })?;
        let reused = self.take_idle();
        let was_reused = reused.is_some();
        let extractor = match reused {
            Some(extractor) => extractor,
            None => self.spawn()?,
        };
        match self.run(extractor, &header, &bytes).await {
            Err(ExtractError::Crashed(_) | ExtractError::MemoryLimit) if was_reused => {
                tracing::debug!("extractor child failed after earlier documents; trying again in a fresh one");
                let fresh = self.spawn()?;
                self.run(fresh, &header, &bytes).await
            }
            result => result,
        }
    }

    fn take_idle(&self) -> Option<Extractor> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop()
    }

    /// Sends one request to `extractor` and waits for its reply within the timeout; keeps the
    /// child for the next document when it is healthy and has documents left.
    async fn run(&self, mut extractor: Extractor, header: &[u8], bytes: &[u8]) -> Result<Extracted, ExtractError> {
        let exchange = extractor.exchange(header, bytes, self.settings.max_output_bytes);
        let outcome = match tokio::time::timeout(self.settings.timeout(), exchange).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => {
                extractor.kill().await;
                return Err(ExtractError::TimedOut { secs: self.settings.timeout_secs });
            }
        };
        match outcome {
            Exchange::Replied(Response { reply, retire }) => {
                extractor.served += 1;
                if retire || extractor.served >= self.settings.documents_per_child {
                    extractor.kill().await;
                } else {
                    let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if idle.len() < MAX_IDLE_CHILDREN {
                        idle.push(extractor);
                    }
                }
                reply
            }
            Exchange::OutputTooLarge => {
                extractor.kill().await;
                Err(ExtractError::LimitExceeded(Limit::Output { max: self.settings.max_output_bytes }))
            }
            Exchange::Died => {
                // Bounded: a child whose stdout closed is exiting; the timeout guards the rest.
                let exit = tokio::time::timeout(self.settings.timeout(), extractor.exit()).await;
                match exit {
                    Ok(Ok((status, stderr))) => Err(classify_exit(status, &String::from_utf8_lossy(&stderr))),
                    Ok(Err(err)) => Err(ExtractError::Internal(format!("cannot wait for extractor: {err}"))),
                    Err(_elapsed) => {
                        extractor.kill().await;
                        Err(ExtractError::TimedOut { secs: self.settings.timeout_secs })
                    }
                }
            }
        }
    }

    fn spawn(&self) -> Result<Extractor, ExtractError> {
        let mut child = Command::new(&self.program)
            .arg(CHILD_SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group, so a timeout kills anything the child started too.
            .process_group(0)
            .kill_on_drop(true)
            // Short stderr (no backtraces) and single-threaded BLAS if the binary links one.
            .env("RUST_BACKTRACE", "0")
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("OMP_NUM_THREADS", "1")
            .spawn()
            .map_err(|err| {
                ExtractError::Internal(format!("cannot start extractor {}: {err}", self.program.display()))
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(ExtractError::Internal("extractor pipes missing".to_owned()));
        };
        crate::telemetry::metrics::EXTRACT_CHILDREN.inc();
        self.started.fetch_add(1, Ordering::Relaxed);
        // Drained from the start, so the child never blocks on a full stderr pipe.
        let stderr = tokio::spawn(read_bounded(stderr, MAX_STDERR_BYTES));
        Ok(Extractor { child, stdin, stdout, stderr, served: 0 })
    }
}

/// One live child, between documents or serving one.
#[derive(Debug)]
struct Extractor {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// The child's stderr, its first bytes up to the bound, once it ends.
    stderr: JoinHandle<std::io::Result<Vec<u8>>>,
    served: u64,
}

/// How one request to a child ended.
enum Exchange {
    Replied(Response),
    /// The reply announced more than the output cap.
    OutputTooLarge,
    /// The child closed its pipes (exited or was killed) before a complete reply.
    Died,
}

impl Extractor {
    async fn exchange(&mut self, header: &[u8], bytes: &[u8], max_output: u64) -> Exchange {
        // A write fails only when the child is gone; reading then finds out how it ended.
        let written = async {
            self.stdin.write_all(header).await?;
            self.stdin.write_all(bytes).await?;
            self.stdin.flush().await
        }
        .await;
        if written.is_err() {
            return Exchange::Died;
        }
        let mut len = [0u8; 4];
        if self.stdout.read_exact(&mut len).await.is_err() {
            return Exchange::Died;
        }
        let len = u64::from(u32::from_le_bytes(len));
        if len > max_output {
            return Exchange::OutputTooLarge;
        }
        let mut frame = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        if self.stdout.read_exact(&mut frame).await.is_err() {
            return Exchange::Died;
        }
        match serde_json::from_slice::<Response>(&frame) {
            Ok(response) => Exchange::Replied(response),
            Err(err) => Exchange::Replied(Response {
                reply: Err(ExtractError::Crashed(format!("extractor returned a malformed reply: {err}"))),
                retire: true,
            }),
        }
    }

    /// Waits for the child to exit and for the end of its stderr.
    async fn exit(&mut self) -> std::io::Result<(ExitStatus, Vec<u8>)> {
        let status = self.child.wait().await?;
        let stderr = (&mut self.stderr).await.ok().and_then(Result::ok).unwrap_or_default();
        Ok((status, stderr))
    }

    /// Kills the child's whole process group and reaps it.
    async fn kill(mut self) {
        kill_group(&mut self.child).await;
        self.stderr.abort();
    }
}

/// Reads a stream to its end, keeping its first `max` bytes and discarding the rest (so the
/// writer never blocks on a full pipe).
async fn read_bounded(mut stream: impl AsyncRead + Unpin, max: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(bytes);
        }
        let room = max.saturating_sub(bytes.len());
        bytes.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// Kills the child's whole process group and reaps it.
async fn kill_group(child: &mut Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        // SAFETY: kill has no memory-safety preconditions; the group id is the child's pid
        // because it was spawned with `process_group(0)`.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Names how a child that died without replying failed: the most specific failure its exit
/// status and stderr support.
fn classify_exit(status: ExitStatus, stderr: &str) -> ExtractError {
    if stderr.contains("memory allocation of") || stderr.contains("out of memory") {
        return ExtractError::MemoryLimit;
    }
    if stderr.contains("has overflowed its stack") {
        return ExtractError::Crashed("extractor crashed: stack overflow".to_owned());
    }
    if let Some(message) = panic_message(stderr) {
        return ExtractError::Crashed(format!("extractor panicked: {message}"));
    }
    if let Some(signal) = status.signal() {
        return ExtractError::Crashed(format!(
            "extractor crashed: signal {signal}{}",
            signal_name(signal).map(|n| format!(" ({n})")).unwrap_or_default()
        ));
    }
    let last_line = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    let code = status.code().unwrap_or(-1);
    let own_failures = [child::EXIT_BAD_REQUEST, child::EXIT_NO_LIMIT, child::EXIT_WRITE_FAILED];
    if own_failures.iter().any(|&own| i32::from(own) == code) {
        return ExtractError::Internal(format!("extractor child failed: {last_line}"));
    }
    if code == 0 {
        return ExtractError::Crashed("extractor exited without a reply".to_owned());
    }
    ExtractError::Crashed(format!("extractor exited with status {code}: {last_line}"))
}

/// The message of a Rust panic report ("thread 'main' panicked at src/x.rs:1:2:\nmessage").
fn panic_message(stderr: &str) -> Option<String> {
    let mut lines = stderr.lines().skip_while(|l| !l.contains("panicked at"));
    let location_line = lines.next()?;
    let message = lines.next().unwrap_or(location_line).trim();
    Some(message.chars().take(500).collect())
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signalled(signal: i32) -> ExitStatus {
        ExitStatus::from_raw(signal)
    }

    #[test]
    fn failures_are_classified_from_status_and_stderr() {
        let oom = classify_exit(signalled(libc::SIGABRT), "memory allocation of 16777216 bytes failed\n");
        assert_eq!(oom, ExtractError::MemoryLimit);
        let segv = classify_exit(signalled(libc::SIGSEGV), "");
        assert_eq!(segv, ExtractError::Crashed("extractor crashed: signal 11 (SIGSEGV)".into()));
        let panic = classify_exit(
            ExitStatus::from_raw(101 << 8),
            "\nthread 'main' panicked at src/a.rs:1:1:\nboom\nnote: run with RUST_BACKTRACE",
        );
        assert_eq!(panic, ExtractError::Crashed("extractor panicked: boom".into()));
    }

    #[test]
    fn the_childs_own_failures_are_internal() {
        let status = ExitStatus::from_raw(i32::from(child::EXIT_BAD_REQUEST) << 8);
        let err = classify_exit(status, "extract-child: bad request header: eof\n");
        assert_eq!(
            err,
            ExtractError::Internal("extractor child failed: extract-child: bad request header: eof".into())
        );
    }

    #[test]
    fn an_exit_without_a_reply_is_a_crash() {
        let quiet = classify_exit(ExitStatus::from_raw(0), "");
        assert!(matches!(quiet, ExtractError::Crashed(m) if m.contains("without a reply")));
    }
}
