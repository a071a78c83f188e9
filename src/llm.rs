//! The answering model (`[llm]`): a chat completion from an OpenAI-compatible server (OpenAI,
//! vLLM, Ollama, ...) or Azure OpenAI, through async-openai over the same transport, error
//! classification (`Retry-After`, quota, bad key, ...) and retry policy as embeddings
//! ([`crate::embed::http`], [`crate::embed::retry`]). The system prompt grounds the model in the
//! numbered context; [`PROMPT_VERSION`] names it, so caches can tell answers of another prompt.

use std::time::Duration;

use async_openai::types::chat::{
    ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs, ChatCompletionResponseStream,
    ChatCompletionStreamOptions, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
    CreateChatCompletionResponse,
};
use async_trait::async_trait;
use futures::StreamExt;
use secrecy::SecretString;
use serde::Deserialize;
use tiktoken_rs::CoreBPE;

use crate::config::{AZURE_API_KEY_ENV, CacheSettings, OPENAI_API_KEY_ENV, check_url};
use crate::embed::EmbedError;
use crate::embed::governor::{self, Budgets, Governor};
use crate::embed::http::{ApiClient, Endpoint, Provider, classify, read_api_key, usable_api_key};
use crate::embed::retry::RetryPolicy;
use crate::telemetry::metrics;

/// Version of [`SYSTEM_PROMPT`]: part of every response cache key.
pub const PROMPT_VERSION: u32 = 1;

/// How the model is told to answer.
pub const SYSTEM_PROMPT: &str = "You answer questions using only the numbered context passages you are given. \
Cite the passage each statement comes from with its number in square brackets, like [1] or [2][3], \
right after the statement. Never cite a number that is not in the context. If the context does not \
contain the answer, say plainly that the provided documents do not answer the question; do not guess \
and do not use outside knowledge. Answer in the language of the question, concisely.";

/// Which service answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmKind {
    /// No LLM: answers are extractive.
    None,
    /// Any OpenAI-compatible `/chat/completions` endpoint at `base_url`.
    OpenAi,
    /// Azure OpenAI: `azure_endpoint`, `deployment`, `api_version`.
    Azure,
}

/// `[llm]`: the model that writes answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmSettings {
    /// Provider; `none` gives extractive answers.
    pub kind: LlmKind,
    /// Model name (sent to OpenAI-compatible servers; picks the tokenizer the context budget is
    /// counted with).
    pub model: String,
    /// Base URL of an OpenAI-compatible API, up to and including `/v1`.
    pub base_url: String,
    /// `https://<resource>.openai.azure.com` (`kind = "azure"`).
    pub azure_endpoint: String,
    /// Azure deployment name (`kind = "azure"`).
    pub deployment: String,
    /// Azure `api-version` (`kind = "azure"`).
    pub api_version: String,
    /// Longest answer, in tokens.
    pub max_tokens: u32,
    /// Sampling temperature (0 for the most grounded answers).
    pub temperature: f32,
    /// US dollars per 1,000 prompt tokens, for the cost estimate.
    pub input_price_per_1k: f64,
    /// US dollars per 1,000 generated tokens.
    pub output_price_per_1k: f64,
    /// Seconds one HTTP request may take.
    pub request_timeout_secs: u64,
    /// First retry delay in milliseconds (doubled per attempt, with jitter).
    pub initial_backoff_ms: u64,
    /// Longest retry delay in milliseconds (a server's `Retry-After` wins).
    pub max_backoff_ms: u64,
    /// Seconds an answer may take, retries included (the query then gets an `llm_timeout` error
    /// reply).
    pub max_elapsed_secs: u64,
    /// Requests per minute for all workers together (shared through Redis; 0 = unlimited).
    pub requests_per_minute: u64,
    /// Tokens per minute (prompt plus `max_tokens`) for all workers together (0 = unlimited).
    pub tokens_per_minute: u64,
    /// The API key, from `OPENAI_API_KEY` / `AZURE_OPENAI_API_KEY`; never from a file.
    #[serde(skip)]
    pub api_key: Option<SecretString>,
}

impl Default for LlmSettings {
    fn default() -> Self {
        Self {
            kind: LlmKind::None,
            model: "gpt-4o-mini".into(),
            base_url: "https://api.openai.com/v1".into(),
            azure_endpoint: String::new(),
            deployment: String::new(),
            api_version: "2024-10-21".into(),
            max_tokens: 512,
            temperature: 0.0,
            input_price_per_1k: 0.000_15,
            output_price_per_1k: 0.000_6,
            request_timeout_secs: 20,
            initial_backoff_ms: 500,
            max_backoff_ms: 8_000,
            max_elapsed_secs: 20,
            requests_per_minute: 0,
            tokens_per_minute: 0,
            api_key: None,
        }
    }
}

