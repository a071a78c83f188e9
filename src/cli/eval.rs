//! `ragpipe eval`: retrieval quality on a BEIR-format dataset, through the real pipeline. The
//! corpus is ingested into a collection of its own (one upload per document, named by its BEIR
//! id; a second run finds them all duplicates), every judged query is asked over request/reply
//! like any client's, and the ranked documents are scored ([`crate::eval`]). This process runs
//! the ingest and query roles itself, on whatever backends the configuration names.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Outcome};
use crate::config::Settings;
use crate::eval::{self, Dataset, Scores};
use crate::messages::{self, CollectionName, QueryRequest, SearchMode, UploadMessage, VERSION};
use crate::worker::{self, Role};

/// Arguments of `ragpipe eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// BEIR-format dataset directory (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`).
    #[arg(long, default_value = "../shared/eval/scifact-train")]
    pub dataset: PathBuf,
    /// Judgements to score against (`qrels/<split>.tsv` of the dataset).
    #[arg(long, default_value = "train")]
    pub split: String,
    /// The corpus file, instead of the dataset's (give all three of --corpus, --queries, --qrels).
    #[arg(long, requires_all = ["queries", "qrels"])]
    pub corpus: Option<PathBuf>,
    /// The queries file, instead of the dataset's.
    #[arg(long, requires_all = ["corpus", "qrels"])]
    pub queries: Option<PathBuf>,
    /// The judgements file, instead of the dataset's.
    #[arg(long, requires_all = ["corpus", "queries"])]
    pub qrels: Option<PathBuf>,
    /// Collection the corpus goes into (keep it apart from real data).
    #[arg(long, short, default_value = "eval-scifact")]
    pub collection: String,
    /// Retrieval mode: dense, lexical (BM25) or hybrid (default: query.default_mode).
    #[arg(long, short)]
    pub mode: Option<SearchMode>,
    /// Evaluate only the first N judged queries.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Chunks asked per query (documents are ranked by their best chunk; recall@100 needs 100).
    #[arg(long, default_value_t = 100)]
    pub top_k: usize,
    /// Queries in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Seconds to wait for the corpus to be ingested.
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Ingests the corpus, asks the queries and prints the scores.
///
/// # Errors
/// The dataset cannot be read, the services cannot start, or a document failed to ingest.
pub async fn run(args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    let (data, source) = match (&args.corpus, &args.queries, &args.qrels) {
        (Some(corpus), Some(queries), Some(qrels)) => {
            (Dataset::load_files(corpus, queries, qrels)?, corpus.display().to_string())
        }
        _ => (
            Dataset::load(&args.dataset, &args.split)
                .with_context(|| format!("loading the dataset in {}", args.dataset.display()))?,
            args.dataset.display().to_string(),
        ),
    };
    let collection = CollectionName::new(args.collection.as_str())?;
    let model = settings.embedder.model.clone();
    let mode = args.mode.unwrap_or(settings.query.default_mode);
    let program = std::env::current_exe().context("locating the ragpipe binary")?;
    let services = Arc::new(worker::connect(settings, program).await.context("starting the pipeline")?);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (services, shutdown) = (services.clone(), shutdown.clone());
        async move { worker::run(services, &[Role::Ingest, Role::Query], shutdown).await }
    });
    let result = evaluate(&args, &data, &collection, &services).await;
    shutdown.cancel();
    running.await.context("the worker task")?.context("running the roles")?;
    let (scores, ingest_secs, query_secs, asked) = result?;
    let report = serde_json::json!({
        "dataset": source,
        "split": args.split,
        "collection": collection.as_str(),
        "documents": data.documents.len(),
        "queries": asked,
        "mode": mode.as_str(),
        "embedder": model,
        "metrics": eval::report(&scores),
        "ingest_secs": ingest_secs,
        "query_secs": query_secs,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} on {} ({} documents, {asked} queries, split {}), {} retrieval with {model}",
            collection,
            source,
            data.documents.len(),
            args.split,
            mode.as_str()
        );
        for (name, value) in eval::report(&scores) {
            println!("  {name:<11} {value:.4}");
        }
        println!(
            "  ingest {ingest_secs:.1} s, queries {query_secs:.1} s ({:.1} queries/s)",
            asked as f64 / query_secs.max(1e-9)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Ingests, catches the index up and scores every query: mean scores, seconds ingesting,
/// seconds querying, queries asked.
async fn evaluate(
    args: &Args,
    data: &Dataset,
    collection: &CollectionName,
    services: &crate::app::Services,
) -> anyhow::Result<(Scores, f64, f64, usize)> {
    let started = Instant::now();
    let mut events = client::subscribe_outcomes(services.queue.events.as_ref()).await?;
    let mut pending = Vec::with_capacity(data.documents.len());
    for document in &data.documents {
        let upload = UploadMessage {
            v: VERSION,
            upload_id: uuid::Uuid::new_v4().to_string(),
            collection: collection.clone(),
            filename: format!("{}.txt", document.id),
            content_type: Some("text/plain".into()),
            uri: None,
            content_b64: Some(base64::engine::general_purpose::STANDARD.encode(document.content())),
            metadata: BTreeMap::from([("beir_id".to_owned(), serde_json::Value::from(document.id.clone()))]),
        };
        services.queue.uploads.publish(&messages::encode(&upload)).await.context("publishing the corpus")?;
        pending.push(upload.upload_id);
    }
    let total = pending.len();
    let mut done = 0usize;
    let mut last = Instant::now();
    let outcomes = client::wait_for_outcomes(&mut events, &pending, Duration::from_secs(args.timeout), |_| {
        done += 1;
        if last.elapsed() >= Duration::from_secs(5) {
            eprintln!("ingested {done}/{total} documents");
            last = Instant::now();
        }
    })
    .await;
    let failed: Vec<String> = pending
        .iter()
        .filter_map(|id| match outcomes.get(id) {
            Some(Outcome::Ingested(_)) => None,
            Some(Outcome::Failed(e)) => Some(format!("{}: {}", e.code, e.reason)),
            None => Some("no outcome in time".into()),
        })
        .collect();
    anyhow::ensure!(failed.is_empty(), "{} of {total} documents did not ingest, first: {}", failed.len(), failed[0]);
    let ingest_secs = started.elapsed().as_secs_f64();
    // The follower catches up on events; do it now so the first query sees the whole corpus.
    if let Some(row) = services.store.collection(collection.as_str()).await? {
        services.indexes.open(&row).await?;
        services.indexes.catch_up(collection.as_str()).await?;
    }

    let started = Instant::now();
    let queries = &data.queries[..args.limit.unwrap_or(usize::MAX).min(data.queries.len())];
    let timeout = Duration::from_secs(services.settings.query.client_timeout_secs);
    let scores: Vec<anyhow::Result<Scores>> = futures::stream::iter(queries)
        .map(|query| async move {
            let mut request = QueryRequest::new(&query.text, collection.clone(), args.top_k);
            request.mode = args.mode;
            let reply = client::query(services.queue.requests.as_ref(), &request, timeout).await?;
            if let Some(error) = reply.get("error") {
                anyhow::bail!("query {} failed: {error}", query.id);
            }
            let files: Vec<&str> = reply["chunks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["filename"].as_str()?.strip_suffix(".txt"))
                .collect();
            Ok(eval::score(&eval::rank_documents(files), &data.qrels[&query.id]))
        })
        .buffered(args.concurrency.max(1))
        .collect()
        .await;
    let scores = scores.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok((eval::mean(&scores), ingest_secs, started.elapsed().as_secs_f64(), scores.len()))
}
