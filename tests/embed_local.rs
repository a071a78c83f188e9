//! The local model (all-MiniLM-L6-v2 from `bash ops/fetch-model.sh`): vectors, semantics,
//! batching, long inputs, and the full pipeline through RabbitMQ, PostgreSQL and Redis.
//!
//! Without the model directory these tests say so and pass, unless `RAGPIPE_REQUIRE_MODEL=1`
//! (set by CI, which fetches the model), where a missing model fails them.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{TestEnv, ingest, ingested};
use ragpipe::client;
use ragpipe::config::EmbedderKind;
use ragpipe::embed::Embedder;
use ragpipe::embed::local::LocalEmbedder;
use ragpipe::messages::QueryRequest;
use ragpipe::worker::Role;

const MODEL: &str = "all-MiniLM-L6-v2";

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("RAGPIPE_TEST_MODEL_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(MODEL), PathBuf::from);
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    let required = std::env::var("RAGPIPE_REQUIRE_MODEL").is_ok_and(|v| v == "1");
    assert!(!required, "RAGPIPE_REQUIRE_MODEL=1 but {} holds no model: run `bash ops/fetch-model.sh`", dir.display());
    eprintln!("skipped: no model in {} (run `bash ops/fetch-model.sh`)", dir.display());
    None
}

/// One model per test binary: loading reads 90 MB.
fn embedder() -> Option<Arc<LocalEmbedder>> {
    static MODEL_ONCE: OnceLock<Option<Arc<LocalEmbedder>>> = OnceLock::new();
    MODEL_ONCE
        .get_or_init(|| model_dir().map(|dir| Arc::new(LocalEmbedder::load(&dir, MODEL, 2).expect("the model loads"))))
        .clone()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

async fn embed(model: &LocalEmbedder, texts: &[&str]) -> Vec<Vec<f32>> {
    let texts: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
    model.embed(&texts).await.expect("embeds")
}

#[tokio::test]
async fn vectors_are_deterministic_normalised_and_semantic() {
    let Some(model) = embedder() else { return };
    assert_eq!((model.model_id(), model.dimensions()), (MODEL, 384));
    let texts = ["a dog runs in the park", "a puppy plays outside", "quarterly revenue grew 15%"];
    let first = embed(&model, &texts).await;
    let again = embed(&model, &texts).await;
    assert_eq!(first, again, "the same input gives bit-identical vectors");
    for v in &first {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "unit length, got {norm}");
    }
    let (dog_puppy, dog_revenue) = (cosine(&first[0], &first[1]), cosine(&first[0], &first[2]));
    eprintln!("cosine(dog, puppy) = {dog_puppy:.4}, cosine(dog, revenue) = {dog_revenue:.4}");
    assert!(dog_puppy > dog_revenue + 0.2, "dog/puppy {dog_puppy} should clearly beat dog/revenue {dog_revenue}");
}

#[tokio::test]
async fn vectors_match_sentence_transformers() {
    let Some(model) = embedder() else { return };
    // Reference vectors from sentence-transformers 5 (PyTorch) for the same model and texts,
    // written by benches/local_embed_vs_torch.py --reference.
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/minilm_reference.json")).expect("reference fixture");
    let texts: Vec<String> =
        reference["texts"].as_array().expect("texts").iter().map(|t| t.as_str().expect("text").to_owned()).collect();
    let ours = model.embed(&texts).await.expect("embeds");
    for (i, want) in reference["vectors"].as_array().expect("vectors").iter().enumerate() {
        let want: Vec<f32> =
            want.as_array().expect("vector").iter().map(|x| x.as_f64().expect("number") as f32).collect();
        let similarity = cosine(&ours[i], &want);
        let worst = ours[i].iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(similarity > 0.9999 && worst < 1e-3, "text {i}: cosine {similarity}, largest difference {worst}");
    }
}

