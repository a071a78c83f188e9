//! `[embedder]` settings: provider, model, batching, rate budgets, retries. Re-exported from
//! [`crate::config`], which validates them with the rest at start.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::check_url;

/// Which embedding provider computes vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderKind {
    /// Deterministic feature hashing: lexical, not semantic; for tests and as a last resort.
    Hash,
    /// Any OpenAI-compatible `/embeddings` endpoint (OpenAI, vLLM, Ollama, TEI, ...) at `base_url`.
    OpenAi,
    /// Azure OpenAI: `azure_endpoint`, `deployment`, `api_version`.
    Azure,
    /// A BERT-family sentence-embedding model in `model_dir`, run in-process on the CPU.
    Local,
}

/// What to do with an input longer than `max_input_tokens` (it is never sent to fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LongInputs {
    /// Keep the first `max_input_tokens` tokens.
    Truncate,
    /// Embed every `max_input_tokens` piece and average them (weighted by tokens, normalised).
    Split,
}

/// Environment variable holding the API key of `kind = "openai"`.
pub const OPENAI_API_KEY_ENV: &str = "OPENAI_API_KEY";
/// Environment variable holding the API key of `kind = "azure"`.
pub const AZURE_API_KEY_ENV: &str = "AZURE_OPENAI_API_KEY";

/// `[embedder]`: the embedding model, how chunks are batched for it, and how it is called.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderSettings {
    /// Provider.
    pub kind: EmbedderKind,
    /// Model name, stored with every chunk (and sent to OpenAI-compatible servers).
    pub model: String,
    /// Vector dimensions.
    pub dimensions: usize,
    /// Send `dimensions` with each request (text-embedding-3 models shorten their vectors;
    /// turn off for models that reject the parameter, e.g. text-embedding-ada-002).
    pub send_dimensions: bool,
    /// Base URL of an OpenAI-compatible API (`kind = "openai"`), up to and including `/v1`.
    pub base_url: String,
    /// `https://<resource>.openai.azure.com` (`kind = "azure"`).
    pub azure_endpoint: String,
    /// Azure deployment name (`kind = "azure"`).
    pub deployment: String,
    /// Azure `api-version` query parameter (`kind = "azure"`).
    pub api_version: String,
    /// Inputs per request at most.
    pub batch_size: usize,
    /// Tokens per request at most (summed over its inputs).
    pub max_tokens_per_request: usize,
    /// Milliseconds a partial batch waits for more inputs before it is sent.
    pub max_wait_ms: u64,
    /// Whether an idle embedder (no request in flight) sends what is queued at once rather
    /// than waiting `max_wait_ms` for a fuller batch. Inputs still gather into full batches
    /// while requests are in flight; without it, small documents each wait `max_wait_ms`, and
    /// the documents in flight (the prefetch) cap throughput at prefetch / max_wait.
    pub send_when_idle: bool,
    /// Requests in flight at once per worker.
    pub max_concurrent_requests: usize,
    /// Requests per minute for all workers together (shared through Redis); 0 = unlimited.
    pub requests_per_minute: u64,
    /// Tokens per minute for all workers together (shared through Redis); 0 = unlimited.
    pub tokens_per_minute: u64,
    /// Longest input the model accepts, in tokens.
    pub max_input_tokens: usize,
    /// What happens to longer inputs.
    pub long_inputs: LongInputs,
    /// First retry delay in milliseconds (doubled per attempt, with jitter).
    pub initial_backoff_ms: u64,
    /// Longest retry delay in milliseconds before jitter (a server's `Retry-After` wins).
    pub max_backoff_ms: u64,
    /// Seconds after which a failing request stops retrying (its documents are requeued).
    pub max_elapsed_secs: u64,
    /// Seconds one HTTP request may take.
    pub request_timeout_secs: u64,
    /// Directory of the local model (`kind = "local"`): `model.safetensors`, `tokenizer.json`,
    /// `config.json` (`bash ops/fetch-model.sh` puts all-MiniLM-L6-v2 in `models/all-MiniLM-L6-v2`).
    pub model_dir: PathBuf,
    /// Inference threads of the local model; 0 = one per core.
    pub local_threads: usize,
    /// US dollars per 1,000 tokens sent, for `ragpipe_embed_cost_usd_total` and `status`;
    /// unset: text-embedding-3-small's list price (0.00002) for `openai` and `azure`, 0 for
    /// `local` and `hash`.
    pub price_per_1k_tokens: Option<f64>,
    /// The API key, read from `OPENAI_API_KEY` / `AZURE_OPENAI_API_KEY` by [`Settings::load`](crate::config::Settings::load);
    /// never from a file (an `api_key` key is rejected as unknown) and never printed.
    #[serde(skip)]
    pub api_key: Option<SecretString>,
}

