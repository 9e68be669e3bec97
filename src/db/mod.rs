//! The SQL of both engines: SQLite (`migrations`, `reads`, `writes`, the
//! pragmas below) and PostgreSQL (`postgres`). `crate::store` puts them
//! behind one interface.
//!
//! # Architecture Invariant
//! With SQLite, reads go through the r2d2 [`Pool`] (`reads`) and every write
//! through the one connection owned by the SQLite writer (`writes`).
//! Nothing else opens a SQLite connection that writes.

pub mod migrations;
pub mod order;
pub mod portable;
pub mod postgres;
pub mod reads;
pub(crate) mod rows;
pub mod writes;

use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::Message;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::Connection;

pub use writes::{LoginOutcome, MessageWrite, Purged, Skipped};

/// The database file inside the data directory.
pub const DB_FILE: &str = "united.db";

/// Pragmas every connection runs, the pool's and the writer's alike.
/// `secure_delete` overwrites deleted content instead of leaving it in free pages.
pub const CONNECTION_PRAGMAS: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = FULL;
    PRAGMA foreign_keys = ON;
    PRAGMA secure_delete = ON;
    PRAGMA busy_timeout = 5000;
";

/// Read connections in the pool.
pub const READ_POOL_SIZE: u32 = 8;

pub type Pool = r2d2::Pool<SqliteConnectionManager>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite")]
    Sqlite(#[from] rusqlite::Error),
    #[error("connection pool")]
    Pool(#[from] r2d2::Error),
    #[error("the database writer is gone")]
    WriterGone(#[from] actix::MailboxError),
    #[error("postgres")]
    Postgres(#[from] tokio_postgres::Error),
    /// The database cannot be reached (cluster mode): the caller may retry.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}

impl DbError {
    /// Whether the database could not be reached, as opposed to refusing
    /// the statement.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Unavailable(_) => true,
            DbError::Postgres(e) => postgres::is_connection_error(e),
            _ => false,
        }
    }
}

/// Group commit: messages of many conversations in one transaction. Each
/// result says whether that message was written.
#[derive(Message)]
#[rtype(result = "Result<Vec<Result<(), Skipped>>, DbError>")]
pub struct CommitMessages(pub Vec<MessageWrite>);

pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_FILE)
}

/// The file `united-hub backup` holds beside the database while it reads
/// it, with its process id: the checkpointer defers WAL resets meanwhile
/// (a `RESTART` would wait for the backup's snapshot and hold every commit
/// while it waits).
pub fn backup_marker(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-backup");
    PathBuf::from(name)
}

/// Whether a backup of `db` is running: its marker names a live process.
/// A marker left by a backup that was killed does not count.
pub fn backup_running(db: &Path) -> bool {
    live_pid(&backup_marker(db)).is_some()
}

/// The file a hub holds beside its database while it runs, with its
/// process id: tools that must not run beside a hub (`migrate` from it,
/// `restore` into it) and a second hub on the same directory check it.
pub fn hub_marker(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-hub");
    PathBuf::from(name)
}

/// Another process that runs a hub on `db`, if one does: the hub marker
/// names a live process other than this one.
pub fn other_hub(db: &Path) -> Option<u32> {
    live_pid(&hub_marker(db)).filter(|pid| *pid != std::process::id())
}

/// What a marker file holds: this process's id and, on Linux, when it
/// started, so that a marker left by a process that died is not taken for
/// a live one when its id is reused.
pub fn marker_text() -> String {
    let pid = std::process::id();
    match start_time(pid) {
        Some(started) => format!("{pid} {started}"),
        None => pid.to_string(),
    }
}

/// The process id in a marker file, if that process lives (and, when the
/// marker says when it started, is the same process).
fn live_pid(marker: &Path) -> Option<u32> {
    live_process(&std::fs::read_to_string(marker).ok()?)
}

/// The process id in a [`marker_text`], if that process lives (and, when
/// the text says when it started, is the same process).
pub fn live_process(text: &str) -> Option<u32> {
    let mut fields = text.split_whitespace();
    let pid = fields.next()?.parse::<u32>().ok()?;
    let alive = match fields.next() {
        Some(started) => start_time(pid).is_some_and(|now| now.to_string() == started),
        None => process_alive(pid),
    };
    alive.then_some(pid)
}

/// When process `pid` started (clock ticks since boot), if it lives.
#[cfg(target_os = "linux")]
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces), starttime is field 22.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn start_time(_pid: u32) -> Option<u64> {
    None
}

#[cfg(target_os = "linux")]
fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(not(target_os = "linux"))]
fn process_alive(_pid: u32) -> bool {
    true
}

/// How often a connection that writes retries a lock another connection
/// holds, and for how long in all (`busy_timeout`'s 5 s).
const BUSY_POLL: Duration = Duration::from_micros(100);
const BUSY_TRIES: i32 = 50_000;

/// The busy handler of the writer and the checkpointer: polls every
/// [`BUSY_POLL`] for about 5 s.
fn poll_busy(tries: i32) -> bool {
    std::thread::sleep(BUSY_POLL);
    tries < BUSY_TRIES
}

/// Opens a connection that writes (the `DbExecutor`'s, the checkpointer's),
/// with the pragmas applied. It never checkpoints on commit:
/// `store::sqlite::checkpointer` does that on its own thread.
pub fn open_writer(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    conn.execute_batch(CONNECTION_PRAGMAS)?;
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
    // SQLite's default busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ms... between
    // tries, so a writer that meets the checkpointer's short `RESTART` slept
    // up to twice as long as the lock was held.
    conn.busy_handler(Some(poll_busy))?;
    // Statements run per message; keep them all prepared.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Opens the read pool. Each connection runs the same pragmas as the writer.
pub fn open_pool(path: &Path) -> Result<Pool, DbError> {
    let manager = SqliteConnectionManager::file(path).with_init(|c| {
        c.execute_batch(CONNECTION_PRAGMAS)?;
        c.set_prepared_statement_cache_capacity(64);
        Ok(())
    });
    let pool = r2d2::Pool::builder()
        .max_size(READ_POOL_SIZE)
        .connection_timeout(Duration::from_secs(5))
        .build(manager)?;
    Ok(pool)
}

/// `journal_mode` and `synchronous` as one connection reports them.
pub fn durability_settings(conn: &Connection) -> Result<(String, i64), DbError> {
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    Ok((mode, sync))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A marker names a live process only if the process that wrote it
    /// still runs: its id with another start time (the id reused after a
    /// crash) or a dead id does not count.
    #[test]
    fn a_marker_counts_only_for_the_process_that_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        std::fs::write(&marker, marker_text()).unwrap();
        assert_eq!(live_pid(&marker), Some(std::process::id()));
        std::fs::write(&marker, format!("{} 1", std::process::id())).unwrap();
        assert_eq!(
            live_pid(&marker),
            None,
            "the same id, started at another time"
        );
        std::fs::write(&marker, "0").unwrap();
        assert_eq!(live_pid(&marker), None, "no process has id 0");
        std::fs::remove_file(&marker).unwrap();
        assert_eq!(live_pid(&marker), None);
    }
}
