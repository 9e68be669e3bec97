//! The embedded engine: SQLite in `--data-dir`, with everything it needs.
//!
//! - Reads run on the r2d2 pool inside actix's blocking pool, so they never
//!   block a worker thread.
//! - Writes go to the one `DbExecutor` on its `SyncArbiter` thread
//!   ([`writer`]), group commits through its commit lane ([`commit_lane`]).
//! - The [`checkpointer`] moves the WAL into the database file on a thread
//!   of its own.
//! - Login challenges and WebSocket tickets live in memory: one process is
//!   the whole hub.

pub mod backup;
pub mod checkpointer;
pub mod commit_lane;
pub mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use uuid::Uuid;

use self::checkpointer::Checkpointer;
use self::commit_lane::CommitLane;
use self::writer::{Lane, Writer};
use crate::auth::{ChallengeStore, IssuedChallenge};
use crate::db::order::Tail;
use crate::db::portable::{Row as PortableRow, Table, Value};
use crate::db::{self, reads, writes, DbError, LoginOutcome, MessageWrite, Pool, Purged, Skipped};
use crate::error::HubError;
use crate::metrics::Metrics;
use crate::model::{
    now_ms, Conversation, DmKey, History, HistoryPage, OfflinePage, Pubkey, StoredMessage, User,
};
use crate::store::commit::{Appender, CommitListener};
use crate::tickets::TicketStore;

/// Writes (other than group commits) that may wait for the writer at once;
/// past this, a request gets 503 `unavailable` instead of a place in an
/// ever longer queue in front of the message commits.
pub const WRITER_QUEUE_LIMIT: usize = 64;
/// How long a `/healthz` answer is reused.
const HEALTH_CACHE: Duration = Duration::from_secs(1);

pub struct SqliteStore {
    /// Read connections.
    pool: Pool,
    /// The one writer.
    writer: Writer,
    /// The messages the conversation order does not hold yet, by
    /// conversation: the writer keeps it, reads by conversation take their
    /// part of it before they query ([`crate::db::order::Tail`]).
    tail: Tail,
    /// Writes waiting for the writer (not counting group commits).
    pending_writes: AtomicUsize,
    /// The last health check and when it ran; held while one runs.
    health: tokio::sync::Mutex<Option<(Instant, bool)>>,
    challenges: ChallengeStore,
    /// WebSocket tickets, in memory like the challenges.
    tickets: TicketStore,
    /// Stopped (taken) at shutdown.
    checkpointer: Mutex<Option<Checkpointer>>,
    /// Takes `united-hub backup`'s requests while this store runs a hub;
    /// stopped (taken) at shutdown.
    backups: Mutex<Option<backup::BackupService>>,
    /// The database file.
    path: PathBuf,
    /// This store runs a hub: it holds the hub marker until closed.
    hub: AtomicBool,
    metrics: Arc<Metrics>,
}

/// Counts one write waiting for the writer while it lives.
struct PendingWrite<'a>(&'a SqliteStore);

impl Drop for PendingWrite<'_> {
    fn drop(&mut self) {
        self.0.pending_writes.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.writer_pending.dec();
    }
}

impl SqliteStore {
    pub fn new(
        path: PathBuf,
        pool: Pool,
        writer: Writer,
        tail: Tail,
        challenge_ttl: Duration,
        checkpointer: Checkpointer,
        metrics: Arc<Metrics>,
    ) -> Self {
        SqliteStore {
            path,
            hub: AtomicBool::new(false),
            pool,
            writer,
            tail,
            pending_writes: AtomicUsize::new(0),
            health: tokio::sync::Mutex::new(None),
            challenges: ChallengeStore::new(challenge_ttl),
            tickets: TicketStore::default(),
            checkpointer: Mutex::new(Some(checkpointer)),
            backups: Mutex::new(None),
            metrics,
        }
    }

