//! `DbExecutor`: the one SQLite write connection, on a `SyncArbiter` thread.
//!
//! It owns the connection and runs one job at a time, so writes are
//! serialised and every transaction is `BEGIN IMMEDIATE`. A job is a
//! closure over the connection ([`Writer::call`]): a write is a function of
//! `db::writes`, not a message type and a handler. Messages commit in
//! groups, gathered on this thread by the [`CommitLane`](super::commit_lane).
//!
//! Jobs reach it through a [`Writer`], in two lanes: message commits, and
//! everything else (logins, key publishes, acks, the janitor's purge). An
//! actix mailbox is first in, first out, so the lanes live beside it: every
//! job pushed to a lane sends one [`RunNext`], and each `RunNext` runs the
//! oldest commit if one waits, else the oldest other job. A commit thus
//! waits for at most the one write already running, however many
//! housekeeping writes are queued.
//!
//! # Architecture Invariant
//! This is the only place that writes to the database.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::{Actor, Addr, Handler, Message, SyncContext};
use rusqlite::Connection;

use crate::db::order::{self, Tail};
use crate::db::writes::{self, Committed, Skipped};
use crate::db::{DbError, MessageWrite};
use crate::metrics::Metrics;
use crate::model::now_ms;

pub struct DbExecutor {
    /// A backup the hub copies between writes, if one runs. Declared
    /// before `conn`, so that it ends before the connection it reads closes.
    backup: Option<HotBackup>,
    /// The write connection; lives as long as the executor thread.
    conn: Connection,
    lanes: Arc<Lanes>,
    metrics: Arc<Metrics>,
    /// Each conversation's last committed sequence, and the messages the
    /// conversation order has not indexed yet.
    committed: Committed,
}

impl DbExecutor {
    /// The writer of the database `conn` writes, whose conversation order
    /// stands at `committed`.
    pub fn new(
        conn: Connection,
        committed: Committed,
        lanes: Arc<Lanes>,
        metrics: Arc<Metrics>,
    ) -> Self {
        DbExecutor {
            backup: None,
            conn,
            lanes,
            metrics,
            committed,
        }
    }

    /// Reads the order's state again and makes `tail` its tail (after an
    /// import or a clear).
    pub(crate) fn reload_order(&mut self, tail: &Tail) -> Result<(), DbError> {
        let progress = order::Progress::read(&self.conn)?;
        tail.replace(&progress);
        self.committed = Committed::new(progress, tail.clone());
        Ok(())
    }
}

impl Actor for DbExecutor {
    type Context = SyncContext<Self>;
}

/// One queued write: runs on the writer thread and answers its caller.
type Job = Box<dyn FnOnce(&mut DbExecutor) + Send>;

/// Which lane a write waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Group commits of messages: always run first.
    Commit,
    /// Every other write.
    Housekeeping,
}

/// The writes waiting for the writer, by lane.
#[derive(Default)]
pub struct Lanes(Mutex<(VecDeque<Job>, VecDeque<Job>)>);

impl Lanes {
    fn push(&self, lane: Lane, job: Job) {
        let mut lanes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match lane {
            Lane::Commit => lanes.0.push_back(job),
            Lane::Housekeeping => lanes.1.push_back(job),
        }
    }

    fn pop(&self) -> Option<Job> {
        let mut lanes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lanes.0.pop_front().or_else(|| lanes.1.pop_front())
    }
}

/// Runs the next waiting write (see the module comment).
#[derive(Message)]
#[rtype(result = "()")]
struct RunNext;

impl Handler<RunNext> for DbExecutor {
    type Result = ();
    fn handle(&mut self, _: RunNext, _: &mut SyncContext<Self>) {
        if let Some(job) = self.lanes.pop() {
            job(self);
        }
    }
}

/// The way to the writer: its address and its lanes.
#[derive(Clone)]
pub struct Writer {
    addr: Addr<DbExecutor>,
    lanes: Arc<Lanes>,
    metrics: Arc<Metrics>,
}

impl Writer {
    pub fn new(addr: Addr<DbExecutor>, lanes: Arc<Lanes>, metrics: Arc<Metrics>) -> Self {
        Writer {
            addr,
            lanes,
            metrics,
        }
    }

    /// The hub's metrics, as the writer records them.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Queues `job` in `lane`; the writer thread runs it with the executor.
    pub(crate) fn run(&self, lane: Lane, job: impl FnOnce(&mut DbExecutor) + Send + 'static) {
        // Commits are counted while they wait, and timed.
        let waiting = (lane == Lane::Commit).then(|| {
            self.metrics.writer_commits_pending.inc();
            (self.metrics.clone(), Instant::now())
        });
        self.lanes.push(
            lane,
            Box::new(move |executor| {
                if let Some((metrics, queued)) = waiting {
                    metrics.writer_commits_pending.dec();
                    (metrics.stages.writer_wait).observe(queued.elapsed().as_secs_f64());
                }
                job(executor);
            }),
        );
        // `do_send` ignores the mailbox capacity: the lanes are the queue,
        // and their callers bound them.
        self.addr.do_send::<RunNext>(RunNext);
    }

