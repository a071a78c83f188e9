//! The failure vocabulary shared by the pipeline: every layer's error maps into a [`Failure`],
//! which says whether trying again could help. The ingest consumer turns that into an action:
//! transient → requeue (bounded by the queue's delivery limit), permanent → mark the document
//! `failed`, dead-letter the message with the reason, publish `document.failed`.

use std::fmt;

/// Whether a failure is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Network, pool timeout, 429, 5xx: the same message may well succeed later.
    Transient,
    /// Bad input or a limit: the same message will fail the same way.
    Permanent,
}

/// One document's failure, as reported in document status, dead-letter headers and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Stable short code (`not_found`, `unsupported_type`, `database`, ...).
    pub code: String,
    /// What happened and, where possible, what to do.
    pub reason: String,
    /// Whether to try again.
    pub retry: Retry,
}

impl Failure {
    /// A failure that will not go away by itself.
    pub fn permanent(code: &str, reason: impl Into<String>) -> Self {
        Self { code: code.into(), reason: reason.into(), retry: Retry::Permanent }
    }

    /// A failure that may go away (network, overload).
    pub fn transient(code: &str, reason: impl Into<String>) -> Self {
        Self { code: code.into(), reason: reason.into(), retry: Retry::Transient }
    }

    /// Whether another attempt could succeed.
    pub fn is_transient(&self) -> bool {
        self.retry == Retry::Transient
    }

    /// `code: reason`, the form stored in `documents.failure_reason` and dead-letter headers.
    pub fn describe(&self) -> String {
        format!("{}: {}", self.code, self.reason)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.reason)
    }
}

impl std::error::Error for Failure {}
