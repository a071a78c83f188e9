//! `ragpipe query "<text>"`: send a `QueryRequest` over request/reply and print the passages.
//!
//! With RabbitMQ the request goes to the query workers. With the embedded queue the query role
//! runs in this process (index snapshot + store, no worker needed), the same code a worker runs.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::client;
use crate::config::Settings;
use crate::embedded::LazyDatabase;
use crate::messages::{Answer, AnswerKind, CollectionName, QueryRequest, QueryResponse, SearchMode, VERSION};
use crate::queue::{self, QueueKind};

/// Arguments of `ragpipe query`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The question or search text.
    pub text: String,
    /// Collection to search (default: query.default_collection); repeat to search several.
    #[arg(long, short)]
    pub collection: Vec<String>,
    /// Metadata filter `key=value` (repeat a key for any of several values; every key must match).
    #[arg(long = "filter", short = 'f', value_name = "KEY=VALUE")]
    pub filters: Vec<String>,
    /// Retrieval mode: dense, lexical (BM25), hybrid or hierarchical (default:
    /// query.default_mode).
    #[arg(long, short)]
    pub mode: Option<SearchMode>,
    /// Passages to return.
    #[arg(long, short = 'k')]
    pub top_k: Option<usize>,
    /// Drop passages scoring below this.
    #[arg(long)]
    pub min_score: Option<f32>,
    /// Answer the question with citations (by the LLM if `[llm]` is configured, else quoted
    /// from the best passages), above the passages.
    #[arg(long, short)]
    pub answer: bool,
    /// Print the answer as it is written (with `--answer`): the reply is streamed.
    #[arg(long, requires = "answer")]
    pub stream: bool,
    /// Print the raw JSON reply.
    #[arg(long)]
    pub json: bool,
}

