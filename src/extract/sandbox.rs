//! The parent side of sandboxed extraction: one short-lived child process per document
//! (`<program> extract-child`), in its own process group, with a wall-clock timeout, a memory
//! cap (applied by the child to itself), a cap on the reply size and a bounded stderr. A panic,
//! abort, segfault, stack overflow, hang or memory blow-up in a parser becomes a named
//! [`ExtractError`] for that document; the worker carries on.

mod child;
mod protocol;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};

pub use child::child_main;
pub use protocol::Fault;
use protocol::{Reply, RequestHeader};

use super::{ByteLimit, ExtractError, ExtractSettings, Extracted, Limit, OwnedHints};

/// The hidden subcommand the child runs.
pub const CHILD_SUBCOMMAND: &str = "extract-child";
/// How much of the child's stderr is kept for classifying a failure.
const MAX_STDERR_BYTES: usize = 64 * 1024;

/// Runs extraction in child processes of `program` (the ragpipe binary itself).
#[derive(Debug, Clone)]
pub struct Sandbox {
    program: PathBuf,
    settings: ExtractSettings,
    fault: Option<Fault>,
}

impl Sandbox {
    /// A sandbox running `program extract-child` with `settings`. The worker passes
    /// [`std::env::current_exe`]; tests pass `env!("CARGO_BIN_EXE_ragpipe")`.
    pub fn new(program: PathBuf, settings: ExtractSettings) -> Self {
        Self { program, settings, fault: None }
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
    /// handling only.
    #[doc(hidden)]
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// The limits this sandbox applies.
    pub fn settings(&self) -> &ExtractSettings {
        &self.settings
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
        let mut child = self.spawn()?;
        let run = self.communicate(&mut child, header, bytes);
        match tokio::time::timeout(self.settings.timeout(), run).await {
            Ok(reply) => reply,
            Err(_elapsed) => {
                kill_group(&mut child).await;
                Err(ExtractError::TimedOut { secs: self.settings.timeout_secs })
            }
        }
    }

    fn spawn(&self) -> Result<Child, ExtractError> {
        Command::new(&self.program)
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
            .map_err(|err| ExtractError::Internal(format!("cannot start extractor {}: {err}", self.program.display())))
    }

    async fn communicate(
        &self,
        child: &mut Child,
        header: Vec<u8>,
        bytes: Arc<[u8]>,
    ) -> Result<Extracted, ExtractError> {
        let (Some(stdin), Some(mut stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(ExtractError::Internal("extractor pipes missing".to_owned()));
        };
        // Writing and stderr draining run beside the stdout read, so neither pipe can fill up
        // and block the child while we wait on the other.
        let writer = tokio::spawn(write_request(stdin, header, bytes));
        let stderr = tokio::spawn(read_bounded(stderr, MAX_STDERR_BYTES, Excess::Drain));
        let max_output = self.settings.max_output_bytes;
        let max_output_len = usize::try_from(max_output).unwrap_or(usize::MAX);
        let output = read_bounded(&mut stdout, max_output_len, Excess::Stop)
            .await
            .map_err(|err| ExtractError::Internal(format!("cannot read extractor output: {err}")));
        let output = match output {
            Ok(Bounded { bytes, truncated: false }) => bytes,
            Ok(Bounded { truncated: true, .. }) => {
                kill_group(child).await;
                return Err(ExtractError::LimitExceeded(Limit::Output { max: max_output }));
            }
            Err(err) => {
                kill_group(child).await;
                return Err(err);
            }
        };
        let status =
            child.wait().await.map_err(|err| ExtractError::Internal(format!("cannot wait for extractor: {err}")))?;
        // The writer fails with a broken pipe when the child exits before reading everything
        // (e.g. a crash): that is reported through the exit status, not as an error of its own.
        let _ = writer.await;
        let stderr = stderr.await.ok().and_then(Result::ok).unwrap_or_default();
        classify(status, &output, &String::from_utf8_lossy(&stderr.bytes))
    }
}

async fn write_request(mut stdin: ChildStdin, header: Vec<u8>, bytes: Arc<[u8]>) -> std::io::Result<()> {
    stdin.write_all(&header).await?;
    stdin.write_all(&bytes).await?;
    stdin.shutdown().await
}

/// What was read from a pipe, at most the bound.
#[derive(Default)]
struct Bounded {
    bytes: Vec<u8>,
    /// Whether the stream had more than the bound (the excess is drained and discarded).
    truncated: bool,
}

/// What to do with bytes beyond the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Excess {
    /// Stop reading (the caller kills the child).
    Stop,
    /// Keep reading and discard, so the child never blocks on a full pipe.
    Drain,
}

/// Reads a stream to its end (or the bound, see [`Excess`]), keeping at most `max` bytes.
async fn read_bounded(mut stream: impl AsyncRead + Unpin, max: usize, excess: Excess) -> std::io::Result<Bounded> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut truncated = false;
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Bounded { bytes, truncated });
        }
        let room = max.saturating_sub(bytes.len());
        bytes.extend_from_slice(&chunk[..n.min(room)]);
        if n > room {
            truncated = true;
            if excess == Excess::Stop {
                return Ok(Bounded { bytes, truncated });
            }
        }
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

