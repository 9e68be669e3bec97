//! `DbExecutor`: the one SQLite write connection, on a `SyncArbiter` thread.
//!
//! It owns the connection and handles one message at a time, so writes are
//! serialised and every transaction is `BEGIN IMMEDIATE`. Messages commit
//! in groups, gathered on this thread by a `WriterQueue` (see
//! `write_batcher`).
//!
//! Work reaches it through a [`Writer`], in two lanes: message commits, and
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
use uuid::Uuid;

use crate::db::writes::{self, LastSequences, LoginOutcome, Purged, Skipped};
use crate::db::{CommitMessages, DbError, MessageWrite};
use crate::metrics::Metrics;
use crate::model::{now_ms, Conversation, DmKey, Pubkey, User};

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

/// One queued write: runs the handler and answers its caller.
type Job = Box<dyn FnOnce(&mut DbExecutor, &mut SyncContext<DbExecutor>) + Send>;

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
    fn handle(&mut self, _: RunNext, ctx: &mut SyncContext<Self>) {
        if let Some(job) = self.lanes.pop() {
            job(self, ctx);
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

    /// The executor itself, for messages that need no lane (tests asking
    /// about the connection).
    pub fn addr(&self) -> &Addr<DbExecutor> {
        &self.addr
    }

    /// The hub's metrics, as the writer records them.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Queues `job` in `lane`; the writer thread runs it with the executor.
    pub(crate) fn run(
        &self,
        lane: Lane,
        job: impl FnOnce(&mut DbExecutor, &mut SyncContext<DbExecutor>) + Send + 'static,
    ) {
        // Commits are counted while they wait, and timed.
        let waiting = (lane == Lane::Commit).then(|| {
            self.metrics.writer_commits_pending.inc();
            (self.metrics.clone(), Instant::now())
        });
        self.lanes.push(
            lane,
            Box::new(move |executor, ctx| {
                if let Some((metrics, queued)) = waiting {
                    metrics.writer_commits_pending.dec();
                    (metrics.stages.writer_wait).observe(queued.elapsed().as_secs_f64());
                }
                job(executor, ctx);
            }),
        );
        // `do_send` ignores the mailbox capacity: the lanes are the queue,
        // and their callers bound them.
        self.addr.do_send::<RunNext>(RunNext);
    }

    /// Queues `msg` in `lane` and waits for the writer's answer.
    pub async fn call<M, T>(&self, lane: Lane, msg: M) -> Result<T, DbError>
    where
        M: Message<Result = Result<T, DbError>> + Send + 'static,
        T: Send + 'static,
        DbExecutor: Handler<M, Result = Result<T, DbError>>,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.run(lane, move |executor, ctx| {
            // The caller may have given up waiting; the write stands.
            let _ = answer.send(Handler::<M>::handle(executor, msg, ctx));
        });
        answered
            .await
            .map_err(|_| DbError::WriterGone(actix::MailboxError::Closed))?
    }
}

/// Registers a user on first login, or updates the display name.
#[derive(Message)]
#[rtype(result = "Result<LoginOutcome, DbError>")]
pub struct LoginUser {
    pub pubkey: Pubkey,
    pub display_name: Option<String>,
}

impl Handler<LoginUser> for DbExecutor {
    type Result = Result<LoginOutcome, DbError>;
    fn handle(&mut self, msg: LoginUser, _: &mut SyncContext<Self>) -> Self::Result {
        writes::login_user(
            &mut self.conn,
            &msg.pubkey,
            msg.display_name.as_deref(),
            now_ms(),
        )
    }
}

/// Stores the hash of a newly issued refresh token.
#[derive(Message)]
#[rtype(result = "Result<(), DbError>")]
pub struct StoreRefreshToken {
    pub hash: [u8; 32],
    pub user: Pubkey,
    pub expires_at: u64,
}

impl Handler<StoreRefreshToken> for DbExecutor {
    type Result = Result<(), DbError>;
    fn handle(&mut self, msg: StoreRefreshToken, _: &mut SyncContext<Self>) -> Self::Result {
        writes::insert_refresh_token(
            &mut self.conn,
            &msg.hash,
            &msg.user,
            now_ms(),
            msg.expires_at,
        )
    }
}

/// Consumes a refresh token and stores its successor.
#[derive(Message)]
#[rtype(result = "Result<Option<User>, DbError>")]
pub struct RotateRefreshToken {
    pub old_hash: [u8; 32],
    pub new_hash: [u8; 32],
    pub expires_at: u64,
}

impl Handler<RotateRefreshToken> for DbExecutor {
    type Result = Result<Option<User>, DbError>;
    fn handle(&mut self, msg: RotateRefreshToken, _: &mut SyncContext<Self>) -> Self::Result {
        writes::rotate_refresh_token(
            &mut self.conn,
            &msg.old_hash,
            &msg.new_hash,
            now_ms(),
            msg.expires_at,
        )
    }
}

