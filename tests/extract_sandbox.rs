//! The sandbox for real: child processes of the ragpipe binary that crash, hang, blow up their
//! memory or flood their output end as named failures, quickly, and the test process (standing
//! in for the worker) carries on extracting.
#![allow(clippy::expect_used)] // a broken fixture should fail the test loudly

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ragpipe::extract::{DocKind, ExtractError, ExtractSettings, Fault, Limit, OwnedHints, Sandbox, debug_report};

fn program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ragpipe"))
}

fn sandbox(settings: ExtractSettings) -> Sandbox {
    Sandbox::new(program(), settings)
}

fn docx_bytes() -> Arc<[u8]> {
    Arc::from(support::corpus_bytes("docx/mammoth.js/single-paragraph.docx"))
}

fn named(name: &str) -> OwnedHints {
    OwnedHints { filename: Some(name.to_owned()), ..OwnedHints::default() }
}

/// Runs one faulty extraction and checks it failed within `within`, then that the same
/// process can still extract a normal document.
async fn fails_then_recovers(sandbox: Sandbox, within: Duration) -> ExtractError {
    let started = Instant::now();
    let err =
        sandbox.extract(docx_bytes(), named("a.docx")).await.expect_err("the injected fault must fail the extraction");
    assert!(started.elapsed() < within, "{err} took {:?}", started.elapsed());
    let healthy = Sandbox::new(program(), sandbox.settings().clone());
    let text = healthy.extract(docx_bytes(), named("a.docx")).await.map(|e| e.text);
    assert_eq!(text.as_deref(), Ok("Walking on imported air"));
    err
}

#[tokio::test]
async fn a_normal_document_round_trips_through_the_child() {
    let bytes = docx_bytes();
    let in_process = support::extract_named(&bytes, "a.docx").expect("in process");
    let sandboxed = sandbox(ExtractSettings::default()).extract(bytes, named("a.docx")).await.expect("sandboxed");
    assert_eq!(sandboxed, in_process);
    assert_eq!(sandboxed.kind, DocKind::Docx);
}

#[tokio::test]
async fn document_failures_come_back_unchanged() {
    let encrypted = support::corpus_bytes("docx/apache-poi/bug53475-password-is-pass.docx");
    let result = sandbox(ExtractSettings::default()).extract(Arc::from(encrypted), named("secret.docx")).await;
    assert_eq!(result.err(), Some(ExtractError::Encrypted));
}

#[tokio::test]
async fn segfault_is_reported_as_a_crash_with_its_signal() {
    let sandbox = sandbox(ExtractSettings::default()).with_fault(Fault::Segfault);
    let err = fails_then_recovers(sandbox, Duration::from_secs(10)).await;
    assert_eq!(err, ExtractError::Crashed("extractor crashed: signal 11 (SIGSEGV)".into()));
    assert_eq!((err.code(), err.is_transient()), ("crashed", false));
}

#[tokio::test]
async fn panic_abort_and_stack_overflow_are_crashes() {
    let cases = [
        (Fault::Panic, "extractor panicked: injected fault: panic"),
        (Fault::Abort, "extractor crashed: signal 6 (SIGABRT)"),
        (Fault::StackOverflow, "extractor crashed: stack overflow"),
    ];
    for (fault, message) in cases {
        let sandbox = sandbox(ExtractSettings::default()).with_fault(fault);
        let err = fails_then_recovers(sandbox, Duration::from_secs(10)).await;
        assert_eq!(err, ExtractError::Crashed(message.into()), "{fault:?}");
    }
}