    /// Queues `write` in `lane` and waits for its answer. It runs on the
    /// writer thread with the write connection.
    pub async fn call<T>(
        &self,
        lane: Lane,
        write: impl FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError>
    where
        T: Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.run(lane, move |executor| {
            // The caller may have given up waiting; the write stands.
            let _ = answer.send(write(&mut executor.conn));
        });
        answered
            .await
            .map_err(|_| DbError::WriterGone(actix::MailboxError::Closed))?
    }
}

impl Writer {
    /// Commits one group of messages in the commit lane, outside any
    /// [`CommitLane`](super::commit_lane::CommitLane): for tests and tools
    /// that hold a whole batch.
    pub async fn commit(
        &self,
        writes: Vec<MessageWrite>,
    ) -> Result<Vec<Result<(), Skipped>>, DbError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.run(Lane::Commit, move |executor| {
            let _ = answer.send(executor.commit(&writes));
        });
        answered
            .await
            .map_err(|_| DbError::WriterGone(actix::MailboxError::Closed))?
    }
}

impl DbExecutor {
    /// Commits one group of messages in one transaction; each result says
    /// whether that message was written.
    pub(crate) fn commit(
        &mut self,
        writes: &[MessageWrite],
    ) -> Result<Vec<Result<(), Skipped>>, DbError> {
        let started = Instant::now();
        let result = writes::commit_messages(&mut self.conn, &mut self.committed, writes, now_ms());
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.write_batch_size.observe(writes.len() as f64);
        result
    }
}

/// A copy of the database that the writer makes a few pages at a time,
/// between its other jobs, with SQLite's online backup API on the write
/// connection itself (`united-hub backup` beside a running hub, see
/// [`backup`](super::backup)). Because the source is the connection that
/// writes, every page a commit changes after it was copied is written to
/// the copy too, and the copy is the database as of its last step. No
/// read transaction is held between steps, so the WAL is never pinned and
/// the checkpointer keeps up while the backup runs.
pub(crate) struct HotBackup {
    handle: std::ptr::NonNull<rusqlite::ffi::sqlite3_backup>,
    /// The copy; closed after `handle` is finished (see `Drop`).
    dest: Option<Connection>,
    page_size: u64,
}

/// Where a backup stands after a step.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BackupStep {
    /// Bytes copied so far and bytes in the database now.
    pub copied: u64,
    pub total: u64,
    /// The copy is complete and committed.
    pub done: bool,
}

impl Drop for HotBackup {
    fn drop(&mut self) {
        // SAFETY: `handle` came from `sqlite3_backup_init` and is finished
        // only here, once; its source (the executor's connection) is still
        // open, because `DbExecutor::backup` is dropped before `conn`, and
        // its destination `dest` is closed after this call.
        unsafe {
            rusqlite::ffi::sqlite3_backup_finish(self.handle.as_ptr());
        }
    }
}

/// The last error SQLite left on `conn`: the backup API reports its
/// errors on the destination's connection.
fn errmsg(conn: &Connection) -> String {
    // SAFETY: the handle is open; SQLite returns a string it owns, valid
    // until the next call on the connection, and it is copied at once.
    unsafe {
        std::ffi::CStr::from_ptr(rusqlite::ffi::sqlite3_errmsg(conn.handle()))
            .to_string_lossy()
            .into_owned()
    }
}

impl HotBackup {
    /// The error SQLite left on the copy's connection.
    fn error(&self, rc: std::os::raw::c_int) -> DbError {
        let message = self.dest.as_ref().map(errmsg).unwrap_or_default();
        DbError::Other(format!("backup step failed ({rc}): {message}"))
    }
}

