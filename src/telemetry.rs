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
        builder.json().flatten_event(true).try_init()
    };
}

/// Metric definitions, registered in the default Prometheus registry on first use.
pub mod metrics {
    use std::sync::LazyLock;

    use prometheus::{
        Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
        register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
        register_int_gauge_vec,
    };

    fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        // Names are constants and each is registered once (LazyLock): failure is a programming error.
        register_int_counter_vec!(Opts::new(name, help), labels).expect("valid, unique metric definition")
    }

    /// Uploads finished, by outcome (`ingested`, `duplicate`, `no_text`, `failed`, `requeued`).
    pub static DOCUMENTS: LazyLock<IntCounterVec> =
        LazyLock::new(|| counter_vec("ragpipe_documents_total", "Uploads finished, by outcome", &["outcome"]));

    /// Chunks written to the store.
    pub static CHUNKS: LazyLock<IntCounter> = LazyLock::new(|| {
        register_int_counter!("ragpipe_chunks_total", "Chunks written").expect("valid, unique metric definition")
    });

    /// Seconds spent per pipeline stage and document.
    pub static STAGE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
        let opts = HistogramOpts::new("ragpipe_stage_seconds", "Time per pipeline stage and document")
            .buckets(prometheus::exponential_buckets(0.001, 4.0, 10).unwrap_or_default());
        register_histogram_vec!(opts, &["stage"]).expect("valid, unique metric definition")
    });

    /// Embedding requests, by outcome (`ok`, `retry`, `error`).
    pub static EMBED_REQUESTS: LazyLock<IntCounterVec> =
        LazyLock::new(|| counter_vec("ragpipe_embed_requests_total", "Embedding requests", &["outcome"]));

    /// Inputs per embedding request.
    pub static EMBED_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
        let opts = HistogramOpts::new("ragpipe_embed_batch_inputs", "Inputs per embedding request")
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 2048.0]);
        register_histogram!(opts).expect("valid, unique metric definition")
    });

    /// Queries answered, by outcome (`ok`, `error`).
    pub static QUERIES: LazyLock<IntCounterVec> =
        LazyLock::new(|| counter_vec("ragpipe_queries_total", "Queries answered", &["outcome"]));

    /// Ratings of answers received, by rating (`up`, `down`): the satisfaction rate is
    /// up / (up + down).
    pub static FEEDBACK: LazyLock<IntCounterVec> =
        LazyLock::new(|| counter_vec("ragpipe_feedback_total", "Answer ratings received", &["rating"]));

    /// Seconds per query, from receipt to reply.
    pub static QUERY_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
        let opts = HistogramOpts::new("ragpipe_query_seconds", "Query latency")
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16).unwrap_or_default());
        register_histogram!(opts).expect("valid, unique metric definition")
    });

    /// Cache lookups, by cache (`embedding`, ...) and result (`hit`, `miss`).
    pub static CACHE_LOOKUPS: LazyLock<IntCounterVec> =
        LazyLock::new(|| counter_vec("ragpipe_cache_lookups_total", "Cache lookups", &["cache", "result"]));

    /// Cache operations that failed and were treated as misses, by operation.
    pub static CACHE_ERRORS: LazyLock<IntCounterVec> =
        LazyLock::new(|| counter_vec("ragpipe_cache_errors_total", "Cache failures degraded to misses", &["op"]));

    /// Vectors held in memory across all collection indexes.
    pub static INDEX_VECTORS: LazyLock<IntGauge> = LazyLock::new(|| {
        register_int_gauge!("ragpipe_index_vectors", "Vectors held in memory").expect("valid, unique metric definition")
    });

    /// 1 when the collection's last index rebuild passed verification, 0 when it failed (the
    /// previous generation stays in service): alert on 0.
    pub static INDEX_REBUILD_OK: LazyLock<IntGaugeVec> = LazyLock::new(|| {
        register_int_gauge_vec!(
            Opts::new("ragpipe_index_rebuild_ok", "Whether the last index rebuild passed verification"),
            &["collection"]
        )
        .expect("valid, unique metric definition")
    });

    /// Renders every registered metric in the Prometheus text format.
    pub fn render() -> String {
        let families = prometheus::gather();
        prometheus::TextEncoder::new().encode_to_string(&families).unwrap_or_default()
    }
}
