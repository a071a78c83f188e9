//! Typed settings: built-in defaults < `workers.toml` < environment (`RAGPIPE__SECTION__KEY`).
//!
//! Every section has a `Default`, so a missing file or section means "use the defaults". Unknown
//! keys are rejected (a typo must not silently fall back to a default), and [`Settings::validate`]
//! checks the values at start with messages that name the key. URLs may carry passwords, so they
//! are [`SecretString`]s and are only ever logged through [`redact_url`].

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::chunk::ChunkSettings;
pub use crate::embed::settings::{AZURE_API_KEY_ENV, EmbedderKind, EmbedderSettings, LongInputs, OPENAI_API_KEY_ENV};
use crate::extract::ExtractSettings;
pub use crate::llm::{LlmKind, LlmSettings};
use crate::messages::SearchMode;

/// Environment variable that names the config file (default `workers.toml` if it exists).
pub const CONFIG_ENV: &str = "RAGPIPE_CONFIG";

/// All settings of a ragpipe process.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// RabbitMQ connection and topology names.
    pub broker: BrokerSettings,
    /// PostgreSQL connection and pool.
    pub database: DatabaseSettings,
    /// Redis connection, key prefix and TTLs.
    pub cache: CacheSettings,
    /// Content-addressable storage and the roots `file://` uploads may come from.
    pub storage: StorageSettings,
    /// The staged ingest pipeline: concurrency and channel sizes.
    pub ingest: IngestSettings,
    /// Text extraction limits and sandbox.
    pub extract: ExtractSettings,
    /// Chunking strategy and token budgets.
    pub chunk: ChunkSettings,
    /// The embedding model and its batching.
    pub embedder: EmbedderSettings,
    /// The FAISS indexes and their snapshots.
    pub index: IndexSettings,
    /// The query worker.
    pub query: QuerySettings,
    /// The model that writes answers (absent or `kind = "none"`: extractive answers).
    pub llm: LlmSettings,
    /// The operations HTTP endpoint (`/metrics`, `/health`, `/ready`).
    pub http: HttpSettings,
}

/// `[broker]`: RabbitMQ.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSettings {
    /// `amqp://user:pass@host:port/vhost`; absent means the embedded queue (a job table in the
    /// data directory's SQLite file).
    pub url: Option<SecretString>,
    /// Direct exchange uploads are published to.
    pub ingest_exchange: String,
    /// Routing key of uploads on `ingest_exchange`.
    pub ingest_routing_key: String,
    /// Durable quorum queue the ingest workers consume.
    pub ingest_queue: String,
    /// Exchange that receives dead letters.
    pub dead_letter_exchange: String,
    /// Queue that keeps dead letters for inspection.
    pub dead_letter_queue: String,
    /// How many times a message may be delivered before RabbitMQ dead-letters it.
    pub delivery_limit: u32,
    /// Queue that query requests are sent to (default exchange, standard RPC).
    pub query_queue: String,
    /// Topic exchange for `document.*` and `index.*` events.
    pub events_exchange: String,
    /// Unacknowledged uploads one ingest worker may hold: the bound on documents in flight, and
    /// so on the batches the claim, persist and ack steps can form (64: small documents spend
    /// half the database and broker CPU per document they spent at 16). Memory in flight is at
    /// most about this many uploads of the largest accepted size.
    pub prefetch: u16,
    /// Unacknowledged queries one query worker may hold.
    pub query_prefetch: u16,
    /// Seconds to wait for a publisher confirm before treating the publish as failed.
    pub confirm_timeout_secs: u64,
    /// Embedded queue: seconds a consumer holds a job before it is delivered again, unless the
    /// consumer renews it (it does, every third of this, while it works). Bounds how long a
    /// job waits after its worker was killed.
    pub lease_secs: u64,
    /// Embedded queue: milliseconds between looks for work published by other processes.
    pub poll_ms: u64,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            url: None,
            ingest_exchange: "ragpipe.ingest".into(),
            ingest_routing_key: "upload".into(),
            ingest_queue: "ragpipe.ingest".into(),
            dead_letter_exchange: "ragpipe.dlx".into(),
            dead_letter_queue: "ragpipe.ingest.dead".into(),
            delivery_limit: 5,
            query_queue: "ragpipe.query".into(),
            events_exchange: "ragpipe.events".into(),
            prefetch: 64,
            query_prefetch: 32,
            confirm_timeout_secs: 30,
            lease_secs: 30,
            poll_ms: 100,
        }
    }
}

