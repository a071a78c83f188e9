//! The query worker: serves `QueryRequest`s over request/reply (RabbitMQ: to `reply_to` with the
//! same `correlation_id`, direct reply-to works; embedded: inside the process). Every request
//! gets a reply: results, or an error body with a code. Retrieval is embed → FAISS (k × candidate
//! factor) → one SQL query for the chunks and their documents → filter and rank.
//!
//! With `answer: true` the chunks become a numbered [`context`] within a token budget, and the
//! reply carries an answer with its [`citations`] checked: quoted from the context
//! ([`extractive`]) when no LLM is configured, else written by it ([`crate::llm`]).
//!
//! [`follow`] keeps the process's indexes current for the queries: it follows
//! `document.ingested` events from other processes and catches the named collection up from the
//! store.

pub mod cache;
pub mod citations;
pub mod context;
pub mod extractive;
pub mod filter;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::cache::{Keys, QueryCache, RetrievalInputs};
use self::filter::Filter;
use crate::app::{IndexContext, QueryContext};
use crate::config::QuerySettings;
use crate::embed::EmbedError;
use crate::llm::{self, Llm};
use crate::messages::{
    self, Answer, AnswerKind, AnswerPart, Citation, CitationsRemoved, DOCUMENT_DELETED, DOCUMENT_INGESTED, ErrorReply,
    FeedbackMessage, INDEX_REBUILT, IndexRebuilt, QueryRequest, QueryResponse, Rating, ResultChunk, SearchMode,
    TokenUsage, VERSION,
};
use crate::queue::Request;
use crate::store::Collection;
use crate::store::{FeedbackEntry, QueryLogEntry};
use crate::telemetry::metrics;

/// Collections one request may search at once.
const MAX_COLLECTIONS: usize = 16;
/// Candidates a search fetches from each collection's index at most, however selective its filter.
const MAX_CANDIDATES: usize = 4_096;

/// Serves queries until `shutdown`, serving again after a broken connection.
pub async fn run(ctx: Arc<QueryContext>, shutdown: CancellationToken) {
    let log_stop = CancellationToken::new();
    let writer = {
        let (ctx, stop) = (ctx.clone(), log_stop.clone());
        tokio::spawn(async move { ctx.log.write(ctx.store.as_ref(), stop, LOG_DRAIN).await })
    };
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
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    // The query log of the last replies may still be queued: let it land.
    log_stop.cancel();
    if let Err(error) = writer.await {
        tracing::warn!(%error, "query log writer failed");
    }
}

/// How long shutdown waits for queued query log entries to be written.
const LOG_DRAIN: Duration = Duration::from_secs(5);

/// Answers one request (or stores a feedback message). Queries are never retried here: a client
/// that got no reply retries on its own terms.
async fn handle(s: &Arc<QueryContext>, request: Request) {
    // Queries are acknowledged on receipt and never redelivered (a client that got no reply
    // asks again on its own terms).
    metrics::DELIVERIES.with_label_values(&["queries", "false"]).inc();
    if is_feedback(&request.body) {
        let body = feedback(s, &request.body).await;
        if let Some(reply) = &request.reply
            && let Err(error) = reply.send(&body).await
        {
            tracing::warn!(%error, "could not acknowledge feedback");
        }
        return;
    }
    let query_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("query", %query_id, collection = tracing::field::Empty);
    answer_request(s, request, query_id).instrument(span).await;
}

