//! The HTTP transport under async-openai, and the classification of its failures.
//!
//! async-openai's default executor retries by itself, which would multiply with our retries and
//! hide `Retry-After` from us. [`PlainHttp`] executes each request exactly once; a non-success
//! reply comes back as an [`HttpFailure`] (status, server-given delay, body) boxed in
//! `OpenAIError::Boxed`, so [`classify`] can decide exactly what to do with it.

use std::time::{Duration, SystemTime};

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use futures::future::BoxFuture;
use reqwest::header::HeaderMap;

use super::EmbedError;

/// Longest error body kept (a misbehaving proxy may send megabytes of HTML).
const MAX_ERROR_BODY: usize = 2048;

/// A non-success HTTP reply.
#[derive(Debug, Clone, thiserror::Error)]
#[error("HTTP {status}: {body}")]
pub struct HttpFailure {
    /// Status code.
    pub status: u16,
    /// `retry-after-ms` or `retry-after`, if the server sent one.
    pub retry_after: Option<Duration>,
    /// The body (truncated), usually `{"error": {"message", "type", "code"}}`.
    pub body: String,
}

/// A tower service that sends each request once with a plain `reqwest::Client` (whose timeout
/// bounds it) and turns non-success replies into [`HttpFailure`]s.
#[derive(Clone, Debug)]
pub struct PlainHttp {
    client: reqwest::Client,
}

impl PlainHttp {
    /// A transport over `client`.
    pub fn new(client: reqwest::Client) -> Self {
        Self { client }
    }

    /// A transport over a new client whose requests time out after `timeout_secs` (connections
    /// after 10 s), with the client itself for async-openai's `Client::build`.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn with_timeout(timeout_secs: u64) -> Result<(reqwest::Client, Self), String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(timeout_secs))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok((client.clone(), Self::new(client)))
    }
}

/// Where an OpenAI-style API lives.
#[derive(Debug, Clone, Copy)]
pub enum Endpoint<'a> {
    /// An OpenAI-compatible API, up to and including `/v1`.
    OpenAi {
        /// Its base URL.
        base_url: &'a str,
    },
    /// Azure OpenAI.
    Azure {
        /// `https://<resource>.openai.azure.com`.
        endpoint: &'a str,
        /// The deployment.
        deployment: &'a str,
        /// The `api-version` query parameter.
        api_version: &'a str,
    },
}

/// An async-openai client of either flavour, over [`PlainHttp`] (one attempt per call: retries
/// are the caller's).
pub enum ApiClient {
    /// OpenAI-compatible.
    OpenAi(async_openai::Client<async_openai::config::OpenAIConfig>),
    /// Azure OpenAI.
    Azure(async_openai::Client<async_openai::config::AzureConfig>),
}

impl ApiClient {
    /// A client of `endpoint` sending `key`, whose requests time out after `timeout_secs`.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(endpoint: Endpoint<'_>, key: String, timeout_secs: u64) -> Result<Self, String> {
        use async_openai::Client;
        use async_openai::config::{AzureConfig, OpenAIConfig};
        let (http, transport) = PlainHttp::with_timeout(timeout_secs)?;
        Ok(match endpoint {
            Endpoint::Azure { endpoint, deployment, api_version } => {
                let config = AzureConfig::new()
                    .with_api_base(endpoint.trim_end_matches('/'))
                    .with_deployment_id(deployment)
                    .with_api_version(api_version)
                    .with_api_key(key);
                Self::Azure(Client::build(http, config).with_http_service(transport))
            }
            Endpoint::OpenAi { base_url } => {
                let config = OpenAIConfig::new().with_api_base(base_url.trim_end_matches('/')).with_api_key(key);
                Self::OpenAi(Client::build(http, config).with_http_service(transport))
            }
        })
    }
}

/// The API key from `key_env` (surrounding whitespace, such as the newline of `$(cat keyfile)`,
/// dropped; empty means absent).
pub fn read_api_key(key_env: Option<&str>) -> Option<secrecy::SecretString> {
    key_env
        .and_then(|name| std::env::var(name).ok())
        .map(|key| key.trim().to_owned())
        .filter(|key| !key.is_empty())
        .map(secrecy::SecretString::from)
}

/// The key as a header value, or why it cannot be used (`what` names the setting's section).
///
/// # Errors
/// No key, or one async-openai would panic on (not a valid header value).
pub fn usable_api_key(key: Option<&secrecy::SecretString>, key_env: &str, what: &str) -> Result<String, String> {
    use secrecy::ExposeSecret;
    let key = key.ok_or_else(|| format!("no API key for {what}: set the {key_env} environment variable"))?;
    let key = key.expose_secret();
    if !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!("{key_env} contains characters that cannot be sent in an HTTP header"));
    }
    Ok(key.to_owned())
}

