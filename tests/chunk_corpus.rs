//! The chunker on real documents from `../shared/corpus/`.

mod chunk_checks;

use std::ops::Range;

use chunk_checks::check_chunks;
use ragpipe::chunk::{Chunk, ChunkInput, ChunkSettings, Chunker, Strategy};

const MANUAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/markdown/pandoc_MANUAL.md");
const RFC2616: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/text/rfc2616.txt");
const QUIJOTE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/text/pg2000_don_quijote_es.txt");
const ALICE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/text/alice29.txt");

const STRATEGIES: [Strategy; 4] = [Strategy::Semantic, Strategy::Fixed, Strategy::Markdown, Strategy::Recursive];

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("corpus file {path}: {e}"))
}

fn default_chunker() -> Chunker {
    Chunker::new(&ChunkSettings::default()).expect("default settings are valid")
}

/// The one chunk holding `needle` whole.
fn chunk_with<'c>(chunks: &'c [Chunk], needle: &str) -> &'c Chunk {
    chunks.iter().find(|c| c.text.contains(needle)).unwrap_or_else(|| panic!("no chunk contains {needle:?} whole"))
}

#[test]
fn pandoc_manual_chunks_carry_the_heading_path_of_their_section() {
    let text = read(MANUAL);
    let chunker = default_chunker();
    let chunks = chunker.chunk(&ChunkInput::markdown(&text));
    check_chunks(&text, &chunks, chunker.settings().max_tokens, 0).unwrap_or_else(|e| panic!("{e}"));
    // Each pair checked by hand against the headings above the line in the file.
    let samples = [
        ("Pandoc is a [Haskell] library for converting from one markup format to", "Description"),
        (
            "Interpret straight quotes as curly quotes, `---` as em-dashes,",
            "Extensions > Typography > Extension: smart",
        ),
        (
            "The syntax is identical to [PHP Markdown Extra tables].",
            "Pandoc's Markdown > Tables > Extension: pipe_tables",
        ),
        ("Pandoc's citation processing is designed to allow you to", "Citations > Citations in note styles"),
    ];
    for (needle, path) in samples {
        assert_eq!(chunk_with(&chunks, needle).heading_path.as_deref(), Some(path), "{needle}");
    }
    assert!(chunks.iter().all(|c| c.strategy == Strategy::Markdown));
}

#[test]
fn pandoc_manual_code_blocks_and_headings_are_not_cut() {
    let text = read(MANUAL);
    let chunks = default_chunker().chunk(&ChunkInput::markdown(&text));
    let pipe_table = "    | Right | Left | Default | Center |\n    |------:|:-----|---------|:------:|\n    |   12  |  12  |    12   |    12  |\n    |  123  |  123 |   123   |   123  |\n    |    1  |    1 |     1   |     1  |";
    chunk_with(&chunks, pipe_table.trim_start());
    for c in &chunks {
        let last_line = c.text.lines().next_back().unwrap_or_default();
        assert!(!last_line.starts_with('#'), "chunk ends with a heading: {last_line:?}");
    }
}

#[test]
fn rfc2616_keeps_sentences_whole_and_fits_every_strategy() {
    let text = read(RFC2616);
    let chunker = default_chunker();
    for strategy in STRATEGIES {
        let chunks = chunker.chunk_with(&ChunkInput::text(&text), strategy, 256, 0);
        check_chunks(&text, &chunks, 256, 0).unwrap_or_else(|e| panic!("{strategy}: {e}"));
    }
    let chunks = chunker.chunk(&ChunkInput::text(&text));
    let abstract_sentence = "The Hypertext Transfer Protocol (HTTP) is an application-level\n   protocol for distributed, collaborative, hypermedia information\n   systems.";
    chunk_with(&chunks, abstract_sentence);
}

#[test]
fn don_quijote_with_bom_and_crlf_gets_char_offsets_right() {
    let raw = read(QUIJOTE);
    assert!(raw.starts_with('\u{feff}') && raw.contains("\r\n"), "the corpus file has a BOM and CRLF");
    // What extraction does before chunking.
    let text = raw.trim_start_matches('\u{feff}').replace("\r\n", "\n");
    let chunker = default_chunker();
    let chunks = chunker.chunk(&ChunkInput::text(&text));
    check_chunks(&text, &chunks, chunker.settings().max_tokens, 0).unwrap_or_else(|e| panic!("{e}"));
    let opening = chunk_with(&chunks, "En un lugar de la Mancha, de cuyo nombre no quiero acordarme");
    assert!(opening.char_start < opening.byte_start, "accented text before it: chars and bytes differ");
    let head = &text[..text.floor_char_boundary(200_000)];
    let with_overlap = chunker.chunk_with(&ChunkInput::text(head), Strategy::Semantic, 256, 32);
    check_chunks(head, &with_overlap, 256, 32).unwrap_or_else(|e| panic!("{e}"));
}

/// Alice's first fifteen paragraphs, three to a page, pages numbered from 7.
fn paged_alice() -> (String, Vec<(u32, Range<usize>)>) {
    let raw = read(ALICE).replace("\r\n", "\n");
    let start = raw.find("  Alice was beginning").expect("opening paragraph");
    let paragraphs: Vec<&str> = raw[start..].split("\n\n").map(str::trim).filter(|p| !p.is_empty()).take(15).collect();
    let mut text = String::new();
    let mut pages = Vec::new();
    for (i, page) in paragraphs.chunks(3).enumerate() {
        let page_start = text.len();
        for p in page {
            text.push_str(p);
            text.push_str("\n\n");
        }
        pages.push((7 + i as u32, page_start..text.len()));
    }
    (text, pages)
}

#[test]
fn paged_input_gives_each_chunk_the_pages_it_spans() {
    let (text, pages) = paged_alice();
    let input = ChunkInput { text: &text, markdown: false, pages: &pages };
    let chunks = default_chunker().chunk_with(&input, Strategy::Semantic, 128, 0);
    check_chunks(&text, &chunks, 128, 0).unwrap_or_else(|e| panic!("{e}"));
    let page_of = |pos: usize| pages.iter().find(|(_, r)| r.contains(&pos)).map(|(n, _)| *n);
    for c in &chunks {
        assert_eq!(c.page_start, page_of(c.byte_start), "{c:?}");
        assert_eq!(c.page_end, page_of(c.byte_end - 1), "{c:?}");
    }
    // Checked by hand: paragraphs 1–3 are page 7, 4–6 page 8, 7–9 page 9.
    assert_eq!(chunk_with(&chunks, "Alice was beginning to get very tired").page_start, Some(7));
    assert_eq!(chunk_with(&chunks, "In another moment down went Alice after it").page_end, Some(8));
    assert_eq!(chunk_with(&chunks, "thought Alice to herself, `after such a fall as this").page_end, Some(9));
    assert!(chunks.iter().any(|c| c.page_start != c.page_end), "some chunk spans a page break");
}

#[test]
fn unpaged_input_has_no_pages_and_plain_text_no_heading_path() {
    let (text, _) = paged_alice();
    let chunks = default_chunker().chunk(&ChunkInput::text(&text));
    assert!(!chunks.is_empty());
    assert!(chunks.iter().all(|c| c.page_start.is_none() && c.page_end.is_none() && c.heading_path.is_none()));
}
