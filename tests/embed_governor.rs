//! The rate governor shared through the real Redis: two workers (two services, as two
//! processes would have) on one key prefix stay within one budget together; without Redis a
//! worker still keeps its own budget.

mod embed_common;

use std::time::{Duration, Instant};

use embed_common::{FakeOpenAi, RedisPrefix, tokens};
use ragpipe::cache;
use ragpipe::config::{CacheSettings, EmbedderSettings};
use ragpipe::embed::service::EmbeddingService;
use secrecy::SecretString;

fn redis_url() -> String {
    std::env::var("RAGPIPE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn worker(fake: &FakeOpenAi, cache: &CacheSettings, rpm: u64, tpm: u64) -> EmbeddingService {
    let mut settings = EmbedderSettings::default();
    fake.configure(&mut settings);
    settings.batch_size = 1;
    settings.max_concurrent_requests = 4;
    settings.requests_per_minute = rpm;
    settings.tokens_per_minute = tpm;
    EmbeddingService::from_settings(&settings, cache, cache::connect(cache).1).expect("service")
}

/// Checks that by every arrival the cumulative cost stays within burst + rate × elapsed + one
/// request (the last may be granted just as the budget allows it).
fn assert_within_budget(fake: &FakeOpenAi, cost: impl Fn(&[String]) -> f64, burst: f64, per_sec: f64) {
    let seen = fake.requests();
    let start = seen.first().expect("requests").at;
    let mut spent = 0.0;
    for r in &seen {
        let this = cost(&r.inputs);
        spent += this;
        let allowed = burst + per_sec * (r.at - start).as_secs_f64() + this;
        assert!(spent <= allowed, "request {} at {:?}: spent {spent} > allowed {allowed}", r.n, r.at - start);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_sharing_redis_stay_within_one_request_budget() {
    let fake = FakeOpenAi::healthy(8).await;
    let prefix = RedisPrefix::new();
    let cache = CacheSettings {
        url: Some(SecretString::from(redis_url())),
        key_prefix: prefix.0.clone(),
        ..CacheSettings::default()
    };
    // 600/min: a bucket of 10, refilled at 10 per second, for both workers together.
    let (a, b) = (worker(&fake, &cache, 600, 0), worker(&fake, &cache, 600, 0));
    let texts = |w: &str| (0..15).map(|i| format!("worker {w} text {i}")).collect::<Vec<_>>();
    let started = Instant::now();
    let (ta, tb) = (texts("a"), texts("b"));
    let (ra, rb) = tokio::join!(a.embed(&ta), b.embed(&tb));
    assert!(ra.iter().chain(&rb).all(Result::is_ok));
    assert_eq!(fake.requests().len(), 30);
    assert_within_budget(&fake, |_| 1.0, 10.0, 10.0);
    // Alone, each worker's 15 would fit in 0.5 s; together 30 need 2 s.
    assert!(started.elapsed() >= Duration::from_millis(1900), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_sharing_redis_stay_within_one_token_budget() {
    let fake = FakeOpenAi::healthy(8).await;
    let prefix = RedisPrefix::new();
    let cache = CacheSettings {
        url: Some(SecretString::from(redis_url())),
        key_prefix: prefix.0.clone(),
        ..CacheSettings::default()
    };
    // 12,000 tokens/min: 200 per second, bucket of 200; each text is about 40 tokens.
    let (a, b) = (worker(&fake, &cache, 0, 12_000), worker(&fake, &cache, 0, 12_000));
    let texts = |w: &str| (0..10).map(|i| format!("worker {w} text {i} {}", "tide ".repeat(35))).collect::<Vec<_>>();
    let (ta, tb) = (texts("a"), texts("b"));
    let total: usize = ta.iter().chain(&tb).map(|t| tokens(t)).sum();
    let started = Instant::now();
    let (ra, rb) = tokio::join!(a.embed(&ta), b.embed(&tb));
    assert!(ra.iter().chain(&rb).all(Result::is_ok));
    assert_within_budget(&fake, |inputs| inputs.iter().map(|t| tokens(t) as f64).sum(), 200.0, 200.0);
    let floor = Duration::from_secs_f64((total as f64 - 200.0) / 200.0 * 0.95);
    assert!(
        started.elapsed() >= floor,
        "{total} tokens at 200/s after a 200 burst: {:?} < {floor:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_worker_keeps_a_local_budget() {
    let fake = FakeOpenAi::healthy(8).await;
    let down = CacheSettings {
        url: Some(SecretString::from("redis://127.0.0.1:1/0")),
        timeout_ms: 100,
        ..CacheSettings::default()
    };
    let a = worker(&fake, &down, 600, 0);
    let started = Instant::now();
    let texts: Vec<String> = (0..20).map(|i| format!("local text {i}")).collect();
    assert!(a.embed(&texts).await.iter().all(Result::is_ok));
    assert_within_budget(&fake, |_| 1.0, 10.0, 10.0);
    assert!(started.elapsed() >= Duration::from_millis(950), "{:?}", started.elapsed());
}

/// A fake chat server recording when each request arrived.
async fn fake_chat() -> (wiremock::MockServer, std::sync::Arc<std::sync::Mutex<Vec<Instant>>>) {
    use wiremock::{Mock, ResponseTemplate, matchers};
    let server = wiremock::MockServer::start().await;
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = arrivals.clone();
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/v1/chat/completions"))
        .respond_with(move |_: &wiremock::Request| {
            log.lock().expect("log").push(Instant::now());
            ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
            }))
        })
        .mount(&server)
        .await;
    (server, arrivals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_answering_with_an_llm_share_its_request_budget() {
    use ragpipe::llm::{ChatModel, Llm, LlmKind, LlmSettings};
    let (server, arrivals) = fake_chat().await;
    let prefix = RedisPrefix::new();
    let cache = CacheSettings {
        url: Some(SecretString::from(redis_url())),
        key_prefix: prefix.0.clone(),
        ..CacheSettings::default()
    };
    // 600/min: a bucket of 10, refilled at 10 per second, for both workers together.
    let settings = LlmSettings {
        kind: LlmKind::OpenAi,
        base_url: format!("{}/v1", server.uri()),
        requests_per_minute: 600,
        api_key: Some(SecretString::from("test-key")),
        ..LlmSettings::default()
    };
    let (a, b) = (ChatModel::new(&settings, &cache).expect("a"), ChatModel::new(&settings, &cache).expect("b"));
    let started = Instant::now();
    async fn ask(model: &ChatModel) -> Vec<Result<ragpipe::llm::Completion, ragpipe::embed::EmbedError>> {
        futures::future::join_all(
            (0..15).map(|i| async move { model.complete("system", &format!("question {i}")).await }),
        )
        .await
    }
    let (ra, rb) = tokio::join!(ask(&a), ask(&b));
    assert!(ra.iter().chain(&rb).all(Result::is_ok));
    let seen = arrivals.lock().expect("log").clone();
    assert_eq!(seen.len(), 30);
    let start = seen[0];
    for (n, at) in seen.iter().enumerate() {
        let allowed = 10.0 + 10.0 * (*at - start).as_secs_f64() + 1.0;
        assert!((n + 1) as f64 <= allowed, "request {n} at {:?}: over the shared budget", *at - start);
    }
    // Alone, each worker's 15 would fit in 0.5 s; together 30 need 2 s.
    assert!(started.elapsed() >= Duration::from_millis(1900), "{:?}", started.elapsed());
}
