//! ragpipe: a queue-driven retrieval-augmented-generation pipeline.
//!
//! Uploads arrive on a queue; staged workers extract, chunk, embed and store them in a
//! relational store and FAISS; a query worker answers request/reply messages from the same
//! stores. Distributed, those are RabbitMQ, PostgreSQL and Redis; with no URLs configured, the
//! same code runs on embedded parts (a SQLite file with a job table, an in-process cache). Start
//! reading at [`worker`] (how a process is wired) and [`ingest`] (the pipeline).
//!
//! Map of the crate, from the wiring down to the adapters:
//! - [`cli`]: one file per subcommand (`migrate`, `worker`, `ingest`, `query`, `delete`,
//!   `reindex`, `status`, `eval`, and the offline tools `extract` and `chunk`).
//! - [`worker`]: connects the backends into [`app::Services`] and runs the roles.
//! - [`ingest`]: the staged pipeline (dedup → extract → chunk → embed → persist + index → ack).
//! - [`query`]: the query worker (embed → FAISS → one SQL fetch → numbered context → answer
//!   with checked citations, by the LLM or extractive → reply) and the index follower.
//! - [`scheduler`]: the nightly index rebuild (cron, one leader per trigger), also `reindex`.
//! - [`reembed`]: `reindex --re-embed`: new vectors from stored chunk text after a model change.
//! - [`app`]: the connected services and the narrow context each role gets (imports no role).
//! - [`eval`]: BEIR datasets and retrieval measures (`ragpipe eval`).
//! - [`client`]: building uploads, awaiting outcomes, RPC queries (used by the CLI).
//! - [`http`]: `/metrics`, `/health`, `/ready`.
//! - [`fetch`]: reading an upload's bytes (`file://` under allowed roots, or inline).
//! - [`extract`]: bytes → text (pure).
//! - [`chunk`]: text → token-bounded chunks with offsets (pure).
//! - [`llm`]: the answering model (`[llm]`: OpenAI-compatible or Azure chat), its prompt.
//! - [`embed`]: the `Embedder` trait, its providers (OpenAI/Azure, a local BERT model on our own
//!   encoder, hash) and the policy around them (batching, retries, rate governor, cache).
//! - [`index`]: FAISS indexes per collection (flat, IVF, HNSW), snapshots, catch-up from the
//!   store's change log, builds and rebuilds from stored vectors.
//! - [`queue`]: the ports by use (uploads, events, request/reply), RabbitMQ and embedded.
//! - [`store`]: the `Store` trait, PostgreSQL and SQLite.
//! - [`cache`]: the `Cache` trait, Redis and in-process.
//! - [`embedded`]: the data directory's SQLite database, shared by the embedded store and queue.
//! - [`blobs`]: content-addressable storage of original bytes.
//! - [`blas`]: the CPU's SIMD level, the OpenBLAS kernel FAISS runs on, and the start-up guard
//!   that re-executes with a better kernel when OpenBLAS fell back to a generic one.
//! - [`messages`]: versioned wire types (uploads, queries, replies, events).
//! - [`config`]: typed settings (defaults < `workers.toml` < `RAGPIPE__SECTION__KEY`).
//! - [`error`]: the transient/permanent failure vocabulary.
//! - [`telemetry`]: logging and metric definitions.

pub mod app;
pub mod blas;
pub mod blobs;
pub mod cache;
pub mod chunk;
pub mod cli;
pub mod client;
pub mod config;
pub mod embed;
pub mod embedded;
pub mod error;
pub mod eval;
pub mod extract;
pub mod fetch;
pub mod http;
pub mod index;
pub mod ingest;
pub mod llm;
pub mod messages;
pub mod query;
pub mod queue;
pub mod reembed;
pub mod scheduler;
pub mod store;
pub mod telemetry;
pub mod worker;