impl LlmKind {
    /// Its config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::OpenAi => "openai",
            Self::Azure => "azure",
        }
    }
}

impl LlmSettings {
    /// The environment variable the API key comes from, if this kind needs one.
    pub fn api_key_env(&self) -> Option<&'static str> {
        match self.kind {
            LlmKind::None => None,
            LlmKind::OpenAi => Some(OPENAI_API_KEY_ENV),
            LlmKind::Azure => Some(AZURE_API_KEY_ENV),
        }
    }

    /// Reads the API key from the environment.
    pub fn load_api_key(&mut self) {
        self.api_key = read_api_key(self.api_key_env());
    }

    /// Problems with these settings, for [`crate::config::Settings::validate`].
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.kind {
            LlmKind::None => return problems,
            LlmKind::OpenAi => check_url("llm.base_url", &self.base_url, &["http", "https"], &mut problems),
            LlmKind::Azure => {
                check_url("llm.azure_endpoint", &self.azure_endpoint, &["https", "http"], &mut problems);
                if self.deployment.is_empty() {
                    problems.push("llm.deployment must name the Azure deployment".into());
                }
            }
        }
        if self.model.is_empty() {
            problems.push("llm.model must not be empty".into());
        }
        if self.max_tokens == 0 {
            problems.push("llm.max_tokens must be greater than 0".into());
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            problems.push(format!("llm.temperature ({}) must be between 0 and 2", self.temperature));
        }
        if self.input_price_per_1k < 0.0 || self.output_price_per_1k < 0.0 {
            problems.push("llm prices must not be negative".into());
        }
        problems
    }

    /// The cost of `input` prompt and `output` generated tokens, in US dollars.
    pub fn cost(&self, input: u64, output: u64) -> f64 {
        (input as f64 * self.input_price_per_1k + output as f64 * self.output_price_per_1k) / 1000.0
    }
}

/// The tokenizer of `model` (OpenAI's names; cl100k_base for models it does not know), shared.
pub fn tokenizer(model: &str) -> &'static CoreBPE {
    use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};
    match get_tokenizer(model) {
        Some(Tokenizer::O200kBase | Tokenizer::O200kHarmony) => tiktoken_rs::o200k_base_singleton(),
        _ => tiktoken_rs::cl100k_base_singleton(),
    }
}

/// What the model wrote and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The answer text.
    pub text: String,
    /// Prompt tokens, as the server counted them.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
}

/// A model that answers from a prompt.
#[async_trait]
pub trait Llm: Send + Sync {
    /// The model's name.
    fn model(&self) -> &str;

    /// The model's answer to `user` under `system`.
    ///
    /// # Errors
    /// The service failed, after retries where retrying can help.
    async fn complete(&self, system: &str, user: &str) -> Result<Completion, EmbedError>;

