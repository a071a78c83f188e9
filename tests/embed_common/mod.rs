//! A fake OpenAI embeddings server (wiremock) for the embedding tests and the benchmark: the
//! real client code path (async-openai, reqwest, our transport) talks HTTP to it.
//!
//! Every request is recorded (time, path, query, headers, model, dimensions, inputs). A script
//! decides per request whether to fail (with any status, headers and body); otherwise the reply
//! holds one deterministic vector per input (the hash embedder's, so retrieval still works).

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ragpipe::config::{EmbedderKind, EmbedderSettings};
use ragpipe::embed::hash::HashEmbedder;
use secrecy::SecretString;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Model name the fake reports.
pub const MODEL: &str = "fake-embed";
/// API key the tests configure.
pub const KEY: &str = "test-key-123";

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    /// Its position among all requests (0-based).
    pub n: usize,
    pub path: String,
    pub query: Option<String>,
    pub headers: wiremock::http::HeaderMap,
    pub model: String,
    pub dimensions: Option<u64>,
    pub inputs: Vec<String>,
}

#[derive(serde::Serialize)]
struct Item {
    object: &'static str,
    index: usize,
    embedding: Vec<f32>,
}

#[derive(serde::Serialize)]
struct Usage {
    prompt_tokens: u32,
    total_tokens: u32,
}

#[derive(serde::Serialize)]
struct Reply<'a> {
    object: &'static str,
    model: &'a str,
    data: Vec<Item>,
    usage: Usage,
}

/// Decides a request's failure: `None` answers with vectors.
pub type Script = Arc<dyn Fn(&Seen) -> Option<ResponseTemplate> + Send + Sync>;

/// The fake server.
pub struct FakeOpenAi {
    pub server: MockServer,
    log: Arc<Mutex<Vec<Seen>>>,
    dims: usize,
}

struct Responder {
    dims: usize,
    delay: Duration,
    log: Arc<Mutex<Vec<Seen>>>,
    count: AtomicUsize,
    script: Script,
    hash: HashEmbedder,
}

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let inputs: Vec<String> = match &body["input"] {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a.iter().map(|v| v.as_str().unwrap_or_default().to_owned()).collect(),
            _ => Vec::new(),
        };
        let seen = Seen {
            at: Instant::now(),
            n: self.count.fetch_add(1, Ordering::SeqCst),
            path: request.url.path().to_owned(),
            query: request.url.query().map(str::to_owned),
            headers: request.headers.clone(),
            model: body["model"].as_str().unwrap_or_default().to_owned(),
            dimensions: body["dimensions"].as_u64(),
            inputs,
        };
        self.log.lock().expect("log").push(seen.clone());
        if let Some(failure) = (self.script)(&seen) {
            return failure.set_delay(self.delay);
        }
        // Typed structs, not a serde_json::Value tree: the fake shares the CPU with the code
        // under test (and the benchmark), so it should cost as little as a real server's reply.
        let data: Vec<Item> = seen
            .inputs
            .iter()
            .enumerate()
            .map(|(index, text)| Item { object: "embedding", index, embedding: self.hash.vector(text) })
            .collect();
        let reply =
            Reply { object: "list", model: &seen.model, data, usage: Usage { prompt_tokens: 0, total_tokens: 0 } };
        let body = serde_json::to_vec(&reply).unwrap_or_default();
        ResponseTemplate::new(200).set_body_raw(body, "application/json").set_delay(self.delay)
    }
}

impl FakeOpenAi {
    /// A server answering every POST with `dims`-long vectors after `delay`, unless `script` fails it.
    pub async fn start(dims: usize, delay: Duration, script: Script) -> Self {
        let server = MockServer::start().await;
        let log = Arc::new(Mutex::new(Vec::new()));
        let responder = Responder {
            dims,
            delay,
            log: log.clone(),
            count: AtomicUsize::new(0),
            script,
            hash: HashEmbedder::new(MODEL, dims),
        };
        Mock::given(wiremock::matchers::method("POST")).respond_with(responder).mount(&server).await;
        Self { server, log, dims }
    }

    /// A server that always answers with vectors.
    pub async fn healthy(dims: usize) -> Self {
        Self::start(dims, Duration::ZERO, Arc::new(|_| None)).await
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        self.log.lock().expect("log").clone()
    }

    /// Every input sent so far.
    pub fn inputs(&self) -> Vec<String> {
        self.requests().into_iter().flat_map(|r| r.inputs).collect()
    }

    /// `[embedder]` for `kind = "openai"` pointing here, with fast retries for tests.
    pub fn configure(&self, embedder: &mut EmbedderSettings) {
        embedder.kind = EmbedderKind::OpenAi;
        embedder.base_url = format!("{}/v1", self.server.uri());
        embedder.model = MODEL.into();
        embedder.dimensions = self.dims;
        embedder.api_key = Some(SecretString::from(KEY));
        embedder.initial_backoff_ms = 10;
        embedder.max_backoff_ms = 50;
        embedder.max_elapsed_secs = 10;
        embedder.request_timeout_secs = 10;
    }

    /// The vector the fake returns for `text`.
    pub fn vector(&self, text: &str) -> Vec<f32> {
        HashEmbedder::new(MODEL, self.dims).vector(text)
    }
}

fn openai_error(status: u16, message: &str, kind: &str, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    }))
}

/// 429 rate limit with `retry-after` in seconds.
pub fn rate_limited(retry_after_secs: u64) -> ResponseTemplate {
    openai_error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded")
        .insert_header("retry-after", retry_after_secs.to_string().as_str())
}

/// 429 with an exhausted quota.
pub fn quota_exhausted() -> ResponseTemplate {
    openai_error(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        "insufficient_quota",
    )
}

/// 401 for a bad key.
pub fn bad_key() -> ResponseTemplate {
    openai_error(401, "Incorrect API key provided: test-key***123.", "invalid_request_error", "invalid_api_key")
}

/// 500 as OpenAI sends it.
pub fn server_error() -> ResponseTemplate {
    openai_error(500, "The server had an error while processing your request.", "server_error", "")
}

/// 400 for an input over the model's context.
pub fn context_length() -> ResponseTemplate {
    openai_error(
        400,
        "This model's maximum context length is 8192 tokens, however you requested 9000 tokens. Please reduce your prompt.",
        "invalid_request_error",
        "context_length_exceeded",
    )
}

/// cl100k_base token count (what the service counts for OpenAI models).
pub fn tokens(text: &str) -> usize {
    static BPE: std::sync::OnceLock<tiktoken_rs::CoreBPE> = std::sync::OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::cl100k_base().expect("cl100k")).encode_ordinary(text).len()
}

/// Deletes every Redis key under `prefix` when dropped (service-level tests need no database).
pub struct RedisPrefix(pub String);

impl RedisPrefix {
    pub fn new() -> Self {
        Self(format!("ragpipe-test:{}:", &uuid::Uuid::new_v4().simple().to_string()[..12]))
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let pattern = format!("{}*", self.0);
        let url = std::env::var("RAGPIPE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
        let Ok(client) = redis::Client::open(url) else { return };
        let Ok(mut conn) = client.get_connection() else { return };
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut conn).unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}
