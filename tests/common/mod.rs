//! Test harness: every test gets its own PostgreSQL database, RabbitMQ queue and exchange names,
//! Redis key prefix and temp directories, so tests run in parallel and repeat on the same
//! servers; or, embedded, its own data directory (a real SQLite file, no server). Everything is
//! removed again when the [`TestEnv`] is dropped (even after a panic).
//!
//! Server URLs can be overridden with RAGPIPE_TEST_DATABASE_URL (an admin database to create
//! test databases from), RAGPIPE_TEST_AMQP_URL and RAGPIPE_TEST_REDIS_URL.
//!
//! [`on_both_backends!`] runs a test once distributed and once embedded, with the same body.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use ragpipe::app::{FaultHook, Services};
use ragpipe::client::{self, Outcome};
use ragpipe::config::{EmbedderKind, Settings};
use ragpipe::embedded::LazyDatabase;
use ragpipe::messages::{self, CollectionName, UploadMessage, VERSION};
use ragpipe::queue::{Events, Queue};
use ragpipe::worker::{self, Role};
use secrecy::{ExposeSecret, SecretString};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

pub fn admin_database_url() -> String {
    std::env::var("RAGPIPE_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("RAGPIPE_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn redis_url() -> String {
    std::env::var("RAGPIPE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// The shared test corpus, `../shared/corpus` next to the project.
pub fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus")
}

/// Runs each named `async fn(TestEnv)` twice: `distributed::name` on PostgreSQL, RabbitMQ and
/// Redis, and `embedded::name` on a SQLite file with the embedded queue and cache.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod distributed {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::TestEnv::new().await).await
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::TestEnv::embedded().await).await
                }
            )*
        }
    };
}

/// A collection name (tests use literal, valid names).
pub fn name(collection: &str) -> CollectionName {
    CollectionName::new(collection).expect("a valid collection name")
}

/// One test's isolated world.
pub struct TestEnv {
    pub settings: Settings,
    pub id: String,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database, or `None` embedded.
    database: Option<String>,
    /// The data directory's SQLite database, shared by every worker and client of the test (one
    /// process, one set of pools, as in `ragpipe` itself). Replaced when a test recreates or
    /// restores the store.
    embedded: std::sync::Mutex<Arc<LazyDatabase>>,
}

