//! The embedded data directory and its SQLite database, shared by the embedded store and the
//! embedded queue (one file, `<data_dir>/ragpipe.db`, unless `database.url` names another).
//!
//! SQLite allows one writer at a time. Within a process, writes go through a pool of exactly one
//! connection, so they queue in order instead of spinning on the lock; reads use a separate pool
//! and, in WAL mode, never wait for the writer. Across processes (a `ragpipe worker` and CLI
//! commands on the same folder) the lock is SQLite's own, waited for up to `busy_timeout`, and
//! every write transaction starts with `BEGIN IMMEDIATE`, so it takes the lock before reading
//! and can never fail half-way on a stale snapshot.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, Transaction};
use tokio::sync::OnceCell;

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "ragpipe.db";

/// How long a write waits for another process's write lock before failing (transiently).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// A failure to open or migrate the database.
#[derive(Debug, thiserror::Error)]
#[error("embedded database {}: {message}", path.display())]
pub struct OpenError {
    path: PathBuf,
    message: String,
}

/// The two pools of one SQLite database file.
#[derive(Debug, Clone)]
pub struct Database {
    path: PathBuf,
    writer: SqlitePool,
    reader: SqlitePool,
}

impl Database {
    /// Opens (creating if needed) the database at `path` and applies the embedded migrations.
    ///
    /// # Errors
    /// The directory cannot be created, the file cannot be opened, or a migration fails.
    pub async fn open(path: &Path) -> Result<Self, OpenError> {
        let fail = |message: String| OpenError { path: path.to_owned(), message };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| fail(format!("cannot create its directory: {e}")))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL loses no committed transaction on a process crash (only on a
            // power cut, the last ones), and saves an fsync per commit.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // Under the open lock: the first connection to a new file switches it to WAL, which
        // SQLite may refuse at once ("database is locked") while another process does the same.
        let lock = open_lock(path).await.map_err(fail)?;
        // No ping before each use (sqlx's default): a connection to a local file cannot have been
        // cut, and the ping is a round trip to the connection's thread before every statement.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            // Writers queue here behind each other; a long queue is still progress.
            .acquire_timeout(Duration::from_secs(120))
            .connect_with(options.clone())
            .await
            .map_err(|e| fail(format!("cannot open: {e}")))?;
        let migrated = sqlx::migrate!("./migrations/sqlite").run(&writer).await;
        drop(lock);
        migrated.map_err(|e| fail(format!("migration failed: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.read_only(true))
            .await
            .map_err(|e| fail(format!("cannot open for reading: {e}")))?;
        Ok(Self { path: path.to_owned(), writer, reader })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pool for reads (several connections; never blocked by the writer).
    pub fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// The pool for single-statement writes (one connection: writes queue in order).
    pub fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// Starts a write transaction that holds SQLite's write lock from its first statement.
    ///
    /// # Errors
    /// The writer is busy beyond the timeouts, or the file is unusable.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        crate::store::timed_acquire("writer", self.writer.begin_with("BEGIN IMMEDIATE")).await
    }

    /// A connection for reads (the wait is measured).
    ///
    /// # Errors
    /// No connection within the pool's timeout.
    pub async fn read(&self) -> Result<PoolConnection<Sqlite>, sqlx::Error> {
        crate::store::timed_acquire("reader", self.reader.acquire()).await
    }

    /// The write connection, for one statement (the wait is measured).
    ///
    /// # Errors
    /// The writer is busy beyond the pool's timeout.
    pub async fn write(&self) -> Result<PoolConnection<Sqlite>, sqlx::Error> {
        crate::store::timed_acquire("writer", self.writer.acquire()).await
    }
}

/// An exclusive lock on `<db>.migrate.lock`, held while a process opens the file for writing and
/// applies `migrations/sqlite`, so that two processes starting at once on a new folder do not
/// race (SQLite has no advisory locks).
async fn open_lock(path: &Path) -> Result<std::fs::File, String> {
    let lock_path = path.with_extension("migrate.lock");
    tokio::task::spawn_blocking(move || lock_file(&lock_path)).await.map_err(|e| format!("open lock task: {e}"))?
}

/// An open file holding an exclusive `flock` until dropped.
fn lock_file(path: &Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own; blocks until the lock is free.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!("cannot lock {}: {}", path.display(), std::io::Error::last_os_error()));
    }
    Ok(file)
}

/// The SQLite database of a process's embedded backends, opened on first use: a store or queue
/// that is not embedded never creates the file.
#[derive(Debug)]
pub struct LazyDatabase {
    path: PathBuf,
    cell: OnceCell<Database>,
}

impl LazyDatabase {
    /// The database at `path`, not opened yet.
    pub fn new(path: PathBuf) -> Self {
        Self { path, cell: OnceCell::new() }
    }

    /// Where the file is (or will be).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens it on the first call; later calls share the same pools.
    ///
    /// # Errors
    /// See [`Database::open`].
    pub async fn get(&self) -> Result<&Database, OpenError> {
        self.cell.get_or_try_init(|| Database::open(&self.path)).await
    }
}

/// The database file named by a `sqlite://` URL (`sqlite:///abs/path.db`, `sqlite://rel.db`,
/// `sqlite:rel.db`).
///
/// # Errors
/// The URL does not name a file.
pub fn path_from_url(url: &str) -> Result<PathBuf, String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| format!("`{url}` is not a sqlite: URL"))?;
    let rest = rest.split('?').next().unwrap_or_default();
    if rest.is_empty() {
        return Err("a sqlite URL must name a file, e.g. sqlite://data/ragpipe.db".into());
    }
    let decoded = percent_encoding::percent_decode_str(rest).decode_utf8().map_err(|e| e.to_string())?;
    PathBuf::from_str(&decoded).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_files() {
        assert_eq!(path_from_url("sqlite:///var/lib/rp.db").expect("abs"), PathBuf::from("/var/lib/rp.db"));
        assert_eq!(path_from_url("sqlite://data/rp.db").expect("rel"), PathBuf::from("data/rp.db"));
        assert_eq!(path_from_url("sqlite:rp.db?mode=rwc").expect("short"), PathBuf::from("rp.db"));
        assert_eq!(path_from_url("sqlite://my%20dir/a+b.db").expect("escaped"), PathBuf::from("my dir/a+b.db"));
        assert!(path_from_url("sqlite://").is_err());
        assert!(path_from_url("postgres://x").is_err());
    }

    #[tokio::test]
    async fn two_opens_of_one_new_file_both_migrate_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/ragpipe.db");
        let (a, b) = tokio::join!(Database::open(&path), Database::open(&path));
        let (a, b) = (a.expect("first open"), b.expect("second open"));
        let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name IN ('chunks', 'jobs')")
            .fetch_one(a.reader())
            .await
            .expect("count");
        assert_eq!(tables, 2);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(b.writer()).await.expect("mode");
        assert_eq!(mode, "wal");
    }
}
