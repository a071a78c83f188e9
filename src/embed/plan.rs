//! Pure planning for the embedding service: batch packing, long inputs, dedup of identical
//! texts, and combining the pieces of a split input.

use std::collections::HashMap;

use super::EmbedError;
use crate::config::LongInputs;

/// Tokens kept free when splitting: a cut moved to a character boundary can shift a few bytes,
/// and so a few tokens, into the next piece.
const SPLIT_MARGIN: usize = 3;

/// A text with its token count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The text.
    pub text: String,
    /// Its tokens under the embedder's tokenizer.
    pub tokens: usize,
}

/// How many inputs from the front form the next batch: as many as fit `max_inputs` and
/// `max_tokens`, and at least one (an input larger than `max_tokens` goes alone).
pub fn batch_len(tokens: impl IntoIterator<Item = usize>, max_inputs: usize, max_tokens: usize) -> usize {
    let mut n = 0;
    let mut sum = 0usize;
    for t in tokens.into_iter().take(max_inputs.max(1)) {
        if n > 0 && sum.saturating_add(t) > max_tokens {
            break;
        }
        sum = sum.saturating_add(t);
        n += 1;
    }
    n
}

/// `tokens` cut into consecutive batches by [`batch_len`].
pub fn pack(tokens: &[usize], max_inputs: usize, max_tokens: usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < tokens.len() {
        let n = batch_len(tokens[start..].iter().copied(), max_inputs, max_tokens);
        ranges.push(start..start + n);
        start += n;
    }
    ranges
}

/// What a call to the service will send: distinct texts, and for every input the texts (with
/// weights) its vector is made of, or the reason it cannot have one.
#[derive(Debug)]
pub struct Plan {
    /// Distinct texts to embed, each at most the input limit.
    pub unique: Vec<Input>,
    /// Per input: `(index into unique, weight)` of its pieces, or an error decided up front.
    pub parts: Vec<Result<Vec<(usize, f32)>, EmbedError>>,
}

impl Plan {
    /// Plans `inputs`: empty ones are refused, longer ones than `max_input` truncated or split
    /// by `split(text, max_tokens)`, identical texts (within and across inputs) sent once.
    pub fn new(
        inputs: &[Input],
        max_input: usize,
        mode: LongInputs,
        split: impl Fn(&str, usize) -> Vec<Input>,
    ) -> Self {
        let mut unique: Vec<Input> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut intern = |input: Input| -> usize {
            *seen.entry(input.text.clone()).or_insert_with(|| {
                unique.push(input);
                unique.len() - 1
            })
        };
        let target = if max_input > 2 * SPLIT_MARGIN { max_input - SPLIT_MARGIN } else { max_input.max(1) };
        let parts = inputs
            .iter()
            .map(|input| {
                if input.text.trim().is_empty() {
                    return Err(EmbedError::permanent("empty_input", "an empty text cannot be embedded"));
                }
                if input.tokens <= max_input {
                    return Ok(vec![(intern(input.clone()), 1.0)]);
                }
                let mut pieces = split(&input.text, target);
                if mode == LongInputs::Truncate {
                    pieces.truncate(1);
                }
                tracing::debug!(
                    tokens = input.tokens,
                    max_input,
                    pieces = pieces.len(),
                    ?mode,
                    "input longer than the model accepts"
                );
                Ok(pieces.into_iter().map(|p| (p.tokens.max(1) as f32, p)).map(|(w, p)| (intern(p), w)).collect())
            })
            .collect();
        Self { unique, parts }
    }

    /// Every input's vector (or error) from the vectors of the unique texts.
    pub fn assemble(&self, vectors: &[Result<Vec<f32>, EmbedError>]) -> Vec<Result<Vec<f32>, EmbedError>> {
        self.parts
            .iter()
            .map(|parts| {
                let parts = parts.as_ref().map_err(Clone::clone)?;
                let mut found = Vec::with_capacity(parts.len());
                for &(i, weight) in parts {
                    let vector = vectors
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| Err(EmbedError::transient("a vector went missing")))?;
                    found.push((vector, weight));
                }
                Ok(combine(found))
            })
            .collect()
    }
}

