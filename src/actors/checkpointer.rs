//! The WAL checkpointer: moves committed pages from the WAL into the database
//! file on its own thread and connection, so the writer never does it.
//!
//! SQLite's automatic checkpoint runs inside the writer's `COMMIT` every 1,000
//! pages; with `synchronous=FULL` it fsyncs the database file there, and every
//! message waiting for that group commit waits for the checkpoint too (tens of
//! milliseconds: the p99 of the latency benchmark). The writer's connection
//! runs with `wal_autocheckpoint=0` instead, and this thread checkpoints in
//! `PASSIVE` mode, which never blocks the writer or readers. If the WAL still
//! grows past [`RESTART_FRAMES`] (the writer never pauses), one `RESTART`
//! checkpoint brings it back.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use crate::db::{self, DbError};

/// How often the checkpointer looks at the WAL.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// WAL frames (pages) above which a blocking `RESTART` checkpoint runs.
pub const RESTART_FRAMES: i64 = 16_384;

/// Owns the checkpoint thread; dropping it stops the thread.
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// `(busy, frames in the WAL, frames checkpointed)`, as SQLite reports them.
fn checkpoint(conn: &Connection, mode: &str) -> Result<(i64, i64, i64), DbError> {
    Ok(
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?,
    )
}

impl Checkpointer {
    pub fn start(path: PathBuf) -> Result<Self, DbError> {
        let conn = db::open_writer(&path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("united-checkpoint".into())
            .spawn(move || {
                while !flag.load(Ordering::Acquire) {
                    std::thread::sleep(CHECKPOINT_INTERVAL);
                    match checkpoint(&conn, "PASSIVE") {
                        Ok((_, frames, _)) if frames > RESTART_FRAMES => {
                            if let Err(e) = checkpoint(&conn, "RESTART") {
                                tracing::warn!(error = %e, "restart checkpoint failed");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "checkpoint failed"),
                    }
                }
            })
            .map_err(|e| DbError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