/// Answers one query request (never more than one reply), then logs it.
async fn answer_request(s: &Arc<QueryContext>, request: Request, query_id: String) {
    let started = Instant::now();
    let mut log = log_entry(&query_id, &request.body, s.settings.max_query_chars);
    let decoded: Result<QueryRequest, _> = messages::decode(&request.body);
    let deadline = deadline(&s.settings, request.deadline, decoded.as_ref().ok());
    if deadline <= tokio::time::Instant::now() {
        // The requester has stopped waiting: answering would only spend what others wait for.
        tracing::info!(%query_id, "query past its deadline before work began: not answered");
        metrics::QUERIES.with_label_values(&["expired"]).inc();
        if let Some(reply) = &request.reply
            && let Err(error) = reply.discard().await
        {
            tracing::warn!(%error, "could not settle an expired query");
        }
        log.error_code = Some("expired".into());
        write_log(s, log, started);
        return;
    }
    let streaming = decoded.as_ref().is_ok_and(|r| r.stream == Some(true));
    let mut parts = match (&request.reply, streaming) {
        (Some(reply), true) => Some(Parts { reply: reply.as_ref(), query_id: &query_id, seq: 0 }),
        _ => None,
    };
    let outcome = tokio::time::timeout_at(deadline, answer(s, decoded, &mut log, parts.as_mut())).await;
    let reply: Result<QueryResponse, ErrorReply> = match outcome {
        Ok(Ok(mut response)) => {
            response.query_id.clone_from(&query_id);
            Ok(response)
        }
        Ok(Err(error)) => Err(error),
        Err(_) => {
            tracing::info!(%query_id, "query abandoned at its deadline");
            Err(ErrorReply::new(
                "timeout",
                "the request's deadline passed before its answer was ready; the work was abandoned \
                 (ask again with a later deadline, or without `answer`)",
            ))
        }
    };
    let reply = reply.map_err(|mut error| {
        log.error_code = Some(error.error.code.clone());
        error.query_id = Some(query_id.clone());
        error
    });
    let outcome = if reply.is_ok() { "ok" } else { "error" };
    let seq = parts.as_ref().map(|p| p.seq);
    let body = match (&reply, seq) {
        (Ok(response), None) => messages::encode(response),
        (Err(error), None) => messages::encode(error),
        (Ok(response), Some(seq)) => messages::streamed_final(response, seq),
        (Err(error), Some(seq)) => messages::streamed_final(error, seq),
    };
    match &request.reply {
        Some(reply) => {
            if let Err(error) = reply.send(&body).await {
                tracing::warn!(%error, "could not send a query reply");
            }
        }
        None => tracing::warn!("query without reply_to: nowhere to send the answer; dropped"),
    }
    metrics::QUERIES.with_label_values(&[outcome]).inc();
    if let Some(code) = &log.error_code {
        metrics::ERRORS.with_label_values(&[code.as_str(), "query"]).inc();
    }
    let mode = log.mode.as_deref().unwrap_or(if reply.is_ok() { "none" } else { "error" });
    let layer = log.cache_layer.as_deref().unwrap_or(if reply.is_ok() { "none" } else { "error" });
    metrics::QUERY_SECONDS.with_label_values(&[mode, layer]).observe(started.elapsed().as_secs_f64());
    write_log(s, log, started);
}

/// When work on a request stops: the earliest of the transport's deadline, the request's
/// `deadline_ms` and `[query] deadline_ms` from now.
fn deadline(
    cfg: &QuerySettings,
    transport: Option<tokio::time::Instant>,
    request: Option<&QueryRequest>,
) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let mut deadline = now + Duration::from_millis(cfg.deadline_ms);
    if let Some(transport) = transport {
        deadline = deadline.min(transport);
    }
    if let Some(at) = request.and_then(|r| r.deadline_ms) {
        let unix_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let left = Duration::from_millis(at).saturating_sub(unix_now);
        deadline = deadline.min(now + left);
    }
    deadline
}

/// The query log entry of a request, before it is understood (bad requests are logged too).
fn log_entry(query_id: &str, body: &[u8], max_chars: usize) -> QueryLogEntry {
    QueryLogEntry {
        query_id: query_id.to_owned(),
        collection: String::new(),
        query: String::from_utf8_lossy(body).chars().take(max_chars).collect(),
        top_k: 0,
        chunk_ids: Vec::new(),
        scores: Vec::new(),
        error_code: None,
        latency_ms: 0,
        mode: None,
        cache_layer: None,
        input_tokens: None,
        output_tokens: None,
        cost_usd: None,
    }
}

/// Queues the request's query log entry: it is for analytics, never a reason to delay or fail
/// a reply.
fn write_log(s: &QueryContext, mut entry: QueryLogEntry, started: Instant) {
    entry.latency_ms = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
    s.log.record(entry);
}

/// Where the parts of a streamed answer go (`stream: true`), numbered from 0; the final reply
/// takes the next number.
struct Parts<'a> {
    reply: &'a dyn crate::queue::Reply,
    query_id: &'a str,
    seq: u32,
}

