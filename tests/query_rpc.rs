//! Queries over request/reply (a plain AMQP client over RabbitMQ's direct reply-to; in-process
//! with the embedded queue), and index snapshots across a worker restart, on both backends.

mod common;

use std::time::Duration;

use common::{TestEnv, ingest, ingested, name};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use ragpipe::client;
use ragpipe::messages::QueryRequest;
use ragpipe::worker::Role;

on_both_backends!(
    bad_requests_get_error_replies_and_every_query_is_logged,
    a_restarted_worker_answers_from_its_snapshot_without_reingesting,
    a_query_worker_in_another_process_role_sees_new_documents_through_events,
    answers_without_an_llm_quote_the_passages_with_checked_citations,
    llm_answers_are_grounded_and_their_citations_checked,
    llm_rate_limits_are_waited_out_and_quota_errors_get_a_clear_code,
    replies_carry_query_ids_and_feedback_is_stored_beside_the_log,
    cached_results_follow_every_change_of_the_collection,
    filters_and_several_collections_select_before_ranking,
    lexical_and_hybrid_modes_rank_by_bm25_and_fusion_and_follow_deletes,
    streamed_answers_arrive_in_order_and_reassemble,
    deadlines_skip_expired_requests_and_abandon_slow_answers,
    hierarchical_mode_takes_its_chunks_from_the_best_documents,
);

