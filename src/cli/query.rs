//! `ragpipe query "<text>"`: send a `QueryRequest` over request/reply and print the passages.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::client;
use crate::config::Settings;
use crate::messages::{QueryRequest, QueryResponse, VERSION};
use crate::queue::amqp::AmqpBroker;

/// Arguments of `ragpipe query`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The question or search text.
    pub text: String,
    /// Collection to search (default: query.default_collection).
    #[arg(long, short)]
    pub collection: Option<String>,
    /// Passages to return.
    #[arg(long, short = 'k')]
    pub top_k: Option<usize>,
    /// Drop passages scoring below this.
    #[arg(long)]
    pub min_score: Option<f32>,
    /// Print the raw JSON reply.
    #[arg(long)]
    pub json: bool,
}

/// Sends the query and prints the reply.
///
/// # Errors
/// The broker is unreachable or no reply comes in time.
pub async fn run(args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    let broker = AmqpBroker::connect(&settings.broker).await.context("connecting to the broker")?;
    let request = QueryRequest {
        v: VERSION,
        query: args.text,
        collection: args.collection,
        top_k: args.top_k,
        min_score: args.min_score,
        answer: None,
        filters: None,
    };
    let timeout = Duration::from_secs(settings.query.client_timeout_secs);
    let reply = client::query(&broker, &request, timeout)
        .await
        .context("waiting for the query reply (is a worker with the query role running?)")?;
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