/// The token-weighted mean of the pieces' vectors, normalised (one piece is returned as is).
/// Averaging keeps every part of a long text in its vector; it is what OpenAI's cookbook does
/// for inputs beyond the context, and retrieval scores of the whole stay comparable to chunks'.
pub fn combine(mut pieces: Vec<(Vec<f32>, f32)>) -> Vec<f32> {
    if pieces.len() == 1 {
        return pieces.pop().map(|(v, _)| v).unwrap_or_default();
    }
    let dims = pieces.first().map_or(0, |(v, _)| v.len());
    let mut sum = vec![0f32; dims];
    for (vector, weight) in &pieces {
        sum.iter_mut().zip(vector).for_each(|(s, x)| *s += x * weight);
    }
    super::normalize(&mut sum);
    sum
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn input(text: &str, tokens: usize) -> Input {
        Input { text: text.into(), tokens }
    }

    fn halves(text: &str, _max: usize) -> Vec<Input> {
        let mid = text.len() / 2;
        vec![input(&text[..mid], 3), input(&text[mid..], 1)]
    }

    proptest! {
        #[test]
        fn packed_batches_are_greedy_within_limits_and_in_order(
            tokens in proptest::collection::vec(1usize..300, 0..200),
            max_inputs in 1usize..20,
            max_tokens in 1usize..1000,
        ) {
            let ranges = pack(&tokens, max_inputs, max_tokens);
            let mut next = 0;
            for (k, r) in ranges.iter().enumerate() {
                prop_assert_eq!(r.start, next);
                prop_assert!(!r.is_empty() && r.len() <= max_inputs);
                let sum: usize = tokens[r.clone()].iter().sum();
                prop_assert!(sum <= max_tokens || r.len() == 1, "over budget: {:?}", r);
                // Greedy: the next input would not have fitted.
                if let Some(&following) = tokens.get(r.end) && k + 1 < ranges.len() {
                    prop_assert!(r.len() == max_inputs || sum + following > max_tokens);
                }
                next = r.end;
            }
            prop_assert_eq!(next, tokens.len());
        }
    }

    #[test]
    fn identical_texts_are_planned_once_and_empty_ones_refused() {
        let plan =
            Plan::new(&[input("a", 1), input("b", 1), input("a", 1), input("  ", 1)], 10, LongInputs::Split, halves);
        assert_eq!(plan.unique, vec![input("a", 1), input("b", 1)]);
        assert!(matches!(plan.parts[3], Err(EmbedError::Permanent { code: "empty_input", .. })));
        let out = plan.assemble(&[Ok(vec![1.0, 0.0]), Ok(vec![0.0, 1.0])]);
        assert_eq!(out[0], Ok(vec![1.0, 0.0]));
        assert_eq!(out[2], Ok(vec![1.0, 0.0]));
        assert_eq!(out[1], Ok(vec![0.0, 1.0]));
    }

    #[test]
    fn long_inputs_are_split_and_averaged_or_truncated() {
        let long = input("aaaabbbb", 20);
        let plan = Plan::new(std::slice::from_ref(&long), 10, LongInputs::Split, halves);
        assert_eq!(plan.unique.len(), 2);
        let out = plan.assemble(&[Ok(vec![1.0, 0.0]), Ok(vec![0.0, 1.0])]);
        let v = out[0].clone().expect("vector");
        // Weights 3:1, normalised.
        assert!((v[0] - 0.948_683).abs() < 1e-5 && (v[1] - 0.316_228).abs() < 1e-5, "{v:?}");
        let plan = Plan::new(&[long], 10, LongInputs::Truncate, halves);
        assert_eq!(plan.unique, vec![input("aaaa", 3)]);
    }

    #[test]
    fn a_failed_piece_fails_its_input_only() {
        let plan = Plan::new(&[input("a", 1), input("b", 1)], 10, LongInputs::Split, halves);
        let out = plan.assemble(&[Ok(vec![1.0]), Err(EmbedError::transient("down"))]);
        assert!(out[0].is_ok());
        assert_eq!(out[1], Err(EmbedError::transient("down")));
    }
}
