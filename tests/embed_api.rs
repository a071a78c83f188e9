//! The embedding service against a fake OpenAI server (the real async-openai client path) with
//! the real Redis cache: request shapes, batch boundaries, retries, failure classification,
//! context-length isolation, long inputs, concurrency and caching.

mod embed_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use embed_common::{FakeOpenAi, KEY, MODEL, RedisPrefix, Script, tokens};
use ragpipe::cache;
use ragpipe::config::{CacheSettings, EmbedderKind, EmbedderSettings, LongInputs};
use ragpipe::embed::EmbedError;
use ragpipe::embed::service::EmbeddingService;
use secrecy::SecretString;

fn redis_url() -> String {
    std::env::var("RAGPIPE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn cache_settings(prefix: &RedisPrefix) -> CacheSettings {
    CacheSettings {
        url: Some(SecretString::from(redis_url())),
        key_prefix: prefix.0.clone(),
        ..CacheSettings::default()
    }
}

/// A service talking to `fake` with `tweak` applied, caching in Redis under `cache`'s prefix.
fn service_with(
    fake: &FakeOpenAi,
    cache: &CacheSettings,
    tweak: impl FnOnce(&mut EmbedderSettings),
) -> EmbeddingService {
    let mut settings = EmbedderSettings::default();
    fake.configure(&mut settings);
    tweak(&mut settings);
    EmbeddingService::from_settings(&settings, cache, cache::connect(cache).1).expect("service")
}

/// Equal up to the rounding of re-normalising a unit vector.
fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
}

fn texts(n: usize, label: &str) -> Vec<String> {
    (0..n).map(|i| format!("{label} number {i} about lighthouses and tides")).collect()
}

fn script(f: impl Fn(&embed_common::Seen) -> Option<wiremock::ResponseTemplate> + Send + Sync + 'static) -> Script {
    Arc::new(f)
}

#[tokio::test]
async fn openai_requests_carry_the_model_dimensions_and_bearer_key() {
    let fake = FakeOpenAi::healthy(16).await;
    let prefix = RedisPrefix::new();
    let service = service_with(&fake, &cache_settings(&prefix), |_| {});
    let input = texts(3, "shape");
    let vectors: Vec<Vec<f32>> = service.embed(&input).await.into_iter().map(|r| r.expect("vector")).collect();
    assert!(close(&vectors[1], &fake.vector(&input[1])), "vectors come back in input order");

    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/embeddings");
    assert_eq!(seen[0].model, MODEL);
    assert_eq!(seen[0].dimensions, Some(16));
    assert_eq!(seen[0].inputs, input);
    assert_eq!(
        seen[0].headers.get("authorization").and_then(|v| v.to_str().ok()),
        Some(format!("Bearer {KEY}").as_str())
    );
}

