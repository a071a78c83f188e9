//! Citations in an answer: `[n]` markers that point at the context's numbered sources. Every
//! marker is checked: one that names no source in the context is removed; one whose sentence is
//! not supported by the chunk it cites (too few of the sentence's content words occur in the
//! chunk) is removed too. The reply says how many were removed for each reason, and lists only
//! the sources that are still cited.

use std::collections::HashSet;

use unicode_segmentation::UnicodeSegmentation;

use super::context::Context;

/// An answer's text after the check, and what the check did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Checked {
    /// The answer with removed markers taken out.
    pub text: String,
    /// Numbers of the sources still cited, in order of first citation.
    pub cited: Vec<usize>,
    /// Markers naming a number that is not in the context.
    pub removed_unknown: usize,
    /// Markers whose sentence the cited chunk does not support.
    pub removed_unsupported: usize,
}

/// Words too common to show that a chunk supports a sentence.
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can",
    "could", "did", "do", "does", "for", "from", "had", "has", "have", "he", "her", "his", "how", "i", "if", "in",
    "into", "is", "it", "its", "may", "more", "no", "not", "of", "on", "one", "or", "other", "our", "she", "should",
    "so", "some", "such", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "to",
    "was", "we", "were", "what", "when", "which", "who", "will", "with", "would", "you", "your",
];

/// The content words of `text`: lower-cased words with a letter or digit, stopwords and citation
/// numbers left out.
pub fn terms(text: &str) -> Vec<String> {
    text.unicode_words()
        .map(str::to_lowercase)
        .filter(|w| w.chars().any(char::is_alphabetic) && !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// The share of `sentence`'s content words that occur in `source` (1.0 for a sentence without
/// content words: nothing to contradict).
pub fn support(sentence: &str, source: &str) -> f64 {
    let words = terms(sentence);
    if words.is_empty() {
        return 1.0;
    }
    let in_source: HashSet<String> = terms(source).into_iter().collect();
    words.iter().filter(|w| in_source.contains(*w)).count() as f64 / words.len() as f64
}

/// One `[…]` group of citation numbers found in a text: its byte range and numbers.
struct Marker {
    range: std::ops::Range<usize>,
    numbers: Vec<usize>,
}

/// `[3]`, `[1, 2]`, `[1][2]` (two markers); not `[a]` or `[]`.
fn markers(text: &str) -> Vec<Marker> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'['
            && let Some(len) = text[i + 1..].find(']')
        {
            let inner = &text[i + 1..i + 1 + len];
            let numbers: Option<Vec<usize>> = inner.split(',').map(|n| n.trim().parse().ok()).collect();
            if let Some(numbers) = numbers.filter(|n| !n.is_empty()) {
                found.push(Marker { range: i..i + len + 2, numbers });
                i += len + 2;
                continue;
            }
        }
        i += 1;
    }
    found
}

/// Checks the citations of `answer` against `context`: a marker's numbers must name sources in
/// the context whose chunk supports the marker's sentence (the text of the sentence without its
/// markers) with at least `min_support` of its content words.
pub fn check(answer: &str, context: &Context, min_support: f64) -> Checked {
    let mut checked = Checked::default();
    for sentence in answer.split_sentence_bounds() {
        let found = markers(sentence);
        let mut claim = String::with_capacity(sentence.len());
        let mut at = 0;
        for marker in &found {
            claim.push_str(&sentence[at..marker.range.start]);
            at = marker.range.end;
        }
        claim.push_str(&sentence[at..]);
        let mut at = 0;
        for marker in &found {
            checked.text.push_str(&sentence[at..marker.range.start]);
            at = marker.range.end;
            let mut kept = Vec::new();
            for &n in &marker.numbers {
                match context.source(n) {
                    None => checked.removed_unknown += 1,
                    Some(source) if support(&claim, &source.text) < min_support => checked.removed_unsupported += 1,
                    Some(_) => {
                        if !kept.contains(&n) {
                            kept.push(n);
                        }
                    }
                }
            }
            if kept.is_empty() {
                // Keep the spacing tidy: "text [9]." becomes "text.".
                while checked.text.ends_with(' ') && !sentence[at..].starts_with(' ') {
                    checked.text.pop();
                }
            } else {
                let list = kept.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
                checked.text.push_str(&format!("[{list}]"));
                for n in kept {
                    if !checked.cited.contains(&n) {
                        checked.cited.push(n);
                    }
                }
            }
        }
        checked.text.push_str(&sentence[at..]);
    }
    checked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::context::context_of;

    #[test]
    fn keeps_supported_citations_and_removes_unknown_and_unsupported_ones() {
        let context = context_of(&[
            "Snappy is a compression library written in C++ by Google.",
            "The White Rabbit wore a waistcoat and carried a watch.",
        ]);
        let answer = "Snappy is a compression library from Google [1]. The rabbit carried a watch [2][7]. \
                      Snappy compresses whales [2].";
        let checked = check(answer, &context, 0.5);
        assert_eq!(checked.cited, vec![1, 2]);
        assert_eq!(checked.removed_unknown, 1);
        assert_eq!(checked.removed_unsupported, 1, "sentence 3 is not in chunk 2");
        assert_eq!(
            checked.text,
            "Snappy is a compression library from Google [1]. The rabbit carried a watch [2]. Snappy compresses whales."
        );
    }

    #[test]
    fn reads_grouped_markers_and_ignores_brackets_that_are_not_citations() {
        let context = context_of(&["Rust has ownership and borrowing.", "Rust has no garbage collector."]);
        let checked = check("Rust has ownership [1, 2] and an array a[i] [x].", &context, 0.2);
        assert_eq!(checked.cited, vec![1, 2]);
        assert_eq!(checked.text, "Rust has ownership [1, 2] and an array a[i] [x].");
        assert_eq!((checked.removed_unknown, checked.removed_unsupported), (0, 0));
    }

    #[test]
    fn support_counts_content_words_only() {
        assert!((support("The cat is on the mat", "a mat and a cat") - 1.0).abs() < 1e-9);
        assert!((support("cats eat fish", "cats sleep") - 1.0 / 3.0).abs() < 1e-9);
        assert!((support("[1]", "anything") - 1.0).abs() < 1e-9);
    }
}
