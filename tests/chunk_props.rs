//! Property tests of the chunker on arbitrary Unicode text, for every strategy.

mod chunk_checks;

use std::sync::OnceLock;

use chunk_checks::{check_chunks, reference_count};
use proptest::prelude::{
    Just, ProptestConfig, TestCaseError, any, prop, prop_assert, prop_assert_eq, prop_oneof, proptest,
};
use proptest::sample::select;
use proptest::strategy::Strategy as _;
use ragpipe::chunk::{Chunk, ChunkInput, ChunkSettings, Chunker, Encoding, Strategy};

const STRATEGIES: [Strategy; 4] = [Strategy::Semantic, Strategy::Fixed, Strategy::Markdown, Strategy::Recursive];

/// Sync points every 64 tokens on average, so small documents exercise them a lot.
const RESYNC: usize = 64;

fn chunker() -> &'static Chunker {
    static CHUNKER: OnceLock<Chunker> = OnceLock::new();
    CHUNKER.get_or_init(|| {
        let settings =
            ChunkSettings { max_tokens: 64, min_tokens: 8, resync_tokens: RESYNC, ..ChunkSettings::default() };
        Chunker::new(&settings).expect("test settings are valid")
    })
}

fn chunker_without_sync() -> &'static Chunker {
    static CHUNKER: OnceLock<Chunker> = OnceLock::new();
    CHUNKER.get_or_init(|| {
        let settings = ChunkSettings { max_tokens: 64, min_tokens: 8, resync_tokens: 0, ..ChunkSettings::default() };
        Chunker::new(&settings).expect("test settings are valid")
    })
}

/// Pieces of hostile text: CJK without spaces, right-to-left scripts, emoji with ZWJ and skin
/// tones, combining marks (a few, or so many that one cluster exceeds the budget), long words
/// without spaces, Markdown-ish lines, sentence ends in several scripts, arbitrary scalars.
fn fragment() -> impl proptest::strategy::Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z]{1,12}",
        2 => "[A-Z][a-z]{0,10}",
        2 => "[\u{4e00}-\u{9fff}]{1,40}",
        1 => "[\u{3041}-\u{3096}\u{30a1}-\u{30fa}]{1,20}",
        2 => "[\u{0621}-\u{064a}]{2,10}",
        1 => "[\u{05d0}-\u{05ea}]{2,8}",
        2 => select(vec!["👩🏽‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👍🏿", "🇫🇷🇩🇪", "❤️", "🧑🏾‍🤝‍🧑🏻"]).prop_map(String::from),
        2 => "[a-z][\u{0300}-\u{036f}]{1,3}",
        1 => "[a-z][\u{0300}-\u{036f}]{40,90}",
        1 => "[a-z]{40,300}",
        2 => select(vec!["# Heading", "## Sub heading", "- item", "* item", "1. first", "```", "    code", "> quote", "| a | b |", "---", "Title\n====="]).prop_map(String::from),
        2 => select(vec![". ", "? ", "! ", "。", "؟ ", ", ", "; ", "...", "\u{0964}"]).prop_map(String::from),
        1 => "[0-9]{1,8}",
        1 => any::<char>().prop_map(String::from),
    ]
}

fn separator() -> impl proptest::strategy::Strategy<Value = &'static str> {
    select(vec![" ", " ", " ", "\n", "\n\n", "\n\n\n", "\t", "\r\n", "  ", "\u{3000}", "", "\n \n"])
}

fn document() -> impl proptest::strategy::Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec((fragment(), separator()), 0..120)
            .prop_map(|parts| parts.into_iter().map(|(f, s)| f + s).collect()),
        1 => any::<String>(),
    ]
}

fn budget() -> impl proptest::strategy::Strategy<Value = (usize, usize)> {
    (8usize..=96).prop_flat_map(|max| (Just(max), prop_oneof![Just(0), 0..=max / 2]))
}