/// Sends `body` to the query queue from a plain lapin client using direct reply-to and returns
/// the reply's correlation id and body.
async fn raw_request(queue: &str, body: &[u8], correlation_id: &str) -> (Option<String>, serde_json::Value) {
    let mut client = PlainClient::new(queue).await;
    client.send(correlation_id, body, None).await;
    let reply = client.next().await;
    client.close().await;
    ((!reply.correlation_id.is_empty()).then_some(reply.correlation_id), reply.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_amqp_client_gets_a_correlated_reply_over_direct_reply_to() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let path = env.write("tides.txt", b"Spring tides at Hollow Point reach four metres.\n\nNeap tides stay under two.");
    let upload = env.upload_file(&path, "rpc");
    let outcomes = ingest(&worker.queue().await, std::slice::from_ref(&upload)).await;
    ingested(&outcomes[&upload.upload_id]);

    let queue = env.settings.broker.query_queue.clone();
    let request =
        br#"{"v":1,"query":"How high do spring tides reach at Hollow Point?","collection":"rpc","top_k":2,"mode":"dense"}"#;
    let (correlation, reply) = raw_request(&queue, request, "corr-42").await;
    assert_eq!(correlation.as_deref(), Some("corr-42"));
    assert_eq!(reply["v"], 1);
    let first = &reply["chunks"][0];
    assert_eq!(first["filename"], "tides.txt");
    assert!(first["text"].as_str().expect("text").contains("four metres"));
    assert!(first["score"].as_f64().expect("score") > 0.3, "a cosine in dense mode: {reply}");
    assert!(reply["timings_ms"]["search"].is_number());

    worker.stop().await;
}

/// The file names of a reply's chunks, in order.
fn files(reply: &serde_json::Value) -> Vec<String> {
    reply["chunks"].as_array().into_iter().flatten().filter_map(|c| c["filename"].as_str().map(String::from)).collect()
}

/// Sends `body` as a request and decodes the reply.
async fn request_raw(queue: &ragpipe::queue::Queue, body: &[u8]) -> serde_json::Value {
    let reply = queue.requests.request(body, Duration::from_secs(30)).await.expect("a reply");
    serde_json::from_slice(&reply).expect("reply is JSON")
}

async fn bad_requests_get_error_replies_and_every_query_is_logged(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let path = env.write("tides.txt", b"Spring tides at Hollow Point reach four metres.");
    let upload = env.upload_file(&path, "rpc");
    ingested(&ingest(&queue, std::slice::from_ref(&upload)).await[&upload.upload_id]);
    let reply = request_raw(&queue, br#"{"v":1,"query":"spring tides","collection":"rpc","top_k":2}"#).await;
    assert_eq!(reply["chunks"][0]["filename"], "tides.txt", "{reply}");

    // Bad requests get an error reply, never silence.
    for (body, code) in [
        (&b"{not json"[..], "malformed"),
        (br#"{"v":7,"query":"x"}"#, "unsupported_version"),
        (br#"{"v":1,"query":"x","collection":"a/b"}"#, "invalid_collection"),
        (br#"{"v":1,"query":"x","collection":"nope"}"#, "unknown_collection"),
        (br#"{"v":1,"query":"   ","collection":"rpc"}"#, "invalid_request"),
        (br#"{"v":1,"query":"tides","collection":"rpc","top_k":100000}"#, "invalid_request"),
    ] {
        let reply = request_raw(&queue, body).await;
        assert_eq!(reply["error"]["code"], code, "{}: {reply}", String::from_utf8_lossy(body));
    }

    // Every query is logged (after the reply, off the reply path).
    let logged = wait_for_count(&env, "SELECT count(*) FROM query_log", 7).await;
    assert_eq!(logged, 7);
    worker.stop().await;
}

/// Waits (on the store, up to 5 s) until `sql` counts `want`; returns the last count.
async fn wait_for_count(env: &TestEnv, sql: &str, want: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = env.count(sql).await;
        if n >= want || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::task::yield_now().await;
    }
}

async fn a_restarted_worker_answers_from_its_snapshot_without_reingesting(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let path = env.write("orchard.md", b"# Orchard\n\nThe quince trees behind the mill flower in late April.\n");
    let upload = env.upload_file(&path, "orchard");
    let outcomes = ingest(&worker.queue().await, std::slice::from_ref(&upload)).await;
    let chunks = ingested(&outcomes[&upload.upload_id]).chunks as usize;
    worker.stop().await;

    let manifest = env.settings.index_dir().join("orchard").join("manifest.json");
    assert!(manifest.exists(), "the stopping worker writes a snapshot");

    let worker = env.start_worker(&[Role::Query]).await;
    let queue = worker.queue().await;
    let request = QueryRequest::new("When do the quince trees flower?", name("orchard"), 1);
    let reply = client::query(queue.requests.as_ref(), &request, Duration::from_secs(30)).await.expect("reply");
    assert_eq!(reply["chunks"][0]["filename"], "orchard.md", "{reply}");
    let stats = worker.services.indexes.stats("orchard").await.expect("index open");
    assert!(stats.from_snapshot, "loaded from the snapshot: {stats:?}");
    assert_eq!(stats.caught_up, 0, "nothing re-read from the store: {stats:?}");
    assert_eq!(stats.vectors, chunks);
    let depths = queue.uploads.depths().await.expect("depths");
    assert_eq!(depths.ingest, 0, "nothing was re-ingested");
    worker.stop().await;
}

async fn a_query_worker_in_another_process_role_sees_new_documents_through_events(env: TestEnv) {
    // Two separate workers: one ingests, the other only answers queries and follows events.
    let ingester = env.start_worker(&[Role::Ingest]).await;
    let querier = env.start_worker(&[Role::Query]).await;
    let (uploads, queries) = (ingester.queue().await, querier.queue().await);
    let first = env.upload_file(&env.write("one.txt", b"Copper kettles hang above the forge."), "follow");
    ingest(&uploads, std::slice::from_ref(&first)).await;
    // Open the index in the query worker before the second document exists.
    let request = |q: &str| QueryRequest::new(q, name("follow"), 1);
    let ask = |q: &'static str| {
        let queries = queries.clone();
        async move { client::query(queries.requests.as_ref(), &request(q), Duration::from_secs(30)).await.expect("reply") }
    };
    assert_eq!(ask("copper kettles").await["chunks"][0]["filename"], "one.txt");

    let second = env.upload_file(&env.write("two.txt", b"Silver bells ring in the chapel tower."), "follow");
    ingest(&uploads, std::slice::from_ref(&second)).await;
    // The follower catches up when the event reaches it; wait for that, boundedly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let found = loop {
        if ask("silver bells chapel tower").await["chunks"][0]["filename"] == "two.txt" {
            break true;
        }
        if tokio::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(found, "the query worker caught up with the new document");
    ingester.stop().await;
    querier.stop().await;
}

async fn answers_without_an_llm_quote_the_passages_with_checked_citations(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let tides = env.write(
        "tides.txt",
        b"Spring tides at Hollow Point reach four metres. The harbour wall was rebuilt in 1921 after a storm.",
    );
    let mill = env.write("mill.md", b"# Mill\n\nThe quince trees behind the mill flower in late April.\n");
    let uploads = [env.upload_file(&tides, "answers"), env.upload_file(&mill, "answers")];
    let outcomes = ingest(&queue, &uploads).await;
    for upload in &uploads {
        ingested(&outcomes[&upload.upload_id]);
    }
    let body = br#"{"v":1,"query":"How high do the spring tides reach at Hollow Point?","collection":"answers","top_k":2,"answer":true}"#;
    let reply = request_raw(&queue, body).await;
    let answer = &reply["answer"];
    assert_eq!(answer["kind"], "extractive", "{reply}");
    assert_eq!(answer["text"], "Spring tides at Hollow Point reach four metres [1].", "{reply}");
    assert_eq!(answer["sources"][0]["n"], 1);
    assert_eq!(answer["sources"][0]["filename"], "tides.txt");
    assert_eq!(answer["sources"][0]["chunk_id"], reply["chunks"][0]["chunk_id"], "cites the chunk it quotes");
    assert_eq!(answer["sources"].as_array().map(Vec::len), Some(1), "only what it cites: {reply}");
    assert_eq!(answer["citations_removed"]["unknown"], 0);
    assert!(answer["context_tokens"].as_u64().is_some_and(|t| t > 10), "{reply}");
    assert!(reply["timings_ms"]["answer"].is_number());
    // Without `answer`, no answer.
    let reply = request_raw(&queue, br#"{"v":1,"query":"spring tides","collection":"answers","top_k":2}"#).await;
    assert!(reply.get("answer").is_none(), "{reply}");
    worker.stop().await;
}

type ChatLog = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// A fake OpenAI chat server (wiremock): the first request gets a 503 with `Retry-After: 0`
/// (the retry path), then every request gets `answer`; requests are recorded.
async fn fake_chat(answer: &str) -> (wiremock::MockServer, ChatLog) {
    fake_chat_scripted(answer, |n| {
        (n == 1).then(|| wiremock::ResponseTemplate::new(503).insert_header("retry-after", "0"))
    })
    .await
}

/// A fake chat server whose `script` may fail request `n` (1-based) with a response of its own.
async fn fake_chat_scripted(
    answer: &str,
    script: impl Fn(usize) -> Option<wiremock::ResponseTemplate> + Send + Sync + 'static,
) -> (wiremock::MockServer, ChatLog) {
    use wiremock::{Mock, ResponseTemplate, matchers};
    let server = wiremock::MockServer::start().await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let answer = answer.to_owned();
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/v1/chat/completions"))
        .respond_with(move |request: &wiremock::Request| {
            let body: serde_json::Value = serde_json::from_slice(&request.body).expect("JSON request");
            let stream = body["stream"] == true;
            let n = {
                let mut log = log.lock().expect("log");
                log.push(body);
                log.len()
            };
            if let Some(failure) = script(n) {
                return failure;
            }
            if stream {
                return ResponseTemplate::new(200).set_body_raw(sse_chat(&answer), "text/event-stream");
            }
            ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": 1200, "completion_tokens": 40, "total_tokens": 1240}
            }))
        })
        .mount(&server)
        .await;
    (server, seen)
}

/// `answer` as an OpenAI chat completion stream: a chunk per word, then the usage, then `[DONE]`.
fn sse_chat(answer: &str) -> String {
    let chunk = |choices: serde_json::Value, usage: serde_json::Value| {
        let event = serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
            "choices": choices, "usage": usage,
        });
        format!("data: {event}\n\n")
    };
    let mut body = String::new();
    for piece in answer.split_inclusive(' ') {
        body += &chunk(
            serde_json::json!([{"index": 0, "delta": {"content": piece}, "finish_reason": null}]),
            serde_json::Value::Null,
        );
    }
    body += &chunk(serde_json::json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]), serde_json::Value::Null);
    body += &chunk(
        serde_json::json!([]),
        serde_json::json!({"prompt_tokens": 1200, "completion_tokens": 40, "total_tokens": 1240}),
    );
    body + "data: [DONE]\n\n"
}