/// Publishes (upserts) a user's X25519 key; answers whether it changed.
#[derive(Message)]
#[rtype(result = "Result<(DmKey, bool), DbError>")]
pub struct UpsertDmKey {
    pub user: Pubkey,
    pub key: [u8; 32],
}

impl Handler<UpsertDmKey> for DbExecutor {
    type Result = Result<(DmKey, bool), DbError>;
    fn handle(&mut self, msg: UpsertDmKey, _: &mut SyncContext<Self>) -> Self::Result {
        writes::upsert_dm_key(&mut self.conn, &msg.user, &msg.key, now_ms())
    }
}

/// Creates the conversation of a normalised pair, or finds the existing one.
#[derive(Message)]
#[rtype(result = "Result<(Conversation, bool), DbError>")]
pub struct CreateConversation {
    pub participant_a: Pubkey,
    pub participant_b: Pubkey,
}

impl Handler<CreateConversation> for DbExecutor {
    type Result = Result<(Conversation, bool), DbError>;
    fn handle(&mut self, msg: CreateConversation, _: &mut SyncContext<Self>) -> Self::Result {
        writes::create_conversation(
            &mut self.conn,
            &msg.participant_a,
            &msg.participant_b,
            now_ms(),
        )
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

impl Handler<CommitMessages> for DbExecutor {
    type Result = Result<Vec<Result<(), Skipped>>, DbError>;
    fn handle(&mut self, msg: CommitMessages, _: &mut SyncContext<Self>) -> Self::Result {
        self.commit(&msg.0)
    }
}

/// Queues a committed message for a recipient whose live push failed.
#[derive(Message)]
#[rtype(result = "Result<bool, DbError>")]
pub struct QueueOffline {
    pub recipient: Pubkey,
    pub message_id: Uuid,
}

impl Handler<QueueOffline> for DbExecutor {
    type Result = Result<bool, DbError>;
    fn handle(&mut self, msg: QueueOffline, _: &mut SyncContext<Self>) -> Self::Result {
        writes::queue_offline(&mut self.conn, &msg.recipient, &msg.message_id, now_ms())
    }
}

/// Marks offline entries (read on a reader) delivered; answers which this
/// call changed.
#[derive(Message)]
#[rtype(result = "Result<Vec<i64>, DbError>")]
pub struct MarkDelivered {
    pub recipient: Pubkey,
    pub queue_ids: Vec<i64>,
}

impl Handler<MarkDelivered> for DbExecutor {
    type Result = Result<Vec<i64>, DbError>;
    fn handle(&mut self, msg: MarkDelivered, _: &mut SyncContext<Self>) -> Self::Result {
        writes::mark_delivered(&mut self.conn, &msg.recipient, &msg.queue_ids)
    }
}

/// Marks the named entries of one user delivered.
#[derive(Message)]
#[rtype(result = "Result<u32, DbError>")]
pub struct AckOffline {
    pub recipient: Pubkey,
    pub message_ids: Vec<Uuid>,
}

impl Handler<AckOffline> for DbExecutor {
    type Result = Result<u32, DbError>;
    fn handle(&mut self, msg: AckOffline, _: &mut SyncContext<Self>) -> Self::Result {
        writes::ack_offline(&mut self.conn, &msg.recipient, &msg.message_ids)
    }
}

/// The janitor's purge of expired offline entries and refresh tokens.
#[derive(Message)]
#[rtype(result = "Result<Purged, DbError>")]
pub struct PurgeExpired {
    pub offline_cutoff: u64,
}

impl Handler<PurgeExpired> for DbExecutor {
    type Result = Result<Purged, DbError>;
    fn handle(&mut self, msg: PurgeExpired, _: &mut SyncContext<Self>) -> Self::Result {
        writes::purge_expired(&mut self.conn, msg.offline_cutoff, now_ms())
    }
}

/// Answers whether the writer can take the write lock (for `/healthz`).
#[derive(Message)]
#[rtype(result = "Result<(), DbError>")]
pub struct Ping;

impl Handler<Ping> for DbExecutor {
    type Result = Result<(), DbError>;
    fn handle(&mut self, _: Ping, _: &mut SyncContext<Self>) -> Self::Result {
        self.conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK")?;
        Ok(())
    }
}

/// Reports the writer connection's `journal_mode` and `synchronous`.
#[derive(Message)]
#[rtype(result = "Result<(String, i64), DbError>")]
pub struct DurabilitySettings;

impl Handler<DurabilitySettings> for DbExecutor {
    type Result = Result<(String, i64), DbError>;
    fn handle(&mut self, _: DurabilitySettings, _: &mut SyncContext<Self>) -> Self::Result {
        crate::db::durability_settings(&self.conn)
    }
}