impl TestEnv {
    /// Embedded: no server at all, a fresh data directory.
    pub async fn embedded() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = dir.path().join("inbox");
        std::fs::create_dir_all(&inbox).expect("inbox");
        let mut settings = Settings::default();
        settings.storage.data_dir = dir.path().join("data");
        settings.storage.allowed_roots = vec![inbox, corpus()];
        settings.broker.delivery_limit = 3;
        // Short leases, so a job whose consumer stopped comes back within the test.
        settings.broker.lease_secs = 3;
        settings.broker.poll_ms = 20;
        settings.index.snapshot_interval_secs = 3600;
        settings.embedder.kind = EmbedderKind::Hash;
        settings.embedder.max_wait_ms = 5;
        settings.http.enabled = false;
        let embedded = std::sync::Mutex::new(Arc::new(LazyDatabase::new(settings.storage.database_file())));
        Self { settings, id, dir, database: None, embedded }
    }

    /// The embedded database of the test (as it is now).
    pub fn embedded_database(&self) -> Arc<LazyDatabase> {
        self.embedded.lock().expect("lock").clone()
    }

    /// Whether this is the embedded variant.
    pub fn is_embedded(&self) -> bool {
        self.database.is_none()
    }

    /// A fresh database, queue names, key prefix and directories.
    pub async fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let database = format!("ragpipe_test_{id}");
        let mut admin =
            sqlx::PgConnection::connect(&admin_database_url()).await.expect("connect to the admin database");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let mut db_url = url::Url::parse(&admin_database_url()).expect("database url");
        db_url.set_path(&database);

        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = dir.path().join("inbox");
        std::fs::create_dir_all(&inbox).expect("inbox");
        let mut settings = Settings::default();
        settings.database.url = Some(SecretString::from(db_url.to_string()));
        settings.database.pool_size = 5;
        settings.broker.url = Some(SecretString::from(amqp_url()));
        let b = &mut settings.broker;
        for name in [
            &mut b.ingest_exchange,
            &mut b.ingest_queue,
            &mut b.dead_letter_exchange,
            &mut b.dead_letter_queue,
            &mut b.query_queue,
            &mut b.events_exchange,
        ] {
            *name = format!("test.{id}.{name}");
        }
        b.delivery_limit = 3;
        settings.cache.url = Some(SecretString::from(redis_url()));
        settings.cache.key_prefix = format!("ragpipe-test:{id}:");
        settings.storage.data_dir = dir.path().join("data");
        settings.storage.allowed_roots = vec![inbox, corpus()];
        settings.index.snapshot_interval_secs = 3600;
        settings.embedder.kind = EmbedderKind::Hash;
        settings.embedder.max_wait_ms = 5;
        settings.http.enabled = false;
        let embedded = std::sync::Mutex::new(Arc::new(LazyDatabase::new(settings.storage.database_file())));
        Self { settings, id, dir, database: Some(database), embedded }
    }

    /// Where tests write their own files (an allowed root).
    pub fn inbox(&self) -> PathBuf {
        self.dir.path().join("inbox")
    }

    /// Writes a file into the inbox and returns its path.
    pub fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.inbox().join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    /// `count` uploads to `collection` of files of `size` bytes written to the inbox:
    /// consecutive slices of the corpus's tinyshakespeare.txt, so each is distinct text.
    pub fn shakespeare_uploads(&self, collection: &str, count: usize, size: usize) -> Vec<UploadMessage> {
        let text = std::fs::read_to_string(corpus().join("text/tinyshakespeare.txt")).expect("corpus");
        text.as_bytes()
            .chunks(size)
            .take(count)
            .enumerate()
            .map(|(i, part)| self.upload_file(&self.write(&format!("part-{i:03}.txt"), part), collection))
            .collect()
    }

    /// Connects every backend and runs a worker with `roles` in this process.
    pub async fn start_worker(&self, roles: &[Role]) -> TestWorker {
        self.start_worker_with(roles, None).await
    }

    /// Like [`TestEnv::start_worker`], with failure injection at the pipeline's commit points.
    pub async fn start_worker_with(&self, roles: &[Role], faults: Option<FaultHook>) -> TestWorker {
        let mut services = self.services().await;
        services.faults = faults;
        let services = Arc::new(services);
        let shutdown = CancellationToken::new();
        let roles = roles.to_vec();
        let handle = tokio::spawn({
            let (services, shutdown) = (services.clone(), shutdown.clone());
            async move { worker::run(services, &roles, shutdown).await.expect("worker run") }
        });
        TestWorker { services, shutdown, handle, embedded: self.is_embedded(), settings: self.settings.clone() }
    }

    /// Every backend connected, no role running.
    pub async fn services(&self) -> Services {
        let program = PathBuf::from(env!("CARGO_BIN_EXE_ragpipe"));
        worker::connect_with(self.settings.clone(), program, &self.embedded_database())
            .await
            .expect("connect the services")
    }

    /// A queue client of its own (RabbitMQ: a new connection; embedded: a new queue on the
    /// test's database). Embedded request/reply only reaches a query role on the same queue:
    /// ask a query through [`TestWorker::queue`].
    pub async fn queue(&self) -> Queue {
        ragpipe::queue::connect(&self.settings.broker, &self.embedded_database()).await.expect("queue")
    }

    /// The store alone (PostgreSQL, or SQLite in the data directory), migrated.
    pub async fn store(&self) -> Arc<dyn ragpipe::store::Store> {
        ragpipe::store::connect(&self.settings.database, &self.embedded_database()).await.expect("store").store
    }

    /// Saves the store as it is now (stop the workers first): PostgreSQL `CREATE DATABASE …
    /// TEMPLATE`, SQLite `VACUUM INTO`.
    pub async fn backup_store(&self) {
        match &self.database {
            Some(db) => {
                let mut admin = sqlx::PgConnection::connect(&admin_database_url()).await.expect("admin");
                terminate(&mut admin, db).await;
                let sql = format!("CREATE DATABASE {db}_backup TEMPLATE {db}");
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.expect("backup");
            }
            None => {
                let backup = self.dir.path().join("backup.db");
                let lazy = self.embedded_database();
                let db = lazy.get().await.expect("embedded database");
                let sql = format!("VACUUM INTO '{}'", backup.display());
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(db.writer()).await.expect("backup");
            }
        }
    }

    /// Puts the store back as [`TestEnv::backup_store`] saved it (`restore`), or replaces it with
    /// an empty one (a recreated database); index snapshots stay where they are.
    pub async fn replace_store(&self, restore: bool) {
        match &self.database {
            Some(db) => {
                let mut admin = sqlx::PgConnection::connect(&admin_database_url()).await.expect("admin");
                terminate(&mut admin, db).await;
                let drop = format!("DROP DATABASE {db} WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await.expect("drop");
                let create = if restore {
                    format!("CREATE DATABASE {db} TEMPLATE {db}_backup")
                } else {
                    format!("CREATE DATABASE {db}")
                };
                sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut admin).await.expect("create");
                if restore {
                    let drop = format!("DROP DATABASE {db}_backup WITH (FORCE)");
                    sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut admin).await.expect("drop backup");
                }
            }
            None => {
                let path = self.settings.storage.database_file();
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                if restore {
                    std::fs::rename(self.dir.path().join("backup.db"), &path).expect("restore");
                }
                *self.embedded.lock().expect("lock") = Arc::new(LazyDatabase::new(path));
            }
        }
    }

    /// A RabbitMQ client (distributed tests only).
    pub async fn broker(&self) -> ragpipe::queue::amqp::AmqpBroker {
        ragpipe::queue::amqp::AmqpBroker::connect(&self.settings.broker).await.expect("broker")
    }

    /// A pool on the test database (distributed tests only).
    pub async fn pool(&self) -> sqlx::PgPool {
        let url = self.settings.database.url.as_ref().expect("url").expose_secret().to_owned();
        sqlx::PgPool::connect(&url).await.expect("pool")
    }

    /// The value of a one-row, one-column integer query, on whichever store the test runs
    /// (write it portably: no casts, no parameters).
    pub async fn count(&self, sql: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        if self.is_embedded() {
            let lazy = self.embedded_database();
            let db = lazy.get().await.expect("embedded database");
            sqlx::query_scalar::<_, i64>(sql).fetch_one(db.reader()).await.expect("count")
        } else {
            sqlx::query_scalar::<_, i64>(sql).fetch_one(&self.pool().await).await.expect("count")
        }
    }

    /// Like [`TestEnv::count`], for one text column.
    pub async fn text(&self, sql: &str) -> String {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        if self.is_embedded() {
            let lazy = self.embedded_database();
            let db = lazy.get().await.expect("embedded database");
            sqlx::query_scalar::<_, String>(sql).fetch_one(db.reader()).await.expect("text")
        } else {
            sqlx::query_scalar::<_, String>(sql).fetch_one(&self.pool().await).await.expect("text")
        }
    }

    /// An upload of a file by reference.
    pub fn upload_file(&self, path: &Path, collection: &str) -> UploadMessage {
        let uri = url::Url::from_file_path(path.canonicalize().expect("canonical")).expect("uri");
        UploadMessage {
            v: VERSION,
            upload_id: uuid::Uuid::new_v4().to_string(),
            collection: name(collection),
            filename: path.file_name().expect("name").to_string_lossy().into_owned(),
            content_type: None,
            uri: Some(uri.to_string()),
            content_b64: None,
            metadata: Default::default(),
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Embedded: the temp directory goes with `dir`.
        let Some(database) = self.database.clone() else { return };
        let settings = self.settings.clone();
        // Drop runs outside any async context we can use: clean up on a thread with its own runtime.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                delete_topology(&settings).await;
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_database_url()).await {
                    for db in [database.clone(), format!("{database}_backup")] {
                        let sql = format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)");
                        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await;
                    }
                }
                delete_keys(&settings.cache.key_prefix).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Ends every session on `database` (a template or a dropped database must have none).
