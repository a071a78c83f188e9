//! `ragpipe status [--json] [--watch SECS]`: compute kernels, backends, documents per collection
//! and status, queue depths, per collection its index (kind, generation, log lag) and last
//! rebuild, and the last 24 hours of queries (cache hit rates, failures, latency, cost, ratings;
//! from the query log, so every query worker counts). Gathered once into one report, printed as
//! text or as JSON for machines.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::config::Settings;
use crate::embedded::LazyDatabase;
use crate::{queue, store};

/// Arguments of `ragpipe status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print it again every SECS seconds until Ctrl-C.
    #[arg(long, value_name = "SECS")]
    pub watch: Option<u64>,
}

/// Prints the status (repeatedly with `--watch`).
///
/// # Errors
/// The store is unreachable.
pub async fn run(args: Args, settings: Settings) -> anyhow::Result<ExitCode> {
    // The compute section needs no backend: printed first, it is there even when the store is
    // unreachable (it says whether FAISS and the local model run on the CPU's best kernels).
    if !args.json {
        print!("{}", render_compute(&compute()));
    }
    let embedded = LazyDatabase::new(settings.storage.database_file());
    let connected = store::connect(&settings.database, &embedded).await.context("connecting to the store")?;
    let queue = queue::connect(&settings.broker, &embedded).await;
    loop {
        let report = gather(&settings, &connected, queue.as_ref()).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", render(&report));
        }
        let Some(every) = args.watch else { break };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(every.max(1))) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        if !args.json {
            println!();
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Everything the report shows, as JSON (the text form is rendered from it).
async fn gather(
    settings: &Settings,
    connected: &store::Connected,
    queue: Result<&queue::Queue, &queue::QueueError>,
) -> anyhow::Result<Value> {
    let cache = crate::cache::describe(&settings.cache);
    let store = connected.store.as_ref();
    let documents: Vec<Value> = store
        .status()
        .await
        .context("reading document counts")?
        .into_iter()
        .map(|r| {
            json!({
                "collection": r.collection, "status": r.status.as_str(), "documents": r.documents,
                "chunks": r.chunks, "tokens": r.tokens,
            })
        })
        .collect();
    // Every stored chunk was embedded once at least: a floor on what embedding has cost.
    let tokens: i64 = documents.iter().filter_map(|d| d["tokens"].as_i64()).sum();
    let price = settings.embedder.price_per_1k_tokens();
    let embedding = json!({
        "model": settings.embedder.model,
        "tokens_stored": tokens,
        "price_per_1k_tokens": price,
        "cost_usd_at_least": tokens as f64 / 1000.0 * price,
    });
    let queues = match queue {
        Ok(queue) => {
            let depths = queue.uploads.depths().await.map_err(|e| e.to_string());
            let consumers = queue.uploads.has_consumers().await.map_err(|e| e.to_string());
            let dead = if depths.as_ref().is_ok_and(|d| d.dead > 0) {
                dead_letters(queue).await
            } else {
                json!({ "by_code": [], "latest": [] })
            };
            json!({
                "backend": queue.kind.to_string(),
                "uploads_waiting": depths.as_ref().ok().map(|d| d.ingest),
                "uploads_taken": depths.as_ref().ok().and_then(|d| d.in_progress),
                "dead_letters": depths.as_ref().ok().map(|d| d.dead),
                "queries_waiting": depths.as_ref().ok().map(|d| d.query),
                "worker_consuming": consumers.as_ref().ok(),
                "dead_letter_reasons": dead,
                "error": depths.err().or(consumers.err()),
            })
        }
        Err(error) => json!({ "error": format!("unreachable: {error}") }),
    };
    let queries = match store.query_summary(chrono::Utc::now() - chrono::Duration::hours(QUERY_HOURS)).await {
        Ok(summary) => query_report(&summary),
        Err(error) => json!({ "error": error.to_string() }),
    };
    let index_dir = settings.index_dir();
    let mut indexes = Vec::new();
    for collection in store.collections().await.context("listing collections")? {
        indexes.push(index_report(store, &index_dir, &collection).await);
    }
    Ok(json!({
        "compute": compute(),
        "backends": { "store": connected.kind, "queue": queues.get("backend"), "cache": cache },
        "documents": documents,
        "embedding": embedding,
        "queues": queues,
        "index_dir": index_dir.display().to_string(),
        "indexes": indexes,
        "queries": queries,
    }))
}

/// The period `status` summarises queries over.
const QUERY_HOURS: i64 = 24;

/// The query summary with its rates: each cache layer's hit rate is over the lookups that reached
/// it (the retrieval cache is asked only when the response cache missed).
fn query_report(q: &store::QuerySummary) -> Value {
    let count = |layer: &str| q.by_cache_layer.iter().find(|(l, _)| l == layer).map_or(0, |(_, n)| *n);
    let answered = q.queries - q.errors;
    let rate = |hits: i64, lookups: i64| (lookups > 0).then(|| hits as f64 / lookups as f64);
    let (response, retrieval) = (count("response"), count("retrieval"));
    let rated = q.feedback_up + q.feedback_down;
    json!({
        "hours": QUERY_HOURS,
        "queries": q.queries,
        "errors": q.errors,
        "by_cache_layer": q.by_cache_layer.iter().map(|(l, n)| json!({ "layer": l, "queries": n })).collect::<Vec<_>>(),
        "response_cache": { "hits": response, "lookups": answered, "hit_rate": rate(response, answered) },
        "retrieval_cache": {
            "hits": retrieval, "lookups": answered - response, "hit_rate": rate(retrieval, answered - response),
        },
        "mean_latency_ms": q.mean_latency_ms,
        "llm_cost_usd": q.llm_cost_usd,
        "feedback": { "up": q.feedback_up, "down": q.feedback_down, "satisfaction": rate(q.feedback_up, rated) },
    })
}

fn render_queries(out: &mut String, q: &Value) {
    let _ = writeln!(out, "queries (last {} h, every query worker):", q["hours"].as_i64().unwrap_or(QUERY_HOURS));
    if let Some(error) = q["error"].as_str() {
        let _ = writeln!(out, "  query log unreadable: {error}");
        return;
    }
    let percent = |v: &Value| v.as_f64().map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0));
    let latency = q["mean_latency_ms"].as_f64().map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"));
    let _ = writeln!(out, "  {} queries, {} failed, mean answer time {latency}", q["queries"], q["errors"]);
    for cache in ["response", "retrieval"] {
        let c = &q[format!("{cache}_cache")];
        let _ = writeln!(
            out,
            "  {cache} cache hit rate {} ({} of {} lookups)",
            percent(&c["hit_rate"]),
            c["hits"],
            c["lookups"]
        );
    }
    let f = &q["feedback"];
    let _ = writeln!(
        out,
        "  LLM cost ${:.4}; feedback {} up, {} down ({} satisfied)",
        q["llm_cost_usd"].as_f64().unwrap_or_default(),
        f["up"],
        f["down"],
        percent(&f["satisfaction"])
    );
}