async fn llm_answers_are_grounded_and_their_citations_checked(mut env: TestEnv) {
    let (server, seen) = fake_chat(
        "Spring tides at Hollow Point reach four metres [1][4]. The harbour wall dates from 1921 [1]. \
         Quinces are a citrus fruit [1].",
    )
    .await;
    env.settings.llm = ragpipe::config::LlmSettings {
        kind: ragpipe::config::LlmKind::OpenAi,
        base_url: format!("{}/v1", server.uri()),
        model: "gpt-4o-mini".into(),
        input_price_per_1k: 0.5,
        output_price_per_1k: 2.0,
        initial_backoff_ms: 1,
        api_key: Some(secrecy::SecretString::from("test-key")),
        ..Default::default()
    };
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let tides = env.write(
        "tides.txt",
        b"Spring tides at Hollow Point reach four metres. The harbour wall was rebuilt in 1921 after a storm.",
    );
    let upload = env.upload_file(&tides, "grounded");
    ingested(&ingest(&queue, std::slice::from_ref(&upload)).await[&upload.upload_id]);
    caught_up(&worker, "grounded").await;
    let body = br#"{"v":1,"query":"How high are the spring tides?","collection":"grounded","top_k":3,"answer":true}"#;
    let reply = request_raw(&queue, body).await;
    let answer = &reply["answer"];
    assert_eq!(answer["kind"], "generated", "{reply}");
    assert_eq!(
        answer["text"],
        "Spring tides at Hollow Point reach four metres [1]. The harbour wall dates from 1921 [1]. \
         Quinces are a citrus fruit.",
        "[4] is not in the context; chunk 1 says nothing of quinces: {reply}"
    );
    assert_eq!(answer["citations_removed"], serde_json::json!({"unknown": 1, "unsupported": 1}));
    assert_eq!(answer["sources"][0]["filename"], "tides.txt");
    assert_eq!(answer["sources"].as_array().map(Vec::len), Some(1));
    assert_eq!(answer["usage"]["input_tokens"], 1200);
    assert_eq!(answer["usage"]["output_tokens"], 40);
    assert!((answer["usage"]["cost_usd"].as_f64().unwrap_or_default() - 0.68).abs() < 1e-9, "{reply}");

    // The model was asked once more after the 503, with the grounding prompt and the numbered
    // context; the key went in the header, never in the body.
    let seen_log = seen;
    let seen = seen_log.lock().expect("log").clone();
    assert_eq!(seen.len(), 2, "one retry after the 503");
    let messages = &seen[1]["messages"];
    assert!(messages[0]["content"].as_str().is_some_and(|p| p.contains("only the numbered context")), "{messages}");
    let user = messages[1]["content"].as_str().unwrap_or_default();
    assert!(
        user.contains("[1] tides.txt\nSpring tides at Hollow Point")
            && user.ends_with("Question: How high are the spring tides?"),
        "{user}"
    );
    assert!(!seen[1].to_string().contains("test-key"));

    // The same question again: the whole response comes from the cache, with no model call.
    let again = request_raw(&queue, body).await;
    assert_eq!(again["cached"], true, "{again}");
    assert_eq!(again["cache_layer"], "response", "{again}");
    assert_eq!(again["answer"], reply["answer"]);
    assert_eq!(seen_count(&seen_log), 2, "no second model call");
    worker.stop().await;
}

/// Brings the worker's index up to the store's log, as its event follower does on the
/// `document.*` events (called directly here so the test does not race the follower).
async fn caught_up(worker: &common::TestWorker, collection: &str) {
    worker.services.indexes.catch_up(collection).await.expect("catch up");
}