#[tokio::test]
async fn azure_requests_use_the_deployment_path_api_version_and_api_key_header() {
    let fake = FakeOpenAi::healthy(8).await;
    let prefix = RedisPrefix::new();
    let service = service_with(&fake, &cache_settings(&prefix), |s| {
        s.kind = EmbedderKind::Azure;
        s.azure_endpoint = format!("{}/", fake.server.uri());
        s.deployment = "embed-small".into();
        s.api_version = "2024-10-21".into();
        s.api_key = Some(SecretString::from("azure-secret"));
    });
    service.embed_one("harbour tide tables").await.expect("vector");
    let seen = fake.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/openai/deployments/embed-small/embeddings");
    assert_eq!(seen[0].query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(seen[0].headers.get("api-key").and_then(|v| v.to_str().ok()), Some("azure-secret"));
    assert!(seen[0].headers.get("authorization").is_none(), "Azure keys go in api-key, not a bearer token");
}

#[tokio::test]
async fn batches_split_exactly_at_the_input_count_and_at_the_token_budget() {
    let fake = FakeOpenAi::healthy(8).await;
    let prefix = RedisPrefix::new();
    let by_count = service_with(&fake, &cache_settings(&prefix), |s| {
        s.batch_size = 5;
        s.max_concurrent_requests = 1;
    });
    assert!(by_count.embed(&texts(23, "count")).await.iter().all(Result::is_ok));
    let sizes: Vec<usize> = fake.requests().iter().map(|r| r.inputs.len()).collect();
    assert_eq!(sizes, [5, 5, 5, 5, 3]);

    // Texts of 6..=40 tokens under a 100-token budget: the server must see exactly the greedy cut.
    let fake = FakeOpenAi::healthy(8).await;
    let by_tokens = service_with(&fake, &cache_settings(&prefix), |s| {
        s.batch_size = 50;
        s.max_tokens_per_request = 100;
        s.max_input_tokens = 100;
        s.max_concurrent_requests = 1;
    });
    let input: Vec<String> = (0..30).map(|i| format!("tokens {i}: {}", "word ".repeat(3 + (i * 7) % 35))).collect();
    assert!(by_tokens.embed(&input).await.iter().all(Result::is_ok));
    let mut expected = Vec::new();
    let (mut batch, mut sum) = (Vec::new(), 0);
    for text in &input {
        if !batch.is_empty() && sum + tokens(text) > 100 {
            expected.push(std::mem::take(&mut batch));
            sum = 0;
        }
        sum += tokens(text);
        batch.push(text.clone());
    }
    expected.push(batch);
    let got: Vec<Vec<String>> = fake.requests().into_iter().map(|r| r.inputs).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_then_succeeds() {
    let fake =
        FakeOpenAi::start(8, Duration::ZERO, script(|r| (r.n == 0).then(|| embed_common::rate_limited(1)))).await;
    let prefix = RedisPrefix::new();
    let service = service_with(&fake, &cache_settings(&prefix), |_| {});
    service.embed_one("rate limited once").await.expect("succeeds after the wait");
    let seen = fake.requests();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_secs(1), "Retry-After: 1 must be honoured over a 10 ms backoff; waited {gap:?}");
}

#[tokio::test]
async fn a_500_is_retried_until_success() {
    let fake = FakeOpenAi::start(8, Duration::ZERO, script(|r| (r.n < 2).then(embed_common::server_error))).await;
    let prefix = RedisPrefix::new();
    let service = service_with(&fake, &cache_settings(&prefix), |_| {});
    let results = service.embed(&texts(4, "flaky")).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn exhausted_quota_and_a_rejected_key_fail_at_once_saying_what_to_fix() {
    let fake = FakeOpenAi::start(8, Duration::ZERO, script(|_| Some(embed_common::quota_exhausted()))).await;
    let prefix = RedisPrefix::new();
    let service = service_with(&fake, &cache_settings(&prefix), |_| {});
    let result = service.embed_one("no money").await;
    let Err(EmbedError::Permanent { code, reason }) = result else { panic!("quota must be permanent: {result:?}") };
    assert_eq!(code, "embedding_quota");
    assert!(reason.contains("add credit") && reason.contains("OPENAI_API_KEY"), "{reason}");
    assert_eq!(fake.requests().len(), 1, "no retries for an exhausted quota");

    let fake = FakeOpenAi::start(8, Duration::ZERO, script(|_| Some(embed_common::bad_key()))).await;
    let service = service_with(&fake, &cache_settings(&prefix), |_| {});
    let result = service.embed_one("bad key").await;
    let Err(EmbedError::Permanent { code, reason }) = result else { panic!("401 must be permanent: {result:?}") };
    assert_eq!(code, "embedding_auth");
    assert!(reason.contains("set OPENAI_API_KEY"), "{reason}");
    assert!(!reason.contains(KEY), "the key never appears in errors: {reason}");
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_context_length_refusal_is_split_until_the_long_input_stands_alone() {
    let refuse = script(|r| r.inputs.iter().any(|t| t.contains("OVERSIZED")).then(embed_common::context_length));
    let fake = FakeOpenAi::start(8, Duration::ZERO, refuse).await;
    let prefix = RedisPrefix::new();
    let service = service_with(&fake, &cache_settings(&prefix), |s| s.batch_size = 8);
    let mut input = texts(8, "split");
    input[6] = "OVERSIZED text the server refuses".into();
    let results = service.embed(&input).await;
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.is_ok(), i != 6, "input {i}: {result:?}");
    }
    let Err(EmbedError::Permanent { code, reason }) = &results[6] else { panic!("{:?}", results[6]) };
    assert_eq!(*code, "input_too_long");
    assert!(reason.contains("max_input_tokens"), "{reason}");
    // 8 → 4 + 4 → 2 + 2 → 1 + 1: the good halves succeed on the way down.
    assert_eq!(fake.requests().len(), 7);
}

#[tokio::test]
async fn transient_failures_stop_retrying_at_the_deadline() {
    let fake = FakeOpenAi::start(8, Duration::ZERO, script(|_| Some(wiremock::ResponseTemplate::new(503)))).await;
    let prefix = RedisPrefix::new();
    let service = service_with(&fake, &cache_settings(&prefix), |s| s.max_elapsed_secs = 1);
    let started = Instant::now();
    let result = service.embed_one("down for good").await;
    let Err(EmbedError::Transient { reason, .. }) = &result else { panic!("must stay transient: {result:?}") };
    assert!(reason.contains("gave up retrying"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(fake.requests().len() >= 5, "retried with backoff: {}", fake.requests().len());
}

#[tokio::test]
async fn concurrent_requests_never_exceed_the_limit() {
    let delay = Duration::from_millis(150);
    let fake = FakeOpenAi::start(8, delay, script(|_| None)).await;
    let prefix = RedisPrefix::new();
    let service = service_with(&fake, &cache_settings(&prefix), |s| {
        s.batch_size = 1;
        s.max_concurrent_requests = 3;
    });
    let started = Instant::now();
    assert!(service.embed(&texts(12, "parallel")).await.iter().all(Result::is_ok));
    let elapsed = started.elapsed();
    let arrivals: Vec<Instant> = fake.requests().iter().map(|r| r.at).collect();
    assert_eq!(arrivals.len(), 12);
    // A request can only start once an earlier one has been answered, `delay` after it arrived:
    // within any window shorter than `delay`, at most 3 requests arrive.
    let window = delay - Duration::from_millis(30);
    for &t in &arrivals {
        let open = arrivals.iter().filter(|&&a| a <= t && t - a < window).count();
        assert!(open <= 3, "{open} requests in flight at once");
    }
    assert!(elapsed >= delay * 4, "12 requests, 3 at a time, take 4 rounds: {elapsed:?}");
}

#[tokio::test]
async fn cached_embeddings_cause_no_api_calls_and_identical_texts_are_sent_once() {
    let fake = FakeOpenAi::healthy(8).await;
    let prefix = RedisPrefix::new();
    let cache = cache_settings(&prefix);
    let first = service_with(&fake, &cache, |_| {});
    let mut input = texts(5, "cached");
    input.push(input[0].clone());
    let vectors = first.embed(&input).await;
    assert_eq!(vectors[0], vectors[5]);
    assert_eq!(fake.inputs().len(), 5, "the duplicate text is embedded once");

    // Another worker on the same Redis reads the same vectors; queries use the cache too.
    let second = service_with(&fake, &cache, |_| {});
    assert_eq!(second.embed(&input).await, vectors);
    second.embed_one("what about tides?").await.expect("query vector");
    first.embed_one("what about tides?").await.expect("query vector again");
    assert_eq!(fake.inputs().len(), 6, "only the new query text reached the API");
}

#[tokio::test]
async fn a_cache_outage_degrades_to_misses_never_errors() {
    let fake = FakeOpenAi::healthy(8).await;
    let down = CacheSettings {
        url: Some(SecretString::from("redis://127.0.0.1:1/0")),
        timeout_ms: 100,
        ..CacheSettings::default()
    };
    let service = service_with(&fake, &down, |_| {});
    for _ in 0..2 {
        assert!(service.embed(&texts(3, "no cache")).await.iter().all(Result::is_ok));
    }
    assert_eq!(fake.inputs().len(), 6, "every call is a miss while Redis is down");
}

#[tokio::test]
async fn long_inputs_are_split_or_truncated_before_they_are_sent() {
    let long = "The harbour master posts the tide tables at dawn and the ferry leaves at noon. ".repeat(12);
    for mode in [LongInputs::Split, LongInputs::Truncate] {
        // A cache per mode: the truncated text is the split's first piece, already cached.
        let prefix = RedisPrefix::new();
        let fake = FakeOpenAi::healthy(8).await;
        let service = service_with(&fake, &cache_settings(&prefix), |s| {
            s.max_input_tokens = 50;
            s.long_inputs = mode;
        });
        let vector = service.embed_one(&long).await.expect("vector");
        let sent = fake.inputs();
        assert!(
            sent.iter().all(|t| tokens(t) <= 50),
            "{mode:?}: {:?}",
            sent.iter().map(|t| tokens(t)).collect::<Vec<_>>()
        );
        match mode {
            LongInputs::Split => {
                assert_eq!(sent.concat(), long, "split pieces cover the whole text");
                let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-4);
            }
            LongInputs::Truncate => {
                assert_eq!(sent.len(), 1);
                assert!(long.starts_with(&sent[0]));
                assert!(close(&vector, &fake.vector(&sent[0])));
            }
        }
    }
}

#[tokio::test]
async fn vectors_of_another_dimension_fail_with_a_clear_error() {
    let fake = FakeOpenAi::healthy(16).await;
    let prefix = RedisPrefix::new();
    let service = service_with(&fake, &cache_settings(&prefix), |s| s.dimensions = 8);
    let result = service.embed_one("wrong size").await;
    let Err(EmbedError::Permanent { code, reason }) = result else { panic!("{result:?}") };
    assert_eq!(code, "embedding_config");
    assert!(reason.contains("16-dimensional") && reason.contains("dimensions = 8"), "{reason}");
}

#[tokio::test]
async fn a_missing_api_key_stops_the_worker_at_start_naming_the_variable() {
    let mut settings = ragpipe::config::Settings::default();
    settings.embedder.kind = EmbedderKind::OpenAi;
    let message = settings.validate().expect_err("no key").to_string();
    assert!(message.contains("set the OPENAI_API_KEY environment variable"), "{message}");
    settings.embedder.kind = EmbedderKind::Azure;
    let message = settings.validate().expect_err("no key, no endpoint").to_string();
    assert!(message.contains("AZURE_OPENAI_API_KEY"), "{message}");
    assert!(message.contains("embedder.azure_endpoint") && message.contains("embedder.deployment"), "{message}");
    settings.embedder.api_key = Some(SecretString::from("sk-secret\n"));
    let message = settings.validate().expect_err("bad key characters").to_string();
    assert!(message.contains("cannot be sent in an HTTP header") && !message.contains("sk-secret"), "{message}");
    let debug = format!("{:?}", settings.embedder);
    assert!(!debug.contains("sk-secret"), "keys never print: {debug}");
}

#[tokio::test]
async fn a_reply_that_is_not_an_embeddings_response_points_at_the_base_url() {
    let page = script(|_| Some(wiremock::ResponseTemplate::new(200).set_body_string("<html>Welcome to nginx!</html>")));
    let fake = FakeOpenAi::start(8, Duration::ZERO, page).await;
    let prefix = RedisPrefix::new();
    let service = service_with(&fake, &cache_settings(&prefix), |_| {});
    let result = service.embed_one("wrong server").await;
    let Err(EmbedError::Permanent { code, reason }) = result else { panic!("{result:?}") };
    assert_eq!(code, "embedding_config");
    assert!(reason.contains("base_url"), "{reason}");
    assert_eq!(fake.requests().len(), 1, "not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_being_embedded_by_one_call_is_awaited_by_another_not_sent_twice() {
    // Slow answers, so the second call starts while the first is in flight.
    let fake = FakeOpenAi::start(8, Duration::from_millis(300), script(|_| None)).await;
    let prefix = RedisPrefix::new();
    let service = Arc::new(service_with(&fake, &cache_settings(&prefix), |_| {}));
    let shared = "the same disclaimer closes every page of both documents".to_owned();
    let first = vec!["only in the first document".to_owned(), shared.clone()];
    let second = vec![shared.clone(), "only in the second document".to_owned()];
    let (a, b) = tokio::join!(service.embed(&first), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        service.embed(&second).await
    });
    assert_eq!(a[1], b[0], "both calls got the shared text's vector");
    assert!(a.iter().chain(&b).all(Result::is_ok));
    assert_eq!(fake.inputs().iter().filter(|t| **t == shared).count(), 1, "sent once: {:?}", fake.inputs());
    assert_eq!(fake.inputs().len(), 3);

    // A call cancelled mid-flight does not strand a call waiting for the texts it claimed.
    let claimed = vec!["claimed by a call that is then cancelled".to_owned()];
    let (cancelled, waiter) =
        tokio::join!(tokio::time::timeout(Duration::from_millis(100), service.embed(&claimed)), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            service.embed(&claimed).await
        });
    assert!(cancelled.is_err(), "the first call was cut short");
    assert!(waiter[0].is_ok(), "the waiting call embedded the text itself: {waiter:?}");
}
