//! A deterministic, dependency-free embedder: feature hashing of words and word pairs.
//!
//! It is **lexical, not semantic**: texts sharing words score high, synonyms do not. It exists
//! for tests (stable vectors, no model files, no network) and as a last resort.

use async_trait::async_trait;

use super::{EmbedError, Embedder, normalize};

/// Feature-hashing embedder.
#[derive(Debug, Clone)]
pub struct HashEmbedder {
    model: String,
    dimensions: usize,
}

impl HashEmbedder {
    /// An embedder producing `dimensions`-long vectors, reported as model `model`.
    pub fn new(model: &str, dimensions: usize) -> Self {
        Self { model: model.to_owned(), dimensions: dimensions.max(1) }
    }

    /// The vector of one text (synchronous; cheap).
    pub fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dimensions];
        let words: Vec<String> =
            text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
        let mut add = |feature: u64, weight: f32| {
            let slot = (feature % self.dimensions as u64) as usize;
            // One hash bit picks the sign so unrelated features cancel out on average.
            let sign = if feature >> 63 == 0 { 1.0 } else { -1.0 };
            v[slot] += sign * weight;
        };
        for (i, word) in words.iter().enumerate() {
            add(fnv1a(word.as_bytes(), 0), 1.0);
            if let Some(next) = words.get(i + 1) {
                add(fnv1a(next.as_bytes(), fnv1a(word.as_bytes(), 1)), 0.5);
            }
        }
        // Dampen repeated words: sign(x)·ln(1+|x|).
        v.iter_mut().for_each(|x| *x = x.signum() * x.abs().ln_1p());
        normalize(&mut v);
        v
    }
}

/// FNV-1a, 64 bit, seeded: stable across platforms and releases (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[async_trait]
impl Embedder for HashEmbedder {
    fn model_id(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts.iter().map(|t| self.vector(t)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn vectors_are_deterministic_and_normalised() {
        let e = HashEmbedder::new("hash", 64);
        let a = e.vector("The quick brown fox");
        assert_eq!(a, e.vector("The quick brown fox"));
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn shared_words_score_higher_than_unrelated_text() {
        let e = HashEmbedder::new("hash", 384);
        let q = e.vector("white rabbit pocket watch");
        let near = e.vector("the White Rabbit took a watch out of its waistcoat-pocket");
        let far = e.vector("quarterly revenue grew fifteen percent");
        assert!(cosine(&q, &near) > cosine(&q, &far) + 0.2);
    }
}