/// `[database]`: PostgreSQL.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user:pass@host:port/db`, or `sqlite://path/to/file.db`; absent means the
    /// embedded SQLite store in the data directory.
    pub url: Option<SecretString>,
    /// Most connections the pool opens (the seed article's pool-exhaustion lesson: size it).
    pub pool_size: u32,
    /// Connections kept open when idle.
    pub min_connections: u32,
    /// Seconds to wait for a free connection before failing (transiently).
    pub acquire_timeout_secs: u64,
    /// Seconds after which a connection is closed and replaced.
    pub max_lifetime_secs: u64,
    /// Seconds an idle connection is kept.
    pub idle_timeout_secs: u64,
    /// Run pending migrations when a worker starts.
    pub migrate_on_start: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 10,
            min_connections: 1,
            acquire_timeout_secs: 10,
            max_lifetime_secs: 1800,
            idle_timeout_secs: 600,
            migrate_on_start: true,
        }
    }
}

/// `[cache]`: Redis, or an in-process cache when `url` is absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// `redis://host:port/db`; absent means the in-process cache.
    pub url: Option<SecretString>,
    /// Prefix of every key, so several deployments (or tests) can share one Redis.
    pub key_prefix: String,
    /// Seconds an embedding stays cached.
    pub embedding_ttl_secs: u64,
    /// Seconds a retrieval result stays cached (keys include the index version).
    pub retrieval_ttl_secs: u64,
    /// Seconds a full query response stays cached (keys include the index version).
    pub response_ttl_secs: u64,
    /// Entries the in-process cache holds at most.
    pub memory_capacity: u64,
    /// Milliseconds a Redis command may take before it counts as a miss.
    pub timeout_ms: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            url: None,
            key_prefix: "ragpipe:".into(),
            embedding_ttl_secs: 24 * 3600,
            retrieval_ttl_secs: 3600,
            response_ttl_secs: 1800,
            memory_capacity: 100_000,
            timeout_ms: 250,
        }
    }
}

/// `[storage]`: the data directory, where original bytes are kept, and where uploads may be read
/// from.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// The data directory: everything a process keeps on disk lives under it unless configured
    /// elsewhere (the embedded database `ragpipe.db`, `blobs/`, `index/`). Deleting it resets an
    /// embedded deployment; two folders never interfere.
    pub data_dir: PathBuf,
    /// Root of the content-addressable store (`<root>/ab/<sha256>`); default `<data_dir>/blobs`.
    pub root: Option<PathBuf>,
    /// Directories a `file://` upload may name. Anything else is refused. A TOML list; from the
    /// environment also a JSON array (`["/a", "/b"]`) or a comma-separated list (`/a,/b`).
    #[serde(deserialize_with = "path_list")]
    pub allowed_roots: Vec<PathBuf>,
    /// Uploads of at most this many bytes keep their original bytes in their document's row
    /// (committed with it) instead of a file of the blob store: a file costs a small document
    /// more than everything else it does (an inode, two fsyncs). 0 = every upload gets a file.
    pub in_database_max_bytes: usize,
}

