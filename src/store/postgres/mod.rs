//! The cluster engine: PostgreSQL through a `deadpool_postgres` pool.
//!
//! A tokio-postgres connection belongs to the runtime that created it, and
//! actix runs one runtime per worker thread. So the pool lives on a runtime
//! of its own (two threads, `united-pg`), and every call is spawned there and
//! awaited from whichever actix thread asked: one pool for the whole process,
//! never blocked by a worker.
//!
//! Connection settings: a 3 s connect timeout, a 10 s `statement_timeout` (a
//! transaction can never hang a batch forever), and pool waits of at most
//! 5 s. A failure to reach the server is [`DbError::Unavailable`], which
//! clients see as 503 `unavailable` with `Retry-After`.

mod committer;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rand_core::{OsRng, RngCore};
use uuid::Uuid;

use self::committer::{IdPolicy, PgBatches, PgCommitter};
use crate::auth::IssuedChallenge;
use crate::db::portable::{Row as PortableRow, Table, Value};
use crate::db::postgres::{self as sql, checkout};
use crate::db::{CommitMessages, DbError, LoginOutcome, MessageWrite, Purged, Skipped};
use crate::error::HubError;
use crate::metrics::Metrics;
use crate::model::{
    now_ms, Conversation, DmKey, History, HistoryPage, OfflinePage, Pubkey, StoredMessage, User,
};
use crate::runtime::OwnedRuntime;
use crate::store::commit::{Appender, CommitListener, TaskLane};
use crate::tickets::TicketHolder;

/// Connections in the pool.
const POOL_SIZE: usize = 16;

pub struct PgStore {
    runtime: OwnedRuntime,
    pool: Pool,
    committer: Addr<PgCommitter>,
    /// Shared by the committer and every lane.
    ids: Arc<IdPolicy>,
    metrics: Arc<Metrics>,
    challenge_ttl: Duration,
    /// Keys the hash that stands for a client in `auth_challenges`; shared
    /// by the cluster, so that the per-client cap counts on every node.
    client_salt: Vec<u8>,
}

/// Runs `$body` with a pooled client `$c` on the store's runtime.
macro_rules! with_client {
    ($self:ident, |$c:ident| $body:expr) => {{
        let pool = $self.pool.clone();
        $self
            .spawn(async move {
                #[allow(unused_mut)]
                let mut $c = checkout(&pool).await?;
                $body.await
            })
            .await
    }};
}

impl PgStore {
    /// Connects, migrates (safely when several nodes start at once) and
    /// starts the committer. Returns the store and how many migrations ran.
    /// Must run inside an actix system.
    pub async fn connect(
        url: &str,
        application: &str,
        challenge_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<(Arc<PgStore>, u32)> {
        use anyhow::Context as _;
        let connect = crate::store::postgres::tls::parse(url)?;
        let tls = crate::store::postgres::tls::connector(&connect)?;
        let mut config = connect.config;
        config
            .connect_timeout(Duration::from_secs(3))
            .options("-c statement_timeout=10000");
        // Hub nodes are `united-hub` (whatever the URL says: tools look for
        // running nodes by this name), tools `united-hub-tool`.
        config.application_name(application);
        let runtime =
            OwnedRuntime::new("united-pg", 2).context("starting the PostgreSQL runtime")?;
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = {
            // The pool's timers need the runtime it runs on.
            let handle = runtime.handle();
            let _guard = handle.enter();
            Pool::builder(manager)
                .max_size(POOL_SIZE)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(Duration::from_secs(5)))
                .create_timeout(Some(Duration::from_secs(5)))
                .recycle_timeout(Some(Duration::from_secs(5)))
                .build()
                .context("building the PostgreSQL pool")?
        };
        let ids: Arc<IdPolicy> = Arc::default();
        let committer = PgCommitter {
            handle: runtime.handle(),
            pool: pool.clone(),
            metrics: metrics.clone(),
            ids: ids.clone(),
        }
        .start();
        let mut store = PgStore {
            runtime,
            pool,
            committer,
            ids,
            metrics,
            challenge_ttl,
            client_salt: Vec::new(),
        };
        let applied = with_client!(store, |c| sql::migrate(&mut c))
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("migrating the PostgreSQL schema")?;
        let generated = crate::auth::new_secret();
        store.client_salt = with_client!(store, |c| sql::shared_secret(
            &c,
            "client_key_salt",
            &generated
        ))
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("reading the cluster's client-key salt")?;
        Ok((Arc::new(store), applied))
    }

