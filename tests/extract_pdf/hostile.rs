//! PDFs built by the tests to attack the extractor: content streams that inflate past every
//! sensible size, and pages whose text is glyph garbage.

use std::io::Write as _;

use ragpipe::extract::pdf::{PdfError, PdfLimits};
use ragpipe::extract::{ExtractError, ExtractSettings, Hints, Limit, extract_in_process};

use super::extract_bytes;

/// A PDF whose objects are `objects` (numbered from 1), with a valid cross-reference table.
fn build_pdf(objects: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend(body);
        out.extend(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for offset in offsets {
        out.extend(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend(
        format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1).as_bytes(),
    );
    out
}

fn stream(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut s = format!("<< {dict} /Length {} >>\nstream\n", data.len()).into_bytes();
    s.extend(data);
    s.extend(b"\nendstream");
    s
}

/// `content`, then `padding` bytes of spaces, Flate-compressed: a tiny stream that inflates to
/// whatever size the test needs.
fn deflated(content: &[u8], padding: usize) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(content).expect("in-memory write");
    let spaces = vec![b' '; 1 << 20];
    let mut left = padding;
    while left > 0 {
        let n = left.min(spaces.len());
        encoder.write_all(&spaces[..n]).expect("in-memory write");
        left -= n;
    }
    encoder.finish().expect("in-memory write")
}

const TEXT: &[u8] = b"BT /F1 12 Tf 72 700 Td (Readable words on a page of plain prose.) Tj ET\n";
const FONT: &[u8] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>";

/// Pages whose content streams are the given (already encoded) streams, with `/Filter`.
fn pdf_of_pages(pages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let n = pages.len();
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 4 + 2 * i)).collect();
    let mut objects = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" ")).into_bytes(),
        FONT.to_vec(),
    ];
    for (i, (filter, data)) in pages.iter().enumerate() {
        let contents = 5 + 2 * i;
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {contents} 0 R /Resources << /Font << /F1 3 0 R >> >> >>"
            )
            .into_bytes(),
        );
        objects.push(stream(filter, data));
    }
    build_pdf(&objects)
}

#[test]
fn a_content_stream_that_inflates_past_the_limit_is_a_named_limit_not_an_empty_page() {
    // The probe's bombs inflated to 100 MiB–1 GiB and ended as `no_text`; 96 MiB stands for
    // them (the size past the limit does not matter: decoding stops at the limit).
    let bomb = pdf_of_pages(&[("/Filter /FlateDecode", deflated(TEXT, 96 << 20))]);
    assert!(bomb.len() < 1 << 20, "the bomb is {} bytes", bomb.len());
    let outcome = extract_bytes("bomb", bomb.clone(), None, PdfLimits::default());
    assert_eq!(outcome, Err(PdfError::StreamTooLarge { max: 32 << 20 }));
    let through = extract_in_process(&bomb, &Hints::default(), &ExtractSettings::default()).map(|e| e.text);
    assert_eq!(through, Err(ExtractError::LimitExceeded(Limit::PdfStream { max: 32 << 20 })));
    assert_eq!(through.map_err(|e| e.code()), Err("limit_exceeded"));
}

#[test]
fn the_limit_counts_a_page_whole_and_is_a_setting() {
    // Two streams of one page, each under the limit, together over it.
    let limits = PdfLimits { max_stream_bytes: 3 << 20, ..PdfLimits::default() };
    let half = deflated(TEXT, 2 << 20);
    let objects = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>".to_vec(),
        FONT.to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents [5 0 R 6 0 R] /Resources << /Font << /F1 3 0 R >> >> >>".to_vec(),
        stream("/Filter /FlateDecode", &half),
        stream("/Filter /FlateDecode", &half),
    ];
    let outcome = extract_bytes("split", build_pdf(&objects), None, limits);
    assert_eq!(outcome, Err(PdfError::StreamTooLarge { max: 3 << 20 }));

    // Under the limit the same page reads.
    let fits = pdf_of_pages(&[("/Filter /FlateDecode", deflated(TEXT, 2 << 20))]);
    let pages = extract_bytes("fits", fits.clone(), None, limits).expect("a page under the limit reads");
    assert!(pages[0].text.contains("Readable words"), "{:?}", pages[0].text);
    let settings = ExtractSettings { pdf_max_stream_bytes: 1 << 20, ..ExtractSettings::default() };
    let through = extract_in_process(&fits, &Hints::default(), &settings).map(|e| e.text);
    assert_eq!(through, Err(ExtractError::LimitExceeded(Limit::PdfStream { max: 1 << 20 })));
}

#[test]
fn a_form_that_inflates_past_the_limit_is_a_named_limit() {
    let form = deflated(TEXT, 8 << 20);
    let objects = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>".to_vec(),
        FONT.to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 5 0 R /Resources << /Font << /F1 3 0 R >> /XObject << /X1 6 0 R >> >> >>".to_vec(),
        stream("", b"/X1 Do"),
        stream("/Type /XObject /Subtype /Form /BBox [0 0 612 792] /Filter /FlateDecode", &form),
    ];
    let limits = PdfLimits { max_stream_bytes: 4 << 20, ..PdfLimits::default() };
    let outcome = extract_bytes("form bomb", build_pdf(&objects), None, limits);
    assert_eq!(outcome, Err(PdfError::StreamTooLarge { max: 4 << 20 }));
}

/// A page of what a font without a Unicode mapping decodes to: raw code values that read as
/// punctuation (the probe saw `%`, `&`, `’` on TAMReview.pdf's later pages).
fn garbage_page() -> Vec<u8> {
    let mut content = b"BT /F1 10 Tf 72 700 Td 12 TL\n".to_vec();
    for _ in 0..30 {
        content.extend(br"(%&\222 \)*+ ,-./ %&\222\( \)% &\222\(\)* +,-./0 12%&) '");
        content.push(b'\n');
    }
    content.extend(b"ET\n");
    content
}

#[test]
fn garbled_pages_are_left_out_and_counted() {
    let pdf = pdf_of_pages(&[("", TEXT.to_vec()), ("", garbage_page()), ("", TEXT.to_vec())]);
    let pages = extract_bytes("mixed", pdf.clone(), None, PdfLimits::default()).expect("two readable pages");
    let garbled: Vec<bool> = pages.iter().map(|p| p.garbled).collect();
    assert_eq!(garbled, [false, true, false]);
    assert!(pages[1].text.is_empty(), "{:?}", pages[1].text);
    assert!(pages[2].text.contains("Readable words"), "{:?}", pages[2].text);

    let extracted = extract_in_process(&pdf, &Hints::default(), &ExtractSettings::default()).expect("readable");
    assert_eq!(extracted.garbled_pages, [2]);
    assert!(!extracted.text.contains('%'), "{:?}", extracted.text);
    assert_eq!(extracted.pages.iter().map(|p| p.number).collect::<Vec<_>>(), [1, 2, 3], "numbers keep their pages");
}

#[test]
fn a_document_of_garbled_pages_has_no_text_and_says_why() {
    let pdf = pdf_of_pages(&[("", garbage_page()), ("", garbage_page())]);
    assert_eq!(extract_bytes("garbage", pdf.clone(), None, PdfLimits::default()), Err(PdfError::Garbled { pages: 2 }));
    let error = extract_in_process(&pdf, &Hints::default(), &ExtractSettings::default()).err();
    assert_eq!(error, Some(ExtractError::Garbled { pages: 2 }));
    let error = error.expect("checked above");
    assert_eq!(error.code(), "no_text");
    assert!(error.to_string().contains("2 page(s) are garbled"), "{error}");
}