    /// The model's answer, its text also sent to `pieces` as it is written (the pieces add up to
    /// the completion's text). This default sends the whole text as one piece.
    ///
    /// # Errors
    /// As [`Llm::complete`]; a stream that breaks after its first piece is not retried.
    async fn complete_streaming(
        &self,
        system: &str,
        user: &str,
        pieces: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<Completion, EmbedError> {
        let completion = self.complete(system, user).await?;
        let _ = pieces.send(completion.text.clone());
        Ok(completion)
    }
}

/// A chat model behind an OpenAI-compatible or Azure OpenAI API.
pub struct ChatModel {
    api: ApiClient,
    settings: LlmSettings,
    provider: Provider,
    retry: RetryPolicy,
    governor: Governor,
}

/// The configured model, or `None` for `kind = "none"`; its rate budget is shared through
/// `cache`'s Redis when there is one.
///
/// # Errors
/// The API key is missing or the HTTP client cannot be built.
pub fn from_settings(
    settings: &LlmSettings,
    cache: &CacheSettings,
) -> Result<Option<std::sync::Arc<dyn Llm>>, EmbedError> {
    Ok(match settings.kind {
        LlmKind::None => None,
        _ => Some(std::sync::Arc::new(ChatModel::new(settings, cache)?)),
    })
}

impl ChatModel {
    /// A client for `settings` (`kind` must not be `none`), its rate budget shared through
    /// `cache`'s Redis when there is one.
    ///
    /// # Errors
    /// The API key is missing or unusable, or the HTTP client cannot be built.
    pub fn new(settings: &LlmSettings, cache: &CacheSettings) -> Result<Self, EmbedError> {
        let config_error = |reason: String| EmbedError::permanent("llm_config", reason);
        let key_env =
            settings.api_key_env().ok_or_else(|| config_error("[llm] kind = \"none\" has no client".into()))?;
        let key = usable_api_key(settings.api_key.as_ref(), key_env, "[llm]").map_err(config_error)?;
        let endpoint = settings.azure_endpoint.trim_end_matches('/');
        let base = settings.base_url.trim_end_matches('/');
        let (target, provider) = match settings.kind {
            LlmKind::Azure => (
                Endpoint::Azure { endpoint, deployment: &settings.deployment, api_version: &settings.api_version },
                Provider {
                    key_env,
                    target: format!("[llm] deployment `{}` at {endpoint}", settings.deployment),
                    target_keys: "[llm] azure_endpoint, deployment and api_version",
                },
            ),
            _ => (
                Endpoint::OpenAi { base_url: base },
                Provider {
                    key_env,
                    target: format!("[llm] model `{}` at {base}", settings.model),
                    target_keys: "[llm] model and base_url",
                },
            ),
        };
        let api = ApiClient::new(target, key, settings.request_timeout_secs).map_err(config_error)?;
        let retry = RetryPolicy {
            initial: Duration::from_millis(settings.initial_backoff_ms),
            max: Duration::from_millis(settings.max_backoff_ms),
            max_elapsed: Duration::from_secs(settings.max_elapsed_secs),
            service: "llm",
        };
        let budgets = Budgets {
            requests_per_minute: settings.requests_per_minute,
            tokens_per_minute: settings.tokens_per_minute,
        };
        let governor = Governor::new(budgets, governor::LLM, &settings.model, cache);
        Ok(Self { api, settings: settings.clone(), provider, retry, governor })
    }

    /// Waits for the fleet's rate budget: one request of the prompt's tokens plus the longest
    /// answer.
    async fn acquire(&self, system: &str, user: &str) {
        // Counting a 3,000-token context costs time: only a token budget needs it.
        let tokens = if self.settings.tokens_per_minute == 0 {
            0
        } else {
            let bpe = tokenizer(&self.settings.model);
            let prompt = bpe.encode_ordinary(system).len() + bpe.encode_ordinary(user).len();
            prompt as u64 + u64::from(self.settings.max_tokens)
        };
        self.governor.acquire(tokens).await;
    }

    fn request(&self, system: &str, user: &str) -> Result<CreateChatCompletionRequest, EmbedError> {
        let invalid = |e: async_openai::error::OpenAIError| EmbedError::permanent("llm_config", e.to_string());
        CreateChatCompletionRequestArgs::default()
            .model(&self.settings.model)
            .max_completion_tokens(self.settings.max_tokens)
            .temperature(self.settings.temperature)
            .messages([
                ChatCompletionRequestSystemMessageArgs::default().content(system).build().map_err(invalid)?.into(),
                ChatCompletionRequestUserMessageArgs::default().content(user).build().map_err(invalid)?.into(),
            ])
            .build()
            .map_err(invalid)
    }

    async fn attempt(&self, request: CreateChatCompletionRequest) -> Result<CreateChatCompletionResponse, EmbedError> {
        let response = match &self.api {
            ApiClient::OpenAi(client) => client.chat().create(request).await,
            ApiClient::Azure(client) => client.chat().create(request).await,
        };
        response.map_err(|e| classify(e, &self.provider))
    }

    /// Opens a streamed completion (the HTTP status is known once this returns).
    async fn open_stream(
        &self,
        request: CreateChatCompletionRequest,
    ) -> Result<ChatCompletionResponseStream, EmbedError> {
        let stream = match &self.api {
            ApiClient::OpenAi(client) => client.chat().create_stream(request).await,
            ApiClient::Azure(client) => client.chat().create_stream(request).await,
        };
        stream.map_err(|e| classify(e, &self.provider))
    }
}

#[async_trait]
impl Llm for ChatModel {
    fn model(&self) -> &str {
        &self.settings.model
    }

    async fn complete(&self, system: &str, user: &str) -> Result<Completion, EmbedError> {
        let result = self.complete_once(system, user).await;
        self.record(&result);
        result
    }

