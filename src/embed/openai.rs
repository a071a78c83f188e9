//! OpenAI-compatible servers (OpenAI, vLLM, Ollama, TEI, ...) and Azure OpenAI, through
//! async-openai over [`PlainHttp`] (one attempt per call; retries are the service's).
//!
//! Tokens are counted with cl100k_base, the encoding of OpenAI's embedding models; for other
//! models it is an approximation, so give `max_input_tokens` some margin there.

use async_openai::Client;
use async_openai::config::Config;
use async_openai::types::embeddings::{CreateEmbeddingRequest, CreateEmbeddingResponse, EmbeddingInput};
use async_trait::async_trait;
use tiktoken_rs::CoreBPE;

use super::http::{ApiClient, Endpoint, Provider, classify, usable_api_key};
use super::{EmbedError, Embedder, normalize, tokens};
use crate::config::{EmbedderKind, EmbedderSettings};

/// An embedder calling a remote `/embeddings` endpoint.
pub struct RemoteEmbedder {
    api: ApiClient,
    model: String,
    dimensions: usize,
    send_dimensions: bool,
    bpe: &'static CoreBPE,
    provider: Provider,
}

impl RemoteEmbedder {
    /// A client for `kind = "openai"` or `kind = "azure"`.
    ///
    /// # Errors
    /// The API key is missing, the kind is not remote, or the HTTP client cannot be built.
    pub fn new(settings: &EmbedderSettings) -> Result<Self, EmbedError> {
        let config_error = |reason: String| EmbedError::permanent("embedding_config", reason);
        let key_env =
            settings.api_key_env().ok_or_else(|| config_error("the hash embedder is not a remote API".into()))?;
        // async-openai panics on a key that is not a valid header value; refuse it here instead.
        let key = usable_api_key(settings.api_key.as_ref(), key_env, "[embedder]").map_err(config_error)?;
        let endpoint = settings.azure_endpoint.trim_end_matches('/');
        let base = settings.base_url.trim_end_matches('/');
        let (target, provider) = match settings.kind {
            EmbedderKind::Azure => (
                Endpoint::Azure { endpoint, deployment: &settings.deployment, api_version: &settings.api_version },
                Provider {
                    key_env,
                    target: format!(
                        "deployment `{}` at {endpoint} (api-version {})",
                        settings.deployment, settings.api_version
                    ),
                    target_keys: "azure_endpoint, deployment and api_version",
                },
            ),
            _ => (
                Endpoint::OpenAi { base_url: base },
                Provider {
                    key_env,
                    target: format!("model `{}` at {base}", settings.model),
                    target_keys: "model and base_url",
                },
            ),
        };
        let api = ApiClient::new(target, key, settings.request_timeout_secs).map_err(config_error)?;
        Ok(Self {
            api,
            model: settings.model.clone(),
            dimensions: settings.dimensions,
            send_dimensions: settings.send_dimensions,
            bpe: tokens::cl100k()?,
            provider,
        })
    }

    /// Vectors of `response` in input order, checked against the request and normalised.
    fn vectors(&self, response: CreateEmbeddingResponse, inputs: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut slots: Vec<Option<Vec<f32>>> = vec![None; inputs];
        for item in response.data {
            let slot = slots.get_mut(item.index as usize).filter(|s| s.is_none()).ok_or_else(|| {
                EmbedError::transient(format!(
                    "the reply has a bad or repeated index {} for {inputs} inputs",
                    item.index
                ))
            })?;
            if item.embedding.len() != self.dimensions {
                return Err(EmbedError::permanent(
                    "embedding_config",
                    format!(
                        "{} returned {}-dimensional vectors but [embedder] dimensions = {}; set dimensions to {} \
                         (in a new collection, or reindex), or send_dimensions = true if the model can shorten its vectors",
                        self.provider.target,
                        item.embedding.len(),
                        self.dimensions,
                        item.embedding.len()
                    ),
                ));
            }
            let mut vector = item.embedding;
            // OpenAI's vectors are unit length already; other servers' may not be.
            normalize(&mut vector);
            *slot = Some(vector);
        }
        slots.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| {
            EmbedError::transient(format!("the reply is missing vectors for some of its {inputs} inputs"))
        })
    }
}

async fn create<C: Config>(
    client: &Client<C>,
    request: CreateEmbeddingRequest,
) -> Result<CreateEmbeddingResponse, async_openai::error::OpenAIError> {
    client.embeddings().create(request).await
}

#[async_trait]
impl Embedder for RemoteEmbedder {
    fn model_id(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn count_tokens(&self, text: &str) -> usize {
        tokens::count(self.bpe, text)
    }

    fn split_tokens(&self, text: &str, max_tokens: usize) -> Vec<String> {
        tokens::split(self.bpe, text, max_tokens)
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let request = CreateEmbeddingRequest {
            model: self.model.clone(),
            input: EmbeddingInput::StringArray(texts.to_vec()),
            encoding_format: None,
            user: None,
            dimensions: self.send_dimensions.then(|| u32::try_from(self.dimensions).unwrap_or(u32::MAX)),
        };
        let response = match &self.api {
            ApiClient::OpenAi(client) => create(client, request).await,
            ApiClient::Azure(client) => create(client, request).await,
        }
        .map_err(|e| classify(e, &self.provider))?;
        self.vectors(response, texts.len())
    }
}