    /// Runs a future on the store's runtime and waits for it from here.
    async fn spawn<T, F>(&self, fut: F) -> Result<T, DbError>
    where
        F: Future<Output = Result<T, DbError>> + Send + 'static,
        T: Send + 'static,
    {
        self.runtime
            .handle()
            .spawn(fut)
            .await
            .map_err(|e| DbError::Other(format!("database task failed: {e}")))?
    }

    pub async fn commit(
        &self,
        writes: Vec<MessageWrite>,
    ) -> Result<Vec<Result<(), Skipped>>, DbError> {
        self.committer.send(CommitMessages(writes)).await?
    }

    /// Group commits through a [`TaskLane`] on the store's runtime.
    pub fn appender(&self, listener: Option<Arc<dyn CommitListener>>) -> Appender {
        let batches = PgBatches {
            pool: self.pool.clone(),
            metrics: self.metrics.clone(),
            ids: self.ids.clone(),
        };
        Appender::new(TaskLane::new(
            self.runtime.handle(),
            batches,
            listener,
            Some(self.metrics.clone()),
        ))
    }

    pub async fn health(&self) -> Result<(), DbError> {
        with_client!(self, |c| async move {
            c.simple_query("SELECT 1").await?;
            Ok(())
        })
    }

    /// Stores a new challenge. A client (IPv4 address or IPv6 /64) holds at
    /// most `MAX_PENDING_PER_CLIENT` live ones across the cluster, as with
    /// the in-memory store; past that, 429 until its oldest expires.
    pub async fn issue_challenge(
        &self,
        client: Option<crate::ratelimit::ClientKey>,
    ) -> Result<IssuedChallenge, HubError> {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let id = Uuid::new_v4();
        let now = now_ms();
        let expires_at_ms = now + self.challenge_ttl.as_millis() as u64;
        let owner = client.map(|key| self.client_hash(key));
        let cap = crate::auth::MAX_PENDING_PER_CLIENT as i64;
        let stored = with_client!(self, |c| sql::insert_challenge(
            &c,
            id,
            &bytes,
            expires_at_ms,
            owner.as_ref().map(|h| &h[..]),
            cap,
            now
        ))?;
        if let Err(sql::ChallengeRefused::OverCap { oldest_expires_at }) = stored {
            return Err(HubError::RateLimited {
                retry_after: oldest_expires_at.saturating_sub(now).div_ceil(1000).max(1) as u32,
            });
        }
        Ok(IssuedChallenge {
            id,
            bytes,
            expires_at_ms,
        })
    }

