//! What the corpus documents must give: expected failures, phrases read from the documents,
//! and text that must stay out.

/// Corpus documents that must fail, and how. Every other DOCX/text/Markdown file must yield
/// non-empty text.
pub const EXPECTED_FAILURES: &[(&str, &str)] = &[
    ("docx/apache-poi/51921-Word-Crash067.docx", "no_text"),
    ("docx/apache-poi/TestTableColumns.docx", "no_text"),
    ("docx/apache-poi/bug53475-password-is-pass.docx", "encrypted"),
    ("docx/apache-poi/clusterfuzz-testcase-minimized-POIXWPFFuzzer-4791943399604224.docx", "corrupt"),
    ("docx/apache-poi/clusterfuzz-testcase-minimized-POIXWPFFuzzer-5313273089884160.docx", "corrupt"),
    // Its only text is a comment, and comments are excluded.
    ("docx/apache-poi/comment.docx", "no_text"),
    ("docx/apache-poi/truncated62886.docx", "corrupt"),
    ("docx/mammoth.js/empty.docx", "no_text"),
    ("docx/mammoth.js/external-picture.docx", "no_text"),
    ("docx/mammoth.js/tiny-picture.docx", "no_text"),
    ("docx/python-docx/blk-containing-table.docx", "no_text"),
    ("docx/python-docx/default.docx", "no_text"),
    ("docx/python-docx/doc-default.docx", "no_text"),
    ("docx/python-docx/sty-having-no-styles-part.docx", "no_text"),
    ("docx/python-docx/tbl-2x2-table.docx", "no_text"),
    ("docx/python-docx/tbl-on-off-props.docx", "no_text"),
];

/// Phrases read from the documents, which their extracted text must contain.
pub const PHRASES: &[(&str, &str)] = &[
    ("docx/apache-poi/Bug54771a.docx", "Test Subtitle"),
    ("docx/apache-poi/ComplexNumberedLists.docx", "2. Entry #2, with children\n\n  a. 2-a"),
    ("docx/apache-poi/ComplexNumberedLists.docx", "10. Jump to new list at 10"),
    ("docx/apache-poi/HeaderFooterUnicode.docx", "This is a fairly simple word document"),
    ("docx/apache-poi/MultipleBodyBug.docx", "The quick, brown fox jumps over a lazy dog."),
    ("docx/apache-poi/WordWithAttachments.docx", "Русский вариант"),
    ("docx/apache-poi/bug57031.docx", "Home Work # 13"),
    ("docx/apache-poi/delins.docx", "A Nepalese name for Tilaka"),
    ("docx/apache-poi/drawing.docx", "МОНИТОРИНГ СМИ"),
    ("docx/apache-poi/footnotes.docx", "snoska"),
    ("docx/apache-poi/headerFooter.docx", "This is a simple header"),
    ("docx/apache-poi/headerFooter.docx", "and this is a simple footer."),
    ("docx/apache-poi/protected_sample.docx", "Un due tre prova"),
    ("docx/apache-poi/smarttag-snippet.docx", "Carnegie Mellon University"),
    ("docx/mammoth.js/footnotes.docx", "A tachyon walks into a bar."),
    ("docx/mammoth.js/single-paragraph.docx", "Walking on imported air"),
    ("docx/mammoth.js/strict-format.docx", "Test"),
    ("docx/mammoth.js/strikethrough.docx", "Today's Special: Salmon Sold out"),
    ("docx/mammoth.js/utf8-bom.docx", "This XML has a byte order mark."),
    ("docx/pandoc/alternate_document_path.docx", "This is italic, bold, underlined"),
    ("docx/pandoc/instrText_hyperlink.docx", "Foundations of Analysis, 2nd Edition"),
    ("docx/pandoc/lists.docx", "1. one\n\n2. two\n\n  a. a"),
    ("docx/pandoc/notes.docx", "This is an endnote at the end of the document."),
    ("docx/pandoc/ns0-reference.docx", "ref"),
    ("docx/pandoc/tables.docx", "Name | Game | Fame | Blame"),
    ("docx/pandoc/track_changes_deletion.docx", "This is a text with a deletion."),
    ("docx/pandoc/unicode.docx", "Hello, 世界. This costs €10."),
    ("docx/python-docx/doc-odd-even-hdrs.docx", "Even page header."),
    ("docx/python-docx/tbl-cell-props.docx", "a | b | c | d"),
    ("docx/python-docx/test.docx", "python-docx was here!"),
    // SmartArt text lives in the diagram data part.
    ("docx/python-docx/shp-inline-shape-access.docx", "foo\nbar\nbaz"),
    ("text/alice29.txt", "Down the Rabbit-Hole"),
    ("text/rfc2616.txt", "Hypertext Transfer Protocol -- HTTP/1.1"),
    ("text/tinyshakespeare.txt", "First Citizen:\nBefore we proceed any further, hear me speak."),
    ("markdown/pandoc_MANUAL.md", "\n# Synopsis\n"),
    ("markdown/char-rnn_Readme.md", "# char-rnn"),
    ("markdown/mammoth.js_README.md", "```javascript"),
    ("markdown/pandoc_tables.md", "Simple table with caption:"),
    ("markdown/pandoc_testsuite.md", "% Pandoc Test Suite"),
];

/// Text that must not appear: deleted revisions, comments, field codes, unresolved entities.
pub const ABSENT: &[(&str, &str)] = &[
    ("docx/apache-poi/delins.docx", "DragonLance"),
    ("docx/pandoc/track_changes_deletion.docx", "excessively modified"),
    ("docx/pandoc/comments.docx", "I left a comment."),
    ("docx/mammoth.js/comments.docx", "A tachyon walks into a bar."),
    ("docx/apache-poi/testComment.docx", "omment content"),
    ("docx/pandoc/instrText_hyperlink.docx", "HYPERLINK"),
    ("docx/pandoc/pageref.docx", "PAGEREF"),
    ("docx/apache-poi/ExternalEntityInText.docx", "poi.apache.org"),
];