/// A list of paths given as a list, a JSON array in a string, or a comma-separated string.
fn path_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        List(Vec<String>),
        Text(String),
    }
    let entries = match Given::deserialize(deserializer)? {
        Given::List(list) => list,
        Given::Text(text) if text.trim_start().starts_with('[') => serde_json::from_str(&text)
            .map_err(|e| serde::de::Error::custom(format!("not a JSON array of paths ({e}): {text}")))?,
        Given::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    entries
        .into_iter()
        .map(|entry| entry.trim().to_owned())
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            if entry.contains(['"', '[', ']']) {
                Err(serde::de::Error::custom(format!(
                    "`{entry}` is not a path; give a list, a JSON array or comma-separated paths"
                )))
            } else {
                Ok(PathBuf::from(entry))
            }
        })
        .collect()
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            root: None,
            allowed_roots: Vec::new(),
            in_database_max_bytes: 64 * 1024,
        }
    }
}

impl StorageSettings {
    /// Where original bytes are kept.
    pub fn blob_root(&self) -> PathBuf {
        self.root.clone().unwrap_or_else(|| self.data_dir.join("blobs"))
    }

    /// The embedded database file (used when `database.url` or `broker.url` is absent).
    pub fn database_file(&self) -> PathBuf {
        self.data_dir.join(crate::embedded::DATABASE_FILE)
    }
}

/// `[ingest]`: the staged pipeline. Every stage is bounded: channels give backpressure.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Capacity of each channel between two stages.
    pub channel_capacity: usize,
    /// Documents hashed and stored at once.
    pub dedup_concurrency: usize,
    /// Extraction child processes at once.
    pub extract_concurrency: usize,
    /// Documents chunked at once (CPU work, on the blocking pool).
    pub chunk_concurrency: usize,
    /// Persist transactions at once (each holds one pooled connection).
    pub persist_concurrency: usize,
    /// Most documents claimed or written in one transaction: the dedup stage's claims (one
    /// transaction at a time) and the persist stage take what is ready at once, up to this many,
    /// so a burst of small documents costs one commit and one index add, not one each (1 = a
    /// transaction per document). Each message is still acknowledged only after its own document
    /// is committed and indexed.
    pub persist_batch: usize,
    /// Largest inline (`content_b64`) upload accepted, in bytes.
    pub max_inline_bytes: usize,
    /// Seconds a stopping worker (SIGTERM, Ctrl-C) gives in-flight documents and queries to
    /// finish; what is still unfinished then is left unacknowledged, so the queue delivers it
    /// again, and the worker writes its index snapshots and exits.
    pub shutdown_grace_secs: u64,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            channel_capacity: 16,
            dedup_concurrency: 8,
            extract_concurrency: 2,
            chunk_concurrency: 2,
            persist_concurrency: 4,
            persist_batch: 32,
            max_inline_bytes: 32 * 1024 * 1024,
            shutdown_grace_secs: 30,
        }
    }
}

/// `[index]`: FAISS indexes (one per collection) and their snapshots.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexSettings {
    /// Directory holding one sub-directory of snapshots per collection; default
    /// `<storage.data_dir>/index`.
    pub dir: Option<PathBuf>,
    /// Seconds between snapshots of an index that changed.
    pub snapshot_interval_secs: u64,
    /// Vectors added or removed after which an index is snapshotted without waiting for the
    /// interval; 0 = only by time.
    pub snapshot_after_changes: u64,
    /// Index structure of every collection.
    pub kind: IndexKindSetting,
    /// `auto`: vectors from which a collection is built as IVF instead of Flat.
    pub auto_threshold: usize,
    /// IVF cells; 0 = about 4·√N for N vectors at build time.
    pub nlist: usize,
    /// IVF cells searched per query; 0 = the fewest that reach `target_recall`, measured at build.
    pub nprobe: usize,
    /// HNSW links per node.
    pub hnsw_m: usize,
    /// HNSW candidates kept per query; 0 = the fewest that reach `target_recall`, measured.
    pub ef_search: usize,
    /// Recall@10 against exact search that approximate indexes must reach on a sample of the
    /// collection's own vectors; a rebuild below it is rejected and the old generation kept.
    pub target_recall: f64,
    /// When the scheduler rebuilds every collection from stored vectors (cron, UTC; five
    /// fields: minute hour day-of-month month day-of-week). Empty = never.
    pub rebuild_cron: String,
    /// Seconds after which a rebuild run whose scheduler died may be taken over by another.
    pub rebuild_lease_secs: u64,
}