async fn cached_results_follow_every_change_of_the_collection(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let first = env.write("heron.txt", b"The grey heron nests in tall trees beside the lake.");
    let upload = env.upload_file(&first, "cached");
    ingested(&ingest(&queue, std::slice::from_ref(&upload)).await[&upload.upload_id]);
    caught_up(&worker, "cached").await;
    let body = br#"{"v":1,"query":"where does the heron nest?","collection":"cached","top_k":5}"#;
    let fresh = request_raw(&queue, body).await;
    assert_eq!((fresh["cached"].as_bool(), files(&fresh)), (Some(false), vec!["heron.txt".to_owned()]), "{fresh}");
    let again = request_raw(&queue, body).await;
    assert_eq!(again["cached"], true, "{again}");
    assert_eq!(again["cache_layer"], "retrieval", "{again}");
    assert_eq!(again["chunks"], fresh["chunks"]);

    // A new document moves the log: the next query misses and sees it.
    let second = env.write("egret.txt", b"The little egret also nests in trees by the lake, near the heron.");
    let upload2 = env.upload_file(&second, "cached");
    ingested(&ingest(&queue, std::slice::from_ref(&upload2)).await[&upload2.upload_id]);
    caught_up(&worker, "cached").await;
    let after_add = request_raw(&queue, body).await;
    assert_eq!(after_add["cached"], false, "{after_add}");
    assert_eq!(files(&after_add).len(), 2, "{after_add}");

    // A delete does too: the deleted document is never served from the cache.
    let store = env.store().await;
    let target = ragpipe::store::DocumentRef::UploadId(upload.upload_id.clone());
    ragpipe::ingest::delete::delete_and_announce(store.as_ref(), queue.events.as_ref(), &target, None)
        .await
        .expect("delete");
    let after_delete = request_raw(&queue, body).await;
    assert_eq!(files(&after_delete), vec!["egret.txt".to_owned()], "{after_delete}");
    assert_eq!(after_delete["cached"], false);
    worker.stop().await;
}

fn seen_count(log: &std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>) -> usize {
    log.lock().expect("log").len()
}