async fn terminate(admin: &mut sqlx::PgConnection, database: &str) {
    let sql = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    );
    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(admin).await;
}

async fn delete_topology(settings: &Settings) {
    let Ok(conn) = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await else {
        return;
    };
    let Ok(channel) = conn.create_channel().await else { return };
    let b = &settings.broker;
    for queue in [&b.ingest_queue, &b.dead_letter_queue, &b.query_queue] {
        let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    }
    for exchange in [&b.ingest_exchange, &b.dead_letter_exchange, &b.events_exchange] {
        let _ = channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
    }
    let _ = conn.close(200, "done".into()).await;
}

async fn delete_keys(prefix: &str) {
    let Ok(client) = redis::Client::open(redis_url()) else { return };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return };
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut conn).await.unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// A worker running inside the test process.
pub struct TestWorker {
    pub services: Arc<Services>,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    embedded: bool,
    settings: Settings,
}

impl TestWorker {
    /// Stops the worker, waits for it to drain (and write its final snapshot) and closes its
    /// broker connection, so anything it left unacknowledged is redelivered.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("worker stops within 30 s")
            .expect("worker task");
        self.services.queue.close().await;
    }

    /// A client for this worker: RabbitMQ, a new connection (it outlives the worker); embedded,
    /// the worker's own queue, whose query role answers in-process.
    pub async fn queue(&self) -> Queue {
        if self.embedded {
            self.services.queue.clone()
        } else {
            let broker = ragpipe::queue::amqp::AmqpBroker::connect(&self.settings.broker).await.expect("broker");
            Queue::new(ragpipe::queue::QueueKind::Amqp("test".into()), Arc::new(broker))
        }
    }
}