    /// Runs one write on the writer, unless `WRITER_QUEUE_LIMIT` writes
    /// already wait (then `DbError::Unavailable`: 503 with Retry-After).
    async fn write<T>(
        &self,
        write: impl FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError>
    where
        T: Send + 'static,
    {
        if self.pending_writes.fetch_add(1, Ordering::AcqRel) >= WRITER_QUEUE_LIMIT {
            self.pending_writes.fetch_sub(1, Ordering::AcqRel);
            return Err(DbError::Unavailable("the writer's queue is full".into()));
        }
        self.metrics.writer_pending.inc();
        let _pending = PendingWrite(self);
        self.writer.call(Lane::Housekeeping, write).await
    }

    /// The read pool, for tests that hold its connections.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The write connection's `journal_mode` and `synchronous`, for tests.
    pub async fn writer_durability(&self) -> Result<(String, i64), DbError> {
        self.write(|conn| db::durability_settings(conn)).await
    }

    pub async fn commit(
        &self,
        writes: Vec<MessageWrite>,
    ) -> Result<Vec<Result<(), Skipped>>, DbError> {
        self.writer.commit(writes).await
    }

    /// Group commits into the writer's commit lane.
    pub fn appender(&self, listener: Option<Arc<dyn CommitListener>>) -> Appender {
        Appender::new(CommitLane::new(self.writer.clone(), listener))
    }

    /// Marks the database as a running hub's; refuses when another live
    /// process already runs one on it.
    pub fn claim_hub(&self) -> anyhow::Result<()> {
        if let Some(pid) = db::other_hub(&self.path) {
            anyhow::bail!(
                "another hub (pid {pid}) runs on {}: one data directory serves one hub",
                self.path.display()
            );
        }
        let marker = db::hub_marker(&self.path);
        std::fs::write(&marker, db::marker_text())
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", marker.display()))?;
        self.hub.store(true, Ordering::Release);
        let service = backup::BackupService::start(self.path.clone(), self.writer.clone())
            .map_err(|e| anyhow::anyhow!("starting the backup service: {e}"))?;
        *self.backups.lock().unwrap_or_else(|e| e.into_inner()) = Some(service);
        Ok(())
    }

    /// Hubs other than this process that run on the database.
    pub async fn other_hubs(&self) -> Result<Vec<String>, DbError> {
        Ok(db::other_hub(&self.path)
            .map(|pid| format!("a hub (pid {pid}) runs on {}", self.path.display()))
            .into_iter()
            .collect())
    }

    pub fn close(&self) {
        // First the backups, which need the writer and the hub marker.
        drop(
            self.backups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        if self.hub.swap(false, Ordering::AcqRel) {
            let _ = std::fs::remove_file(db::hub_marker(&self.path));
        }
        drop(
            self.checkpointer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }

    /// Runs a read on a pooled connection, off the async threads.
    async fn read<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool.clone();
        let waited = self.metrics.pool_wait_seconds.clone();
        actix_web::web::block(move || {
            let started = Instant::now();
            let conn = pool.get();
            waited.observe(started.elapsed().as_secs_f64());
            let conn = conn?;
            f(&conn)
        })
        .await
        .map_err(|e| DbError::Other(format!("blocking read failed: {e}")))?
    }

    /// Whether the writer can take the write lock and a reader answers.
    /// The answer is reused for a second, so `/healthz` (which anyone may
    /// call) puts at most one write a second in front of the commits.
    pub async fn health(&self) -> Result<(), DbError> {
        // One check at a time: callers that arrive meanwhile wait for it and
        // take its answer (single flight).
        let mut last = self.health.lock().await;
        if let Some((at, ok)) = *last {
            if at.elapsed() < HEALTH_CACHE {
                return if ok {
                    Ok(())
                } else {
                    Err(DbError::Unavailable("unhealthy a moment ago".into()))
                };
            }
        }
        let result = async {
            self.write(|conn| Ok(conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK")?))
                .await?;
            self.read(|conn| {
                conn.query_row("SELECT 1", [], |_| Ok(()))?;
                Ok(())
            })
            .await
        }
        .await;
        *last = Some((Instant::now(), result.is_ok()));
        result
    }

    pub fn issue_challenge(
        &self,
        client: Option<crate::ratelimit::ClientKey>,
    ) -> Result<IssuedChallenge, HubError> {
        self.challenges.issue_for(client)
    }

    /// The pending login challenges (for tests that look at their number).
    pub fn challenges(&self) -> &ChallengeStore {
        &self.challenges
    }

    pub fn take_challenge(&self, id: &Uuid) -> Result<[u8; 32], HubError> {
        self.challenges.take(id)
    }

    pub async fn purge_challenges(&self) -> Result<u64, DbError> {
        Ok((self.challenges.purge_expired() + self.tickets.purge_expired()) as u64)
    }

    pub fn tickets(&self) -> &TicketStore {
        &self.tickets
    }

    pub async fn login_user(
        &self,
        pubkey: Pubkey,
        display_name: Option<String>,
    ) -> Result<LoginOutcome, DbError> {
        self.write(move |conn| writes::login_user(conn, &pubkey, display_name.as_deref(), now_ms()))
            .await
    }

    pub async fn store_refresh_token(
        &self,
        hash: [u8; 32],
        user: Pubkey,
        expires_at: u64,
    ) -> Result<(), DbError> {
        self.write(move |conn| {
            writes::insert_refresh_token(conn, &hash, &user, now_ms(), expires_at)
        })
        .await
    }

    pub async fn rotate_refresh_token(
        &self,
        old_hash: [u8; 32],
        new_hash: [u8; 32],
        expires_at: u64,
    ) -> Result<Option<User>, DbError> {
        self.write(move |conn| {
            writes::rotate_refresh_token(conn, &old_hash, &new_hash, now_ms(), expires_at)
        })
        .await
    }

    pub async fn user(&self, pubkey: Pubkey) -> Result<Option<User>, DbError> {
        self.read(move |conn| reads::user(conn, &pubkey)).await
    }

    pub async fn upsert_dm_key(
        &self,
        user: Pubkey,
        key: [u8; 32],
    ) -> Result<(DmKey, bool), DbError> {
        self.write(move |conn| writes::upsert_dm_key(conn, &user, &key, now_ms()))
            .await
    }

    pub async fn dm_key(&self, user: Pubkey) -> Result<Option<DmKey>, DbError> {
        self.read(move |conn| reads::dm_key(conn, &user)).await
    }

    pub async fn create_conversation(
        &self,
        a: Pubkey,
        b: Pubkey,
    ) -> Result<(Conversation, bool), DbError> {
        let tail = self.tail.clone();
        self.write(move |conn| writes::create_conversation(conn, &tail, &a, &b, now_ms()))
            .await
    }

    pub async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, DbError> {
        let last = self.tail.last(&id);
        self.read(move |conn| reads::conversation(conn, &id, last))
            .await
    }

    pub async fn conversation_with_last_seq(
        &self,
        id: Uuid,
    ) -> Result<Option<(Conversation, u64)>, DbError> {
        let last = self.tail.last(&id);
        self.read(move |conn| {
            let Some(conversation) = reads::conversation(conn, &id, last)? else {
                return Ok(None);
            };
            let last = reads::max_sequence(conn, &id, last)?;
            Ok(Some((conversation, last)))
        })
        .await
    }

    pub async fn conversations_of(&self, user: Pubkey) -> Result<Vec<Conversation>, DbError> {
        let tail = self.tail.clone();
        self.read(move |conn| reads::conversations_of(conn, &tail, &user))
            .await
    }

    /// The conversations of `user` with their last committed sequences.
    pub async fn sequences_of(&self, user: Pubkey) -> Result<Vec<(Uuid, u64)>, DbError> {
        let tail = self.tail.clone();
        self.read(move |conn| {
            let conversations = reads::conversations_of(conn, &tail, &user)?;
            conversations
                .iter()
                .map(|c| {
                    let last = tail.last(&c.id);
                    Ok((c.id, reads::max_sequence(conn, &c.id, last)?))
                })
                .collect()
        })
        .await
    }

    /// The last committed sequences of the given conversations (those that
    /// exist).
    pub async fn last_sequences(&self, ids: Vec<Uuid>) -> Result<Vec<(Uuid, u64)>, DbError> {
        let lasts: Vec<_> = ids.iter().map(|id| (*id, self.tail.last(id))).collect();
        self.read(move |conn| {
            let mut found = Vec::with_capacity(lasts.len());
            for (id, last) in lasts {
                if reads::conversation(conn, &id, last)?.is_some() {
                    found.push((id, reads::max_sequence(conn, &id, last)?));
                }
            }
            Ok(found)
        })
        .await
    }

    pub async fn partners_of(&self, user: Pubkey) -> Result<Vec<Pubkey>, DbError> {
        self.read(move |conn| reads::partners_of(conn, &user)).await
    }

    pub async fn message(&self, id: Uuid) -> Result<Option<StoredMessage>, DbError> {
        self.read(move |conn| reads::message(conn, &id)).await
    }

    pub async fn last_sequence(&self, conversation: Uuid) -> Result<u64, DbError> {
        let last = self.tail.last(&conversation);
        self.read(move |conn| reads::max_sequence(conn, &conversation, last))
            .await
    }

    pub async fn count_rows(&self, table: &'static Table) -> Result<u64, DbError> {
        self.read(move |conn| reads::count_rows(conn, table)).await
    }

    pub async fn export_page(
        &self,
        table: &'static Table,
        after: Option<Value>,
        limit: u32,
    ) -> Result<Vec<PortableRow>, DbError> {
        self.read(move |conn| reads::export_page(conn, table, after.as_ref(), limit))
            .await
    }

    pub async fn import_rows(
        &self,
        table: &'static Table,
        rows: Vec<PortableRow>,
    ) -> Result<(), DbError> {
        self.write(move |conn| writes::import_rows(conn, table, &rows))
            .await?;
        self.reload_order().await
    }

    pub async fn clear_tables(&self, tables: &'static [Table]) -> Result<u64, DbError> {
        let deleted = self
            .write(move |conn| writes::clear_tables(conn, tables))
            .await?;
        self.reload_order().await?;
        Ok(deleted)
    }

    /// Nothing to do: SQLite keeps no counter beside the rows.
    pub async fn finish_import(&self) -> Result<(), DbError> {
        Ok(())
    }

    /// After a write that changed the order other than by a group commit
    /// (an import, a clear): the tail and the writer's state, read again.
    async fn reload_order(&self) -> Result<(), DbError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let tail = self.tail.clone();
        self.writer.run(Lane::Housekeeping, move |executor| {
            let _ = answer.send(executor.reload_order(&tail));
        });
        answered
            .await
            .map_err(|_| DbError::WriterGone(actix::MailboxError::Closed))?
    }

    pub async fn history(
        &self,
        conversation: Uuid,
        page: HistoryPage,
        limit: u32,
    ) -> Result<History, DbError> {
        let part = self.tail.part(&conversation);
        self.read(move |conn| reads::history(conn, &conversation, &part, page, limit))
            .await
    }

    pub async fn queue_offline(
        &self,
        recipient: Pubkey,
        message_id: Uuid,
    ) -> Result<bool, DbError> {
        self.write(move |conn| writes::queue_offline(conn, &recipient, &message_id, now_ms()))
            .await
    }

    /// Reads the page on a reader (the payloads never pass through the
    /// writer), then marks it delivered in a small write. An entry a
    /// concurrent fetch marked first is left out: each is returned once.
    pub async fn take_offline(
        &self,
        recipient: Pubkey,
        limit: u32,
    ) -> Result<OfflinePage, DbError> {
        let who = recipient.clone();
        let (entries, has_more) = self
            .read(move |conn| reads::offline_entries(conn, &who, limit))
            .await?;
        if entries.is_empty() {
            return Ok(OfflinePage::default());
        }
        let queue_ids: Vec<i64> = entries.iter().map(|(id, _)| *id).collect();
        let marked: std::collections::HashSet<i64> = self
            .write(move |conn| writes::mark_delivered(conn, &recipient, &queue_ids))
            .await?
            .into_iter()
            .collect();
        let messages = entries
            .into_iter()
            .filter(|(id, _)| marked.contains(id))
            .map(|(_, m)| m)
            .collect();
        Ok(OfflinePage { messages, has_more })
    }

    pub async fn oldest_offline(&self) -> Result<Option<u64>, DbError> {
        self.read(reads::oldest_offline).await
    }

    pub async fn ack_offline(&self, recipient: Pubkey, ids: Vec<Uuid>) -> Result<u32, DbError> {
        self.write(move |conn| writes::ack_offline(conn, &recipient, &ids))
            .await
    }

    /// One process is the whole hub: every call purges.
    pub async fn purge_expired(
        &self,
        offline_cutoff: u64,
        _interval: Duration,
    ) -> Result<Option<Purged>, DbError> {
        let purged = self
            .write(move |conn| writes::purge_expired(conn, offline_cutoff, now_ms()))
            .await?;
        Ok(Some(purged))
    }
}