impl Parts<'_> {
    /// Sends the next piece of the answer's text. A requester that left is no reason to stop:
    /// the answer is still cached and logged.
    async fn send(&mut self, delta: &str) {
        let part = AnswerPart {
            v: VERSION,
            query_id: self.query_id.to_owned(),
            seq: self.seq,
            is_final: false,
            delta: delta.to_owned(),
        };
        self.seq += 1;
        if let Err(error) = self.reply.send_part(&messages::encode(&part)).await {
            tracing::debug!(%error, "could not send an answer part");
        }
    }
}

/// Whether `body` is a feedback message (a JSON object with a `feedback` key).
fn is_feedback(body: &[u8]) -> bool {
    // Queries are parsed once, by `answer`: only a body that mentions the key is parsed here.
    body.windows(10).any(|w| w == b"\"feedback\"")
        && serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v.get("feedback").is_some())
}

/// Stores a rating; the reply body (an acknowledgement or an error).
async fn feedback(s: &QueryContext, body: &[u8]) -> Vec<u8> {
    let message: FeedbackMessage = match messages::decode(body) {
        Ok(message) => message,
        Err(e) => return messages::encode(&ErrorReply::new(e.code(), e.to_string())),
    };
    let rating = match message.feedback.rating {
        Rating::Up => "up",
        Rating::Down => "down",
    };
    let entry = FeedbackEntry {
        query_id: message.feedback.query_id.chars().take(64).collect(),
        rating: rating.to_owned(),
        comment: message.feedback.comment.map(|c| c.chars().take(2_000).collect()),
    };
    match s.store.record_feedback(&entry).await {
        Ok(()) => {
            metrics::FEEDBACK.with_label_values(&[rating]).inc();
            messages::encode(&serde_json::json!({"v": VERSION, "ok": true}))
        }
        Err(error) => messages::encode(&ErrorReply::new("unavailable", error.to_string())),
    }
}

/// The response to a decoded request (its `query_id` still empty), filling in `log`.
async fn answer(
    s: &QueryContext,
    decoded: Result<QueryRequest, messages::DecodeError>,
    log: &mut QueryLogEntry,
    parts: Option<&mut Parts<'_>>,
) -> Result<QueryResponse, ErrorReply> {
    let cfg = &s.settings;
    // Bad requests are logged too: they are what an operator most needs to see.
    let request = decoded.map_err(|e| ErrorReply::new(e.code(), e.to_string()))?;
    let names: Vec<String> = match (&request.collection, &request.collections) {
        (_, Some(list)) => list.iter().map(ToString::to_string).collect(),
        (Some(name), None) => vec![name.to_string()],
        (None, None) => vec![cfg.default_collection.clone()],
    };
    let top_k = request.top_k.unwrap_or(cfg.default_top_k);
    log.collection = names.join(",");
    tracing::Span::current().record("collection", log.collection.as_str());
    log.query = request.query.chars().take(cfg.max_query_chars).collect();
    log.top_k = top_k.min(i32::MAX as usize) as i32;
    log.mode = Some(request.mode.unwrap_or(cfg.default_mode).as_str().to_owned());
    let response = retrieve(s, &request, &names, top_k, parts).await?;
    log.chunk_ids = response.chunks.iter().map(|c| c.chunk_id).collect();
    log.scores = response.chunks.iter().map(|c| c.score).collect();
    log.cache_layer = response.cache_layer.clone();
    if let Some(usage) = response.answer.as_ref().and_then(|a| a.usage).filter(|_| !response.cached) {
        log.input_tokens = Some(usage.input_tokens as i64);
        log.output_tokens = Some(usage.output_tokens as i64);
        log.cost_usd = Some(usage.cost_usd);
    }
    Ok(response)
}