impl DbExecutor {
    /// Starts copying the database into `dest`, an empty database.
    pub(crate) fn backup_begin(&mut self, dest: Connection) -> Result<(), DbError> {
        if self.backup.is_some() {
            return Err(DbError::Other("a backup is already running".into()));
        }
        let page_size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let main = c"main";
        // SAFETY: both handles are open connections, used only on this
        // thread; the backup is finished (HotBackup's Drop) before either
        // closes.
        let raw = unsafe {
            rusqlite::ffi::sqlite3_backup_init(
                dest.handle(),
                main.as_ptr(),
                self.conn.handle(),
                main.as_ptr(),
            )
        };
        let Some(handle) = std::ptr::NonNull::new(raw) else {
            let error = rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                Some(errmsg(&dest)),
            );
            return Err(error.into());
        };
        self.backup = Some(HotBackup {
            handle,
            dest: Some(dest),
            page_size: page_size as u64,
        });
        Ok(())
    }

    /// Copies up to `pages` more pages. A step that finds the database
    /// busy copies nothing and says so by not advancing.
    pub(crate) fn backup_step(&mut self, pages: i32) -> Result<BackupStep, DbError> {
        let backup = self
            .backup
            .as_ref()
            .ok_or_else(|| DbError::Other("no backup is running".into()))?;
        // SAFETY: the handle is live (see HotBackup).
        let (rc, remaining, total) = unsafe {
            let rc = rusqlite::ffi::sqlite3_backup_step(backup.handle.as_ptr(), pages);
            (
                rc,
                rusqlite::ffi::sqlite3_backup_remaining(backup.handle.as_ptr()),
                rusqlite::ffi::sqlite3_backup_pagecount(backup.handle.as_ptr()),
            )
        };
        let done = match rc {
            rusqlite::ffi::SQLITE_DONE => true,
            rusqlite::ffi::SQLITE_OK
            | rusqlite::ffi::SQLITE_BUSY
            | rusqlite::ffi::SQLITE_LOCKED => false,
            _ => {
                let error = backup.error(rc);
                self.backup = None;
                return Err(error);
            }
        };
        let (total, remaining) = (total.max(0) as u64, remaining.max(0) as u64);
        Ok(BackupStep {
            copied: (total - remaining.min(total)) * backup.page_size,
            total: total * backup.page_size,
            done,
        })
    }

    /// Ends the backup, complete or not, and hands back the copy's
    /// connection.
    pub(crate) fn backup_end(&mut self) -> Option<Connection> {
        let mut backup = self.backup.take()?;
        let dest = backup.dest.take();
        drop(backup);
        dest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sum of every row's id and body, as SQL sees it: equal sums say
    /// two databases hold the same rows.
    fn digest(conn: &Connection) -> (i64, i64) {
        conn.query_row(
            "SELECT count(*), coalesce(sum(id * length(body) + unicode(body)), 0) FROM t",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    /// Writes between the steps of a backup, to pages already copied and
    /// to new ones, are in the copy: it equals the database as of its last
    /// step, and it opens as one plain file once its journal is switched.
    #[test]
    fn a_backup_made_between_writes_holds_every_write_before_its_last_step() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::db::open_writer(&dir.path().join("hub.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            .unwrap();
        // About 4 MiB: a thousand pages, so the copy takes many steps.
        for i in 0..2000 {
            conn.execute("INSERT INTO t (body) VALUES (?1)", [format!("{i:02000}")])
                .unwrap();
        }
        let mut executor = DbExecutor::new(
            conn,
            Committed::default(),
            Arc::new(Lanes::default()),
            Arc::new(Metrics::new()),
        );
        let copy = dir.path().join("copy.db");
        let dest = Connection::open(&copy).unwrap();
        dest.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
            .unwrap();
        executor.backup_begin(dest).unwrap();
        assert!(executor
            .backup_begin(Connection::open_in_memory().unwrap())
            .is_err());

        let mut steps = 0;
        let mut last = 0;
        loop {
            let step = executor.backup_step(16).unwrap();
            steps += 1;
            assert!(step.copied >= last || step.done, "progress went back");
            last = step.copied;
            if step.done {
                assert_eq!(step.copied, step.total);
                break;
            }
            // Rewrites a row the copy may already hold, and adds one.
            executor
                .conn
                .execute(
                    "UPDATE t SET body = ?1 WHERE id = ?2",
                    rusqlite::params![format!("step {steps}"), steps % 50 + 1],
                )
                .unwrap();
            executor
                .conn
                .execute("INSERT INTO t (body) VALUES (?1)", [format!("new {steps}")])
                .unwrap();
        }
        assert!(steps > 20, "only {steps} steps");
        let want = digest(&executor.conn);
        let dest = executor.backup_end().unwrap();
        assert!(executor.backup_end().is_none());
        drop(dest);

        let copied = Connection::open(&copy).unwrap();
        let mode: String = copied
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
        let check: String = copied
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        assert_eq!(digest(&copied), want);
        assert_eq!(want.0, 2000 + steps - 1);
        // A write after the backup ended is not in the copy.
        executor
            .conn
            .execute("INSERT INTO t (body) VALUES ('after')", [])
            .unwrap();
        assert_eq!(digest(&copied), want);
    }
}