impl Default for IndexSettings {
    fn default() -> Self {
        Self {
            dir: None,
            snapshot_interval_secs: 30,
            snapshot_after_changes: 50_000,
            kind: IndexKindSetting::Auto,
            auto_threshold: 50_000,
            nlist: 0,
            nprobe: 0,
            hnsw_m: 32,
            ef_search: 0,
            target_recall: 0.95,
            rebuild_cron: "0 3 * * *".into(),
            rebuild_lease_secs: 3600,
        }
    }
}

impl IndexSettings {
    /// The rebuild schedule (`None` when `rebuild_cron` is empty).
    ///
    /// # Errors
    /// The expression is not a valid cron pattern.
    pub fn rebuild_schedule(&self) -> Result<Option<croner::Cron>, String> {
        let pattern = self.rebuild_cron.trim();
        if pattern.is_empty() {
            return Ok(None);
        }
        pattern
            .parse::<croner::Cron>()
            .map(Some)
            .map_err(|e| format!("index.rebuild_cron `{pattern}` is not a cron expression: {e}"))
    }
}

/// `[index] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexKindSetting {
    /// Flat below `auto_threshold` vectors, IVF beyond.
    Auto,
    /// Exact search.
    Flat,
    /// Inverted lists (`nlist`, `nprobe`).
    Ivf,
    /// Proximity graph (`hnsw_m`, `ef_search`).
    Hnsw,
}

/// `[query]`: the query worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySettings {
    /// Collection used when a request names none.
    pub default_collection: String,
    /// Results returned when a request gives no `top_k`.
    pub default_top_k: usize,
    /// Largest `top_k` a request may ask for.
    pub max_top_k: usize,
    /// FAISS candidates fetched per requested result (room for filtering deleted chunks).
    pub candidate_factor: usize,
    /// Longest query text accepted, in characters.
    pub max_query_chars: usize,
    /// Queries handled at once per worker.
    pub concurrency: usize,
    /// Seconds `ragpipe query` waits for a reply.
    pub client_timeout_secs: u64,
    /// Seconds a query may spend embedding its text (retries included) before it gets an
    /// `embedding_timeout` error reply; below `client_timeout_secs`, so clients hear why.
    pub embed_timeout_secs: u64,
    /// Retrieval mode of requests that name none.
    pub default_mode: SearchMode,
    /// The `k` of reciprocal rank fusion in hybrid mode: a chunk scores Σ 1 / (k + rank).
    pub rrf_k: u32,
    /// Token budget of an answer's numbered context (counted with the answering model's
    /// tokenizer).
    pub context_tokens: usize,
    /// Sentences an extractive answer (no LLM) quotes at most.
    pub answer_sentences: usize,
    /// Share of a cited sentence's content words that must occur in the chunk it cites for the
    /// citation to stay (0 keeps every citation to a source in the context).
    pub min_citation_support: f64,
    /// Milliseconds a request may take from its receipt when it brings no deadline of its own
    /// (`deadline_ms`, AMQP `expiration`); work still running then is abandoned with a `timeout`
    /// error reply.
    pub deadline_ms: u64,
    /// Documents `mode: hierarchical` takes its chunks from.
    pub hierarchical_documents: usize,
}

impl Default for QuerySettings {
    fn default() -> Self {
        Self {
            default_collection: "default".into(),
            default_top_k: 5,
            max_top_k: 100,
            candidate_factor: 2,
            max_query_chars: 8_000,
            concurrency: 8,
            client_timeout_secs: 30,
            embed_timeout_secs: 20,
            default_mode: SearchMode::Hybrid,
            rrf_k: 60,
            context_tokens: 3_000,
            answer_sentences: 3,
            min_citation_support: 0.3,
            deadline_ms: 30_000,
            hierarchical_documents: 3,
        }
    }
}