async fn retrieve(
    s: &QueryContext,
    request: &QueryRequest,
    names: &[String],
    top_k: usize,
    mut parts: Option<&mut Parts<'_>>,
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
    if request.collection.is_some() && request.collections.is_some() {
        return Err(ErrorReply::new("invalid_request", "give `collection` or `collections`, not both"));
    }
    if names.is_empty() || names.len() > MAX_COLLECTIONS {
        return Err(ErrorReply::new(
            "invalid_request",
            format!("`collections` must name between 1 and {MAX_COLLECTIONS} collections"),
        ));
    }
    let filter = Filter::parse(request.filters.as_ref()).map_err(|e| ErrorReply::new("invalid_request", e))?;
    let mode = request.mode.unwrap_or(cfg.default_mode);
    let mut collections = Vec::with_capacity(names.len());
    for name in names {
        // A request's own collections were checked when it was decoded; the default is config.
        messages::CollectionName::new(name.as_str())
            .map_err(|e| ErrorReply::new("invalid_collection", e.to_string()))?;
        let collection = s
            .collection(name)
            .await
            .map_err(|e| ErrorReply::new("unavailable", e.to_string()))?
            .ok_or_else(|| ErrorReply::new("unknown_collection", format!("no collection named `{name}`")))?;
        if !collections.iter().any(|c: &Collection| c.id == collection.id) {
            collections.push(collection);
        }
    }

    // Results are keyed by each collection's change-log position and index generation (see
    // `cache`): a new or deleted document changes the key.
    let t = Instant::now();
    let cache = QueryCache::new(s.cache.clone(), &s.cache_settings);
    let mut positions = Vec::with_capacity(collections.len());
    // Only what indexes that had applied their logs up to the key's positions found is cached.
    let mut cacheable = true;
    for collection in &collections {
        let log_seq =
            s.positions.last_log_seq(collection.id).await.map_err(|e| ErrorReply::new("unavailable", e.to_string()))?;
        let (generation, applied) =
            s.indexes.position(collection).await.map_err(|e| ErrorReply::new("index_failed", e.to_string()))?;
        cacheable &= applied >= log_seq;
        positions.push((collection.name.clone(), log_seq, generation));
    }
    let generation = positions[0].2;
    let embedder = s.embedding.embedder();
    let inputs = RetrievalInputs {
        collections: &positions,
        model: embedder.model_id(),
        dimensions: embedder.dimensions(),
        query,
        top_k,
        candidate_factor: cfg.candidate_factor,
        min_score: request.min_score.map(f32::to_bits),
        filters: &request.filters,
        mode: mode.as_str(),
        rrf_k: cfg.rrf_k,
        documents: if mode == SearchMode::Hierarchical { cfg.hierarchical_documents } else { 0 },
    };
    let keys = Keys::new(&inputs, request, cfg, &s.llm_settings);
    if let Some(mut response) = cache.response(&keys).await {
        if let (Some(parts), Some(answer)) = (parts.as_deref_mut(), &response.answer) {
            parts.send(&answer.text).await;
        }
        response.cached = true;
        response.cache_layer = Some("response".into());
        response.timings_ms = BTreeMap::from([("cache".to_owned(), ms(t))]);
        return Ok(response);
    }
    let cached_chunks = cache.chunks(&keys).await;
    timings.insert("cache".to_owned(), ms(t));
    let from_cache = cached_chunks.is_some();
    let chunks = match cached_chunks {
        Some(chunks) => chunks,
        None => {
            let wanted = Wanted { mode, top_k, min_score: request.min_score, filter: &filter };
            let seen: Vec<i64> = positions.iter().map(|p| p.1).collect();
            let (chunks, searched) = search(s, &collections, &seen, query, &wanted, &mut timings)
                .instrument(tracing::info_span!("stage", stage = "retrieve"))
                .await?;
            // (Lexical mode searches no vector index: `searched` is empty.)
            cacheable &= searched.iter().zip(&positions).all(|(g, p)| *g == p.2);
            if cacheable {
                cache.put_chunks(&keys, &chunks).await;
            }
            chunks
        }
    };
    let answer = if request.answer == Some(true) {
        let t = Instant::now();
        let answer = match &s.llm {
            Some(llm) => {
                generated_answer(s, llm.as_ref(), query, &chunks, parts)
                    .instrument(tracing::info_span!("stage", stage = "answer"))
                    .await?
            }
            None => {
                let answer = extractive_answer(cfg, query, &chunks)?;
                if let Some(parts) = parts {
                    parts.send(&answer.text).await;
                }
                answer
            }
        };
        timings.insert("answer".to_owned(), ms(t));
        Some(answer)
    } else {
        None
    };
    let response = QueryResponse {
        v: VERSION,
        query_id: String::new(),
        answer,
        chunks,
        cached: from_cache,
        cache_layer: from_cache.then(|| "retrieval".to_owned()),
        generation,
        timings_ms: timings,
    };
    if cacheable && response.answer.is_some() {
        cache.put_response(&keys, &response).await;
    }
    Ok(response)
}

/// What a search must return.
struct Wanted<'a> {
    mode: SearchMode,
    top_k: usize,
    min_score: Option<f32>,
    filter: &'a Filter,
}