fn chunk(chunker: &Chunker, text: &str, strategy: Strategy, max: usize, overlap: usize) -> Vec<Chunk> {
    let input = ChunkInput { text, markdown: strategy == Strategy::Markdown, pages: &[] };
    chunker.chunk_with(&input, strategy, max, overlap)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn chunks_fit_the_budget_cover_the_text_and_slice_it_exactly(text in document(), (max, overlap) in budget()) {
        for strategy in STRATEGIES {
            for chunker in [chunker(), chunker_without_sync()] {
                let chunks = chunk(chunker, &text, strategy, max, overlap);
                check_chunks(&text, &chunks, max, overlap)
                    .map_err(|e| TestCaseError::fail(format!("{strategy}: {e}")))?;
                prop_assert!(chunks.iter().all(|c| c.strategy == strategy));
            }
        }
    }

    #[test]
    fn chunking_is_deterministic(text in document(), (max, overlap) in budget()) {
        for strategy in STRATEGIES {
            let first = chunk(chunker(), &text, strategy, max, overlap);
            let again = chunk(chunker(), &text, strategy, max, overlap);
            prop_assert_eq!(first, again);
        }
    }

    #[test]
    fn token_counts_match_tiktoken_in_every_encoding(text in document()) {
        for (encoding, chunker) in encoding_chunkers() {
            let expected = reference_bpe(*encoding).encode_ordinary(&text).len();
            prop_assert_eq!(chunker.count_tokens(&text), expected, "{}", encoding.name());
        }
    }

    #[test]
    fn editing_one_paragraph_only_changes_the_chunks_around_it(
        doc in edited_document(),
        (max, overlap) in (16usize..=64).prop_flat_map(|m| (Just(m), prop_oneof![Just(0), Just(m / 4)])),
    ) {
        for strategy in STRATEGIES {
            let before = chunk(chunker(), &doc.original, strategy, max, overlap);
            let after = chunk(chunker(), &doc.edited, strategy, max, overlap);
            check_prefix_unchanged(&doc, &before, &after).map_err(|e| TestCaseError::fail(format!("{strategy}: {e}")))?;
            check_suffix_resynchronised(&doc, &before, &after).map_err(|e| TestCaseError::fail(format!("{strategy}: {e}")))?;
        }
    }
}

#[test]
fn empty_and_whitespace_only_text_gives_no_chunks() {
    for text in ["", " ", "\n\n\t \r\n", "\u{3000}\u{2028} "] {
        for strategy in STRATEGIES {
            assert!(chunk(chunker(), text, strategy, 64, 0).is_empty(), "{strategy} on {text:?}");
        }
    }
}

#[test]
fn a_grapheme_is_cut_only_when_it_alone_exceeds_the_budget() {
    let zalgo = format!("a{}", "\u{0301}\u{0316}".repeat(60));
    assert!(reference_count(&zalgo) > 16, "the cluster alone must be over the budget");
    let text = format!("plain words here. {zalgo} more words after it.");
    let cluster = text.find(&zalgo).map(|s| s..s + zalgo.len()).expect("cluster present");
    for strategy in STRATEGIES {
        let chunks = chunk(chunker(), &text, strategy, 16, 0);
        check_chunks(&text, &chunks, 16, 0).unwrap_or_else(|e| panic!("{strategy}: {e}"));
        let inside = |p: usize| p > cluster.start && p < cluster.end;
        assert!(chunks.iter().any(|c| inside(c.byte_end)), "{strategy}: the cluster was not cut");
        assert!(chunks.iter().any(|c| c.text.contains("plain words here.")), "{strategy}");
    }
}

fn encoding_chunkers() -> &'static [(Encoding, Chunker)] {
    static CHUNKERS: OnceLock<Vec<(Encoding, Chunker)>> = OnceLock::new();
    CHUNKERS.get_or_init(|| {
        Encoding::ALL
            .into_iter()
            .map(|e| {
                let settings = ChunkSettings { encoding: e.name().to_owned(), ..ChunkSettings::default() };
                (e, Chunker::new(&settings).expect("every encoding builds"))
            })
            .collect()
    })
}

fn reference_bpe(encoding: Encoding) -> &'static tiktoken_rs::CoreBPE {
    match encoding {
        Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
        Encoding::P50kBase => tiktoken_rs::p50k_base_singleton(),
        Encoding::R50kBase => tiktoken_rs::r50k_base_singleton(),
    }
}

/// A prose document (no Markdown syntax, so an edit stays local in every strategy), the same
/// document with one paragraph replaced, and where things are.
#[derive(Debug, Clone)]
struct EditedDocument {
    original: String,
    edited: String,
    /// Byte offset of the paragraph before the edited one.
    previous_paragraph: usize,
    /// Byte offset, in `original`, of a later paragraph of at least `RESYNC` tokens: always a
    /// sync point, so everything from it on must be chunked the same in both versions.
    big_paragraph: usize,
}

