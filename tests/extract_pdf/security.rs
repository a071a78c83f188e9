//! Encrypted files: passwords, wrong passwords, and files that open without one.

use ragpipe::extract::pdf::PdfError;

use super::{assert_contains, extract_with, text};

#[test]
fn encrypted_files_need_their_password() {
    for (rel, password, expected) in [
        ("pdfminer.six/aes-128.pdf", "foo", "Secret!"),
        ("pdfminer.six/rc4-128.pdf", "foo", "Secret!"),
        ("pdfminer.six/aes-256-r6.pdf", "usersecret", "Hello World"),
        ("py-pdf_sample-files/libreoffice-writer-password.pdf", "openpassword", "Lorem ipsum dolor sit amet"),
        ("pdf.js/issue6010_1.pdf", "abc", "Issue 6010"),
        ("pdf.js/issue21579.pdf", "pässwört", "If you can read this, decryption succeeded."),
    ] {
        let read = extract_with(rel, Some(password)).unwrap_or_else(|e| panic!("{rel}: {e:?}"));
        assert_contains(rel, &read[0].text, &[expected]);
        assert_eq!(extract_with(rel, None), Err(PdfError::Encrypted), "{rel} without password");
        assert_eq!(extract_with(rel, Some("wrong")), Err(PdfError::Encrypted), "{rel} wrong password");
    }
}

#[test]
fn files_that_open_with_the_empty_password_are_read() {
    // An empty user password and no /ID: opens, and turns out to be a scan.
    assert_eq!(extract_with("pdfminer.six/encrypted_doc_no_id.pdf", None), Err(PdfError::NoText));
    // Only the attachment is encrypted; the page is plain.
    let rel = "pdf.js/encrypted-attachment.pdf";
    assert_contains(rel, &text(rel), &["Example"]);
}