/// Embeds the query, searches every collection's index and fetches the live chunks that match
/// the filter: the `top_k` best across the collections, and the vector index generations
/// searched (none in lexical mode). `seen` holds each collection's change-log position read
/// after the query arrived. The collections, and the two legs of each, are searched at once.
/// When deleted chunks or the filter leave fewer than `top_k`, the search deepens (4× the
/// candidates, up to [`MAX_CANDIDATES`] per collection) until enough are found or the indexes
/// run out.
async fn search(
    s: &QueryContext,
    collections: &[Collection],
    seen: &[i64],
    query: &str,
    wanted: &Wanted<'_>,
    timings: &mut BTreeMap<String, f64>,
) -> Result<(Vec<ResultChunk>, Vec<u64>), ErrorReply> {
    let cfg = &s.settings;
    let (dense_leg, lexical_leg) = match wanted.mode {
        SearchMode::Dense => (true, false),
        SearchMode::Lexical => (false, true),
        SearchMode::Hybrid | SearchMode::Hierarchical => (true, true),
    };
    let vector = if dense_leg {
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
        Some(vector)
    } else {
        None
    };

    // `min_score` is a floor on the mode's own score; when both legs are fused, on the dense
    // leg's cosine before fusion (fused scores are ranks, not similarities).
    let min_score = wanted.min_score.unwrap_or(f32::NEG_INFINITY);
    let (leg_floor, final_floor) =
        if dense_leg && lexical_leg { (min_score, f32::NEG_INFINITY) } else { (f32::NEG_INFINITY, min_score) };
    let mut k = (wanted.top_k * cfg.candidate_factor).min(MAX_CANDIDATES);
    let (mut search_ms, mut fetch_ms) = (0.0, 0.0);
    loop {
        let t = Instant::now();
        let mut hits: Vec<(i64, f32, &str)> = Vec::new();
        let mut generations = Vec::with_capacity(collections.len());
        let mut exhausted = true;
        let legs = collections.iter().zip(seen).map(|(collection, &seen)| {
            let vector = vector.as_ref();
            let dense = async move {
                match vector {
                    Some(vector) => s
                        .indexes
                        .search(collection, vector.clone(), k)
                        .await
                        .map(|(found, generation)| (found, Some(generation)))
                        .map_err(|e| ErrorReply::new("index_failed", e.to_string())),
                    None => Ok((Vec::new(), None)),
                }
            };
            let lexical = async move {
                if lexical_leg {
                    s.lexical
                        .search(collection, query, k, seen)
                        .await
                        .map_err(|e| ErrorReply::new("unavailable", e.to_string()))
                } else {
                    Ok(Vec::new())
                }
            };
            async move {
                futures::future::try_join(dense, lexical).await.map(|(dense, lexical)| (collection, dense, lexical))
            }
        });
        for (collection, (dense, generation), lexical) in futures::future::try_join_all(legs).await? {
            generations.extend(generation);
            exhausted &= dense.len() < k && lexical.len() < k;
            let found = match (dense_leg, lexical_leg) {
                (true, true) => {
                    let dense: Vec<(i64, f32)> = dense.into_iter().filter(|h| h.1 >= leg_floor).collect();
                    fuse(&[&dense, &lexical], cfg.rrf_k)
                }
                (true, false) => dense,
                _ => lexical,
            };
            hits.extend(found.into_iter().map(|(id, score)| (id, score, collection.name.as_str())));
        }
        hits.sort_by(|a, b| b.1.total_cmp(&a.1));
        search_ms += ms(t);

        let t = Instant::now();
        let ids: Vec<i64> = hits.iter().map(|(id, _, _)| *id).collect();
        let rows = s.store.fetch_chunks(&ids).await.map_err(|e| ErrorReply::new("unavailable", e.to_string()))?;
        fetch_ms += ms(t);
        let found: std::collections::HashMap<i64, (f32, &str)> =
            hits.iter().map(|(id, score, name)| (*id, (*score, *name))).collect();
        // Best first (the rows follow `ids`, which are in score order).
        let candidates = rows.into_iter().filter(|row| wanted.filter.matches(&row.metadata)).filter_map(|row| {
            let (score, collection) = *found.get(&row.chunk_id)?;
            (score >= final_floor).then(|| ResultChunk {
                chunk_id: row.chunk_id,
                document_id: row.document_id,
                collection: collection.to_owned(),
                filename: row.filename,
                text: row.text,
                score,
                char_start: row.char_start,
                char_end: row.char_end,
                page: row.page,
                heading_path: row.heading_path,
            })
        });
        let (chunks, enough) = if wanted.mode == SearchMode::Hierarchical {
            let candidates: Vec<ResultChunk> = candidates.collect();
            let documents = distinct_documents(&candidates);
            (
                top_documents(candidates, cfg.hierarchical_documents, wanted.top_k),
                documents >= cfg.hierarchical_documents,
            )
        } else {
            let chunks: Vec<ResultChunk> = candidates.take(wanted.top_k).collect();
            let enough = chunks.len() >= wanted.top_k;
            (chunks, enough)
        };
        // Deeper candidates score lower: past the score floor, more cannot help.
        let below_floor = hits.last().is_some_and(|h| h.1 < final_floor);
        if enough || exhausted || below_floor || k >= MAX_CANDIDATES {
            timings.insert("search".to_owned(), search_ms);
            timings.insert("fetch".to_owned(), fetch_ms);
            return Ok((chunks, generations));
        }
        k = (k * 4).min(MAX_CANDIDATES);
    }
}

