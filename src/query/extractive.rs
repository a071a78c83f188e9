//! The answer when no LLM is configured: the context's sentences that best match the question,
//! each with its citation, in the order of their sources. A sentence scores by the question's
//! content words it contains, each weighted by how rare it is among the context's sentences
//! (idf), divided by a gentle length penalty, and discounted by its source's rank (the dense
//! ranking already put the best chunk first). If no sentence shares a word with the question
//! (a match by meaning only), the best source's opening sentences stand in.

use std::collections::{HashMap, HashSet};

use unicode_segmentation::UnicodeSegmentation;

use super::citations::terms;
use super::context::Context;

/// Sentences shorter than this many content words say too little to quote.
const MIN_TERMS: usize = 3;

/// An extractive answer: its text and the sources it cites (in order of first citation).
#[derive(Debug, Clone, PartialEq)]
pub struct Extract {
    /// Quoted sentences, each followed by its `[n]`.
    pub text: String,
    /// Numbers of the cited sources.
    pub cited: Vec<usize>,
}

struct Candidate {
    n: usize,
    position: usize,
    text: String,
    terms: HashSet<String>,
    len: usize,
}

/// Up to `max_sentences` sentences of `context` that best answer `query`.
pub fn answer(query: &str, context: &Context, max_sentences: usize) -> Extract {
    let candidates: Vec<Candidate> = context
        .sources
        .iter()
        .flat_map(|source| {
            let text = unwrap_lines(&source.text);
            let sentences: Vec<String> = text.split_sentence_bounds().map(str::to_owned).collect();
            sentences.into_iter().enumerate().filter_map(|(position, sentence)| {
                let text = sentence.split_whitespace().collect::<Vec<_>>().join(" ");
                let words = terms(&text);
                (words.len() >= MIN_TERMS).then(|| Candidate {
                    n: source.n,
                    position,
                    len: words.len(),
                    terms: words.into_iter().collect(),
                    text,
                })
            })
        })
        .collect();
    let mut df: HashMap<&str, usize> = HashMap::new();
    for candidate in &candidates {
        for term in &candidate.terms {
            *df.entry(term.as_str()).or_default() += 1;
        }
    }
    let question: HashSet<String> = terms(query).into_iter().collect();
    let total = candidates.len() as f64;
    let idf = |term: &str| (1.0 + total / (1.0 + df.get(term).copied().unwrap_or(0) as f64)).ln();
    let mut scored: Vec<(f64, &Candidate)> = candidates
        .iter()
        .map(|c| {
            let matched: f64 = question.iter().filter(|t| c.terms.contains(*t)).map(|t| idf(t)).sum();
            let length = 1.0 + (1.0 + c.len as f64 / 20.0).ln();
            let rank = 1.0 / (1.0 + 0.15 * (c.n as f64 - 1.0));
            (matched / length * rank, c)
        })
        .filter(|(score, _)| *score > 0.0)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.n.cmp(&b.1.n)).then(a.1.position.cmp(&b.1.position)));
    let mut chosen: Vec<&Candidate> = scored.into_iter().take(max_sentences).map(|(_, c)| c).collect();
    if chosen.is_empty() {
        chosen = candidates.iter().filter(|c| c.n == 1).take(max_sentences.min(2)).collect();
    }
    chosen.sort_by_key(|c| (c.n, c.position));
    let mut cited = Vec::new();
    let quoted: Vec<String> = chosen
        .iter()
        .map(|c| {
            if !cited.contains(&c.n) {
                cited.push(c.n);
            }
            cite(&c.text, c.n)
        })
        .collect();
    Extract { text: quoted.join(" "), cited }
}

/// `text` with its paragraphs' hard line breaks (e-texts and plain-text mail wrap at ~70
/// columns) turned into spaces: Unicode sentence boundaries end a sentence at every line break,
/// which would cut wrapped sentences apart. Blank lines still separate paragraphs.
fn unwrap_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_paragraph = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            if in_paragraph {
                out.push_str("\n\n");
                in_paragraph = false;
            }
            continue;
        }
        // A word hyphenated at the line's end ("WAISTCOAT-" / "POCKET") is joined, hyphen kept.
        let hyphenated = out.ends_with('-') && out[..out.len() - 1].ends_with(char::is_alphabetic);
        if in_paragraph && !hyphenated {
            out.push(' ');
        }
        out.push_str(line);
        in_paragraph = true;
    }
    out.trim_end().to_owned()
}

/// `sentence` with `[n]` before its closing punctuation ("It rained [2].").
fn cite(sentence: &str, n: usize) -> String {
    let body = sentence.trim_end_matches(['.', '!', '?', ':', ';']);
    format!("{body} [{n}]{}", &sentence[body.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::context::context_of;

    #[test]
    fn quotes_the_sentences_that_match_the_question_with_their_sources() {
        let context = context_of(&[
            "Alice was beginning to get very tired of sitting by her sister on the bank. \
             Suddenly a White Rabbit with pink eyes ran close by her.",
            "The Rabbit actually took a watch out of its waistcoat-pocket, and looked at it. \
             The weather was fine that day in the garden.",
        ]);
        let extract = answer("What did the White Rabbit take out of its waistcoat pocket?", &context, 2);
        assert_eq!(
            extract.text,
            "Suddenly a White Rabbit with pink eyes ran close by her [1]. \
             The Rabbit actually took a watch out of its waistcoat-pocket, and looked at it [2]."
        );
        assert_eq!(extract.cited, vec![1, 2]);
    }

    #[test]
    fn hard_wrapped_sentences_are_quoted_whole() {
        let context = context_of(&["There was nothing so VERY remarkable in that.  But when the Rabbit actually\n\
             TOOK A WATCH OUT OF ITS WAISTCOAT-\nPOCKET, and looked at it, and then\n\
             hurried on, Alice started to her feet.\n\nA new paragraph about tea and cakes."]);
        let extract = answer("Who looked at the watch from its waistcoat pocket?", &context, 1);
        assert_eq!(
            extract.text,
            "But when the Rabbit actually TOOK A WATCH OUT OF ITS WAISTCOAT-POCKET, and looked at it, \
             and then hurried on, Alice started to her feet [1]."
        );
    }

    #[test]
    fn falls_back_to_the_best_source_when_no_word_matches() {
        let context = context_of(&["Snappy compresses data quickly. It favours speed over ratio.", "Other text here."]);
        let extract = answer("fast codec?", &context, 3);
        assert_eq!(extract.text, "Snappy compresses data quickly [1]. It favours speed over ratio [1].");
        assert_eq!(extract.cited, vec![1]);
        assert!(answer("anything", &Context::default(), 3).text.is_empty());
    }
}
