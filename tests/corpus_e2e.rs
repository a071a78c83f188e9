//! Every file of the shared corpus (PDF, DOCX, text, Markdown: broken, hostile, encrypted and
//! scanned ones included) as upload messages through RabbitMQ: no worker crash, every upload
//! reaches an outcome, and every failure is visible in the document status, the dead-letter
//! queue and a `document.failed` event.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestEnv, corpus, failed, ingested, name};
use ragpipe::client::{self, Outcome};
use ragpipe::messages::{self, DocumentStatus, QueryRequest};
use ragpipe::worker::Role;
use sqlx::Row;

fn corpus_files() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![corpus()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("corpus dir").flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                // pandoc's expected parses are ground truth for tests, not documents.
                if name != "_expected_native" {
                    stack.push(path);
                }
            } else if name != "README.md" && !name.ends_with(".native") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_corpus_goes_through_rabbitmq_without_a_worker_crash() {
    let mut env = TestEnv::new().await;
    env.settings.broker.prefetch = 32;
    env.settings.ingest.extract_concurrency = 2;
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;

    let files = corpus_files();
    assert!(files.len() > 180, "the corpus has {} files", files.len());
    let mut uploads: Vec<_> = files.iter().map(|f| env.upload_file(f, "corpus")).collect();
    // An encrypted PDF with its password in the upload metadata is read.
    let aes = corpus().join("pdf/pdfminer.six/aes-128.pdf");
    let mut with_password = env.upload_file(&aes, "corpus-secret");
    with_password.metadata.insert("password".into(), "foo".into());
    uploads.push(with_password.clone());

    let mut events = client::subscribe_outcomes(queue.events.as_ref()).await.expect("subscribe");
    for upload in &uploads {
        queue.uploads.publish(&messages::encode(upload)).await.expect("publish");
    }
    let ids: Vec<String> = uploads.iter().map(|u| u.upload_id.clone()).collect();
    let outcomes = client::wait_for_outcomes(&mut events, &ids, Duration::from_secs(600), |_| {}).await;
    let missing: Vec<_> =
        uploads.iter().filter(|u| !outcomes.contains_key(&u.upload_id)).map(|u| &u.filename).collect();
    assert!(missing.is_empty(), "uploads without an outcome: {missing:?}");

    let by_name: BTreeMap<String, &Outcome> = uploads
        .iter()
        .filter(|u| u.collection.as_str() == "corpus")
        .map(|u| (u.uri.clone().unwrap_or_default(), &outcomes[&u.upload_id]))
        .collect();
    let outcome_of = |rel: &str| -> &Outcome {
        by_name
            .iter()
            .find(|(uri, _)| uri.ends_with(rel))
            .map(|(_, o)| *o)
            .unwrap_or_else(|| panic!("{rel} not uploaded"))
    };

    // Named outcomes for files whose nature is known.
    assert_eq!(failed(outcome_of("pdf/_negative_not_a_pdf/paper-100k.pdf")).code, "unsupported_type");
    assert_eq!(failed(outcome_of("pdf/pdfminer.six/rc4-128.pdf")).code, "encrypted");
    assert_eq!(failed(outcome_of("docx/apache-poi/bug53475-password-is-pass.docx")).code, "encrypted");
    for scan in ["pdf/OCRmyPDF/linn.pdf", "pdf/OCRmyPDF/c02-22.pdf"] {
        assert_eq!(ingested(outcome_of(scan)).status, DocumentStatus::NoText, "{scan}");
    }
    for good in [
        "pdf/pdf.js/tracemonkey.pdf",
        "pdf/pdf.js/freeculture.pdf",
        "docx/mammoth.js/text-box.docx",
        "text/rfc2616.txt",
    ] {
        let event = ingested(outcome_of(good));
        assert!(event.status == DocumentStatus::Ingested && event.chunks > 0, "{good}: {event:?}");
    }
    let secret = ingested(&outcomes[&with_password.upload_id]);
    assert_eq!(secret.status, DocumentStatus::Ingested, "password from metadata opens the PDF");

    // Every failure is visible three ways: event (checked above), document status, dead letter.
    let pool = env.pool().await;
    let mut failures = 0u32;
    for outcome in outcomes.values() {
        match outcome {
            Outcome::Failed(event) => {
                failures += 1;
                let id = event.document_id.expect("a corpus file always gets a document row");
                let row = sqlx::query("SELECT status, failure_reason FROM documents WHERE id = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .expect("row");
                assert_eq!(row.get::<String, _>("status"), "failed", "{event:?}");
                let reason: String = row.get("failure_reason");
                assert!(reason.starts_with(&event.code), "{reason} vs {event:?}");
            }
            Outcome::Ingested(event) if event.status == DocumentStatus::NoText => {
                let status: String = sqlx::query_scalar("SELECT status FROM documents WHERE id = $1")
                    .bind(event.document_id)
                    .fetch_one(&pool)
                    .await
                    .expect("row");
                assert_eq!(status, "no_text");
            }
            Outcome::Ingested(_) => {}
        }
    }
    assert!(failures > 0, "the corpus holds broken files");
    let depths = queue.uploads.depths().await.expect("depths");
    assert_eq!(depths.dead, u64::from(failures), "one dead letter per failed upload");

    // The worker is still serving, and PDF citations carry page numbers.
    let request =
        QueryRequest::new("Trace-based Just-in-Time Type Specialization for Dynamic Languages", name("corpus"), 3);
    let reply = client::query(queue.requests.as_ref(), &request, Duration::from_secs(30)).await.expect("reply");
    let first = &reply["chunks"][0];
    assert_eq!(first["filename"], "tracemonkey.pdf", "{reply}");
    assert_eq!(first["page"], 1, "{reply}");
    worker.stop().await;
}