/// How many documents `chunks` come from.
fn distinct_documents(chunks: &[ResultChunk]) -> usize {
    chunks.iter().map(|c| (c.collection.as_str(), c.document_id)).collect::<std::collections::HashSet<_>>().len()
}

/// Hierarchical selection: documents ranked by their best chunk, then the `top_k` best chunks of
/// the first `documents` of them, grouped by document in that order (best chunk first within
/// each, so an answer's context reads document by document). `chunks` must be best first.
fn top_documents(chunks: Vec<ResultChunk>, documents: usize, top_k: usize) -> Vec<ResultChunk> {
    let mut order: Vec<(&str, i64)> = Vec::new();
    for chunk in &chunks {
        let key = (chunk.collection.as_str(), chunk.document_id);
        if !order.contains(&key) {
            if order.len() == documents {
                continue;
            }
            order.push(key);
        }
    }
    let rank: std::collections::HashMap<(String, i64), usize> =
        order.iter().enumerate().map(|(i, (c, d))| (((*c).to_owned(), *d), i)).collect();
    let mut chosen: Vec<(usize, ResultChunk)> = chunks
        .into_iter()
        .filter_map(|c| rank.get(&(c.collection.clone(), c.document_id)).map(|&r| (r, c)))
        .take(top_k)
        .collect();
    // Within a document the chunks keep their (score) order: the sort is stable.
    chosen.sort_by_key(|(r, _)| *r);
    chosen.into_iter().map(|(_, c)| c).collect()
}

/// The LLM's answer from the numbered context, its citations checked.
async fn generated_answer(
    s: &QueryContext,
    llm: &dyn Llm,
    query: &str,
    chunks: &[ResultChunk],
    parts: Option<&mut Parts<'_>>,
) -> Result<Answer, ErrorReply> {
    let cfg = &s.settings;
    let bpe = llm::tokenizer(llm.model());
    let context = context::build(chunks, cfg.context_tokens, &|text| bpe.encode_ordinary(text).len());
    if context.sources.is_empty() {
        // Nothing to ground an answer in: no model call, and no invented answer.
        return Ok(Answer {
            kind: AnswerKind::Generated,
            text: "No passages were found to answer the question from.".into(),
            sources: Vec::new(),
            citations_removed: CitationsRemoved::default(),
            context_tokens: 0,
            usage: None,
        });
    }
    let limit = Duration::from_secs(s.llm_settings.max_elapsed_secs);
    let user = llm::user_message(&context.text, query);
    let call = async {
        match parts {
            None => llm.complete(llm::SYSTEM_PROMPT, &user).await,
            Some(parts) => {
                // The model writes into the channel; its pieces go out as parts meanwhile.
                let (pieces, mut written) = tokio::sync::mpsc::unbounded_channel::<String>();
                let forward = async {
                    while let Some(piece) = written.recv().await {
                        parts.send(&piece).await;
                    }
                };
                let (completion, ()) = tokio::join!(llm.complete_streaming(llm::SYSTEM_PROMPT, &user, pieces), forward);
                completion
            }
        }
    };
    let completion = tokio::time::timeout(limit, call)
        .await
        .map_err(|_| {
            ErrorReply::new(
                "llm_timeout",
                format!("the answering model did not answer within {} s; try again later", limit.as_secs()),
            )
        })?
        .map_err(llm_error)?;
    let checked = citations::check(&completion.text, &context, cfg.min_citation_support);
    if checked.removed_unknown + checked.removed_unsupported > 0 {
        tracing::info!(
            unknown = checked.removed_unknown,
            unsupported = checked.removed_unsupported,
            "citations removed from an answer"
        );
    }
    Ok(Answer {
        kind: AnswerKind::Generated,
        sources: cite(&context, &checked.cited),
        text: checked.text,
        citations_removed: CitationsRemoved {
            unknown: checked.removed_unknown,
            unsupported: checked.removed_unsupported,
        },
        context_tokens: context.tokens,
        usage: Some(TokenUsage {
            input_tokens: completion.input_tokens,
            output_tokens: completion.output_tokens,
            cost_usd: s.llm_settings.cost(completion.input_tokens, completion.output_tokens),
        }),
    })
}

