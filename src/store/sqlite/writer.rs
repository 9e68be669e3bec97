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

use crate::db::writes::{self, LastSequences, Skipped};
use crate::db::{DbError, MessageWrite};
use crate::metrics::Metrics;
use crate::model::now_ms;

pub struct DbExecutor {
    /// The write connection; lives as long as the executor thread.
    conn: Connection,
    lanes: Arc<Lanes>,
    metrics: Arc<Metrics>,
    /// Each conversation's last committed sequence.
    last_sequences: LastSequences,
}

impl DbExecutor {
    pub fn new(conn: Connection, lanes: Arc<Lanes>, metrics: Arc<Metrics>) -> Self {
        DbExecutor {
            conn,
            lanes,
            metrics,
            last_sequences: LastSequences::default(),
        }
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
        let result =
            writes::commit_messages(&mut self.conn, &mut self.last_sequences, writes, now_ms());
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.write_batch_size.observe(writes.len() as f64);
        result
    }
}