    /// A client key as stored: HKDF-SHA256 (an HMAC) keyed by the
    /// cluster's salt, so the table never holds an address.
    fn client_hash(&self, key: crate::ratelimit::ClientKey) -> [u8; 32] {
        let mut out = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(&self.client_salt), key.to_string().as_bytes())
            .expand(b"united-hub challenge client", &mut out)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        out
    }

    pub async fn take_challenge(&self, id: Uuid) -> Result<[u8; 32], HubError> {
        let (bytes, expires_at) = with_client!(self, |c| sql::take_challenge(&c, id))?
            .ok_or(HubError::UnknownChallenge)?;
        if expires_at <= now_ms() {
            return Err(HubError::ChallengeExpired);
        }
        Ok(bytes)
    }

    /// Stores a new ticket's hash; a user holds at most
    /// `tickets::MAX_TICKETS_PER_USER` live ones across the cluster.
    pub async fn issue_ticket(
        &self,
        holder: TicketHolder,
        ttl: Duration,
    ) -> Result<(String, u64), HubError> {
        let (ticket, hash) = crate::tickets::new_ticket();
        let now = now_ms();
        let expires_at = now + ttl.as_millis() as u64;
        let cap = crate::tickets::MAX_TICKETS_PER_USER as i64;
        let stored = with_client!(self, |c| sql::insert_ticket(
            &c, &hash, &holder, expires_at, cap, now
        ))?;
        if !stored {
            return Err(HubError::RateLimited {
                retry_after: ttl.as_secs().max(1) as u32,
            });
        }
        Ok((ticket, expires_at))
    }

    pub async fn take_ticket(&self, ticket: &str) -> Result<TicketHolder, HubError> {
        let hash = crate::tickets::ticket_hash(ticket).ok_or_else(crate::tickets::refused)?;
        with_client!(self, |c| sql::take_ticket(&c, &hash, now_ms()))?
            .ok_or_else(crate::tickets::refused)
    }

    pub async fn purge_challenges(&self) -> Result<u64, DbError> {
        with_client!(self, |c| sql::purge_challenges(&c, now_ms()))
    }

    pub async fn login_user(
        &self,
        pubkey: Pubkey,
        display_name: Option<String>,
    ) -> Result<LoginOutcome, DbError> {
        with_client!(self, |c| sql::login_user(
            &c,
            &pubkey,
            display_name.as_deref(),
            now_ms()
        ))
    }

    pub async fn store_refresh_token(
        &self,
        hash: [u8; 32],
        user: Pubkey,
        expires_at: u64,
    ) -> Result<(), DbError> {
        with_client!(self, |c| sql::insert_refresh_token(
            &c,
            &hash,
            &user,
            now_ms(),
            expires_at
        ))
    }

    pub async fn rotate_refresh_token(
        &self,
        old_hash: [u8; 32],
        new_hash: [u8; 32],
        expires_at: u64,
    ) -> Result<Option<User>, DbError> {
        with_client!(self, |c| sql::rotate_refresh_token(
            &mut c,
            &old_hash,
            &new_hash,
            now_ms(),
            expires_at
        ))
    }

    pub async fn user(&self, pubkey: Pubkey) -> Result<Option<User>, DbError> {
        with_client!(self, |c| async move { sql::user(&c, &pubkey).await })
    }

    pub async fn upsert_dm_key(
        &self,
        user: Pubkey,
        key: [u8; 32],
    ) -> Result<(DmKey, bool), DbError> {
        with_client!(self, |c| sql::upsert_dm_key(&mut c, &user, &key, now_ms()))
    }

    pub async fn dm_key(&self, user: Pubkey) -> Result<Option<DmKey>, DbError> {
        with_client!(self, |c| async move { sql::dm_key(&c, &user).await })
    }

    pub async fn create_conversation(
        &self,
        a: Pubkey,
        b: Pubkey,
    ) -> Result<(Conversation, bool), DbError> {
        with_client!(self, |c| sql::create_conversation(&c, &a, &b, now_ms()))
    }

    pub async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, DbError> {
        with_client!(self, |c| sql::conversation(&c, &id))
    }

    pub async fn conversation_with_last_seq(
        &self,
        id: Uuid,
    ) -> Result<Option<(Conversation, u64)>, DbError> {
        with_client!(self, |c| sql::conversation_with_last_seq(&c, &id))
    }

    pub async fn conversations_of(&self, user: Pubkey) -> Result<Vec<Conversation>, DbError> {
        with_client!(self, |c| sql::conversations_of(&c, &user))
    }

    /// `user`'s conversations with their last committed sequences.
    pub async fn sequences_of(&self, user: Pubkey) -> Result<Vec<(Uuid, u64)>, DbError> {
        with_client!(self, |c| sql::sequences_of(&c, &user))
    }

    /// The last committed sequences of `ids`.
    pub async fn last_sequences(&self, ids: Vec<Uuid>) -> Result<Vec<(Uuid, u64)>, DbError> {
        with_client!(self, |c| sql::last_sequences(&c, &ids))
    }

    pub async fn partners_of(&self, user: Pubkey) -> Result<Vec<Pubkey>, DbError> {
        with_client!(self, |c| sql::partners_of(&c, &user))
    }

    pub async fn message(&self, id: Uuid) -> Result<Option<StoredMessage>, DbError> {
        with_client!(self, |c| sql::message(&c, &id))
    }

    pub async fn last_sequence(&self, conversation: Uuid) -> Result<u64, DbError> {
        with_client!(self, |c| sql::last_sequence(&c, &conversation))
    }

    pub fn close(&self) {
        self.pool.close();
    }

    /// Sessions of hub nodes on this database (a tool's own are named
    /// otherwise).
    pub async fn other_hubs(&self) -> Result<Vec<String>, DbError> {
        with_client!(self, |c| async move {
            let row = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND application_name = 'united-hub'",
                    &[],
                )
                .await?;
            let n: i64 = row.try_get(0)?;
            Ok(if n > 0 {
                vec![format!("{n} connections of running hub nodes")]
            } else {
                Vec::new()
            })
        })
    }

    pub async fn count_rows(&self, table: &'static Table) -> Result<u64, DbError> {
        with_client!(self, |c| sql::portable::count_rows(&c, table))
    }

    pub async fn export_page(
        &self,
        table: &'static Table,
        after: Option<Value>,
        limit: u32,
    ) -> Result<Vec<PortableRow>, DbError> {
        with_client!(self, |c| async move {
            sql::portable::export_page(&c, table, after.as_ref(), limit).await
        })
    }

    pub async fn import_rows(
        &self,
        table: &'static Table,
        rows: Vec<PortableRow>,
    ) -> Result<(), DbError> {
        with_client!(self, |c| async move {
            sql::portable::import_rows(&mut c, table, &rows).await
        })
    }

    pub async fn clear_tables(&self, tables: &'static [Table]) -> Result<u64, DbError> {
        with_client!(self, |c| async move {
            sql::portable::clear_tables(&mut c, tables).await
        })
    }

    pub async fn finish_import(&self) -> Result<(), DbError> {
        with_client!(self, |c| sql::portable::finish_import(&c))
    }

    pub async fn history(
        &self,
        conversation: Uuid,
        page: HistoryPage,
        limit: u32,
    ) -> Result<History, DbError> {
        with_client!(self, |c| sql::history(&c, &conversation, page, limit))
    }

    pub async fn queue_offline(
        &self,
        recipient: Pubkey,
        message_id: Uuid,
    ) -> Result<bool, DbError> {
        with_client!(self, |c| sql::queue_offline(
            &c,
            &recipient,
            &message_id,
            now_ms()
        ))
    }

    pub async fn take_offline(
        &self,
        recipient: Pubkey,
        limit: u32,
    ) -> Result<OfflinePage, DbError> {
        with_client!(self, |c| sql::take_offline(&c, &recipient, limit))
    }

    pub async fn oldest_offline(&self) -> Result<Option<u64>, DbError> {
        with_client!(self, |c| sql::oldest_offline(&c))
    }

    pub async fn ack_offline(&self, recipient: Pubkey, ids: Vec<Uuid>) -> Result<u32, DbError> {
        with_client!(self, |c| sql::ack_offline(&c, &recipient, &ids))
    }

    pub async fn purge_expired(
        &self,
        offline_cutoff: u64,
        interval: Duration,
    ) -> Result<Option<Purged>, DbError> {
        let interval_ms = interval.as_millis() as u64;
        with_client!(self, |c| sql::purge_expired(
            &mut c,
            offline_cutoff,
            now_ms(),
            interval_ms
        ))
    }
}