/// The error reply for a failed model call (after retries where they could help).
fn llm_error(error: EmbedError) -> ErrorReply {
    match error {
        EmbedError::Permanent { code, reason } => {
            let code = code.strip_prefix("embedding_").map_or_else(|| code.to_owned(), |rest| format!("llm_{rest}"));
            ErrorReply::new(&code, format!("the answering model refused: {reason}"))
        }
        EmbedError::ContextLength(reason) => ErrorReply::new(
            "llm_context_length",
            format!("the context is longer than the model accepts ({reason}); lower [query] context_tokens"),
        ),
        retryable => ErrorReply::new(
            "llm_unavailable",
            format!("the answering model did not answer ({retryable}); try again later"),
        ),
    }
}

/// The answer without an LLM: the context's best sentences for the question, cited.
fn extractive_answer(cfg: &QuerySettings, query: &str, chunks: &[ResultChunk]) -> Result<Answer, ErrorReply> {
    let bpe = crate::embed::tokens::cl100k().map_err(|e| ErrorReply::new("answer_failed", e.to_string()))?;
    let context = context::build(chunks, cfg.context_tokens, &|text| bpe.encode_ordinary(text).len());
    let extract = extractive::answer(query, &context, cfg.answer_sentences);
    Ok(Answer {
        kind: AnswerKind::Extractive,
        sources: cite(&context, &extract.cited),
        text: extract.text,
        citations_removed: CitationsRemoved::default(),
        context_tokens: context.tokens,
        usage: None,
    })
}

/// The cited sources of `context`, by number, for the reply.
fn cite(context: &context::Context, cited: &[usize]) -> Vec<Citation> {
    cited
        .iter()
        .filter_map(|&n| context.source(n))
        .map(|source| Citation {
            n: source.n,
            chunk_id: source.chunk.chunk_id,
            document_id: source.chunk.document_id,
            filename: source.chunk.filename.clone(),
            page: source.chunk.page,
            heading_path: source.chunk.heading_path.clone(),
            char_start: source.chunk.char_start,
            char_end: source.chunk.char_end,
        })
        .collect()
}

/// Reciprocal rank fusion of ranked lists: each id scores Σ 1 / (k + rank), rank from 1, over
/// the lists it appears in; best first (ties by id).
fn fuse(lists: &[&[(i64, f32)]], k: u32) -> Vec<(i64, f32)> {
    let mut scores: std::collections::HashMap<i64, f32> = std::collections::HashMap::new();
    for list in lists {
        for (rank, (id, _)) in list.iter().enumerate() {
            *scores.entry(*id).or_default() += 1.0 / (k as f32 + rank as f32 + 1.0);
        }
    }
    let mut fused: Vec<(i64, f32)> = scores.into_iter().collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    fused
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
    let patterns = [DOCUMENT_INGESTED, DOCUMENT_DELETED, INDEX_REBUILT];
    let mut events = match ctx.events.subscribe(&patterns).await {
        Ok(events) => Some(events),
        Err(error) => {
            tracing::warn!(%error, "cannot subscribe to events; polling until subscribed again");
            None
        }
    };
    // Without a subscription (broken connection), subscribe again with backoff; once back,
    // catch up at once on what the missed events announced.
    let mut resubscribe = Duration::from_millis(500);
    loop {
        let subscribed = events.is_some();
        let event = async {
            match events.as_mut() {
                Some(stream) => stream.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(resubscribe), if !subscribed => {
                match ctx.events.subscribe(&patterns).await {
                    Ok(stream) => {
                        events = Some(stream);
                        resubscribe = Duration::from_millis(500);
                        refresh_all(&ctx).await;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "cannot subscribe to events yet");
                        resubscribe = (resubscribe * 2).min(Duration::from_secs(10));
                    }
                }
            }
            _ = ticker.tick() => refresh_all(&ctx).await,
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
                    tracing::warn!(%error, "event stream failed; subscribing again");
                    events = None;
                }
                None => events = None,
            },
        }
    }
}