/// Dead letters looked at (without removing them): counts by code among the first
/// [`DEAD_LETTERS_READ`], and the last few of those with their file and reason.
async fn dead_letters(queue: &queue::Queue) -> Value {
    let letters = match queue.uploads.dead_letters(DEAD_LETTERS_READ).await {
        Ok(letters) => letters,
        Err(error) => return json!({ "error": error.to_string() }),
    };
    let mut by_code = std::collections::BTreeMap::<String, usize>::new();
    for letter in &letters {
        *by_code.entry(letter.reason.code.clone()).or_default() += 1;
    }
    let latest: Vec<Value> = letters
        .iter()
        .rev()
        .take(5)
        .map(|letter| {
            let body = serde_json::from_slice::<Value>(&letter.body).unwrap_or_default();
            json!({
                "filename": body.get("filename"),
                "upload_id": body.get("upload_id"),
                "code": letter.reason.code,
                "reason": letter.reason.reason,
            })
        })
        .collect();
    let by_code: Vec<Value> =
        by_code.into_iter().map(|(code, count)| json!({ "code": code, "count": count })).collect();
    json!({ "read": letters.len(), "by_code": by_code, "latest": latest })
}

/// Dead letters `status` reads to summarise their reasons.
const DEAD_LETTERS_READ: usize = 100;

