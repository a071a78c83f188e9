//! What the text of real files says: reading order, scripts, fonts, tables, furniture.

use std::path::Path;

use ragpipe::extract::pdf::PdfLimits;

use super::{FIXTURES, assert_contains, extract_bytes, pages, text};

#[test]
fn tracemonkey_reads_its_left_column_before_its_right_one() {
    let rel = "pdf.js/tracemonkey.pdf";
    let doc = pages(rel);
    assert_eq!(doc.len(), 14);
    let first = &doc[0].text;
    assert!(first.starts_with("Trace-based Just-in-Time Type Specialization for Dynamic"));
    assert_contains(
        rel,
        first,
        &[
            "Since no concrete type information",
            "and is used for the application logic of browser-based productivity",
            "Keywords JavaScript, just-in-time compilation, trace trees.\n\n1. Introduction\n",
        ],
    );
    let left = first.find("Since no concrete type information");
    let right = first.find("and is used for the application logic");
    assert!(left < right, "right column read before the left one");
    // The left column ends page 1 mid-sentence ("…client-side web programming"); the right
    // column continues it.
    let left_end = first.find("example, is the de facto standard for client-side web programming");
    assert!(left_end < right);
}

#[test]
fn accents_set_over_letters_join_them() {
    // TeX draws "ï" as a dotless i with a separate diaeresis glyph over it.
    let rel = "pdf.js/tracemonkey.pdf";
    assert_contains(rel, &text(rel), &["In\na naïve implementation, inner loops"]);
}

#[test]
fn ligatures_become_letters() {
    let rel = "pdf.js/tracemonkey.pdf";
    let all = text(rel);
    assert_contains(rel, &all, &["that identifies frequently executed loop traces"]);
    assert!(!all.contains('\u{fb01}') && !all.contains('\u{fb02}'), "ligature left in text");
}

#[test]
fn book_pages_keep_their_numbers_and_lose_running_heads_and_printer_marks() {
    let rel = "pdf.js/freeculture.pdf";
    let doc = pages(rel);
    assert_eq!(doc.len(), 352);
    assert!(doc[30].text.starts_with("Since the inception of the law regulating creative property"));
    assert!(doc[31].text.starts_with("This efficiency does not respect the traditional lines"));
    assert!(doc[351].text.contains("ABOUT THE AUTHOR"));
    for page in &doc {
        // Outside the crop box: printer's slug line, pass marks, margin line numbers.
        assert!(!page.text.contains(".qxd") && !page.text.contains("4TH PASS"), "p{}", page.number);
        // A footer repeated on every other page.
        assert!(!page.text.contains("free-culture.org/get-it"), "footer on p{}", page.number);
        let first_line = page.text.lines().next().unwrap_or("");
        assert!(!first_line.ends_with(" FREE CULTURE"), "running head on p{}", page.number);
    }
}