/// `[http]`: the operations endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address to bind; port 0 picks a free port, `enabled = false` serves nothing.
    pub bind: String,
    /// Port of `/metrics`, `/health` and `/ready`.
    pub port: u16,
    /// Serve the endpoint at all.
    pub enabled: bool,
    /// Change-log entries an index of a query process may trail the store by and still be
    /// ready; further behind, `/ready` answers 503 naming the collection.
    pub ready_max_lag: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { bind: "127.0.0.1".into(), port: 9464, enabled: true, ready_max_lag: 1_000 }
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or the environment could not be read or parsed.
    #[error("could not load configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// One or more values are out of range; each line names the key.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Settings {
    /// Where index snapshots are kept.
    pub fn index_dir(&self) -> PathBuf {
        self.index.dir.clone().unwrap_or_else(|| self.storage.data_dir.join("index"))
    }

    /// Loads defaults, then the config file, then `RAGPIPE__SECTION__KEY` variables, and validates.
    ///
    /// `file` is used if given; otherwise `$RAGPIPE_CONFIG`, otherwise `./workers.toml` if present.
    ///
    /// # Errors
    /// A file that is named but missing, a parse error, an unknown key, or an invalid value.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let named = file.map(Path::to_path_buf).or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
        let mut builder = config::Config::builder();
        match named {
            Some(path) => builder = builder.add_source(config::File::from(path).required(true)),
            None => builder = builder.add_source(config::File::with_name("workers.toml").required(false)),
        }
        // Double underscores because keys like `pool_size` contain single ones.
        let env = config::Environment::with_prefix("RAGPIPE").prefix_separator("__").separator("__").try_parsing(true);
        let mut settings: Settings = builder.add_source(env).build()?.try_deserialize()?;
        // API keys come from their own variables only, never from a file.
        settings.embedder.load_api_key();
        settings.llm.load_api_key();
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value that has a valid range.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem found, each naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut positive = |key: &str, value: u64| {
            if value == 0 {
                problems.push(format!("{key} must be greater than 0"));
            }
        };
        positive("broker.prefetch", self.broker.prefetch.into());
        positive("broker.query_prefetch", self.broker.query_prefetch.into());
        positive("broker.delivery_limit", self.broker.delivery_limit.into());
        positive("broker.confirm_timeout_secs", self.broker.confirm_timeout_secs);
        positive("broker.lease_secs", self.broker.lease_secs);
        positive("broker.poll_ms", self.broker.poll_ms);
        positive("database.pool_size", self.database.pool_size.into());
        positive("database.acquire_timeout_secs", self.database.acquire_timeout_secs);
        positive("cache.embedding_ttl_secs", self.cache.embedding_ttl_secs);
        positive("cache.retrieval_ttl_secs", self.cache.retrieval_ttl_secs);
        positive("cache.response_ttl_secs", self.cache.response_ttl_secs);
        positive("ingest.channel_capacity", self.ingest.channel_capacity as u64);
        positive("ingest.dedup_concurrency", self.ingest.dedup_concurrency as u64);
        positive("ingest.extract_concurrency", self.ingest.extract_concurrency as u64);
        positive("ingest.chunk_concurrency", self.ingest.chunk_concurrency as u64);
        positive("ingest.persist_concurrency", self.ingest.persist_concurrency as u64);
        positive("ingest.persist_batch", self.ingest.persist_batch as u64);
        positive("index.snapshot_interval_secs", self.index.snapshot_interval_secs);
        positive("index.hnsw_m", self.index.hnsw_m as u64);
        positive("index.rebuild_lease_secs", self.index.rebuild_lease_secs);
        positive("query.default_top_k", self.query.default_top_k as u64);
        positive("query.candidate_factor", self.query.candidate_factor as u64);
        positive("query.concurrency", self.query.concurrency as u64);
        positive("query.max_query_chars", self.query.max_query_chars as u64);
        positive("query.embed_timeout_secs", self.query.embed_timeout_secs);
        positive("query.context_tokens", self.query.context_tokens as u64);
        positive("query.answer_sentences", self.query.answer_sentences as u64);
        positive("query.deadline_ms", self.query.deadline_ms);
        positive("query.hierarchical_documents", self.query.hierarchical_documents as u64);
        if !(0.0..=1.0).contains(&self.query.min_citation_support) {
            problems.push(format!(
                "query.min_citation_support ({}) must be between 0 and 1",
                self.query.min_citation_support
            ));
        }
        problems.extend(self.llm.problems());
        if self.database.min_connections > self.database.pool_size {
            problems.push(format!(
                "database.min_connections ({}) must not exceed database.pool_size ({})",
                self.database.min_connections, self.database.pool_size
            ));
        }
        if self.query.default_top_k > self.query.max_top_k {
            problems.push(format!(
                "query.default_top_k ({}) must not exceed query.max_top_k ({})",
                self.query.default_top_k, self.query.max_top_k
            ));
        }
        for (key, url, schemes) in [
            ("broker.url", &self.broker.url, &["amqp", "amqps"][..]),
            ("database.url", &self.database.url, &["postgres", "postgresql", "sqlite"][..]),
            ("cache.url", &self.cache.url, &["redis", "rediss"][..]),
        ] {
            if let Some(url) = url {
                check_url(key, url.expose_secret(), schemes, &mut problems);
            }
        }
        if !(self.index.target_recall > 0.0 && self.index.target_recall <= 1.0) {
            problems.push(format!("index.target_recall ({}) must be in (0, 1]", self.index.target_recall));
        }
        if let Err(problem) = self.index.rebuild_schedule() {
            problems.push(problem);
        }
        self.embedder.validate_into(&mut problems);
        if let Err(problem) = self.extract.validate() {
            problems.push(problem);
        }
        if let Err(problem) = self.chunk.validate() {
            problems.push(problem);
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }
}