/// Catches every open index up with the store and adopts a newer recorded generation.
async fn refresh_all(ctx: &IndexContext) {
    for name in ctx.indexes.open_collections().await {
        if let Err(error) = ctx.indexes.adopt_recorded_generation(&name).await {
            tracing::warn!(collection = %name, %error, "index reload failed");
        }
        if let Err(error) = ctx.indexes.catch_up(&name).await {
            tracing::warn!(collection = %name, %error, "index catch-up failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusion_rewards_agreement_between_the_legs() {
        let dense = [(1, 0.9), (2, 0.8), (3, 0.7)];
        let lexical = [(3, 12.0), (4, 9.0), (1, 3.0)];
        let fused = fuse(&[&dense, &lexical], 60);
        let ids: Vec<i64> = fused.iter().map(|f| f.0).collect();
        assert_eq!(ids, vec![1, 3, 2, 4], "1 and 3 are in both lists; 1 ranks higher on average");
        assert!((fused[0].1 - (1.0 / 61.0 + 1.0 / 63.0)).abs() < 1e-7);
    }

    fn chunk(document_id: i64, chunk_id: i64, score: f32) -> ResultChunk {
        ResultChunk {
            chunk_id,
            document_id,
            collection: "c".into(),
            filename: format!("{document_id}.txt"),
            text: String::new(),
            score,
            char_start: 0,
            char_end: 0,
            page: None,
            heading_path: None,
        }
    }

    #[test]
    fn hierarchical_selection_keeps_the_best_chunks_of_the_best_documents_grouped() {
        // Best first: document 7's best chunk leads, document 3 second, document 9 third.
        let ranked = vec![chunk(7, 1, 0.9), chunk(3, 2, 0.8), chunk(7, 3, 0.7), chunk(9, 4, 0.6), chunk(3, 5, 0.5)];
        let ids = |chunks: Vec<ResultChunk>| chunks.iter().map(|c| c.chunk_id).collect::<Vec<_>>();
        assert_eq!(ids(top_documents(ranked.clone(), 2, 10)), vec![1, 3, 2, 5], "documents 7 then 3, grouped");
        assert_eq!(ids(top_documents(ranked.clone(), 2, 3)), vec![1, 3, 2], "the 3 best of those documents");
        assert_eq!(ids(top_documents(ranked.clone(), 1, 10)), vec![1, 3]);
        assert_eq!(distinct_documents(&ranked), 3);
    }

    #[test]
    fn the_earliest_deadline_wins() {
        let cfg = QuerySettings { deadline_ms: 30_000, ..QuerySettings::default() };
        let now = tokio::time::Instant::now();
        let default = deadline(&cfg, None, None);
        assert!(default >= now + Duration::from_millis(29_000) && default <= now + Duration::from_millis(31_000));
        let transport = now + Duration::from_millis(500);
        assert_eq!(deadline(&cfg, Some(transport), None), transport);
        let unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
        let past = QueryRequest { deadline_ms: Some(unix_ms as u64 - 1_000), ..QueryRequest::new("q", cn(), 1) };
        assert!(deadline(&cfg, Some(transport), Some(&past)) <= tokio::time::Instant::now(), "already gone");
        let later = QueryRequest { deadline_ms: Some(unix_ms as u64 + 60_000), ..QueryRequest::new("q", cn(), 1) };
        assert_eq!(deadline(&cfg, Some(transport), Some(&later)), transport, "the transport's is earlier");
    }

    fn cn() -> messages::CollectionName {
        messages::CollectionName::new("c").expect("name")
    }
}
