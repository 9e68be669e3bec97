//! Storage: SQLite in WAL mode with `synchronous=FULL`.
//!
//! # Architecture Invariant
//! Reads go through the r2d2 [`Pool`] (`reads`); every write goes through the
//! one connection owned by `actors::DbExecutor` (`writes`). Nothing else opens
//! a connection that writes.

pub mod migrations;
pub mod reads;
pub mod writes;

use std::path::{Path, PathBuf};
use std::time::Duration;

use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::Connection;

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
}

pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_FILE)
}

/// Opens a connection that writes (the `DbExecutor`'s, the checkpointer's),
/// with the pragmas applied. It never checkpoints on commit:
/// `actors::checkpointer` does that on its own thread.
pub fn open_writer(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    conn.execute_batch(CONNECTION_PRAGMAS)?;
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
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
