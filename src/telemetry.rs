//! Logging (tracing; JSON when stderr is not a terminal) and the metric definitions.
//!
//! All metrics live in [`metrics`] with constant names and low-cardinality labels, so the set a
//! dashboard relies on is visible in one place.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber. Logs go to stderr so stdout stays clean for command
/// output. `RUST_LOG` overrides the default level (`info`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=warn,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests) is harmless; ignore the error it returns.
    let _ = if std::io::stderr().is_terminal() {
        builder.compact().try_init()
    } else {
        // Each line lists its spans' fields (upload, document, collection, stage, query id).
        builder.json().flatten_event(true).with_current_span(false).with_span_list(true).try_init()
    };
}

/// Metric definitions, registered in the default Prometheus registry on first use.
pub mod metrics {
    use std::sync::LazyLock;

    use prometheus::{
        Counter, CounterVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
        register_counter, register_counter_vec, register_histogram, register_histogram_vec, register_int_counter,
        register_int_counter_vec, register_int_gauge_vec,
    };

    fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        // Names are constants and each is registered once (LazyLock): failure is a programming error.
        register_int_counter_vec!(Opts::new(name, help), labels).expect("valid, unique metric definition")
    }

    fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        register_int_gauge_vec!(Opts::new(name, help), labels).expect("valid, unique metric definition")
    }

    fn float_counter_vec(name: &str, help: &str, labels: &[&str]) -> CounterVec {
        register_counter_vec!(Opts::new(name, help), labels).expect("valid, unique metric definition")
    }

    fn histogram_vec(name: &str, help: &str, buckets: Vec<f64>, labels: &[&str]) -> HistogramVec {
        register_histogram_vec!(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("valid, unique metric definition")
    }

    // --- Ingest -------------------------------------------------------------------------------

    /// Uploads finished, by outcome (`ingested`, `duplicate`, `no_text`, `failed`, `requeued`).
    pub static DOCUMENTS: LazyLock<IntCounterVec> =
        LazyLock::new(|| counter_vec("ragpipe_documents_total", "Uploads finished, by outcome", &["outcome"]));

    /// Chunks written to the store.
    pub static CHUNKS: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("ragpipe_chunks_total", "Chunks written").expect("valid, unique metric definition")
    });

    /// Tokens of the chunks written to the store (the chunker's tokenizer).
    pub static CHUNK_TOKENS: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("ragpipe_chunk_tokens_total", "Tokens of the chunks written")
            .expect("valid, unique metric definition")
    });

    /// PDF pages left out as garbled (fonts without a Unicode mapping: they would need OCR).
    pub static GARBLED_PAGES: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("ragpipe_garbled_pages_total", "PDF pages left out as glyph garbage")
            .expect("valid, unique metric definition")
    });

    /// Extraction child processes started (each serves up to `extract.documents_per_child`
    /// documents; a rate near the document rate means children keep failing or retiring).
    pub static EXTRACT_CHILDREN: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("ragpipe_extract_children_started_total", "Extraction child processes started")
            .expect("valid, unique metric definition")
    });

    /// Seconds spent per pipeline stage and document.
    pub static STAGE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
        histogram_vec(
            "ragpipe_stage_seconds",
            "Time per pipeline stage and document",
            prometheus::exponential_buckets(0.001, 4.0, 10).unwrap_or_default(),
            &["stage"],
        )
    });

    /// Documents inside each pipeline stage right now.
    pub static STAGE_IN_FLIGHT: LazyLock<IntGaugeVec> =
        LazyLock::new(|| gauge_vec("ragpipe_stage_in_flight", "Documents inside a pipeline stage now", &["stage"]));

    /// Times one stage of one document: counts it in flight while alive, and observes its
    /// duration when dropped.
    pub struct StageTimer {
        stage: &'static str,
        started: std::time::Instant,
    }

    /// Starts timing `stage` (see [`StageTimer`]).
    pub fn stage(stage: &'static str) -> StageTimer {
        STAGE_IN_FLIGHT.with_label_values(&[stage]).inc();
        StageTimer { stage, started: std::time::Instant::now() }
    }

    impl Drop for StageTimer {
        fn drop(&mut self) {
            STAGE_IN_FLIGHT.with_label_values(&[self.stage]).dec();
            STAGE_SECONDS.with_label_values(&[self.stage]).observe(self.started.elapsed().as_secs_f64());
        }
    }

    /// Failures by stable error code (`corrupt`, `embedding_quota`, `timeout`, ...) and by
    /// what failed (`document`, `query`).
    pub static ERRORS: LazyLock<IntCounterVec> =
        LazyLock::new(|| counter_vec("ragpipe_errors_total", "Failures by error code", &["code", "kind"]));

    // --- Queues -------------------------------------------------------------------------------

    /// Messages taken from a queue (`uploads`, `queries`), and whether each was a redelivery.
    pub static DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
        counter_vec("ragpipe_queue_deliveries_total", "Messages taken from a queue", &["queue", "redelivered"])
    });

    /// Uploads given up on and sent to the dead-letter queue.
    pub static DEAD_LETTERS: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("ragpipe_dead_letters_total", "Uploads sent to the dead-letter queue")
            .expect("valid, unique metric definition")
    });

    // --- Models -------------------------------------------------------------------------------

    /// Embedding requests, by outcome (`ok`, `retry`, `error`).
    pub static EMBED_REQUESTS: LazyLock<IntCounterVec> =
        LazyLock::new(|| counter_vec("ragpipe_embed_requests_total", "Embedding requests", &["outcome"]));

    /// Inputs per embedding request.
    pub static EMBED_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
        let opts = HistogramOpts::new("ragpipe_embed_batch_inputs", "Inputs per embedding request")
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 2048.0]);
        register_histogram!(opts).expect("valid, unique metric definition")
    });

    /// Texts embedded by the provider (cache hits excluded).
    pub static EMBED_INPUTS: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("ragpipe_embed_inputs_total", "Texts sent to the embedding provider")
            .expect("valid, unique metric definition")
    });

    /// Tokens sent to the embedding provider.
    pub static EMBED_TOKENS: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("ragpipe_embed_tokens_total", "Tokens sent to the embedding provider")
            .expect("valid, unique metric definition")
    });

    /// Estimated embedding spend, in US dollars (`[embedder] price_per_1k_tokens`).
    pub static EMBED_COST: LazyLock<Counter> = LazyLock::new(|| {
        register_counter!("ragpipe_embed_cost_usd_total", "Estimated embedding spend in US dollars")
            .expect("valid, unique metric definition")
    });

    /// Model requests retried, by model service (`embedding`, `llm`) and cause
    /// (`rate_limited`, `transient`).
    pub static MODEL_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
        counter_vec("ragpipe_model_retries_total", "Model requests retried, by cause", &["service", "cause"])
    });

    /// Seconds spent waiting for the fleet-wide rate budget, by budget (`embedding`, `llm`).
    pub static RATE_LIMIT_WAIT: LazyLock<CounterVec> = LazyLock::new(|| {
        float_counter_vec(
            "ragpipe_rate_limit_wait_seconds_total",
            "Seconds spent waiting for the shared rate budget",
            &["budget"],
        )
    });

    /// Answering-model requests, by outcome (`ok`, `error`).
    pub static LLM_REQUESTS: LazyLock<IntCounterVec> =
        LazyLock::new(|| counter_vec("ragpipe_llm_requests_total", "Answering-model requests", &["outcome"]));

    /// Answering-model tokens, by kind (`input`, `output`).
    pub static LLM_TOKENS: LazyLock<IntCounterVec> =
        LazyLock::new(|| counter_vec("ragpipe_llm_tokens_total", "Answering-model tokens", &["kind"]));

    /// Estimated answering-model spend, in US dollars (`[llm]` prices).
    pub static LLM_COST: LazyLock<Counter> = LazyLock::new(|| {
        register_counter!("ragpipe_llm_cost_usd_total", "Estimated answering-model spend in US dollars")
            .expect("valid, unique metric definition")
    });

    // --- Queries ------------------------------------------------------------------------------

    /// Queries answered, by outcome (`ok`, `error`, `expired`).
    pub static QUERIES: LazyLock<IntCounterVec> =
        LazyLock::new(|| counter_vec("ragpipe_queries_total", "Queries answered", &["outcome"]));

    /// Ratings of answers received, by rating (`up`, `down`): the satisfaction rate is
    /// up / (up + down).
    pub static FEEDBACK: LazyLock<IntCounterVec> =
        LazyLock::new(|| counter_vec("ragpipe_feedback_total", "Answer ratings received", &["rating"]));

    /// Seconds per query, from receipt to reply, by search mode and the cache layer that
    /// answered (`none` for a miss, `error` for a query that failed before either was known).
    pub static QUERY_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
        histogram_vec(
            "ragpipe_query_seconds",
            "Query latency",
            prometheus::exponential_buckets(0.0005, 2.0, 16).unwrap_or_default(),
            &["mode", "cache"],
        )
    });

    /// Cache lookups, by cache (`embedding`, `retrieval`, `response`) and result (`hit`, `miss`).
    pub static CACHE_LOOKUPS: LazyLock<IntCounterVec> =
        LazyLock::new(|| counter_vec("ragpipe_cache_lookups_total", "Cache lookups", &["cache", "result"]));

    /// Cache operations that failed and were treated as misses, by operation.
    pub static CACHE_ERRORS: LazyLock<IntCounterVec> =
        LazyLock::new(|| counter_vec("ragpipe_cache_errors_total", "Cache failures degraded to misses", &["op"]));

    // --- Indexes and the store ----------------------------------------------------------------

    /// Vectors held in memory, per open collection index.
    pub static INDEX_VECTORS: LazyLock<IntGaugeVec> =
        LazyLock::new(|| gauge_vec("ragpipe_index_vectors", "Vectors held in memory", &["collection"]));

    /// Generation in service, per open collection index.
    pub static INDEX_GENERATION: LazyLock<IntGaugeVec> =
        LazyLock::new(|| gauge_vec("ragpipe_index_generation", "Index generation in service", &["collection"]));

    /// Change-log entries an open index trails the store by, per collection (measured by
    /// `/ready` and at each scrape of `/metrics`).
    pub static INDEX_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
        gauge_vec("ragpipe_index_lag_entries", "Change-log entries an open index trails the store by", &["collection"])
    });

    /// 1 when the collection's last index rebuild passed verification, 0 when it failed (the
    /// previous generation stays in service): alert on 0.
    pub static INDEX_REBUILD_OK: LazyLock<IntGaugeVec> = LazyLock::new(|| {
        gauge_vec("ragpipe_index_rebuild_ok", "Whether the last index rebuild passed verification", &["collection"])
    });

    /// Database connections by state (`open`, `in_use`) and the pool's maximum (`max`), per
    /// pool (`main`; embedded: `reader`, `writer`).
    pub static DB_POOL: LazyLock<IntGaugeVec> =
        LazyLock::new(|| gauge_vec("ragpipe_db_pool_connections", "Database pool connections", &["pool", "state"]));

    /// Seconds work waited for a database connection, per pool (`main`; embedded: `reader`,
    /// `writer`). For a transaction this includes its BEGIN: on SQLite, the wait for the file's
    /// write lock, which other processes may hold.
    pub static DB_POOL_WAIT: LazyLock<HistogramVec> = LazyLock::new(|| {
        histogram_vec(
            "ragpipe_db_pool_wait_seconds",
            "Seconds waited for a database connection",
            vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0],
            &["pool"],
        )
    });

    /// Creates the series every dashboard and alert relies on, so each is exported (at 0) from
    /// start-up rather than from its first event: a rate over a missing series is no data, not 0.
    pub fn register_defaults() {
        for outcome in ["ingested", "duplicate", "no_text", "failed", "requeued"] {
            DOCUMENTS.with_label_values(&[outcome]);
        }
        for stage in ["dedup", "extract", "chunk", "embed", "persist", "index"] {
            STAGE_IN_FLIGHT.with_label_values(&[stage]);
            STAGE_SECONDS.with_label_values(&[stage]);
        }
        for (queue, redelivered) in [("uploads", "false"), ("uploads", "true"), ("queries", "false")] {
            DELIVERIES.with_label_values(&[queue, redelivered]);
        }
        for outcome in ["ok", "retry", "error"] {
            EMBED_REQUESTS.with_label_values(&[outcome]);
        }
        for service in ["embedding", "llm"] {
            RATE_LIMIT_WAIT.with_label_values(&[service]);
            for cause in ["rate_limited", "transient"] {
                MODEL_RETRIES.with_label_values(&[service, cause]);
            }
        }
        for outcome in ["ok", "error"] {
            LLM_REQUESTS.with_label_values(&[outcome]);
        }
        for kind in ["input", "output"] {
            LLM_TOKENS.with_label_values(&[kind]);
        }
        for outcome in ["ok", "error", "expired"] {
            QUERIES.with_label_values(&[outcome]);
        }
        for rating in ["up", "down"] {
            FEEDBACK.with_label_values(&[rating]);
        }
        for cache in ["embedding", "retrieval", "response"] {
            for result in ["hit", "miss"] {
                CACHE_LOOKUPS.with_label_values(&[cache, result]);
            }
        }
        for op in ["get", "set"] {
            CACHE_ERRORS.with_label_values(&[op]);
        }
        for counter in [&CHUNKS, &CHUNK_TOKENS, &GARBLED_PAGES, &DEAD_LETTERS, &EMBED_INPUTS, &EMBED_TOKENS] {
            LazyLock::force(counter);
        }
        LazyLock::force(&EMBED_BATCH);
        LazyLock::force(&EMBED_COST);
        LazyLock::force(&LLM_COST);
        LazyLock::force(&QUERY_SECONDS);
        LazyLock::force(&ERRORS);
        LazyLock::force(&INDEX_VECTORS);
        LazyLock::force(&INDEX_GENERATION);
        LazyLock::force(&INDEX_LAG);
        LazyLock::force(&INDEX_REBUILD_OK);
        LazyLock::force(&DB_POOL);
        LazyLock::force(&DB_POOL_WAIT);
    }

    /// Renders every registered metric in the Prometheus text format.
    pub fn render() -> String {
        let families = prometheus::gather();
        prometheus::TextEncoder::new().encode_to_string(&families).unwrap_or_default()
    }
}