/// Publishes uploads (subscribing to outcomes first) and waits for all of them.
pub async fn ingest(queue: &Queue, uploads: &[UploadMessage]) -> std::collections::HashMap<String, Outcome> {
    let mut events = client::subscribe_outcomes(queue.events.as_ref()).await.expect("subscribe");
    for upload in uploads {
        queue.uploads.publish(&messages::encode(upload)).await.expect("publish upload");
    }
    let ids: Vec<String> = uploads.iter().map(|u| u.upload_id.clone()).collect();
    wait(&mut events, &ids).await
}

/// Waits for the outcomes of `ids`, failing the test after 60 s.
pub async fn wait(events: &mut Events, ids: &[String]) -> std::collections::HashMap<String, Outcome> {
    let outcomes = client::wait_for_outcomes(events, ids, Duration::from_secs(60), |_| {}).await;
    assert_eq!(outcomes.len(), ids.len(), "every upload must reach an outcome within 60 s: {outcomes:?}");
    outcomes
}

/// The ingested event, or a test failure naming what happened instead.
pub fn ingested(outcome: &Outcome) -> &messages::DocumentIngested {
    match outcome {
        Outcome::Ingested(event) => event,
        Outcome::Failed(event) => panic!("expected document.ingested, got {event:?}"),
    }
}

/// The failed event, or a test failure.
pub fn failed(outcome: &Outcome) -> &messages::DocumentFailed {
    match outcome {
        Outcome::Failed(event) => event,
        Outcome::Ingested(event) => panic!("expected document.failed, got {event:?}"),
    }
}

/// A TCP proxy to `target` that can be cut (open connections reset, new ones closed at once)
/// and restored.
pub struct Proxy {
    pub port: u16,
    up: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (up, _) = tokio::sync::watch::channel(true);
        let state = up.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*state.borrow() {
                    continue; // dropped: closed at once, like a refused connection
                }
                let mut down = state.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { port, up }
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// Serves a query process's `/metrics`, `/health` and `/ready` for `services` on a free port
/// until `shutdown`; returns the port.
pub async fn serve_ops(services: Arc<Services>, shutdown: &CancellationToken) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the ops endpoint");
    let port = listener.local_addr().expect("addr").port();
    let readiness = ragpipe::http::Readiness::new(services, true);
    tokio::spawn(ragpipe::http::serve(listener, readiness, shutdown.clone()));
    port
}

/// `GET path` on `port` over HTTP/1.0: the status code and the body.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect to the endpoint");
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("response");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}
