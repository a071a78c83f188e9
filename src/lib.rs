//! ragpipe: a queue-driven retrieval-augmented-generation pipeline.
//!
//! Uploads arrive on RabbitMQ; staged workers extract, chunk, embed and store them in PostgreSQL
//! and FAISS; a query worker answers request/reply messages from the same stores. Start reading
//! at [`worker`] (how a process is wired) and [`ingest`] (the pipeline).
//!
//! Map of the crate, from the wiring down to the adapters:
//! - [`cli`]: one file per subcommand (`migrate`, `worker`, `ingest`, `query`, `status`, and the
//!   offline tools `extract` and `chunk`).
//! - [`worker`]: connects every backend into [`worker::Services`] and runs the roles.
//! - [`ingest`]: the staged pipeline (dedup → extract → chunk → embed → persist + index → ack).
//! - [`query`]: the query worker (embed → FAISS → one SQL fetch → reply).
//! - [`client`]: building uploads, awaiting outcomes, RPC queries (used by the CLI).
//! - [`http`]: `/metrics`, `/health`, `/ready`.
//! - [`extract`]: bytes → text (pure).
//! - [`chunk`]: text → token-bounded chunks with offsets (pure).
//! - [`embed`]: the `Embedder` trait, its providers (OpenAI/Azure, a local BERT model on our own
//!   encoder, hash) and the policy around them (batching, retries, rate governor, cache).
//! - [`index`]: FAISS indexes per collection, snapshots, catch-up from the store.
//! - [`queue`]: the `Broker` trait and its RabbitMQ adapter.
//! - [`store`]: the `Store` trait and its PostgreSQL adapter.
//! - [`cache`]: the `Cache` trait, Redis and in-process.
//! - [`blobs`]: content-addressable storage of original bytes.
//! - [`blas`]: the CPU's SIMD level, the OpenBLAS kernel FAISS runs on, and the start-up guard
//!   that re-executes with a better kernel when OpenBLAS fell back to a generic one.
//! - [`messages`]: versioned wire types (uploads, queries, replies, events).
//! - [`config`]: typed settings (defaults < `workers.toml` < `RAGPIPE__SECTION__KEY`).
//! - [`error`]: the transient/permanent failure vocabulary.
//! - [`telemetry`]: logging and metric definitions.

pub mod blas;
pub mod blobs;
pub mod cache;
pub mod chunk;
pub mod cli;
pub mod client;
pub mod config;
pub mod embed;
pub mod error;
pub mod extract;
pub mod http;
pub mod index;
pub mod ingest;
pub mod messages;
pub mod query;
pub mod queue;
pub mod store;
pub mod telemetry;
pub mod worker;