impl Default for EmbedderSettings {
    fn default() -> Self {
        Self {
            kind: EmbedderKind::Hash,
            model: "hash-v1".into(),
            dimensions: 384,
            send_dimensions: true,
            base_url: "https://api.openai.com/v1".into(),
            azure_endpoint: String::new(),
            deployment: String::new(),
            api_version: "2024-10-21".into(),
            batch_size: 64,
            max_tokens_per_request: 100_000,
            max_wait_ms: 20,
            send_when_idle: true,
            max_concurrent_requests: 4,
            requests_per_minute: 0,
            tokens_per_minute: 0,
            max_input_tokens: 8191,
            long_inputs: LongInputs::Split,
            initial_backoff_ms: 500,
            max_backoff_ms: 20_000,
            max_elapsed_secs: 120,
            request_timeout_secs: 60,
            model_dir: PathBuf::new(),
            local_threads: 0,
            price_per_1k_tokens: None,
            api_key: None,
        }
    }
}

impl EmbedderSettings {
    /// The environment variable the API key of this `kind` comes from, if it needs one.
    pub fn api_key_env(&self) -> Option<&'static str> {
        match self.kind {
            EmbedderKind::Hash | EmbedderKind::Local => None,
            EmbedderKind::OpenAi => Some(OPENAI_API_KEY_ENV),
            EmbedderKind::Azure => Some(AZURE_API_KEY_ENV),
        }
    }

    /// The price per 1,000 tokens in effect (see the field).
    pub fn price_per_1k_tokens(&self) -> f64 {
        self.price_per_1k_tokens.unwrap_or(match self.kind {
            EmbedderKind::OpenAi | EmbedderKind::Azure => 0.000_02,
            EmbedderKind::Hash | EmbedderKind::Local => 0.0,
        })
    }

    /// Reads the API key for this `kind` from the environment (surrounding whitespace, such as
    /// the newline of `$(cat keyfile)`, is dropped).
    pub fn load_api_key(&mut self) {
        self.api_key = super::http::read_api_key(self.api_key_env());
    }

    /// Checks the values, pushing one message per problem, each naming its key.
    pub(crate) fn validate_into(&self, problems: &mut Vec<String>) {
        let mut positive = |key: &str, value: u64| {
            if value == 0 {
                problems.push(format!("embedder.{key} must be greater than 0"));
            }
        };
        positive("dimensions", self.dimensions as u64);
        positive("batch_size", self.batch_size as u64);
        positive("max_tokens_per_request", self.max_tokens_per_request as u64);
        positive("max_concurrent_requests", self.max_concurrent_requests as u64);
        positive("max_input_tokens", self.max_input_tokens as u64);
        positive("initial_backoff_ms", self.initial_backoff_ms);
        positive("max_elapsed_secs", self.max_elapsed_secs);
        positive("request_timeout_secs", self.request_timeout_secs);
        if self.price_per_1k_tokens.is_some_and(|p| !p.is_finite() || p < 0.0) {
            problems.push("embedder.price_per_1k_tokens must be a number of at least 0".to_owned());
        }
        if self.batch_size > 2048 {
            problems.push(format!("embedder.batch_size ({}) must be at most 2048 (the API's limit)", self.batch_size));
        }
        if self.max_input_tokens > self.max_tokens_per_request {
            problems.push(format!(
                "embedder.max_input_tokens ({}) must not exceed embedder.max_tokens_per_request ({}): one input must fit a request",
                self.max_input_tokens, self.max_tokens_per_request
            ));
        }
        if self.initial_backoff_ms > self.max_backoff_ms {
            problems.push(format!(
                "embedder.initial_backoff_ms ({}) must not exceed embedder.max_backoff_ms ({})",
                self.initial_backoff_ms, self.max_backoff_ms
            ));
        }
        match self.kind {
            EmbedderKind::Hash => {}
            EmbedderKind::Local => {
                if self.model_dir.as_os_str().is_empty() {
                    problems.push(
                        "embedder.model_dir must be set for kind = \"local\" (run `bash ops/fetch-model.sh` for \
                         models/all-MiniLM-L6-v2)"
                            .into(),
                    );
                }
                if self.model == Self::default().model {
                    problems.push(format!(
                        "embedder.model must name the local model for kind = \"local\" (it is stored with every chunk), \
                         e.g. \"all-MiniLM-L6-v2\"; {:?} is the hash embedder's name",
                        self.model
                    ));
                }
            }
            EmbedderKind::OpenAi => check_url("embedder.base_url", &self.base_url, &["http", "https"], problems),
            EmbedderKind::Azure => {
                check_url("embedder.azure_endpoint", &self.azure_endpoint, &["http", "https"], problems);
                for (key, value) in [("deployment", &self.deployment), ("api_version", &self.api_version)] {
                    if value.trim().is_empty() {
                        problems.push(format!("embedder.{key} must be set for kind = \"azure\""));
                    }
                }
            }
        }
        self.validate_api_key(problems);
    }

    fn validate_api_key(&self, problems: &mut Vec<String>) {
        let Some(env) = self.api_key_env() else { return };
        match &self.api_key {
            None => problems.push(format!(
                "embedder.kind = \"{}\" needs an API key: set the {env} environment variable \
                 (any non-empty value for servers that need none)",
                if self.kind == EmbedderKind::Azure { "azure" } else { "openai" }
            )),
            // The key goes into an HTTP header; a stray control character would fail every request.
            Some(key) if !key.expose_secret().chars().all(|c| c.is_ascii_graphic()) => problems
                .push(format!("{env} contains characters that cannot be sent in an HTTP header (spaces or non-ASCII)")),
            Some(_) => {}
        }
    }
}
