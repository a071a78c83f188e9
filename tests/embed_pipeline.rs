//! End to end with a remote embedder: uploads through real RabbitMQ, PostgreSQL and Redis, the
//! worker configured with `kind = "openai"` against a fake OpenAI server.

mod common;
mod embed_common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestEnv, failed, ingest, ingested};
use embed_common::{FakeOpenAi, Script, tokens};
use lapin::options::BasicGetOptions;
use ragpipe::client;
use ragpipe::messages::QueryRequest;
use ragpipe::worker::Role;
use sqlx::Row;

/// A document of `n` paragraphs of about 13 to 37 tokens.
fn document(name: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("{name} paragraph {i}: {}", "the tide turns at the harbour wall ".repeat(1 + (i * 3) % 4)))
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn env_with(fake: &FakeOpenAi, env: &mut TestEnv) {
    fake.configure(&mut env.settings.embedder);
    env.settings.chunk.max_tokens = 60;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_of_many_documents_share_batches_cut_exactly_at_count_and_token_limits() {
    let fake = FakeOpenAi::healthy(16).await;
    let mut env = TestEnv::new().await;
    env_with(&fake, &mut env);
    env.settings.chunk.max_tokens = 40;
    let e = &mut env.settings.embedder;
    e.batch_size = 5;
    e.max_tokens_per_request = 150;
    e.max_input_tokens = 100;
    // One request at a time, so requests reach the server in the order the stage cut them; a
    // long wait, so only count and tokens close a batch (except the very last).
    e.max_concurrent_requests = 1;
    e.max_wait_ms = 2000;
    e.send_when_idle = false;
    let worker = env.start_worker(&[Role::Ingest]).await;
    let broker = env.queue().await;
    let uploads: Vec<_> = (0..6)
        .map(|d| {
            env.upload_file(&env.write(&format!("doc{d}.txt"), document(&format!("doc{d}"), 7).as_bytes()), "batches")
        })
        .collect();
    let outcomes = ingest(&broker, &uploads).await;
    let chunks: i64 = uploads.iter().map(|u| ingested(&outcomes[&u.upload_id]).chunks).sum();

    let requests: Vec<Vec<String>> = fake.requests().into_iter().map(|r| r.inputs).collect();
    let shape: Vec<(usize, usize)> = requests.iter().map(|r| (r.len(), r.iter().map(|t| tokens(t)).sum())).collect();
    eprintln!("requests (inputs, tokens): {shape:?}");
    assert_eq!(requests.iter().map(Vec::len).sum::<usize>() as i64, chunks, "every chunk embedded exactly once");
    let cost = |r: &[String]| r.iter().map(|t| tokens(t)).sum::<usize>();
    for (i, pair) in requests.windows(2).enumerate() {
        let (this, next) = (&pair[0], &pair[1]);
        assert!(
            this.len() <= 5 && cost(this) <= 150,
            "request {i} over a limit: {} inputs, {} tokens",
            this.len(),
            cost(this)
        );
        assert!(
            this.len() == 5 || cost(this) + tokens(&next[0]) > 150,
            "request {i} was cut early: {} inputs, {} tokens, next input {} tokens",
            this.len(),
            cost(this),
            tokens(&next[0])
        );
    }
    assert!(requests.iter().any(|r| r.len() == 5), "some batches close by count");
    assert!(requests.iter().any(|r| r.len() < 5 && cost(r) > 100), "some batches close by tokens");
    let documents_in = |r: &Vec<String>| {
        r.iter().map(|t| t.split(' ').next().unwrap_or("")).collect::<std::collections::HashSet<_>>().len()
    };
    assert!(requests.iter().any(|r| documents_in(r) > 1), "batches span documents");

    // Model id and dimension are stored with every chunk.
    let pool = env.pool().await;
    let row = sqlx::query("SELECT embedding_model, embedding_dimensions FROM collections WHERE name = 'batches'")
        .fetch_one(&pool)
        .await
        .expect("collection");
    assert_eq!(row.get::<String, _>("embedding_model"), embed_common::MODEL);
    assert_eq!(row.get::<i32, _>("embedding_dimensions"), 16);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_quota_fails_the_document_with_a_reason_for_the_operator_and_dead_letters_it() {
    let fake = FakeOpenAi::start(16, Duration::ZERO, Arc::new(|_| Some(embed_common::quota_exhausted()))).await;
    let mut env = TestEnv::new().await;
    env_with(&fake, &mut env);
    let worker = env.start_worker(&[Role::Ingest]).await;
    let broker = env.queue().await;
    let upload = env.upload_file(&env.write("broke.txt", document("broke", 3).as_bytes()), "quota");
    let outcomes = ingest(&broker, std::slice::from_ref(&upload)).await;
    let event = failed(&outcomes[&upload.upload_id]);
    assert_eq!(event.code, "embedding_quota");
    assert!(!event.retryable);

    let pool = env.pool().await;
    let row = sqlx::query("SELECT status, failure_reason FROM documents WHERE id = $1")
        .bind(event.document_id.expect("document row"))
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(row.get::<String, _>("status"), "failed");
    let reason: String = row.get("failure_reason");
    assert!(reason.contains("add credit") && reason.contains("OPENAI_API_KEY"), "{reason}");

    let conn = lapin::Connection::connect(&common::amqp_url(), Default::default()).await.expect("amqp");
    let channel = conn.create_channel().await.expect("channel");
    let dead = channel
        .basic_get(env.settings.broker.dead_letter_queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic_get")
        .expect("the upload is dead-lettered");
    let headers = dead.delivery.properties.headers().clone().expect("headers");
    let code = headers.inner().get("x-ragpipe-code").and_then(|v| v.as_long_string()).expect("code").to_string();
    assert_eq!(code, "embedding_quota");
    assert_eq!(fake.requests().len(), 1, "a permanent failure is not retried");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_the_model_refuses_fails_only_its_own_document() {
    let refuse: Script =
        Arc::new(|r| r.inputs.iter().any(|t| t.contains("OVERSIZED")).then(embed_common::context_length));
    let fake = FakeOpenAi::start(16, Duration::ZERO, refuse).await;
    let mut env = TestEnv::new().await;
    env_with(&fake, &mut env);
    env.settings.embedder.batch_size = 32;
    env.settings.embedder.max_wait_ms = 1000;
    env.settings.embedder.send_when_idle = false;
    let worker = env.start_worker(&[Role::Ingest]).await;
    let broker = env.queue().await;
    let good_a = env.upload_file(&env.write("a.txt", document("alpha", 4).as_bytes()), "mixed");
    let bad = env
        .upload_file(&env.write("bad.txt", format!("{}\n\nOVERSIZED table", document("bravo", 3)).as_bytes()), "mixed");
    let good_c = env.upload_file(&env.write("c.txt", document("charlie", 4).as_bytes()), "mixed");
    let outcomes = ingest(&broker, &[good_a.clone(), bad.clone(), good_c.clone()]).await;
    ingested(&outcomes[&good_a.upload_id]);
    ingested(&outcomes[&good_c.upload_id]);
    let event = failed(&outcomes[&bad.upload_id]);
    assert_eq!(event.code, "input_too_long");
    let first = &fake.requests()[0].inputs;
    assert!(
        first.iter().any(|t| t.contains("OVERSIZED"))
            && first.iter().any(|t| t.starts_with("alpha") || t.starts_with("charlie")),
        "the bad input shared its first request with other documents: {first:?}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_retries_run_out_is_requeued_and_ingested_on_redelivery() {
    // The API fails everything for 1.6 s after the first request; one delivery retries for 1 s
    // only, so the document must come back through the queue to succeed.
    let outage_start: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let outage = outage_start.clone();
    let script: Script = Arc::new(move |r| {
        let start = *outage.lock().expect("lock").get_or_insert(r.at);
        (r.at - start < Duration::from_millis(1600)).then(embed_common::server_error)
    });
    let fake = FakeOpenAi::start(16, Duration::ZERO, script).await;
    let mut env = TestEnv::new().await;
    env_with(&fake, &mut env);
    env.settings.embedder.max_elapsed_secs = 1;
    env.settings.embedder.initial_backoff_ms = 50;
    env.settings.embedder.max_backoff_ms = 100;
    let worker = env.start_worker(&[Role::Ingest]).await;
    let broker = env.queue().await;
    let upload = env.upload_file(&env.write("patient.txt", document("patient", 2).as_bytes()), "retry");
    let outcomes = ingest(&broker, std::slice::from_ref(&upload)).await;
    ingested(&outcomes[&upload.upload_id]);

    let seen = fake.requests();
    let longest_gap = seen.windows(2).map(|w| w[1].at - w[0].at).max().unwrap_or_default();
    // Backoff gaps stay under 200 ms (100 ms plus jitter); the requeue delay is 500 ms.
    assert!(longest_gap >= Duration::from_millis(400), "no requeue pause between attempts: {longest_gap:?}");
    assert!(seen.len() >= 6, "retried within the first delivery: {} requests", seen.len());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_refuses_vectors_of_another_model() {
    let fake = FakeOpenAi::healthy(16).await;
    let mut env = TestEnv::new().await;
    env_with(&fake, &mut env);
    let worker = env.start_worker(&[Role::Ingest]).await;
    let broker = env.queue().await;
    let first = env.upload_file(&env.write("one.txt", document("one", 2).as_bytes()), "models");
    ingested(&ingest(&broker, std::slice::from_ref(&first)).await[&first.upload_id]);
    worker.stop().await;

    env.settings.embedder.model = "another-model".into();
    let worker = env.start_worker(&[Role::Ingest]).await;
    let second = env.upload_file(&env.write("two.txt", document("two", 2).as_bytes()), "models");
    let outcomes = ingest(&broker, std::slice::from_ref(&second)).await;
    let event = failed(&outcomes[&second.upload_id]);
    assert_eq!(event.code, "model_mismatch");
    assert!(
        event.reason.contains("fake-embed")
            && event.reason.contains("another-model")
            && event.reason.contains("reindex"),
        "{}",
        event.reason
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_chunks_and_repeated_queries_reach_the_api_once() {
    // Enough dimensions for the hash vectors to rank by shared words.
    let fake = FakeOpenAi::healthy(256).await;
    let mut env = TestEnv::new().await;
    env_with(&fake, &mut env);
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let broker = env.queue().await;
    // Paragraphs of 30-40 tokens: two never fit one 60-token chunk, so the disclaimer is a chunk of its own.
    let shared = format!(
        "Every page ends with the same disclaimer: {}",
        "check the tide tables and mind the harbour wall ".repeat(3)
    );
    let shared = shared.trim();
    let alpha = format!("Alpha notes on ferries: {}", "the ferry leaves the pier at noon ".repeat(4));
    let bravo = format!("Bravo notes on lighthouses: {}", "the lighthouse lamp is trimmed at dusk ".repeat(4));
    let a = env.upload_file(&env.write("a.txt", format!("{alpha}\n\n{shared}").as_bytes()), "cache");
    let b = env.upload_file(&env.write("b.txt", format!("{bravo}\n\n{shared}").as_bytes()), "cache");
    let outcomes = ingest(&broker, std::slice::from_ref(&a)).await;
    ingested(&outcomes[&a.upload_id]);
    let outcomes = ingest(&broker, std::slice::from_ref(&b)).await;
    ingested(&outcomes[&b.upload_id]);
    assert_eq!(
        fake.inputs().iter().filter(|t| t.as_str() == shared).count(),
        1,
        "the shared chunk came from the cache"
    );

    let request = QueryRequest::new("Which notes mention lighthouses?", common::name("cache"), 2);
    for _ in 0..2 {
        let reply = client::query(broker.requests.as_ref(), &request, Duration::from_secs(30)).await.expect("reply");
        assert_eq!(reply["chunks"][0]["filename"], "b.txt", "{reply}");
    }
    assert_eq!(
        fake.inputs().iter().filter(|t| t.as_str() == request.query).count(),
        1,
        "the second query hit the cache"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_gets_an_error_reply_when_the_api_keeps_failing_not_silence() {
    // A healthy API for the ingest, then one that answers every request with a 500.
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&failing);
    let script: Script =
        Arc::new(move |_| flag.load(std::sync::atomic::Ordering::SeqCst).then(embed_common::server_error));
    let fake = FakeOpenAi::start(16, Duration::ZERO, script).await;
    let mut env = TestEnv::new().await;
    env_with(&fake, &mut env);
    env.settings.query.embed_timeout_secs = 1;
    env.settings.embedder.initial_backoff_ms = 100;
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let broker = env.queue().await;
    let upload = env.upload_file(&env.write("a.txt", document("alpha", 2).as_bytes()), "outage");
    ingested(&ingest(&broker, std::slice::from_ref(&upload)).await[&upload.upload_id]);

    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let request = QueryRequest::new("a question nobody asked before", common::name("outage"), 1);
    let started = Instant::now();
    let reply = client::query(broker.requests.as_ref(), &request, Duration::from_secs(30))
        .await
        .expect("a reply, not a client timeout");
    assert_eq!(reply["error"]["code"], "embedding_timeout", "{reply}");
    assert!(started.elapsed() < Duration::from_secs(10), "answered after {:?}", started.elapsed());
    assert!(fake.requests().len() > 2, "the API was retried within the limit");
    worker.stop().await;
}
