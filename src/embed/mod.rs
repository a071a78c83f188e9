//! Embedding providers behind one trait, [`Embedder`], and the policy around them.
//!
//! - [`hash`]: deterministic feature hashing (lexical, not semantic; tests and last resort).
//! - [`openai`]: OpenAI-compatible servers and Azure OpenAI through async-openai.
//! - [`local`]: a BERT-family model from a directory, on our own encoder (the `gemm` crate for matrix products).
//! - [`http`]: the transport under async-openai (no hidden retries) and the classification of
//!   HTTP failures into [`EmbedError`]s.
//! - [`service`]: [`service::EmbeddingService`], the one place with the policy: cache → dedup →
//!   rate governor → concurrency limit → provider call with retries → split on context length.
//! - [`governor`]: requests/min and tokens/min budgets shared by all workers through Redis.
//! - [`retry`]: the retry helper (exponential backoff with jitter, `Retry-After`, deadline).
//! - [`plan`]: batch packing, long inputs, dedup, combining pieces (pure).
//! - [`tokens`]: token counting and splitting.
//! - [`settings`]: the `[embedder]` section and its checks.
//!
//! Providers only turn one request's texts into vectors and classify their failures; batching
//! across documents lives in the ingest pipeline's embed stage.

pub mod governor;
pub mod hash;
pub mod http;
pub mod local;
pub mod openai;
pub mod plan;
pub mod retry;
pub mod service;
pub mod settings;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{EmbedderKind, EmbedderSettings};
use crate::error::Failure;

/// An embedding failure, classified for retry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbedError {
    /// The provider asked us to slow down (429); retry after the given delay if known.
    #[error("rate limited by the embedding provider{}", .retry_after.map(|d| format!(" (retry after {d:?})")).unwrap_or_default())]
    RateLimited {
        /// Delay the provider asked for.
        retry_after: Option<Duration>,
    },
    /// Network problem, timeout or server error: retry (after `retry_after` if the server said).
    #[error("embedding provider unavailable: {reason}")]
    Transient {
        /// What happened.
        reason: String,
        /// Delay the server asked for (`Retry-After` on a 503).
        retry_after: Option<Duration>,
    },
    /// The provider refused a request because an input is longer than the model's context:
    /// splitting the batch isolates the input.
    #[error("an input is longer than the model accepts: {0}")]
    ContextLength(String),
    /// Will not succeed by retrying (bad key, exhausted quota, bad settings): the operator must act.
    #[error("{reason}")]
    Permanent {
        /// Stable code for document status and dead-letter headers (`embedding_quota`, ...).
        code: &'static str,
        /// What happened and what to fix.
        reason: String,
    },
}

impl EmbedError {
    /// A transient failure without a server-given delay.
    pub fn transient(reason: impl Into<String>) -> Self {
        Self::Transient { reason: reason.into(), retry_after: None }
    }

    /// A permanent failure with its code.
    pub fn permanent(code: &'static str, reason: impl Into<String>) -> Self {
        Self::Permanent { code, reason: reason.into() }
    }

    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Transient { .. })
    }

    /// The delay the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<EmbedError> for Failure {
    fn from(error: EmbedError) -> Self {
        match error {
            EmbedError::Permanent { code, reason } => Failure::permanent(code, reason),
            EmbedError::ContextLength(_) => Failure::permanent("input_too_long", error.to_string()),
            EmbedError::RateLimited { .. } | EmbedError::Transient { .. } => {
                Failure::transient("embedding", error.to_string())
            }
        }
    }
}

/// Turns texts into L2-normalised vectors: one request's worth, no retries, no caching (that
/// is [`service::EmbeddingService`]'s job).
#[async_trait]
pub trait Embedder: Send + Sync {
    /// Model id stored with every chunk (e.g. `text-embedding-3-small`).
    fn model_id(&self) -> &str;
    /// Vector dimension.
    fn dimensions(&self) -> usize;
    /// Tokens the model counts in `text`, for request budgets and the per-input limit. The
    /// default is an estimate (about four bytes per token); providers with a tokenizer override it.
    fn count_tokens(&self, text: &str) -> usize {
        tokens::estimate(text)
    }
    /// `text` cut into consecutive pieces of at most `max_tokens` tokens each, in order.
    fn split_tokens(&self, text: &str, max_tokens: usize) -> Vec<String> {
        tokens::split_estimated(text, max_tokens)
    }
    /// The longest input the model itself accepts, if it knows (a local model's sequence
    /// length); `None` leaves the limit to `[embedder] max_input_tokens`.
    fn max_input_tokens(&self) -> Option<usize> {
        None
    }
    /// One vector per text, in order.
    ///
    /// # Errors
    /// The provider's failure, classified ([`EmbedError`]).
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Builds the embedder `[embedder]` asks for: the single constructor of providers.
///
/// # Errors
/// A provider that cannot be set up (missing API key, bad URL), as [`EmbedError::Permanent`].
pub fn from_settings(settings: &EmbedderSettings) -> Result<Arc<dyn Embedder>, EmbedError> {
    match settings.kind {
        EmbedderKind::Hash => Ok(Arc::new(hash::HashEmbedder::new(&settings.model, settings.dimensions))),
        EmbedderKind::OpenAi | EmbedderKind::Azure => Ok(Arc::new(openai::RemoteEmbedder::new(settings)?)),
        EmbedderKind::Local => {
            let embedder = local::LocalEmbedder::load(&settings.model_dir, &settings.model, settings.local_threads)
                .map_err(|e| EmbedError::permanent("local_model", e.to_string()))?;
            if embedder.dimensions() != settings.dimensions {
                return Err(EmbedError::permanent(
                    "local_model",
                    format!(
                        "embedder.dimensions is {} but the model in {} produces {}-dimensional vectors: set embedder.dimensions = {}",
                        settings.dimensions,
                        settings.model_dir.display(),
                        embedder.dimensions(),
                        embedder.dimensions()
                    ),
                ));
            }
            Ok(Arc::new(embedder))
        }
    }
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Retry;

    #[test]
    fn errors_map_to_transient_or_permanent_failures() {
        let f: Failure = EmbedError::RateLimited { retry_after: None }.into();
        assert_eq!(f.retry, Retry::Transient);
        let f: Failure = EmbedError::transient("reset").into();
        assert_eq!((f.retry, f.code.as_str()), (Retry::Transient, "embedding"));
        let f: Failure = EmbedError::permanent("embedding_quota", "add credit").into();
        assert_eq!((f.retry, f.code.as_str(), f.reason.as_str()), (Retry::Permanent, "embedding_quota", "add credit"));
        let f: Failure = EmbedError::ContextLength("too long".into()).into();
        assert_eq!((f.retry, f.code.as_str()), (Retry::Permanent, "input_too_long"));
    }
}