async fn filters_and_several_collections_select_before_ranking(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let docs = [
        ("keys.md", "f-a", serde_json::json!({"team": "ops", "lang": "en"}), "Rotate the signing keys every quarter."),
        (
            "keys-de.md",
            "f-a",
            serde_json::json!({"team": "ops", "lang": "de"}),
            "Rotate the signing keys every quarter, German copy.",
        ),
        ("lunch.md", "f-a", serde_json::json!({"team": "dev"}), "Lunch is served at noon in the canteen."),
        ("rotation.md", "f-b", serde_json::json!({"team": "ops"}), "Key rotation runbook: rotate the signing keys."),
        ("secret.md", "f-c", serde_json::json!({"team": "ops"}), "Rotate the signing keys every quarter."),
    ];
    let mut uploads = Vec::new();
    for (file, collection, metadata, text) in &docs {
        let path = env.write(file, text.as_bytes());
        let mut upload = env.upload_file(&path, collection);
        upload.metadata = serde_json::from_value(metadata.clone()).expect("metadata");
        uploads.push(upload);
    }
    let outcomes = ingest(&queue, &uploads).await;
    for upload in &uploads {
        ingested(&outcomes[&upload.upload_id]);
    }
    let ask = |body: serde_json::Value| {
        let queue = &queue;
        async move { request_raw(queue, body.to_string().as_bytes()).await }
    };
    let query = "rotate the signing keys";

    // The filter excludes the two best matches: the search deepens until it finds one that passes.
    let reply =
        ask(serde_json::json!({"v": 1, "query": query, "collection": "f-a", "top_k": 1, "filters": {"team": "dev"}}))
            .await;
    assert_eq!(files(&reply), vec!["lunch.md"], "{reply}");
    let reply = ask(serde_json::json!({"v": 1, "query": query, "collection": "f-a", "top_k": 5, "filters": {"lang": {"in": ["de"]}}})).await;
    assert_eq!(files(&reply), vec!["keys-de.md"], "{reply}");
    let reply = ask(serde_json::json!({"v": 1, "query": query, "collection": "f-a", "top_k": 5, "filters": {"team": ["ops", "dev"], "lang": "en"}})).await;
    assert_eq!(files(&reply), vec!["keys.md"], "{reply}");

    // Several collections: merged by score, each chunk says where it came from, and nothing of a
    // collection that was not asked for.
    let reply = ask(serde_json::json!({"v": 1, "query": query, "collections": ["f-a", "f-b"], "top_k": 10})).await;
    let chunks = reply["chunks"].as_array().cloned().unwrap_or_default();
    assert_eq!(chunks.len(), 4, "{reply}");
    assert!(chunks.iter().all(|c| c["collection"] == "f-a" || c["collection"] == "f-b"), "{reply}");
    assert!(chunks.iter().any(|c| c["filename"] == "rotation.md" && c["collection"] == "f-b"), "{reply}");
    let scores: Vec<f64> = chunks.iter().filter_map(|c| c["score"].as_f64()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first across collections: {scores:?}");
    let reply = ask(serde_json::json!({"v": 1, "query": query, "collections": ["f-a", "f-b"], "top_k": 10, "filters": {"team": "ops"}})).await;
    assert_eq!(files(&reply).len(), 3, "{reply}");

    for (body, code) in [
        (serde_json::json!({"v": 1, "query": query, "collection": "f-a", "collections": ["f-b"]}), "invalid_request"),
        (serde_json::json!({"v": 1, "query": query, "collections": ["f-a", "nope"]}), "unknown_collection"),
        (serde_json::json!({"v": 1, "query": query, "collections": []}), "invalid_request"),
        (
            serde_json::json!({"v": 1, "query": query, "collection": "f-a", "filters": {"lang": {"gt": 1}}}),
            "invalid_request",
        ),
    ] {
        let reply = ask(body.clone()).await;
        assert_eq!(reply["error"]["code"], code, "{body}: {reply}");
    }
    worker.stop().await;
}

async fn lexical_and_hybrid_modes_rank_by_bm25_and_fusion_and_follow_deletes(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let docs = [
        ("arch.txt", "The zygomatic arch forms the prominence of the cheek."),
        ("face.txt", "Cheek bones shape the face of mammals; the arch of the cheek varies."),
        ("bread.txt", "Sourdough bread rises slowly overnight."),
    ];
    let mut uploads = Vec::new();
    for (file, text) in &docs {
        let path = env.write(file, text.as_bytes());
        uploads.push(env.upload_file(&path, "modes"));
    }
    let outcomes = ingest(&queue, &uploads).await;
    for upload in &uploads {
        ingested(&outcomes[&upload.upload_id]);
    }
    let ask = |mode: &str, query: &str| {
        let body = serde_json::json!({"v": 1, "query": query, "collection": "modes", "top_k": 3, "mode": mode});
        let queue = &queue;
        async move { request_raw(queue, body.to_string().as_bytes()).await }
    };

    // BM25: only chunks sharing a (stemmed) term, the rare term first.
    let reply = ask("lexical", "zygomatic cheeks").await;
    assert_eq!(files(&reply), vec!["arch.txt", "face.txt"], "{reply}");
    assert!(reply["chunks"][0]["score"].as_f64().is_some_and(|s| s > 1.0), "BM25 scores: {reply}");
    assert!(reply["timings_ms"].get("embed").is_none(), "lexical mode embeds nothing: {reply}");
    // Hybrid: fused ranks, so scores are at most 2 / (60 + 1).
    let reply = ask("hybrid", "zygomatic cheeks").await;
    assert_eq!(files(&reply)[0], "arch.txt", "{reply}");
    assert!(
        reply["chunks"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|c| c["score"].as_f64().is_some_and(|s| s <= 2.0 / 61.0 + 1e-6))
    );
    assert_eq!(ask("sideways", "x").await["error"]["code"], "malformed");

    // A delete reaches the lexical index through the change log.
    let store = env.store().await;
    let target = ragpipe::store::DocumentRef::UploadId(uploads[0].upload_id.clone());
    ragpipe::ingest::delete::delete_and_announce(store.as_ref(), queue.events.as_ref(), &target, None)
        .await
        .expect("delete");
    assert_eq!(files(&ask("lexical", "zygomatic").await), Vec::<String>::new());
    assert_eq!(files(&ask("lexical", "zygomatic cheeks").await), vec!["face.txt"]);
    worker.stop().await;
}

fn llm_settings(server: &wiremock::MockServer) -> ragpipe::config::LlmSettings {
    ragpipe::config::LlmSettings {
        kind: ragpipe::config::LlmKind::OpenAi,
        base_url: format!("{}/v1", server.uri()),
        initial_backoff_ms: 1,
        max_backoff_ms: 5,
        api_key: Some(secrecy::SecretString::from("test-key")),
        ..Default::default()
    }
}

fn openai_error(status: u16, kind: &str, code: &str) -> wiremock::ResponseTemplate {
    wiremock::ResponseTemplate::new(status).insert_header("retry-after", "0").set_body_json(serde_json::json!({
        "error": {"message": format!("fake {code}"), "type": kind, "param": null, "code": code}
    }))
}

async fn llm_rate_limits_are_waited_out_and_quota_errors_get_a_clear_code(mut env: TestEnv) {
    // Five 429s in a row, then an answer.
    let (storm, storm_log) = fake_chat_scripted("Spring tides reach four metres [1].", |n| {
        (n <= 5).then(|| openai_error(429, "requests", "rate_limit_exceeded"))
    })
    .await;
    env.settings.llm = llm_settings(&storm);
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let tides = env.write("tides.txt", b"Spring tides at Hollow Point reach four metres.");
    let upload = env.upload_file(&tides, "storm");
    ingested(&ingest(&queue, std::slice::from_ref(&upload)).await[&upload.upload_id]);
    let body = br#"{"v":1,"query":"How high are the spring tides?","collection":"storm","answer":true}"#;
    let reply = request_raw(&queue, body).await;
    assert_eq!(reply["answer"]["text"], "Spring tides reach four metres [1].", "{reply}");
    assert_eq!(seen_count(&storm_log), 6, "five 429s waited out, then answered");
    worker.stop().await;

    // An exhausted quota is not retried: the client hears why at once.
    let (broke, broke_log) =
        fake_chat_scripted("never", |_| Some(openai_error(429, "insufficient_quota", "insufficient_quota"))).await;
    env.settings.llm = llm_settings(&broke);
    let worker = env.start_worker(&[Role::Query]).await;
    let queue = worker.queue().await;
    // (Another question: the first one's answer is in the response cache, shared through Redis.)
    let body = br#"{"v":1,"query":"What reaches four metres?","collection":"storm","answer":true}"#;
    let reply = request_raw(&queue, body).await;
    assert_eq!(reply["error"]["code"], "llm_quota", "{reply}");
    assert_eq!(seen_count(&broke_log), 1, "a quota error is not retried");
    worker.stop().await;
}

async fn replies_carry_query_ids_and_feedback_is_stored_beside_the_log(env: TestEnv) {
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let path = env.write("tides.txt", b"Spring tides at Hollow Point reach four metres.");
    let upload = env.upload_file(&path, "rated");
    ingested(&ingest(&queue, std::slice::from_ref(&upload)).await[&upload.upload_id]);
    let reply = request_raw(&queue, br#"{"v":1,"query":"spring tides","collection":"rated","mode":"lexical"}"#).await;
    let query_id = reply["query_id"].as_str().expect("a query id").to_owned();
    let error = request_raw(&queue, br#"{"v":1,"query":"x","collection":"missing"}"#).await;
    let error_id = error["query_id"].as_str().expect("errors have one too").to_owned();
    assert_ne!(query_id, error_id);
    let logged = format!("SELECT count(*) FROM query_log WHERE query_id = '{query_id}' AND mode = 'lexical'");
    assert_eq!(wait_for_count(&env, &logged, 1).await, 1, "the log row carries the id and mode");

    for rating in ["up", "down", "up"] {
        let body = serde_json::json!({"v": 1, "feedback": {"query_id": query_id, "rating": rating, "comment": "ok"}});
        let ack = request_raw(&queue, body.to_string().as_bytes()).await;
        assert_eq!(ack, serde_json::json!({"v": 1, "ok": true}));
    }
    let ups = format!("SELECT count(*) FROM query_feedback WHERE query_id = '{query_id}' AND rating = 'up'");
    assert_eq!(env.count(&ups).await, 2);
    let bad = request_raw(&queue, br#"{"v":1,"feedback":{"query_id":"x","rating":"sideways"}}"#).await;
    assert_eq!(bad["error"]["code"], "malformed", "{bad}");
    worker.stop().await;
}

/// A plain AMQP client (lapin, nothing of ragpipe's): publishes requests with direct reply-to
/// and reads every reply message on one channel, as a pika consumer would.
struct PlainClient {
    conn: Connection,
    channel: lapin::Channel,
    replies: lapin::Consumer,
    queue: String,
}

/// One reply message: its correlation id, AMQP `type`, and JSON body.
struct PlainReply {
    correlation_id: String,
    kind: Option<String>,
    body: serde_json::Value,
}

impl PlainClient {
    async fn new(queue: &str) -> Self {
        let conn = Connection::connect(&common::amqp_url(), ConnectionProperties::default()).await.expect("connect");
        let channel = conn.create_channel().await.expect("channel");
        let replies = channel
            .basic_consume(
                "amq.rabbitmq.reply-to".into(),
                "".into(),
                BasicConsumeOptions { no_ack: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("consume direct reply-to");
        Self { conn, channel, replies, queue: queue.to_owned() }
    }

    async fn send(&self, correlation_id: &str, body: &[u8], expiration_ms: Option<u32>) {
        let mut properties = BasicProperties::default()
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_correlation_id(correlation_id.into())
            .with_content_type("application/json".into());
        if let Some(ms) = expiration_ms {
            properties = properties.with_expiration(ms.to_string().as_str().into());
        }
        self.channel
            .basic_publish("".into(), self.queue.as_str().into(), BasicPublishOptions::default(), body, properties)
            .await
            .expect("publish");
    }

    async fn next(&mut self) -> PlainReply {
        let delivery = tokio::time::timeout(Duration::from_secs(30), self.replies.next())
            .await
            .expect("a reply message within 30 s")
            .expect("stream open")
            .expect("delivery");
        PlainReply {
            correlation_id: delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str().to_owned())
                .unwrap_or_default(),
            kind: delivery.properties.kind().as_ref().map(|k| k.as_str().to_owned()),
            body: serde_json::from_slice(&delivery.data).expect("reply is JSON"),
        }
    }

    async fn close(self) {
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// The messages of one streamed reply, parts then the final one: over RabbitMQ read by a
/// [`PlainClient`], embedded through the request/reply port.
async fn streamed(env: &TestEnv, queue: &ragpipe::queue::Queue, body: &[u8]) -> Vec<serde_json::Value> {
    let mut messages = Vec::new();
    if env.settings.broker.url.is_some() {
        let mut client = PlainClient::new(&env.settings.broker.query_queue).await;
        client.send("stream-1", body, None).await;
        loop {
            let reply = client.next().await;
            assert_eq!(reply.correlation_id, "stream-1");
            let last = reply.body["final"] == true;
            assert_eq!(
                reply.kind.as_deref(),
                Some(if last { "ragpipe.reply" } else { "ragpipe.reply.part" }),
                "{}",
                reply.body
            );
            messages.push(reply.body);
            if last {
                break;
            }
        }
        client.close().await;
    } else {
        let mut replies = queue.requests.request_parts(body, Duration::from_secs(30)).await.expect("sent");
        while let Some(message) = replies.next().await {
            let message = message.expect("a reply message");
            messages.push(serde_json::from_slice(&message.body).expect("JSON"));
            if message.last {
                break;
            }
        }
    }
    messages
}

async fn streamed_answers_arrive_in_order_and_reassemble(mut env: TestEnv) {
    let raw = "Spring tides at Hollow Point reach four metres [1]. Quinces are a citrus fruit [1].";
    let (server, seen) = fake_chat(raw).await;
    env.settings.llm = llm_settings(&server);
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let tides = env.write("tides.txt", b"Spring tides at Hollow Point reach four metres.");
    let upload = env.upload_file(&tides, "streams");
    ingested(&ingest(&queue, std::slice::from_ref(&upload)).await[&upload.upload_id]);
    caught_up(&worker, "streams").await;

    let body =
        br#"{"v":1,"query":"How high are the spring tides?","collection":"streams","answer":true,"stream":true}"#;
    let messages = streamed(&env, &queue, body).await;
    let (last, parts) = messages.split_last().expect("a final message");
    assert!(parts.len() >= 10, "a part per word of the model's answer: {messages:?}");
    let mut text = String::new();
    for (seq, part) in parts.iter().enumerate() {
        assert_eq!(part["seq"], seq, "{part}");
        assert_eq!(part["final"], false);
        assert_eq!(part["query_id"], last["query_id"], "every message names the query");
        text += part["delta"].as_str().expect("delta");
    }
    assert_eq!(text, raw, "the parts add up to what the model wrote");
    assert_eq!(last["seq"], parts.len());
    assert_eq!(last["final"], true);
    assert_eq!(
        last["answer"]["text"], "Spring tides at Hollow Point reach four metres [1]. Quinces are a citrus fruit.",
        "the final message carries the checked text: {last}"
    );
    assert_eq!(last["answer"]["citations_removed"]["unsupported"], 1);
    assert_eq!(last["answer"]["usage"]["input_tokens"], 1200, "usage from the stream's last event: {last}");
    assert_eq!(last["answer"]["sources"][0]["filename"], "tides.txt");
    let requests = seen.lock().expect("log").clone();
    let streamed_request = requests.last().expect("the model was asked");
    assert_eq!(streamed_request["stream"], true);
    assert_eq!(streamed_request["stream_options"]["include_usage"], true);

    // The CLI's client reassembles the same way.
    let mut pieces = String::new();
    let request =
        QueryRequest { answer: Some(true), ..QueryRequest::new("How high do spring tides reach?", name("streams"), 3) };
    let reply = client::query_streaming(queue.requests.as_ref(), &request, Duration::from_secs(30), |p| pieces += p)
        .await
        .expect("a streamed reply");
    assert_eq!(pieces, raw);
    assert_eq!(reply["final"], true, "{reply}");
    worker.stop().await;
}

/// A fake chat server that answers `answer` after `delay`.
async fn slow_chat(answer: &str, delay: Duration) -> wiremock::MockServer {
    use wiremock::{Mock, ResponseTemplate, matchers};
    let server = wiremock::MockServer::start().await;
    Mock::given(matchers::method("POST"))
        .and(matchers::path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_delay(delay).set_body_json(serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        })))
        .mount(&server)
        .await;
    server
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64
}

async fn deadlines_skip_expired_requests_and_abandon_slow_answers(mut env: TestEnv) {
    let server = slow_chat("Four metres [1].", Duration::from_secs(3)).await;
    env.settings.llm = llm_settings(&server);
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let tides = env.write("tides.txt", b"Spring tides at Hollow Point reach four metres.");
    let upload = env.upload_file(&tides, "deadlines");
    ingested(&ingest(&queue, std::slice::from_ref(&upload)).await[&upload.upload_id]);

    // Past its deadline on arrival: not worked on, no reply; the log says why.
    let past = unix_ms() - 1_000;
    let body = format!(r#"{{"v":1,"query":"spring tides","collection":"deadlines","deadline_ms":{past}}}"#);
    let unanswered = queue.requests.request(body.as_bytes(), Duration::from_secs(2)).await;
    assert!(unanswered.is_err(), "an expired request gets no reply: {unanswered:?}");
    wait_for_count(&env, "SELECT count(*) FROM query_log WHERE error_code = 'expired'", 1).await;

    // Work that outlives the deadline is abandoned and answered with `timeout`, at the deadline.
    let soon = unix_ms() + 700;
    let body = format!(
        r#"{{"v":1,"query":"How high are the spring tides?","collection":"deadlines","answer":true,"deadline_ms":{soon}}}"#
    );
    let started = std::time::Instant::now();
    let reply = request_raw(&queue, body.as_bytes()).await;
    assert_eq!(reply["error"]["code"], "timeout", "{reply}");
    assert!(reply["query_id"].is_string());
    assert!(started.elapsed() < Duration::from_millis(2_500), "answered at the deadline, not after the model");

    // Without `answer` the same deadline is met.
    let soon = unix_ms() + 5_000;
    let body = format!(r#"{{"v":1,"query":"spring tides","collection":"deadlines","deadline_ms":{soon}}}"#);
    assert_eq!(files(&request_raw(&queue, body.as_bytes()).await), vec!["tides.txt"]);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_request_that_expires_while_waiting_for_a_slot_is_not_answered() {
    let mut env = TestEnv::new().await;
    let server = slow_chat("Four metres [1].", Duration::from_millis(1_500)).await;
    env.settings.llm = llm_settings(&server);
    env.settings.query.concurrency = 1;
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let tides = env.write("tides.txt", b"Spring tides at Hollow Point reach four metres.");
    let upload = env.upload_file(&tides, "expiry");
    ingested(&ingest(&queue, std::slice::from_ref(&upload)).await[&upload.upload_id]);

    // One slot: `slow` holds it for 1.5 s while `expiring` (300 ms to live) waits in the worker's
    // prefetch, delivered but not yet taken; `plain` comes after both.
    let mut client = PlainClient::new(&env.settings.broker.query_queue).await;
    client
        .send("slow", br#"{"v":1,"query":"How high are the spring tides?","collection":"expiry","answer":true}"#, None)
        .await;
    client.send("expiring", br#"{"v":1,"query":"spring tides","collection":"expiry"}"#, Some(300)).await;
    client.send("plain", br#"{"v":1,"query":"spring tides","collection":"expiry"}"#, None).await;
    let mut answered = Vec::new();
    while !answered.contains(&"plain".to_owned()) {
        answered.push(client.next().await.correlation_id);
    }
    assert_eq!(answered, vec!["slow", "plain"], "the expired request got no reply");
    wait_for_count(&env, "SELECT count(*) FROM query_log WHERE error_code = 'expired'", 1).await;
    client.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_rpcs_over_direct_reply_to_are_each_answered_once() {
    let env = TestEnv::new().await;
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let tides = env.write("tides.txt", b"Spring tides at Hollow Point reach four metres.");
    let upload = env.upload_file(&tides, "fifty");
    ingested(&ingest(&queue, std::slice::from_ref(&upload)).await[&upload.upload_id]);

    let oversized = format!(r#"{{"v":1,"query":"{}","collection":"fifty"}}"#, "tide ".repeat(4_000));
    let mut client = PlainClient::new(&env.settings.broker.query_queue).await;
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..50 {
        let (body, outcome) = match i % 10 {
            3 => (b"{not json".to_vec(), "malformed"),
            5 => (br#"{"v":1,"query":42,"collection":"fifty"}"#.to_vec(), "malformed"),
            7 => (oversized.clone().into_bytes(), "invalid_request"),
            _ => (format!(r#"{{"v":1,"query":"spring tides {i}","collection":"fifty"}}"#).into_bytes(), "ok"),
        };
        let id = format!("rpc-{i}");
        client.send(&id, &body, None).await;
        expected.insert(id, outcome);
    }
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < expected.len() {
        let reply = client.next().await;
        let outcome = reply.body["error"]["code"].as_str().unwrap_or("ok").to_owned();
        if reply.body.get("error").is_none() {
            assert_eq!(files(&reply.body), vec!["tides.txt"], "{}", reply.body);
        }
        assert!(
            seen.insert(reply.correlation_id.clone(), outcome).is_none(),
            "{} answered twice",
            reply.correlation_id
        );
    }
    let expected: std::collections::BTreeMap<String, String> =
        expected.into_iter().map(|(id, outcome)| (id, outcome.to_owned())).collect();
    assert_eq!(seen, expected, "every correlation id answered once, with the right outcome");
    // Nothing more arrives for any of them: a last request's reply is the next message.
    client.send("last", br#"{"v":1,"query":"tides","collection":"fifty"}"#, None).await;
    assert_eq!(client.next().await.correlation_id, "last");
    client.close().await;
    // The query log is written behind the replies, in batches; stopping the worker writes what
    // is still queued: all 51 requests are in it at once, none twice.
    worker.stop().await;
    assert_eq!(env.count("SELECT count(*) FROM query_log").await, 51);
    assert_eq!(env.count("SELECT count(DISTINCT query_id) FROM query_log").await, 51);
}

async fn hierarchical_mode_takes_its_chunks_from_the_best_documents(mut env: TestEnv) {
    env.settings.chunk.max_tokens = 16;
    env.settings.chunk.min_tokens = 4;
    env.settings.query.hierarchical_documents = 1;
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let queue = worker.queue().await;
    let tides = env.write(
        "tides.txt",
        b"Spring tides at Hollow Point reach four metres in March.\n\n\
          Neap tides at Hollow Point stay under two metres all summer.\n\n\
          The tide tables for Hollow Point are posted at the harbour office.\n\n\
          Fishing boats leave Hollow Point two hours before high tide.",
    );
    let mill =
        env.write("mill.txt", b"The mill pond rises with the spring tides too.\n\nThe quince trees flower in April.");
    let uploads = [env.upload_file(&tides, "levels"), env.upload_file(&mill, "levels")];
    let outcomes = ingest(&queue, &uploads).await;
    for upload in &uploads {
        ingested(&outcomes[&upload.upload_id]);
    }
    caught_up(&worker, "levels").await;
    let ask = |mode: &str| {
        let body = format!(r#"{{"v":1,"query":"Hollow Point tides","collection":"levels","top_k":6,"mode":"{mode}"}}"#);
        let queue = queue.clone();
        async move { request_raw(&queue, body.as_bytes()).await }
    };
    let hybrid = ask("hybrid").await;
    assert!(files(&hybrid).contains(&"mill.txt".to_owned()), "hybrid ranks chunks of both: {hybrid}");
    let hierarchical = ask("hierarchical").await;
    let found = files(&hierarchical);
    assert!(found.len() >= 3, "several chunks of the best document: {hierarchical}");
    assert!(found.iter().all(|f| f == "tides.txt"), "only the best document's chunks: {hierarchical}");
    worker.stop().await;
}