/// Sends the query and prints the reply.
///
/// # Errors
/// The broker is unreachable or no reply comes in time.
pub async fn run(args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    let mut names = args.collection.iter().map(|c| CollectionName::new(c.as_str())).collect::<Result<Vec<_>, _>>()?;
    let (collection, collections) = match names.len() {
        0 => (None, None),
        1 => (names.pop(), None),
        _ => (None, Some(names)),
    };
    let request = QueryRequest {
        v: VERSION,
        query: args.text,
        collection,
        collections,
        top_k: args.top_k,
        mode: args.mode,
        min_score: args.min_score,
        answer: args.answer.then_some(true),
        filters: parse_filters(&args.filters)?,
        stream: None,
        deadline_ms: None,
    };
    let timeout = Duration::from_secs(settings.query.client_timeout_secs);
    let stream = args.stream && !args.json;
    let (reply, streamed) = if settings.broker.url.is_some() {
        let queue = queue::connect(&settings.broker, &LazyDatabase::new(settings.storage.database_file()))
            .await
            .context("connecting to the queue")?;
        ask(queue.requests.as_ref(), &request, timeout, stream)
            .await
            .context("waiting for the query reply (is a worker with the query role running?)")?
    } else {
        answer_here(settings, &request, timeout, stream).await?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(if reply.get("error").is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    }
    if let Some(error) = reply.get("error") {
        eprintln!(
            "query failed: {} ({})",
            error["message"].as_str().unwrap_or(""),
            error["code"].as_str().unwrap_or("")
        );
        return Ok(ExitCode::FAILURE);
    }
    let response: QueryResponse = serde_json::from_value(reply).context("decoding the reply")?;
    if let Some(answer) = &response.answer {
        print_answer(answer, streamed.as_deref());
    }
    if response.chunks.is_empty() {
        println!("no matching passages");
    }
    for (rank, chunk) in response.chunks.iter().enumerate() {
        let page = chunk.page.map(|p| format!(", page {p}")).unwrap_or_default();
        let heading = chunk.heading_path.as_deref().map(|h| format!(", {h}")).unwrap_or_default();
        println!(
            "[{}] {}  score {:.3}  (chars {}–{}{page}{heading})",
            rank + 1,
            chunk.filename,
            chunk.score,
            chunk.char_start,
            chunk.char_end
        );
        for line in chunk.text.lines() {
            println!("    {line}");
        }
        println!();
    }
    Ok(ExitCode::SUCCESS)
}

/// `key=value` pairs as request filters: a repeated key means any of its values. Values that
/// parse as JSON numbers or booleans are sent as such, anything else as a string.
fn parse_filters(pairs: &[String]) -> anyhow::Result<Option<BTreeMap<String, serde_json::Value>>> {
    let mut filters: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for pair in pairs {
        let (key, value) =
            pair.split_once('=').with_context(|| format!("--filter `{pair}` is not of the form key=value"))?;
        let value = match serde_json::from_str::<serde_json::Value>(value) {
            Ok(parsed @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => parsed,
            _ => serde_json::Value::String(value.to_owned()),
        };
        filters.entry(key.to_owned()).or_default().push(value);
    }
    Ok((!filters.is_empty()).then(|| {
        filters
            .into_iter()
            .map(|(key, mut values)| {
                let value = if values.len() == 1 { values.remove(0) } else { serde_json::Value::Array(values) };
                (key, value)
            })
            .collect()
    }))
}

/// The reply, and with `stream` the answer text as it was streamed (already printed).
type Asked = (serde_json::Value, Option<String>);

/// Sends the request; streamed, the answer is printed as it is written.
async fn ask(
    requests: &dyn queue::RequestReply,
    request: &QueryRequest,
    timeout: Duration,
    stream: bool,
) -> Result<Asked, client::ClientError> {
    if !stream {
        return Ok((client::query(requests, request, timeout).await?, None));
    }
    let mut streamed: Option<String> = None;
    let reply = client::query_streaming(requests, request, timeout, |piece| {
        use std::io::Write;
        let text = streamed.get_or_insert_with(|| {
            println!("Answer (as it is written):");
            String::new()
        });
        text.push_str(piece);
        print!("{piece}");
        let _ = std::io::stdout().flush();
    })
    .await;
    if streamed.is_some() {
        println!();
    }
    Ok((reply?, streamed))
}

/// Prints the answer (after a streamed one, its text again only if the citation check changed
/// it) and its sources.
fn print_answer(answer: &Answer, streamed: Option<&str>) {
    let header = match (answer.kind, streamed) {
        (_, Some(text)) if text == answer.text => None,
        (_, Some(_)) => Some("Answer, with the citations the check removed taken out:"),
        (AnswerKind::Generated, None) => Some("Answer:"),
        (AnswerKind::Extractive, None) => {
            Some("Answer (quoted from the passages; configure [llm] for a written answer):")
        }
    };
    if let Some(header) = header {
        println!("{header}");
        if answer.text.is_empty() {
            println!("    (the passages found do not answer it)");
        }
        for line in answer.text.lines() {
            println!("    {line}");
        }
    }
    if !answer.sources.is_empty() {
        println!("Sources:");
    }
    for source in &answer.sources {
        let page = source.page.map(|p| format!(", page {p}")).unwrap_or_default();
        let heading = source.heading_path.as_deref().map(|h| format!(", {h}")).unwrap_or_default();
        println!(
            "    [{}] {} (chars {}–{}{page}{heading})",
            source.n, source.filename, source.char_start, source.char_end
        );
    }
    let removed = answer.citations_removed;
    if removed.unknown + removed.unsupported > 0 {
        println!(
            "    ({} citation(s) removed: {} to sources not given, {} not supported by the cited passage)",
            removed.unknown + removed.unsupported,
            removed.unknown,
            removed.unsupported
        );
    }
    println!("\nPassages:");
}

/// Runs the query role in this process (embedded queue) and asks it.
async fn answer_here(
    settings: Settings,
    request: &QueryRequest,
    timeout: Duration,
    stream: bool,
) -> anyhow::Result<Asked> {
    let program = std::env::current_exe().context("locating the ragpipe binary")?;
    let services = crate::worker::connect(settings, program).await.context("opening the embedded store")?;
    debug_assert!(matches!(services.queue.kind, QueueKind::Embedded(_)));
    let shutdown = CancellationToken::new();
    let role = tokio::spawn(crate::query::run(Arc::new(services.query()), shutdown.clone()));
    let reply = ask(services.queue.requests.as_ref(), request, timeout, stream).await.context("answering the query");
    shutdown.cancel();
    let _ = role.await;
    // Catch-up from the store may have moved the index past its snapshot: keep that work.
    if let Err(error) = services.indexes.snapshot_all().await {
        tracing::warn!(%error, "could not update the index snapshot");
    }
    reply
}