/// Pushes a problem unless `raw` parses as a URL with one of `schemes`.
pub(crate) fn check_url(key: &str, raw: &str, schemes: &[&str], problems: &mut Vec<String>) {
    match url::Url::parse(raw) {
        Ok(url) if schemes.contains(&url.scheme()) => {}
        Ok(url) => {
            problems.push(format!("{key} has scheme `{}`; expected one of {}", url.scheme(), schemes.join(", ")))
        }
        // The parse error never echoes the URL, so no password can leak through it.
        Err(error) => problems.push(format!("{key} is not a valid URL: {error}")),
    }
}

/// A URL with any password replaced by `***`, safe to log.
pub fn redact_url(secret: &SecretString) -> String {
    match url::Url::parse(secret.expose_secret()) {
        Ok(mut url) => {
            if url.password().is_some() {
                // Setting a password only fails for URLs that cannot have one.
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "<unparseable url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate().expect("defaults must validate");
    }

    #[test]
    fn invalid_values_name_their_keys() {
        let mut settings = Settings::default();
        settings.database.pool_size = 0;
        settings.broker.url = Some(SecretString::from("http://guest:guest@localhost"));
        let message = settings.validate().expect_err("must fail").to_string();
        assert!(message.contains("database.pool_size must be greater than 0"), "{message}");
        assert!(message.contains("broker.url has scheme `http`"), "{message}");
        assert!(!message.contains("guest:guest"), "secrets must not leak: {message}");
    }

    #[test]
    fn redacted_urls_hide_passwords() {
        let url = SecretString::from("amqp://user:hunter2@localhost:5672/%2f");
        let shown = redact_url(&url);
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("user:***@localhost"));
        assert!(!format!("{url:?}").contains("hunter2"));
    }
}
