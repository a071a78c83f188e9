//! The query worker: serves `QueryRequest`s over request/reply (RabbitMQ: to `reply_to` with the
//! same `correlation_id`, direct reply-to works; embedded: inside the process). Every request
//! gets a reply: results, or an error body with a code. Retrieval is embed → FAISS (k × candidate
//! factor) → one SQL query for the chunks and their documents → filter and rank.
//!
//! [`follow`] keeps the process's indexes current for the queries: it follows
//! `document.ingested` events from other processes and catches the named collection up from the
//! store.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::app::{IndexContext, QueryContext};
use crate::messages::{
    self, DOCUMENT_DELETED, DOCUMENT_INGESTED, ErrorReply, INDEX_REBUILT, IndexRebuilt, QueryRequest, QueryResponse,
    ResultChunk, VERSION,
};
use crate::queue::Request;
use crate::store::QueryLogEntry;
use crate::telemetry::metrics;

/// Serves queries until `shutdown`, serving again after a broken connection.
pub async fn run(ctx: Arc<QueryContext>, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    loop {
        match ctx.requests.serve().await {
            Ok(requests) => {
                backoff = Duration::from_millis(500);
                let concurrency = ctx.settings.concurrency;
                let s = &ctx;
                requests
                    .take_until(shutdown.cancelled())
                    .for_each_concurrent(concurrency, |item| async move {
                        match item {
                            Ok(request) => handle(s, request).await,
                            Err(error) => tracing::warn!(%error, "query consumer failed"),
                        }
                    })
                    .await;
            }
            Err(error) => tracing::error!(%error, "cannot consume queries"),
        }
        if shutdown.is_cancelled() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Answers one request. Queries are never retried here: a client that got no reply retries on
/// its own terms.
async fn handle(s: &Arc<QueryContext>, request: Request) {
    let started = Instant::now();
    let (body, log) = match answer(s, &request.body).await {
        Ok((response, log)) => (messages::encode(&response), log),
        Err((error, log)) => (messages::encode(&error), log),
    };
    let outcome = if log.as_ref().is_some_and(|l| l.error_code.is_some()) { "error" } else { "ok" };
    match &request.reply {
        Some(reply) => {
            if let Err(error) = reply.send(&body).await {
                tracing::warn!(%error, "could not send a query reply");
            }
        }
        None => tracing::warn!("query without reply_to: nowhere to send the answer; dropped"),
    }
    metrics::QUERIES.with_label_values(&[outcome]).inc();
    metrics::QUERY_SECONDS.observe(started.elapsed().as_secs_f64());
    if let Some(mut entry) = log {
        entry.latency_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
        let store = s.store.clone();
        // The log is for analytics: never delay or fail the reply for it.
        tokio::spawn(async move {
            if let Err(error) = store.log_query(&entry).await {
                tracing::warn!(%error, "query log write failed");
            }
        });
    }
}

type Answer = Result<(QueryResponse, Option<QueryLogEntry>), (ErrorReply, Option<QueryLogEntry>)>;

async fn answer(s: &QueryContext, body: &[u8]) -> Answer {
    let cfg = &s.settings;
    let request: QueryRequest = messages::decode(body).map_err(|e| {
        // Logged too: bad requests are what an operator most needs to see.
        let log = QueryLogEntry {
            collection: String::new(),
            query: String::from_utf8_lossy(body).chars().take(cfg.max_query_chars).collect(),
            top_k: 0,
            chunk_ids: Vec::new(),
            scores: Vec::new(),
            error_code: Some(e.code().to_owned()),
            latency_ms: 0,
        };
        (ErrorReply::new(e.code(), e.to_string()), Some(log))
    })?;
    let collection_name = match &request.collection {
        Some(name) => name.to_string(),
        None => cfg.default_collection.clone(),
    };
    let top_k = request.top_k.unwrap_or(cfg.default_top_k);
    let mut log = QueryLogEntry {
        collection: collection_name.clone(),
        query: request.query.chars().take(cfg.max_query_chars).collect(),
        top_k: top_k.min(i32::MAX as usize) as i32,
        chunk_ids: Vec::new(),
        scores: Vec::new(),
        error_code: None,
        latency_ms: 0,
    };
    match retrieve(s, &request, &collection_name, top_k).await {
        Ok(response) => {
            log.chunk_ids = response.chunks.iter().map(|c| c.chunk_id).collect();
            log.scores = response.chunks.iter().map(|c| c.score).collect();
            Ok((response, Some(log)))
        }
        Err(error) => {
            log.error_code = Some(error.error.code.clone());
            Err((error, Some(log)))
        }
    }
}

async fn retrieve(
    s: &QueryContext,
    request: &QueryRequest,
    collection_name: &str,
    top_k: usize,
) -> Result<QueryResponse, ErrorReply> {
    let cfg = &s.settings;
    let mut timings = BTreeMap::new();
    let query = request.query.trim();
    if query.is_empty() {
        return Err(ErrorReply::new("invalid_request", "`query` must not be empty"));
    }
    if query.chars().count() > cfg.max_query_chars {
        return Err(ErrorReply::new(
            "invalid_request",
            format!("`query` is longer than {} characters", cfg.max_query_chars),
        ));
    }
    if top_k == 0 || top_k > cfg.max_top_k {
        return Err(ErrorReply::new("invalid_request", format!("`top_k` must be between 1 and {}", cfg.max_top_k)));
    }
    if request.answer == Some(true) {
        return Err(ErrorReply::new(
            "llm_not_configured",
            "answers need an [llm] section; ask without `answer` for chunks",
        ));
    }
    // The request's own collection was checked when it was decoded; the default is config.
    messages::CollectionName::new(collection_name).map_err(|e| ErrorReply::new("invalid_collection", e.to_string()))?;
    let collection = s
        .store
        .collection(collection_name)
        .await
        .map_err(|e| ErrorReply::new("unavailable", e.to_string()))?
        .ok_or_else(|| ErrorReply::new("unknown_collection", format!("no collection named `{collection_name}`")))?;

    let t = Instant::now();
    // Through the embedding cache: a repeated query costs no API call.
    // Bounded well below ingest's retry deadline: nobody waits minutes for a query.
    let limit = std::time::Duration::from_secs(cfg.embed_timeout_secs);
    let vector = tokio::time::timeout(limit, s.embedding.embed_one(query))
        .await
        .map_err(|_| {
            ErrorReply::new(
                "embedding_timeout",
                format!("the embedding provider did not answer within {} s; try again later", limit.as_secs()),
            )
        })?
        .map_err(|e| ErrorReply::new("embedding_failed", e.to_string()))?;
    timings.insert("embed".to_owned(), ms(t));

    let t = Instant::now();
    let (hits, generation) = s
        .indexes
        .search(&collection, vector, top_k * cfg.candidate_factor)
        .await
        .map_err(|e| ErrorReply::new("index_failed", e.to_string()))?;
    timings.insert("search".to_owned(), ms(t));

    let t = Instant::now();
    let ids: Vec<i64> = hits.iter().map(|(id, _)| *id).collect();
    let rows = s.store.fetch_chunks(&ids).await.map_err(|e| ErrorReply::new("unavailable", e.to_string()))?;
    timings.insert("fetch".to_owned(), ms(t));

    let min_score = request.min_score.unwrap_or(f32::NEG_INFINITY);
    let scores: std::collections::HashMap<i64, f32> = hits.into_iter().collect();
    let chunks = rows
        .into_iter()
        .filter_map(|row| {
            let score = *scores.get(&row.chunk_id)?;
            (score >= min_score).then_some(ResultChunk {
                chunk_id: row.chunk_id,
                document_id: row.document_id,
                filename: row.filename,
                text: row.text,
                score,
                char_start: row.char_start,
                char_end: row.char_end,
                page: row.page,
                heading_path: row.heading_path,
            })
        })
        .take(top_k)
        .collect();
    Ok(QueryResponse { v: VERSION, answer: None, chunks, cached: false, generation, timings_ms: timings })
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Follows `document.ingested` and `document.deleted` events from other processes and catches
/// the named collection up from the store's change log, and `index.rebuilt` events by swapping
/// to the new generation; every snapshot interval it also catches every open index up and
/// adopts a newer recorded generation, as a safety net for events missed while disconnected.
pub async fn follow(ctx: Arc<IndexContext>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(ctx.settings.snapshot_interval_secs));
    let mut events = match ctx.events.subscribe(&[DOCUMENT_INGESTED, DOCUMENT_DELETED, INDEX_REBUILT]).await {
        Ok(events) => Some(events),
        Err(error) => {
            tracing::warn!(%error, "cannot subscribe to events; following by polling only");
            None
        }
    };
    loop {
        let event = async {
            match events.as_mut() {
                Some(stream) => stream.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {
                for name in ctx.indexes.open_collections().await {
                    if let Err(error) = ctx.indexes.adopt_recorded_generation(&name).await {
                        tracing::warn!(collection = %name, %error, "index reload failed");
                    }
                    if let Err(error) = ctx.indexes.catch_up(&name).await {
                        tracing::warn!(collection = %name, %error, "index catch-up failed");
                    }
                }
            }
            item = event => match item {
                Some(Ok(message)) if message.routing_key == INDEX_REBUILT => {
                    match serde_json::from_slice::<IndexRebuilt>(&message.body) {
                        Ok(event) => {
                            if let Err(error) = ctx.indexes.reload(&event.collection, event.generation).await {
                                tracing::warn!(collection = %event.collection, %error, "index reload failed");
                            }
                        }
                        Err(error) => tracing::warn!(%error, "malformed index.rebuilt event ignored"),
                    }
                }
                Some(Ok(message)) => {
                    let collection = serde_json::from_slice::<serde_json::Value>(&message.body)
                        .ok()
                        .and_then(|event| Some(event.get("collection")?.as_str()?.to_owned()));
                    if let Some(collection) = collection
                        && let Err(error) = ctx.indexes.catch_up(&collection).await
                    {
                        tracing::warn!(%collection, %error, "index catch-up failed");
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "event stream failed; following by polling only");
                    events = None;
                }
                None => events = None,
            },
        }
    }
}
