//! Token counting and splitting: cl100k_base (OpenAI's embedding models) built once per process,
//! and a byte-based estimate for providers without a tokenizer (the hash embedder).

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use super::EmbedError;

/// Bytes per token assumed by [`estimate`] (the usual rule of thumb for English text).
const BYTES_PER_TOKEN: usize = 4;

/// The cl100k_base encoding, built on first use and shared (building it costs hundreds of ms).
///
/// # Errors
/// The encoding's embedded data could not be loaded.
pub fn cl100k() -> Result<&'static CoreBPE, EmbedError> {
    static CL100K: OnceLock<Result<CoreBPE, String>> = OnceLock::new();
    CL100K
        .get_or_init(|| tiktoken_rs::cl100k_base().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| EmbedError::permanent("embedding_config", format!("cannot build the cl100k_base tokenizer: {e}")))
}

/// Tokens in `text` under `bpe`.
pub fn count(bpe: &CoreBPE, text: &str) -> usize {
    bpe.encode_ordinary(text).len()
}

/// `text` cut at token boundaries into pieces of at most `max_tokens` tokens (cuts move to the
/// nearest character boundary, since a token may end inside a multi-byte character).
pub fn split(bpe: &CoreBPE, text: &str, max_tokens: usize) -> Vec<String> {
    let max_tokens = max_tokens.max(1);
    let tokens = bpe.encode_ordinary(text);
    if tokens.len() <= max_tokens {
        return vec![text.to_owned()];
    }
    // encode_ordinary is lossless: the tokens' bytes concatenate to the text's bytes.
    let mut cuts = Vec::new();
    let mut offset = 0;
    for (i, token) in tokens.iter().enumerate() {
        offset += bpe.decode_bytes(&[*token]).map(|b| b.len()).unwrap_or(0);
        if (i + 1) % max_tokens == 0 && i + 1 < tokens.len() {
            cuts.push(offset);
        }
    }
    cut_at(text, &cuts)
}

/// Estimated tokens in `text`: one per four bytes, at least one for non-empty text.
pub fn estimate(text: &str) -> usize {
    text.len().div_ceil(BYTES_PER_TOKEN)
}

/// `text` cut into pieces of about `max_tokens` estimated tokens each.
pub fn split_estimated(text: &str, max_tokens: usize) -> Vec<String> {
    let step = max_tokens.max(1).saturating_mul(BYTES_PER_TOKEN);
    let cuts: Vec<usize> = (1..).map(|i| i * step).take_while(|&at| at < text.len()).collect();
    cut_at(text, &cuts)
}

/// Cuts `text` at byte offsets moved back to character boundaries (forward if that would leave
/// a piece empty); drops pieces that are only whitespace.
fn cut_at(text: &str, cuts: &[usize]) -> Vec<String> {
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &cut in cuts {
        let mut at = cut.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        if at <= start {
            at = cut.min(text.len());
            while !text.is_char_boundary(at) {
                at += 1;
            }
        }
        if at > start {
            pieces.push(&text[start..at]);
            start = at;
        }
    }
    pieces.push(&text[start..]);
    pieces.into_iter().filter(|p| !p.trim().is_empty()).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_pieces_fit_the_limit_and_rejoin_to_the_text() {
        let bpe = cl100k().expect("cl100k");
        let text = "Ünïcödé text — with accents, emoji 🦀🦀 and CJK 漢字かな交じり文. ".repeat(40);
        let pieces = split(bpe, &text, 50);
        assert!(pieces.len() > 1);
        assert_eq!(pieces.concat(), text);
        // A cut moved to a character boundary can shift a few tokens into the next piece.
        assert!(
            pieces.iter().all(|p| count(bpe, p) <= 53),
            "{:?}",
            pieces.iter().map(|p| count(bpe, p)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn short_text_is_one_piece() {
        let bpe = cl100k().expect("cl100k");
        assert_eq!(split(bpe, "hello world", 10), vec!["hello world".to_owned()]);
        assert_eq!(split_estimated("hello world", 10), vec!["hello world".to_owned()]);
    }

    #[test]
    fn estimated_split_respects_char_boundaries() {
        let text = "é".repeat(101);
        let pieces = split_estimated(&text, 5);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| p.len() <= 20));
        assert_eq!(estimate("abcde"), 2);
        assert_eq!(estimate(""), 0);
    }
}