#[tokio::test]
async fn a_batch_gives_the_same_vectors_as_one_text_at_a_time() {
    let Some(model) = embedder() else { return };
    let long = "The harbour master records every ship that enters the port. ".repeat(12);
    let texts = ["short", "a dog runs in the park", long.as_str(), "Ünïcödé and emoji 🚢 survive tokenizing", ""];
    let batch = embed(&model, &texts).await;
    for (text, in_batch) in texts.iter().zip(&batch) {
        let alone = &embed(&model, &[text]).await[0];
        let worst = alone.iter().zip(in_batch).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "{text:?}: batch and single differ by {worst}");
    }
}

#[tokio::test]
async fn long_inputs_are_truncated_to_the_trained_length_and_split_on_token_boundaries() {
    let Some(model) = embedder() else { return };
    // sentence_bert_config.json says 256 (tokenizer.json's own truncation says 128).
    assert_eq!(model.max_input_tokens(), Some(254));
    let text = "Tokens are counted by the model's own WordPiece vocabulary, not estimated. ".repeat(60);
    let tokens = model.count_tokens(&text);
    assert!(tokens > 700, "{tokens}");
    let pieces = model.split_tokens(&text, 254);
    assert_eq!(pieces.concat(), text, "pieces cover the text exactly, in order");
    assert!(pieces.len() >= tokens.div_ceil(254));
    for piece in &pieces {
        assert!(model.count_tokens(piece) <= 254, "piece of {} tokens", model.count_tokens(piece));
    }
    // Longer than the model's positions: truncated, not a failure.
    let vectors = embed(&model, &[&text, &text[..text.len() / 2]]).await;
    assert!((cosine(&vectors[0], &vectors[1]) - 1.0).abs() < 1e-4, "both are their first 256 tokens");
}

#[tokio::test]
async fn a_wrong_dimension_or_missing_directory_is_a_clear_configuration_error() {
    let Some(dir) = model_dir() else { return };
    let mut settings = ragpipe::config::EmbedderSettings {
        kind: EmbedderKind::Local,
        model: MODEL.into(),
        model_dir: dir,
        dimensions: 768,
        ..Default::default()
    };
    let err = ragpipe::embed::from_settings(&settings).err().expect("dimension mismatch").to_string();
    assert!(err.contains("set embedder.dimensions = 384"), "{err}");
    settings.model_dir = PathBuf::from("/nonexistent/minilm");
    let err = ragpipe::embed::from_settings(&settings).err().expect("missing").to_string();
    assert!(err.contains("/nonexistent/minilm") && err.contains("fetch-model.sh"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_ingests_and_answers_with_the_local_model() {
    let Some(dir) = model_dir() else { return };
    let mut env = TestEnv::new().await;
    let e = &mut env.settings.embedder;
    (e.kind, e.model, e.model_dir, e.dimensions, e.local_threads) = (EmbedderKind::Local, MODEL.into(), dir, 384, 2);
    let worker = env.start_worker(&[Role::Ingest, Role::Query]).await;
    let broker = env.queue().await;
    // No word of the query appears in the right document: only a semantic model finds it.
    let docs = [
        ("pets.txt", "My puppy loves chasing tennis balls across the lawn every morning."),
        ("finance.txt", "Quarterly revenue grew fifteen percent, driven by subscription sales."),
        ("weather.txt", "Heavy rain and strong winds are forecast for the coast tomorrow."),
    ];
    let uploads: Vec<_> =
        docs.iter().map(|(name, text)| env.upload_file(&env.write(name, text.as_bytes()), "semantic")).collect();
    let outcomes = ingest(&broker, &uploads).await;
    for u in &uploads {
        ingested(&outcomes[&u.upload_id]);
    }
    let request = QueryRequest::new("a young dog playing outside", common::name("semantic"), 1);
    let reply = client::query(broker.requests.as_ref(), &request, Duration::from_secs(30)).await.expect("reply");
    assert_eq!(reply["chunks"][0]["filename"], "pets.txt", "{reply}");
    worker.stop().await;
}