    async fn complete_streaming(
        &self,
        system: &str,
        user: &str,
        pieces: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<Completion, EmbedError> {
        let result = self.stream_once(system, user, pieces).await;
        self.record(&result);
        result
    }
}

impl ChatModel {
    /// Counts a finished request in the LLM metrics: outcome, tokens and estimated cost.
    fn record(&self, result: &Result<Completion, EmbedError>) {
        match result {
            Ok(c) => {
                metrics::LLM_REQUESTS.with_label_values(&["ok"]).inc();
                metrics::LLM_TOKENS.with_label_values(&["input"]).inc_by(c.input_tokens);
                metrics::LLM_TOKENS.with_label_values(&["output"]).inc_by(c.output_tokens);
                metrics::LLM_COST.inc_by(self.settings.cost(c.input_tokens, c.output_tokens));
            }
            Err(error) => {
                metrics::LLM_REQUESTS.with_label_values(&["error"]).inc();
                // The classification is shared with embeddings; the metric names the service.
                if let EmbedError::Permanent { code, .. } = error {
                    let code = code.replacen("embedding_", "llm_", 1);
                    metrics::ERRORS.with_label_values(&[code.as_str(), "llm"]).inc();
                }
            }
        }
    }

    async fn complete_once(&self, system: &str, user: &str) -> Result<Completion, EmbedError> {
        let request = self.request(system, user)?;
        self.acquire(system, user).await;
        let response = self.retry.run(|| self.attempt(request.clone())).await?;
        let text = response
            .choices
            .into_iter()
            .next()
            .and_then(|choice| choice.message.content)
            .ok_or_else(|| EmbedError::transient(format!("{} returned no answer text", self.provider.target)))?;
        let (input_tokens, output_tokens) =
            response.usage.map_or((0, 0), |u| (u64::from(u.prompt_tokens), u64::from(u.completion_tokens)));
        Ok(Completion { text, input_tokens, output_tokens })
    }

    async fn stream_once(
        &self,
        system: &str,
        user: &str,
        pieces: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<Completion, EmbedError> {
        let mut request = self.request(system, user)?;
        request.stream_options =
            Some(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None });
        self.acquire(system, user).await;
        // Opening is retried like any call (429, 5xx, Retry-After); once text flows, a broken
        // stream is an error: the requester already holds part of an answer.
        let mut stream = self.retry.run(|| self.open_stream(request.clone())).await?;
        let (mut text, mut usage) = (String::new(), None);
        while let Some(event) = stream.next().await {
            let event = event.map_err(|e| classify(e, &self.provider))?;
            if let Some(u) = event.usage {
                usage = Some((u64::from(u.prompt_tokens), u64::from(u.completion_tokens)));
            }
            for choice in event.choices.into_iter().filter(|c| c.index == 0) {
                if let Some(piece) = choice.delta.content.filter(|p| !p.is_empty()) {
                    text.push_str(&piece);
                    let _ = pieces.send(piece);
                }
            }
        }
        if text.is_empty() {
            return Err(EmbedError::transient(format!("{} returned no answer text", self.provider.target)));
        }
        // A server that does not report usage on streams: count as it would.
        let (input_tokens, output_tokens) = usage.unwrap_or_else(|| {
            let bpe = tokenizer(&self.settings.model);
            let prompt = bpe.encode_ordinary(system).len() + bpe.encode_ordinary(user).len();
            (prompt as u64, bpe.encode_ordinary(&text).len() as u64)
        });
        Ok(Completion { text, input_tokens, output_tokens })
    }
}

/// The user message: the numbered context, then the question.
pub fn user_message(context: &str, question: &str) -> String {
    format!("Context:\n\n{context}Question: {question}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_and_tokenizers_follow_the_settings_and_the_model() {
        let settings = LlmSettings { input_price_per_1k: 0.5, output_price_per_1k: 1.5, ..LlmSettings::default() };
        assert!((settings.cost(2000, 1000) - 2.5).abs() < 1e-12);
        let text = "Tokenizers differ between model generations.";
        assert_ne!(tokenizer("gpt-4o-mini").encode_ordinary(text), tokenizer("gpt-4").encode_ordinary(text));
        assert_eq!(tokenizer("some-local-model").encode_ordinary(text), tokenizer("gpt-4").encode_ordinary(text));
    }

    #[test]
    fn invalid_settings_are_named() {
        let settings = LlmSettings { kind: LlmKind::Azure, temperature: 3.0, max_tokens: 0, ..LlmSettings::default() };
        let problems = settings.problems().join("; ");
        for key in ["llm.azure_endpoint", "llm.deployment", "llm.max_tokens", "llm.temperature"] {
            assert!(problems.contains(key), "{key} in {problems}");
        }
        assert!(LlmSettings::default().problems().is_empty());
    }
}
