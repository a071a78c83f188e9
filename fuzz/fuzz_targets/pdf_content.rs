//! Fuzzes the parts of `extract_pdf` that are ours: the input becomes the content stream of
//! a one-page PDF (split at the first `0xFF` byte, the rest becomes the `/ToUnicode` CMap
//! of a Type 0 font), so mutations reach the lexer, interpreter, fonts and layout instead of
//! dying in a Flate stream or the cross-reference table. The page also draws itself as a
//! form XObject, to exercise form recursion.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/extract/pdf.rs"]
#[allow(dead_code)]
mod pdf;

/// A PDF whose objects are `objects` (numbered from 1), with a valid xref table.
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
    for off in offsets {
        out.extend(format!("{off:010} 00000 n \n").as_bytes());
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

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0xff).unwrap_or(data.len());
    let (content, cmap) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let res = "/Font << /F1 5 0 R /F2 6 0 R >> /XObject << /X1 4 0 R >>";
    let objects = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        format!("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << {res} >> >>").into_bytes(),
        stream(&format!("/Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << {res} >>"), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding << /Differences [1 /fi /uni00E9 /f_f_i] >> >>".to_vec(),
        b"<< /Type /Font /Subtype /Type0 /BaseFont /X /Encoding /Identity-H /DescendantFonts [7 0 R] /ToUnicode 8 0 R >>".to_vec(),
        b"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /X /CIDSystemInfo << /Registry (Adobe) /Ordering (Japan1) /Supplement 6 >> /W [1 [500 600] 10 20 700] >>".to_vec(),
        stream("", cmap),
    ];
    let limits = pdf::PdfLimits { max_pages: 5, max_chars: 100_000, ..pdf::PdfLimits::default() };
    let _ = pdf::extract_pdf(&build_pdf(&objects), None, &limits);
});