/// One collection's index: its snapshot (kind, generation, log position and lag behind the
/// store) and its last rebuild with the verification result.
async fn index_report(store: &dyn store::Store, index_dir: &std::path::Path, collection: &store::Collection) -> Value {
    let manifest =
        std::fs::read(crate::index::snapshot::collection_dir(index_dir, &collection.name).join("manifest.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<crate::index::snapshot::Manifest>(&bytes).ok());
    let snapshot = match manifest {
        None => json!({ "note": "no snapshot (built from the store when first opened)" }),
        Some(m) if m.collection_id != collection.id => {
            json!({ "note": "snapshot from another store or collection (will be rebuilt)" })
        }
        Some(m) => {
            let lag = store.last_log_seq(collection.id).await.map(|last| (last - m.log_seq).max(0));
            json!({
                "vectors": m.count,
                "kind": m.index.describe(),
                "generation": m.generation,
                "log_seq": m.log_seq,
                "lag": lag.as_ref().ok(),
                "lag_error": lag.err().map(|e| e.to_string()),
                "dimensions": m.dimensions,
                "model": m.model,
            })
        }
    };
    let rebuild = match store.last_generation(collection.id).await {
        Ok(Some(g)) => json!({
            "finished_at": g.finished_at.map(|t| t.to_rfc3339()),
            "generation": g.generation,
            "vectors": g.vectors,
            "expected": g.expected,
            "kind": g.kind,
            "recall": g.recall,
            "ok": g.ok,
            "reason": g.reason,
        }),
        Ok(None) => Value::Null,
        Err(error) => json!({ "error": error.to_string() }),
    };
    json!({ "collection": collection.name, "snapshot": snapshot, "last_rebuild": rebuild })
}

/// The compute kernels in use, and a warning when they are not the CPU's best.
fn compute() -> Value {
    let kernels = crate::blas::Kernels::current();
    json!({ "kernels": kernels.describe(), "warning": kernels.warning() })
}

fn render_compute(compute: &Value) -> String {
    let mut out = format!("compute:\n  {}\n", compute["kernels"].as_str().unwrap_or_default());
    if let Some(warning) = compute["warning"].as_str() {
        let _ = writeln!(out, "  warning: {warning}");
    }
    out
}

/// The report as text, one section per part (the compute section is printed before it).
fn render(r: &Value) -> String {
    let mut out = String::new();
    let q = &r["queues"];
    let _ = writeln!(out, "backends:\n  store  {}", r["backends"]["store"].as_str().unwrap_or_default());
    match q["backend"].as_str() {
        Some(queue) => {
            let _ = writeln!(out, "  queue  {queue}");
        }
        None => {
            let _ = writeln!(out, "  queue  {}", q["error"].as_str().unwrap_or_default());
        }
    }
    let _ = writeln!(out, "  cache  {}", r["backends"]["cache"].as_str().unwrap_or_default());
    let _ = writeln!(out, "documents:");
    let documents = r["documents"].as_array().cloned().unwrap_or_default();
    if documents.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for d in documents {
        let _ = writeln!(
            out,
            "  {:<24} {:<10} {:>8} documents {:>10} chunks",
            d["collection"].as_str().unwrap_or_default(),
            d["status"].as_str().unwrap_or_default(),
            d["documents"],
            d["chunks"]
        );
    }
    let e = &r["embedding"];
    let _ = writeln!(
        out,
        "embedding:\n  {} tokens stored ({}): at least ${:.4} at ${} per 1,000",
        e["tokens_stored"],
        e["model"].as_str().unwrap_or_default(),
        e["cost_usd_at_least"].as_f64().unwrap_or_default(),
        e["price_per_1k_tokens"]
    );
    if q["backend"].is_string() {
        if let Some(waiting) = q["uploads_waiting"].as_u64() {
            let _ = writeln!(out, "queues:\n  uploads waiting {waiting}");
            if let Some(taken) = q["uploads_taken"].as_u64() {
                let _ = writeln!(out, "  uploads taken   {taken}");
            }
            let _ =
                writeln!(out, "  dead letters    {}\n  queries waiting {}", q["dead_letters"], q["queries_waiting"]);
        }
        let dead = &q["dead_letter_reasons"];
        if let Some(by_code) = dead["by_code"].as_array().filter(|c| !c.is_empty()) {
            let counts: Vec<String> =
                by_code.iter().map(|c| format!("{} {}", c["code"].as_str().unwrap_or_default(), c["count"])).collect();
            let _ = writeln!(out, "  dead letters by code (of the first {}): {}", dead["read"], counts.join(", "));
            for letter in dead["latest"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "    {}: {}: {}",
                    letter["filename"].as_str().unwrap_or("?"),
                    letter["code"].as_str().unwrap_or_default(),
                    letter["reason"].as_str().unwrap_or_default()
                );
            }
        }
        if let Some(error) = dead["error"].as_str() {
            let _ = writeln!(out, "  dead letters unreadable: {error}");
        }
        match q["worker_consuming"].as_bool() {
            Some(true) => out.push_str("  a worker is consuming uploads\n"),
            Some(false) => out.push_str("  no worker is consuming uploads\n"),
            None => {}
        }
        if let Some(error) = q["error"].as_str() {
            let _ = writeln!(out, "  {error}");
        }
    }
    let _ = writeln!(out, "indexes (snapshots in {}):", r["index_dir"].as_str().unwrap_or_default());
    let indexes = r["indexes"].as_array().cloned().unwrap_or_default();
    if indexes.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for i in indexes {
        let name = i["collection"].as_str().unwrap_or_default();
        let s = &i["snapshot"];
        let snapshot = match s["note"].as_str() {
            Some(note) => note.to_owned(),
            None => {
                let lag = match s["lag"].as_i64() {
                    Some(lag) => format!("{lag} entries behind"),
                    None => format!("lag unknown: {}", s["lag_error"].as_str().unwrap_or_default()),
                };
                format!(
                    "{} vectors, {}, generation {}, log seq {} ({lag}), {}d {}",
                    s["vectors"],
                    s["kind"].as_str().unwrap_or_default(),
                    s["generation"],
                    s["log_seq"],
                    s["dimensions"],
                    s["model"].as_str().unwrap_or_default()
                )
            }
        };
        let _ = writeln!(out, "  {name:<24} {snapshot}");
        let g = &i["last_rebuild"];
        let rebuild = if g.is_null() {
            "never rebuilt".to_owned()
        } else if let Some(error) = g["error"].as_str() {
            format!("last rebuild unknown: {error}")
        } else {
            let when = g["finished_at"].as_str().map(|t| t.replace('T', " ")).unwrap_or_default();
            let recall = g["recall"].as_f64().map_or_else(|| "exact".to_owned(), |r| format!("recall@10 {r:.3}"));
            let outcome = if g["ok"] == true {
                "passed".to_owned()
            } else {
                format!("FAILED ({}), previous generation kept", g["reason"].as_str().unwrap_or_default())
            };
            format!(
                "last rebuild {when}: generation {}, {} of {} vectors, {}, {recall}: {outcome}",
                g["generation"],
                g["vectors"],
                g["expected"],
                g["kind"].as_str().unwrap_or_default()
            )
        };
        let _ = writeln!(out, "  {:<24} {rebuild}", "");
    }
    render_queries(&mut out, &r["queries"]);
    out
}