/// Turns the child's exit into a result: a reply on success, otherwise the most specific
/// failure the status and stderr support.
fn classify(status: ExitStatus, output: &[u8], stderr: &str) -> Result<Extracted, ExtractError> {
    if status.success() {
        return serde_json::from_slice::<Reply>(output)
            .unwrap_or_else(|err| Err(ExtractError::Crashed(format!("extractor returned a malformed reply: {err}"))));
    }
    if stderr.contains("memory allocation of") || stderr.contains("out of memory") {
        return Err(ExtractError::MemoryLimit);
    }
    if stderr.contains("has overflowed its stack") {
        return Err(ExtractError::Crashed("extractor crashed: stack overflow".to_owned()));
    }
    if let Some(message) = panic_message(stderr) {
        return Err(ExtractError::Crashed(format!("extractor panicked: {message}")));
    }
    if let Some(signal) = status.signal() {
        return Err(ExtractError::Crashed(format!(
            "extractor crashed: signal {signal}{}",
            signal_name(signal).map(|n| format!(" ({n})")).unwrap_or_default()
        )));
    }
    let last_line = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    let code = status.code().unwrap_or(-1);
    let own_failures = [child::EXIT_BAD_REQUEST, child::EXIT_NO_LIMIT, child::EXIT_WRITE_FAILED];
    if own_failures.iter().any(|&own| i32::from(own) == code) {
        return Err(ExtractError::Internal(format!("extractor child failed: {last_line}")));
    }
    Err(ExtractError::Crashed(format!("extractor exited with status {code}: {last_line}")))
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
        let oom = classify(signalled(libc::SIGABRT), b"", "memory allocation of 16777216 bytes failed\n");
        assert_eq!(oom, Err(ExtractError::MemoryLimit));
        let segv = classify(signalled(libc::SIGSEGV), b"", "");
        assert_eq!(segv, Err(ExtractError::Crashed("extractor crashed: signal 11 (SIGSEGV)".into())));
        let panic = classify(
            ExitStatus::from_raw(101 << 8),
            b"",
            "\nthread 'main' panicked at src/a.rs:1:1:\nboom\nnote: run with RUST_BACKTRACE",
        );
        assert_eq!(panic, Err(ExtractError::Crashed("extractor panicked: boom".into())));
    }

    #[test]
    fn the_childs_own_failures_are_internal() {
        let status = ExitStatus::from_raw(i32::from(child::EXIT_BAD_REQUEST) << 8);
        let err = classify(status, b"", "extract-child: bad request header: eof\n");
        assert_eq!(
            err,
            Err(ExtractError::Internal("extractor child failed: extract-child: bad request header: eof".into()))
        );
    }

    #[test]
    fn a_success_without_a_reply_is_a_crash() {
        let garbled = classify(ExitStatus::from_raw(0), b"{not json", "");
        assert!(matches!(garbled, Err(ExtractError::Crashed(m)) if m.contains("malformed")));
    }
}