impl tower::Service<HttpRequestFactory> for PlainHttp {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = BoxFuture<'static, Result<reqwest::Response, OpenAIError>>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move {
            let request = factory.build().await?;
            let response = client.execute(request).await.map_err(OpenAIError::Reqwest)?;
            if response.status().is_success() {
                return Ok(response);
            }
            let status = response.status().as_u16();
            let retry_after = retry_after(response.headers(), SystemTime::now());
            let bytes = response.bytes().await.map_err(OpenAIError::Reqwest)?;
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_ERROR_BODY)]).into_owned();
            Err(OpenAIError::Boxed(Box::new(HttpFailure { status, retry_after, body })))
        })
    }
}

/// The delay a server asked for: `retry-after-ms` (OpenAI, Azure) or `retry-after` in seconds
/// or as an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) =
        header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()).filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = header("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(at.timestamp()).ok()?);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Who we were talking to, for error messages that tell the operator what to fix.
#[derive(Debug, Clone)]
pub struct Provider {
    /// The environment variable the API key comes from.
    pub key_env: &'static str,
    /// What was asked for, e.g. "model `text-embedding-3-small` at https://api.openai.com/v1".
    pub target: String,
    /// The `[embedder]` keys that name the target, e.g. "model and base_url".
    pub target_keys: &'static str,
}

/// Classifies an async-openai error.
pub fn classify(error: OpenAIError, provider: &Provider) -> EmbedError {
    match error {
        OpenAIError::Boxed(boxed) => match boxed.downcast::<HttpFailure>() {
            Ok(failure) => classify_status(failure.status, failure.retry_after, &failure.body, provider),
            Err(other) => EmbedError::transient(other.to_string()),
        },
        OpenAIError::Reqwest(e) if e.is_timeout() => EmbedError::transient(format!("request timed out: {e}")),
        OpenAIError::Reqwest(e) if e.is_connect() => EmbedError::transient(format!("cannot connect: {e}")),
        OpenAIError::Reqwest(e) => EmbedError::transient(format!("request failed: {e}")),
        OpenAIError::ApiError(e) => {
            let body = serde_json::json!({ "error": e.api_error }).to_string();
            classify_status(e.status_code.as_u16(), None, &body, provider)
        }
        // A 2xx whose body is not an embeddings response: almost always a base URL that points
        // at something else (a web page, another API), which retrying will not fix.
        OpenAIError::JSONDeserialize(e, _) => EmbedError::permanent(
            "embedding_config",
            format!(
                "{} answered with something that is not an embeddings response ({e}); check [embedder] {}",
                provider.target, provider.target_keys
            ),
        ),
        OpenAIError::InvalidArgument(m) => EmbedError::permanent("embedding_config", format!("invalid request: {m}")),
        other => EmbedError::transient(other.to_string()),
    }
}

/// Classifies a non-success status with its body.
pub fn classify_status(status: u16, retry_after: Option<Duration>, body: &str, provider: &Provider) -> EmbedError {
    let detail = ErrorDetail::parse(body);
    let message = detail.message.as_str();
    let key_env = provider.key_env;
    match status {
        429 if detail.is("insufficient_quota") => EmbedError::permanent(
            "embedding_quota",
            format!(
                "the embedding API account has run out of quota (HTTP 429 insufficient_quota: {message}); \
                 add credit or raise the spending limit of the key in {key_env}, then replay the dead-lettered uploads"
            ),
        ),
        429 => EmbedError::RateLimited { retry_after },
        401 => EmbedError::permanent(
            "embedding_auth",
            format!(
                "the embedding API rejected the API key (HTTP 401: {message}); set {key_env} to a valid key and restart the workers"
            ),
        ),
        403 => EmbedError::permanent(
            "embedding_auth",
            format!(
                "the API key in {key_env} may not use {} (HTTP 403: {message}); grant it access or change [embedder] {}",
                provider.target, provider.target_keys
            ),
        ),
        404 => EmbedError::permanent(
            "embedding_config",
            format!(
                "{} was not found (HTTP 404: {message}); check [embedder] {}",
                provider.target, provider.target_keys
            ),
        ),
        413 => EmbedError::ContextLength(format!("HTTP 413: {message}")),
        400 | 422 if detail.is_context_length() => EmbedError::ContextLength(format!("HTTP {status}: {message}")),
        408 | 409 | 500..=599 => EmbedError::Transient { reason: format!("HTTP {status}: {message}"), retry_after },
        _ => EmbedError::permanent(
            "embedding_rejected",
            format!(
                "the embedding API rejected the request (HTTP {status}: {message}); check [embedder] model, dimensions and send_dimensions"
            ),
        ),
    }
}

/// The useful parts of an error body, whichever server shape it has: OpenAI/Azure
/// `{"error": {"message", "type", "code"}}`, TEI/Ollama `{"error": "...", "error_type": "..."}`,
/// or plain text.
#[derive(Debug, Default)]
struct ErrorDetail {
    message: String,
    kind: String,
    code: String,
}

impl ErrorDetail {
    fn parse(body: &str) -> Self {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
            return Self { message: shorten(body.trim()), ..Self::default() };
        };
        let error = json.get("error").unwrap_or(&json);
        let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let message = match error.as_str() {
            Some(s) => s.to_owned(),
            None => text(error.get("message")),
        };
        Self {
            message: shorten(if message.is_empty() { body.trim() } else { &message }),
            kind: text(error.get("type").or_else(|| json.get("error_type"))),
            code: match error.get("code") {
                Some(serde_json::Value::Number(n)) => n.to_string(),
                other => text(other),
            },
        }
    }

    fn is(&self, what: &str) -> bool {
        self.code == what || self.kind == what
    }

    /// Context-length errors in the shapes servers use: OpenAI's code, vLLM's "maximum context
    /// length", TEI's "must have less than N tokens", and similar wordings.
    fn is_context_length(&self) -> bool {
        if self.is("context_length_exceeded") {
            return true;
        }
        let m = self.message.to_lowercase();
        [
            "context length",
            "maximum context",
            "too many tokens",
            "must have less than",
            "maximum input length",
            "input is too long",
            "too long",
        ]
        .iter()
        .any(|needle| m.contains(needle))
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 300;
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Provider {
        Provider {
            key_env: "OPENAI_API_KEY",
            target: "model `m` at http://x/v1".into(),
            target_keys: "model and base_url",
        }
    }

    fn openai_body(message: &str, kind: &str, code: &str) -> String {
        serde_json::json!({"error": {"message": message, "type": kind, "code": code}}).to_string()
    }

    #[test]
    fn rate_limits_retry_but_exhausted_quota_is_permanent() {
        let p = provider();
        let limited = classify_status(
            429,
            Some(Duration::from_secs(2)),
            &openai_body("slow down", "requests", "rate_limit_exceeded"),
            &p,
        );
        assert_eq!(limited, EmbedError::RateLimited { retry_after: Some(Duration::from_secs(2)) });
        let quota = classify_status(
            429,
            None,
            &openai_body("You exceeded your current quota", "insufficient_quota", "insufficient_quota"),
            &p,
        );
        let EmbedError::Permanent { code, reason } = quota else { panic!("quota must be permanent: {quota:?}") };
        assert_eq!(code, "embedding_quota");
        assert!(reason.contains("add credit") && reason.contains("OPENAI_API_KEY"), "{reason}");
    }

    #[test]
    fn auth_and_not_found_name_what_to_fix() {
        let p = provider();
        let EmbedError::Permanent { code, reason } = classify_status(
            401,
            None,
            &openai_body("Incorrect API key", "invalid_request_error", "invalid_api_key"),
            &p,
        ) else {
            panic!("401 must be permanent")
        };
        assert_eq!(code, "embedding_auth");
        assert!(reason.contains("set OPENAI_API_KEY"), "{reason}");
        assert!(matches!(
            classify_status(403, None, "forbidden", &p),
            EmbedError::Permanent { code: "embedding_auth", .. }
        ));
        let EmbedError::Permanent { reason, .. } = classify_status(404, None, "{}", &p) else {
            panic!("404 must be permanent")
        };
        assert!(reason.contains("model and base_url"), "{reason}");
    }

    #[test]
    fn context_length_errors_are_recognised_in_several_server_shapes() {
        let p = provider();
        let bodies = [
            openai_body("This model's maximum context length is 8192 tokens, however you requested 9000", "invalid_request_error", "context_length_exceeded"),
            r#"{"error":"Input validation error: `inputs` must have less than 512 tokens. Given: 600","error_type":"Validation"}"#.to_owned(),
            r#"{"object":"error","message":"This model's maximum context length is 512 tokens.","type":"BadRequestError","code":400}"#.to_owned(),
        ];
        for body in &bodies {
            assert!(matches!(classify_status(400, None, body, &p), EmbedError::ContextLength(_)), "{body}");
        }
        assert!(matches!(classify_status(413, None, "payload too large", &p), EmbedError::ContextLength(_)));
        let other =
            classify_status(400, None, &openai_body("dimensions is not supported", "invalid_request_error", ""), &p);
        assert!(matches!(other, EmbedError::Permanent { code: "embedding_rejected", .. }), "{other:?}");
    }

    #[test]
    fn server_errors_and_timeouts_are_transient_with_their_delay() {
        let p = provider();
        let e = classify_status(503, Some(Duration::from_millis(1500)), "<html>busy</html>", &p);
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));
        assert!(classify_status(500, None, "", &p).is_retryable());
        assert!(classify_status(408, None, "", &p).is_retryable());
    }

    #[test]
    fn retry_after_headers_are_parsed_in_every_form() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "3".parse().expect("header"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(3)));
        headers.insert("retry-after-ms", "250".parse().expect("header"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_millis(250)), "the ms header is more precise");
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "Wed, 21 Oct 2015 07:28:10 GMT".parse().expect("header"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(10)));
        headers.insert("retry-after", "soon".parse().expect("header"));
        assert_eq!(retry_after(&headers, now), None);
    }
}
