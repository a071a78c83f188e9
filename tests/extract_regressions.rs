//! Inputs the fuzzers found (`tests/fixtures/extract/`). Each runs through the sandbox with a
//! short timeout, so a regression shows up as a failed test, not a hung one.
//!
//! `*.xml` fixtures come from the `docx` fuzz target's XML mode and are wrapped as the
//! `word/document.xml` of a minimal package; other files are whole documents.
#![allow(clippy::expect_used)] // a broken fixture should fail the test loudly

mod support;

use std::path::Path;
use std::sync::Arc;

use ragpipe::extract::{ExtractError, ExtractSettings, OwnedHints, Sandbox};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/extract");

/// What each finding must give now.
const EXPECTED: &[(&str, Result<&str, &str>)] = &[
    // A document part that ends inside a skipped element (`w:sectPr`) looped forever.
    ("docx-xml-truncated-inside-skipped-element.xml", Ok("Test")),
];

fn document_bytes(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("fixture");
    if path.extension().is_some_and(|e| e == "xml") {
        support::build_docx(&String::from_utf8_lossy(&bytes))
    } else {
        bytes
    }
}

#[tokio::test]
async fn fuzz_findings_end_quickly_with_their_expected_outcome() {
    let settings = ExtractSettings { timeout_secs: 10, ..ExtractSettings::default() };
    let sandbox = Sandbox::new(env!("CARGO_BIN_EXE_ragpipe").into(), settings);
    let mut fixtures: Vec<_> = std::fs::read_dir(FIXTURES)
        .expect("fixtures folder")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    fixtures.sort();
    assert_eq!(fixtures.len(), EXPECTED.len(), "every fixture needs an expectation");
    for path in fixtures {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let expected = EXPECTED
            .iter()
            .find(|(fixture, _)| *fixture == name)
            .map(|(_, outcome)| *outcome)
            .unwrap_or_else(|| panic!("no expectation for {name}"));
        let outcome = sandbox.extract(Arc::from(document_bytes(&path)), OwnedHints::default()).await;
        let got = match &outcome {
            Ok(extracted) => Ok(extracted.text.as_str()),
            Err(err) => Err(err.code()),
        };
        assert_eq!(got, expected, "{name}: {outcome:?}");
        assert!(!matches!(outcome, Err(ExtractError::TimedOut { .. })));
    }
}