fn prose_word() -> impl proptest::strategy::Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z]{1,10}",
        2 => "[A-Z][a-z]{1,8}",
        2 => "[\u{4e00}-\u{9fff}]{1,30}",
        1 => "[\u{0621}-\u{064a}]{2,10}",
        1 => select(vec!["👩🏽‍💻", "👨‍👩‍👧‍👦", "🇫🇷"]).prop_map(String::from),
        1 => "[a-z][\u{0300}-\u{036f}]{1,2}",
        1 => "[a-z]{30,120}",
    ]
}

fn prose_paragraph() -> impl proptest::strategy::Strategy<Value = String> {
    let sep = select(vec![" ", " ", " ", ". ", ", ", "\n", "。", "؟ "]);
    prop::collection::vec((prose_word(), sep), 1..30)
        .prop_map(|parts| parts.into_iter().map(|(w, s)| w + s).collect::<String>().trim_end().to_owned())
}

fn edited_document() -> impl proptest::strategy::Strategy<Value = EditedDocument> {
    let paragraphs = || prop::collection::vec(prose_paragraph(), 0..6);
    (
        prop::collection::vec(prose_paragraph(), 1..6),
        prose_paragraph(),
        prose_paragraph(),
        paragraphs(),
        prop::collection::vec(prose_word(), 1..20),
        paragraphs(),
    )
        .prop_map(|(before, old, new, middle, big_words, after)| {
            let mut big = big_words.join(" ");
            while reference_count(&big) < RESYNC {
                big.push_str(" and some more filler words");
            }
            let join = |edited: &str| {
                let mut all = before.clone();
                all.push(edited.to_owned());
                all.extend(middle.iter().cloned());
                all.push(big.clone());
                all.extend(after.iter().cloned());
                all.join("\n\n")
            };
            let original = join(&old);
            let previous_paragraph = before[..before.len() - 1].iter().map(|p| p.len() + 2).sum();
            let big_paragraph = original.len() - after.iter().map(|p| p.len() + 2).sum::<usize>() - big.len();
            EditedDocument { edited: join(&new), original, previous_paragraph, big_paragraph }
        })
}

/// Chunks that end before the chunk holding the paragraph before the edit are identical. (The
/// chunk holding it may take in or give up the edited paragraph, and the one before that may
/// be rebalanced with it when it becomes a group's tiny tail.)
fn check_prefix_unchanged(doc: &EditedDocument, before: &[Chunk], after: &[Chunk]) -> Result<(), String> {
    let reaching = before.iter().position(|c| c.byte_end > doc.previous_paragraph).unwrap_or(before.len());
    let stable = reaching.saturating_sub(1);
    if after.len() < stable || before[..stable] != after[..stable] {
        return Err(format!("one of the first {stable} chunks changed"));
    }
    Ok(())
}

/// From the big paragraph on, the edited document has the same chunks, shifted by the edit.
fn check_suffix_resynchronised(doc: &EditedDocument, before: &[Chunk], after: &[Chunk]) -> Result<(), String> {
    let byte_shift = doc.edited.len() as isize - doc.original.len() as isize;
    let char_shift = doc.edited.chars().count() as isize - doc.original.chars().count() as isize;
    let tail =
        |chunks: &[Chunk], from: usize| chunks.iter().filter(|c| c.byte_start >= from).cloned().collect::<Vec<_>>();
    let old = tail(before, doc.big_paragraph);
    let new = tail(after, doc.big_paragraph.saturating_add_signed(byte_shift));
    if old.is_empty() {
        return Err("no chunk starts at the big paragraph".to_owned());
    }
    let shifted: Vec<Chunk> = old
        .into_iter()
        .map(|c| Chunk {
            byte_start: c.byte_start.saturating_add_signed(byte_shift),
            byte_end: c.byte_end.saturating_add_signed(byte_shift),
            char_start: c.char_start.saturating_add_signed(char_shift),
            char_end: c.char_end.saturating_add_signed(char_shift),
            ..c
        })
        .collect();
    if shifted != new {
        return Err(format!("chunks after the sync point differ: {} before, {} after", shifted.len(), new.len()));
    }
    Ok(())
}