#[tokio::test]
async fn a_hang_is_killed_at_the_timeout() {
    let settings = ExtractSettings { timeout_secs: 1, ..ExtractSettings::default() };
    let sandbox = sandbox(settings).with_fault(Fault::Hang);
    let started = Instant::now();
    let err = fails_then_recovers(sandbox, Duration::from_secs(5)).await;
    assert_eq!(err, ExtractError::TimedOut { secs: 1 });
    assert_eq!(err.to_string(), "timed out after 1 s");
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_memory_blow_up_hits_the_cap() {
    let settings = ExtractSettings { max_memory_mb: 64, max_file_bytes: 1024 * 1024, ..ExtractSettings::default() };
    let sandbox = sandbox(settings).with_fault(Fault::Allocate);
    let err = fails_then_recovers(sandbox, Duration::from_secs(10)).await;
    assert_eq!(err, ExtractError::MemoryLimit);
}

#[tokio::test]
async fn endless_output_is_cut_at_the_cap() {
    let settings = ExtractSettings { max_output_bytes: 256 * 1024, ..ExtractSettings::default() };
    let sandbox = sandbox(settings).with_fault(Fault::FloodOutput);
    let err = fails_then_recovers(sandbox, Duration::from_secs(10)).await;
    assert_eq!(err, ExtractError::LimitExceeded(Limit::Output { max: 256 * 1024 }));
}

#[tokio::test]
async fn a_missing_program_is_a_transient_internal_error() {
    let sandbox = Sandbox::new("/nonexistent/ragpipe".into(), ExtractSettings::default());
    let err = sandbox.extract(docx_bytes(), OwnedHints::default()).await.expect_err("no program");
    assert_eq!((err.code(), err.is_transient()), ("internal", true));
}

#[tokio::test]
async fn a_hanging_child_does_not_block_other_extractions() {
    // #[tokio::test] runs a single-threaded runtime: if waiting on the hung child blocked it,
    // the healthy extraction could not finish first.
    let settings = ExtractSettings { timeout_secs: 2, ..ExtractSettings::default() };
    let hung = sandbox(settings.clone()).with_fault(Fault::Hang);
    let healthy = sandbox(settings);
    let started = Instant::now();
    let (hung, healthy) = tokio::join!(hung.extract(docx_bytes(), OwnedHints::default()), async {
        let result = healthy.extract(docx_bytes(), OwnedHints::default()).await;
        (result, started.elapsed())
    });
    assert_eq!(hung.err(), Some(ExtractError::TimedOut { secs: 2 }));
    assert!(healthy.0.is_ok());
    assert!(healthy.1 < Duration::from_secs(2), "healthy took {:?}", healthy.1);
}

fn text_bytes(i: usize) -> Arc<[u8]> {
    Arc::from(format!("Document number {i} talks about harbour {i}.\n").into_bytes())
}

#[tokio::test]
async fn one_child_serves_many_documents_each_getting_its_own_text() {
    let sandbox = sandbox(ExtractSettings::default());
    for i in 0..20 {
        let extracted = sandbox.extract(text_bytes(i), named(&format!("{i}.txt"))).await.expect("extract");
        assert_eq!(extracted.text.trim_end(), format!("Document number {i} talks about harbour {i}."));
    }
    assert_eq!(sandbox.children_started(), 1, "the child is reused");
    // Concurrent documents take a child each, and each gets its own reply.
    let all = futures::future::join_all((0..6).map(|i| {
        let sandbox = sandbox.clone();
        async move { sandbox.extract(text_bytes(i), named("x.txt")).await.map(|e| e.text) }
    }))
    .await;
    for (i, text) in all.into_iter().enumerate() {
        assert_eq!(text.expect("extract").trim_end(), format!("Document number {i} talks about harbour {i}."));
    }
    assert!(sandbox.children_started() <= 6, "{}", sandbox.children_started());
}

#[tokio::test]
async fn a_child_is_replaced_after_documents_per_child() {
    let sandbox = sandbox(ExtractSettings { documents_per_child: 3, ..ExtractSettings::default() });
    for i in 0..7 {
        sandbox.extract(text_bytes(i), named("x.txt")).await.expect("extract");
    }
    assert_eq!(sandbox.children_started(), 3, "3 + 3 + 1 documents");
    let fresh_each = self::sandbox(ExtractSettings { documents_per_child: 1, ..ExtractSettings::default() });
    for i in 0..3 {
        fresh_each.extract(text_bytes(i), named("x.txt")).await.expect("extract");
    }
    assert_eq!(fresh_each.children_started(), 3, "1 = a fresh process per document");
}

/// A document that crashes a reused child is tried again in a fresh one (its outcome must not
/// depend on what the child read before), and the next document gets a healthy child.
#[tokio::test]
async fn a_failure_in_a_reused_child_is_retried_in_a_fresh_one_and_the_pool_recovers() {
    let healthy = sandbox(ExtractSettings::default());
    healthy.extract(text_bytes(1), named("x.txt")).await.expect("extract");
    assert_eq!(healthy.children_started(), 1);
    let faulty = healthy.clone().with_fault(Fault::Panic);
    let err = faulty.extract(text_bytes(2), named("x.txt")).await.expect_err("panics");
    assert!(matches!(&err, ExtractError::Crashed(m) if m.contains("injected fault")), "{err}");
    assert_eq!(healthy.children_started(), 2, "the reused child crashed; the retry started a fresh one");
    let after = healthy.extract(text_bytes(3), named("x.txt")).await.expect("extract after a crash");
    assert!(after.text.contains("number 3"));
    assert_eq!(healthy.children_started(), 3, "crashed children are never reused");
    // A hang in a reused child is killed at the timeout (not retried), and the pool goes on.
    let quick = sandbox(ExtractSettings { timeout_secs: 1, ..ExtractSettings::default() });
    quick.extract(text_bytes(4), named("x.txt")).await.expect("extract");
    let err = quick.clone().with_fault(Fault::Hang).extract(text_bytes(5), named("x.txt")).await.expect_err("hangs");
    assert_eq!(err, ExtractError::TimedOut { secs: 1 });
    assert!(quick.extract(text_bytes(6), named("x.txt")).await.is_ok());
    assert_eq!(quick.children_started(), 2);
}

#[tokio::test]
async fn debug_report_prints_text_and_json() {
    let path = support::corpus("docx/pandoc/tables.docx");
    let sandbox = sandbox(ExtractSettings::default());
    let text = debug_report(&sandbox, &path, false).await.expect("text report");
    let header = format!("file: {}\nstatus: ok\ntype: docx\ncharacters: ", path.display());
    assert!(text.starts_with(&header), "{text}");
    assert!(text.contains("\npages: 0\n\nA table, with and without a header row\n"), "{text}");
    assert!(text.contains("Name | Game | Fame | Blame"), "{text}");

    let json = debug_report(&sandbox, &path, true).await.expect("json report");
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(value["status"], "ok");
    assert_eq!(value["type"], "docx");
    let body = value["text"].as_str().unwrap_or_default();
    assert_eq!(value["characters"], body.chars().count());
    assert!(body.contains("Name | Game | Fame | Blame"));

    let encrypted = support::corpus("docx/apache-poi/bug53475-password-is-pass.docx");
    let failed: serde_json::Value =
        serde_json::from_str(&debug_report(&sandbox, &encrypted, true).await.expect("report")).expect("valid JSON");
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["code"], "encrypted");
    assert_eq!(failed["transient"], false);
    let failed_text = debug_report(&sandbox, &encrypted, false).await.expect("report");
    assert!(failed_text.contains("status: failed\ncode: encrypted\nreason: document is encrypted\n"));
}