#[test]
fn page_numbers_at_the_foot_of_pages_are_dropped() {
    let rel = "py-pdf_sample-files/pdflatex-4-pages.pdf";
    let doc = pages(rel);
    assert_eq!(doc.iter().map(|p| p.number).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert!(doc[0].text.starts_with("Hello, here is some text without a meaning."));
    for page in &doc {
        let last = page.text.lines().last().unwrap_or("");
        assert!(last.trim().parse::<u32>().is_err(), "page number left on p{}", page.number);
    }
}

#[test]
fn cjk_text_is_decoded_from_cid_collections_and_legacy_encodings() {
    for (rel, expected) in [
        ("pdfminer.six/jo.pdf", &["序", "わたくしといふ現象は", "假定された有機交流電燈の"][..]),
        ("pdf.js/90ms_rksj_h_sample.pdf", &["Hello ASCII", "日本語テスト"]),
        ("pdf.js/noembed-eucjp.pdf", &["あいうえお"]),
        ("pdf.js/noembed-sjis.pdf", &["あいうえお"]),
        ("pdf.js/SimFang-variant.pdf", &["全世界无产者", "联合起来"]),
        ("pdf.js/cid_cff.pdf", &["processor reference chart"]),
        ("pdfminer.six/nlp2004slides.pdf", &["コンパラブルな新聞記事からの", "固有表現の発見"]),
        ("pdf.js/mixedfonts.pdf", &["[CID-0 font] : abcdefghijklmnopqrstuvwxyzABCDEFGHI"]),
    ] {
        assert_contains(rel, &text(rel), expected);
    }
}

#[test]
fn vertical_japanese_reads_column_by_column_from_the_right() {
    let rel = "pdfminer.six/jo.pdf";
    let all = text(rel);
    let order = ["序", "わたくしといふ現象は", "假定された有機交流電燈の", "ひとつの青い照明です"];
    let at: Vec<Option<usize>> = order.iter().map(|s| all.find(s)).collect();
    assert!(at.iter().all(Option::is_some) && at.is_sorted(), "{at:?}");
}

#[test]
fn arabic_drawn_left_to_right_is_stored_in_logical_order() {
    // Glyph by glyph, as on the page: ya ba ya ba ha, the fatha over the ha.
    let path = Path::new(FIXTURES).join("arabic-visual-order.pdf");
    let bytes = std::fs::read(&path).unwrap_or_default();
    let read = extract_bytes("arabic-visual-order", bytes, None, PdfLimits::default());
    let page = read.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(page[0].text, "حَبيبي\n\nhabibi حَبيبي");
}

#[test]
fn arabic_is_stored_in_logical_order() {
    for rel in ["py-pdf_sample-files/habibi.pdf", "py-pdf_sample-files/habibi-oneline-cmap.pdf"] {
        // pdftotext gives the visual order "يبيبَح"; readers and search need "حَبيبي".
        assert_contains(rel, &text(rel), &["habibi", "حَبيبي"]);
    }
}

#[test]
fn cid_fonts_without_to_unicode_use_the_embedded_font_cmap() {
    let rel = "pdfminer.six/issue-791-non-unicode-cmap.pdf";
    assert_contains(rel, &text(rel), &["Peněžní prostředky na účtech"]);
    let rel = "pdf.js/ThuluthFeatures.pdf";
    assert_contains(rel, &text(rel), &["Contextual Forms OFF", "Islamic Ligature"]);
}

#[test]
fn latin_documents_from_many_producers_read_right() {
    for (rel, expected) in [
        (
            "py-pdf_sample-files/google-doc-document.pdf",
            &["Beautiful is better than ugly.", "Namespaces are one honking great idea -- let's do more of those!"][..],
        ),
        (
            "py-pdf_sample-files/002-trivial-libre-office-writer.pdf",
            &["Lorem ipsum dolor sit amet, consetetur sadipscing elitr"],
        ),
        (
            "pdfminer.six/issue-598-cmap-other-fonts.pdf",
            &["Clutch/Gearbox/MCR valve Fault: Signal voltage above threshold", "03-7FA81.03"],
        ),
        ("pdf.js/operator-in-TJ-array.pdf", &["Grandes Clientèles, Financements et Marchés"]),
        ("pdf.js/german-umlaut-r.pdf", &["ö„üä“Äß"]),
        ("pdf.js/Pages-tree-refs.pdf", &["Pages loop"]),
        ("pdf.js/structure_simple.pdf", &["Heading 1\n\nThis paragraph 1."]),
        ("py-pdf_sample-files/reportlab-overlay.pdf", &["Fingerprint: asdfSa2123"]),
        ("pdfminer.six/issue-1113-evil-xobjects.pdf", &["Hello world"]),
        ("OCRmyPDF/tagged.pdf", &["Table 1: Table caption"]),
    ] {
        assert_contains(rel, &text(rel), expected);
    }
}

#[test]
fn filled_form_fields_are_read_from_their_appearances() {
    let rel = "pdfminer.six/AcroForm_TEST.pdf";
    assert_contains(rel, &text(rel), &["CHECKBOX", "RADIO BUTTON", "m1", "m4"]);
}

#[test]
fn tables_are_read_row_by_row() {
    let rel = "pdfminer.six/issue-00369-excel.pdf";
    assert_eq!(text(rel), "1 2 3\n4 5 6\n7 8 9");
    let rel = "pdfminer.six/issue-598-cmap-other-fonts.pdf";
    assert_contains(
        rel,
        &text(rel),
        &[
            "DTC displayed Error Name\n03-7FA81.03 Clutch/Gearbox/MCR valve Fault: Signal voltage above threshold\n03-7FA81.05 Clutch/Gearbox/MCR valve Fault: Open load\n",
        ],
    );
    let rel = "py-pdf_sample-files/mistitled_outlines_example.pdf";
    assert!(pages(rel)[0].text.starts_with("Contents\n\n1 Foo 2\n2 Bar 2\n3 Baz 2\n4 Foo 2\n5 Bar 3"));
}
