//! Storage: one [`Store`] over two engines.
//!
//! - **SQLite** (the default, embedded in `--data-dir`): WAL with
//!   `synchronous=FULL`; reads go through the r2d2 pool, every write through
//!   the one connection owned by its `DbExecutor` ([`sqlite`]: the writer,
//!   its commit lane and the checkpointer).
//! - **PostgreSQL** (`--database-url`, cluster mode): a connection pool on a
//!   runtime of its own, and its committer ([`postgres`]).
//!
//! Actors, services, the cluster and HTTP handlers only see [`Store`], whose
//! engine is private: they cannot tell which engine answers, and no module
//! outside `store/` and `db/` names one (`scripts/import-cycles.py` checks).
//!
//! # Architecture Invariant
//! A message is written only by a group commit ([`Store::appender`]),
//! and only if its `server_sequence` follows the conversation's last
//! committed one: both engines refuse anything else, so the table never has
//! a gap or a duplicate, whoever assigned the number.
//!
//! Why it is this long: the seam forwards each of the store's thirty-odd
//! operations to the engine, a few lines each.

pub mod commit;
pub mod postgres;
pub mod sqlite;
pub mod url;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::SyncArbiter;
use anyhow::Context as _;
use uuid::Uuid;

use self::commit::{Appender, CommitListener};
use self::postgres::PgStore;
pub use self::sqlite::backup::Summary as BackupSummary;
use self::sqlite::checkpointer::Checkpointer;
use self::sqlite::writer::{DbExecutor, Lanes, Writer};
use self::sqlite::SqliteStore;
use crate::auth::load_or_create_secret;
use crate::config::Settings;
use crate::db::writes::Committed;
use crate::db::{self, migrations, order};
use crate::metrics::Metrics;

use crate::auth::IssuedChallenge;
use crate::db::portable::{Row as PortableRow, Table, Value};
use crate::db::{DbError, LoginOutcome, MessageWrite, Purged, Skipped};
use crate::error::HubError;
use crate::model::{
    Conversation, DmKey, History, HistoryPage, OfflinePage, Pubkey, StoredMessage, User,
};
use crate::tickets::TicketHolder;

/// The hub's storage, whichever engine holds it. Cheap to clone.
#[derive(Clone)]
pub struct Store(Engine);

#[derive(Clone)]
enum Engine {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PgStore>),
}

/// A store as [`Store::open`] returns it.
pub struct Opened {
    pub store: Store,
    /// Migrations this start applied (0 on a current database).
    pub migrations_applied: u32,
    /// The HS256 key every node of the deployment shares.
    pub jwt_secret: Vec<u8>,
}

/// Calls the same method on whichever engine this is.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.0 {
            Engine::Sqlite(s) => s.$method($($arg),*).await,
            Engine::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Opens the store `settings` name: PostgreSQL with `--database-url`,
    /// else SQLite in `--data-dir`; migrated, its writer started, with the
    /// JWT key (`--jwt-secret-file`, which a cluster node must have; else
    /// the one in the data directory, made on first start). Must run inside
    /// an actix system.
    pub async fn open(settings: &Settings, metrics: &Arc<Metrics>) -> anyhow::Result<Opened> {
        let jwt_secret = match &settings.database_url {
            None => {
                anyhow::ensure!(
                    settings.nats_url.is_none(),
                    "--nats-url needs --database-url: the nodes of a cluster share one PostgreSQL database"
                );
                std::fs::create_dir_all(&settings.data_dir).with_context(|| {
                    format!("creating data dir {}", settings.data_dir.display())
                })?;
                load_or_create_secret(&settings.jwt_secret_path())?
            }
            // Checked before the database is touched; `Settings::validate`
            // has already refused a cluster node without the flag.
            Some(_) => {
                let path = settings
                    .jwt_secret_file
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!(crate::config::CLUSTER_NEEDS_SECRET))?;
                crate::auth::load_secret(path)?
            }
        };
        let (store, migrations_applied) = open_engine(settings, metrics, "united-hub").await?;
        if let Engine::Sqlite(s) = &store.0 {
            s.claim_hub()?;
        }
        Ok(Opened {
            store,
            migrations_applied,
            jwt_secret,
        })
    }

    /// Opens and migrates the engine alone, without the JWT key: for the
    /// tools that move data (`migrate`, `backup`). Returns the store and the
    /// migrations it applied.
    pub async fn open_engine(
        settings: &Settings,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<(Store, u32)> {
        open_engine(settings, metrics, TOOL).await
    }

    /// Hubs that run on this database, other than this process: a SQLite
    /// hub's marker, PostgreSQL sessions of hub nodes. Tools that must not
    /// run beside a hub check this.
    pub async fn other_hubs(&self) -> Result<Vec<String>, DbError> {
        dispatch!(self.other_hubs())
    }

    /// A short name for logs and metrics: `sqlite` or `postgres`.
    pub fn engine(&self) -> &'static str {
        match &self.0 {
            Engine::Sqlite(_) => "sqlite",
            Engine::Postgres(_) => "postgres",
        }
    }

    /// The SQLite engine, if this is one: for tests that look inside it.
    pub fn sqlite(&self) -> Option<&SqliteStore> {
        match &self.0 {
            Engine::Sqlite(s) => Some(s),
            Engine::Postgres(_) => None,
        }
    }

    /// Where conversations send their assigned messages to be committed in
    /// groups. `listener` (the cluster node) hears what each batch wrote.
    pub fn appender(&self, listener: Option<Arc<dyn CommitListener>>) -> Appender {
        match &self.0 {
            Engine::Sqlite(s) => s.appender(listener),
            Engine::Postgres(s) => s.appender(listener),
        }
    }

    /// Commits one batch of messages now, as one group commit; each result
    /// says whether that message was written. Conversations go through
    /// [`Store::appender`]; this is for tests and tools that hold a whole
    /// batch.
    pub async fn commit(
        &self,
        writes: Vec<MessageWrite>,
    ) -> Result<Vec<Result<(), Skipped>>, DbError> {
        dispatch!(self.commit(writes))
    }

    /// Answers when the database can take a write and a read.
    pub async fn health(&self) -> Result<(), DbError> {
        dispatch!(self.health())
    }

    // -- identity ----------------------------------------------------------

    /// A new login challenge for `client` (see `auth::ChallengeStore::issue_for`).
    pub async fn issue_challenge(
        &self,
        client: Option<crate::ratelimit::ClientKey>,
    ) -> Result<IssuedChallenge, HubError> {
        match &self.0 {
            Engine::Sqlite(s) => s.issue_challenge(client),
            Engine::Postgres(s) => s.issue_challenge(client).await,
        }
    }

    /// Consumes a challenge; see `auth::ChallengeStore::take`.
    pub async fn take_challenge(&self, id: Uuid) -> Result<[u8; 32], HubError> {
        match &self.0 {
            Engine::Sqlite(s) => s.take_challenge(&id),
            Engine::Postgres(s) => s.take_challenge(id).await,
        }
    }

    /// Drops expired challenges and WebSocket tickets; returns how many.
    pub async fn purge_challenges(&self) -> Result<u64, DbError> {
        dispatch!(self.purge_challenges())
    }

    /// A new WebSocket ticket for `holder`, valid `ttl`: the ticket and its
    /// expiry (ms).
    pub async fn issue_ticket(
        &self,
        holder: TicketHolder,
        ttl: Duration,
    ) -> Result<(String, u64), HubError> {
        match &self.0 {
            Engine::Sqlite(s) => s.tickets().issue(holder, ttl),
            Engine::Postgres(s) => s.issue_ticket(holder, ttl).await,
        }
    }

    /// Takes a WebSocket ticket: once, within its lifetime (else 401).
    pub async fn take_ticket(&self, ticket: &str) -> Result<TicketHolder, HubError> {
        match &self.0 {
            Engine::Sqlite(s) => s.tickets().take(ticket),
            Engine::Postgres(s) => s.take_ticket(ticket).await,
        }
    }

    pub async fn login_user(
        &self,
        pubkey: Pubkey,
        display_name: Option<String>,
    ) -> Result<LoginOutcome, DbError> {
        dispatch!(self.login_user(pubkey, display_name))
    }

    pub async fn store_refresh_token(
        &self,
        hash: [u8; 32],
        user: Pubkey,
        expires_at: u64,
    ) -> Result<(), DbError> {
        dispatch!(self.store_refresh_token(hash, user, expires_at))
    }

    /// Consumes a live refresh token and stores its successor, atomically.
    pub async fn rotate_refresh_token(
        &self,
        old_hash: [u8; 32],
        new_hash: [u8; 32],
        expires_at: u64,
    ) -> Result<Option<User>, DbError> {
        dispatch!(self.rotate_refresh_token(old_hash, new_hash, expires_at))
    }

    pub async fn user(&self, pubkey: Pubkey) -> Result<Option<User>, DbError> {
        dispatch!(self.user(pubkey))
    }

    // -- keys and conversations --------------------------------------------

    /// Publishes a user's X25519 key; answers the stored key and whether it changed.
    pub async fn upsert_dm_key(
        &self,
        user: Pubkey,
        key: [u8; 32],
    ) -> Result<(DmKey, bool), DbError> {
        dispatch!(self.upsert_dm_key(user, key))
    }

    pub async fn dm_key(&self, user: Pubkey) -> Result<Option<DmKey>, DbError> {
        dispatch!(self.dm_key(user))
    }

    /// Creates the conversation of a normalised pair (`a < b`), or finds it.
    pub async fn create_conversation(
        &self,
        a: Pubkey,
        b: Pubkey,
    ) -> Result<(Conversation, bool), DbError> {
        dispatch!(self.create_conversation(a, b))
    }

    pub async fn conversation(&self, id: Uuid) -> Result<Option<Conversation>, DbError> {
        dispatch!(self.conversation(id))
    }

    /// A conversation with its last committed sequence, for a starting actor.
    pub async fn conversation_with_last_seq(
        &self,
        id: Uuid,
    ) -> Result<Option<(Conversation, u64)>, DbError> {
        dispatch!(self.conversation_with_last_seq(id))
    }

    pub async fn conversations_of(&self, user: Pubkey) -> Result<Vec<Conversation>, DbError> {
        dispatch!(self.conversations_of(user))
    }

    /// The conversations of `user` with their last committed sequences
    /// (for the cluster's baselines).
    pub async fn sequences_of(&self, user: Pubkey) -> Result<Vec<(Uuid, u64)>, DbError> {
        dispatch!(self.sequences_of(user))
    }

    /// The last committed sequences of those of `ids` that exist (for the
    /// cluster's repairs).
    pub async fn last_sequences(&self, ids: Vec<Uuid>) -> Result<Vec<(Uuid, u64)>, DbError> {
        dispatch!(self.last_sequences(ids))
    }

    /// Everyone who shares a conversation with `user`.
    pub async fn partners_of(&self, user: Pubkey) -> Result<Vec<Pubkey>, DbError> {
        dispatch!(self.partners_of(user))
    }

    // -- messages ----------------------------------------------------------

    pub async fn message(&self, id: Uuid) -> Result<Option<StoredMessage>, DbError> {
        dispatch!(self.message(id))
    }

    /// The highest committed sequence of a conversation (0 when it has none).
    pub async fn last_sequence(&self, conversation: Uuid) -> Result<u64, DbError> {
        dispatch!(self.last_sequence(conversation))
    }

    /// One page of history; `has_more` is exact.
    pub async fn history(
        &self,
        conversation: Uuid,
        page: HistoryPage,
        limit: u32,
    ) -> Result<History, DbError> {
        dispatch!(self.history(conversation, page, limit))
    }

    // -- whole tables, for `united-hub migrate` ------------------------------

    /// How many rows a portable table holds.
    pub async fn count_rows(&self, table: &'static Table) -> Result<u64, DbError> {
        dispatch!(self.count_rows(table))
    }

    /// Up to `limit` rows of `table` in key order, after the key `after`.
    pub async fn export_page(
        &self,
        table: &'static Table,
        after: Option<Value>,
        limit: u32,
    ) -> Result<Vec<PortableRow>, DbError> {
        dispatch!(self.export_page(table, after, limit))
    }

    /// Inserts rows of `table` as they are, in one transaction.
    pub async fn import_rows(
        &self,
        table: &'static Table,
        rows: Vec<PortableRow>,
    ) -> Result<(), DbError> {
        dispatch!(self.import_rows(table, rows))
    }

    /// Deletes every row of `tables`, children first, in one transaction;
    /// returns how many.
    pub async fn clear_tables(&self, tables: &'static [Table]) -> Result<u64, DbError> {
        dispatch!(self.clear_tables(tables))
    }

    /// Brings what the engine keeps beside the rows in line with them
    /// (PostgreSQL's `last_seq`, its id sequence) after an import.
    pub async fn finish_import(&self) -> Result<(), DbError> {
        dispatch!(self.finish_import())
    }

    // -- offline queue -----------------------------------------------------

    /// Queues a committed message for a recipient whose live push failed.
    pub async fn queue_offline(
        &self,
        recipient: Pubkey,
        message_id: Uuid,
    ) -> Result<bool, DbError> {
        dispatch!(self.queue_offline(recipient, message_id))
    }

    /// Up to `limit` of the recipient's undelivered entries, oldest first,
    /// marked delivered, and whether more remain.
    pub async fn take_offline(
        &self,
        recipient: Pubkey,
        limit: u32,
    ) -> Result<OfflinePage, DbError> {
        dispatch!(self.take_offline(recipient, limit))
    }

    /// When the oldest undelivered offline entry was queued (ms), if any.
    pub async fn oldest_offline(&self) -> Result<Option<u64>, DbError> {
        dispatch!(self.oldest_offline())
    }

    /// Marks the named entries of one user delivered; returns how many changed.
    pub async fn ack_offline(&self, recipient: Pubkey, ids: Vec<Uuid>) -> Result<u32, DbError> {
        dispatch!(self.ack_offline(recipient, ids))
    }

    /// The janitor's purge. `None` when another node of the cluster already
    /// ran it within `interval`.
    pub async fn purge_expired(
        &self,
        offline_cutoff: u64,
        interval: Duration,
    ) -> Result<Option<Purged>, DbError> {
        dispatch!(self.purge_expired(offline_cutoff, interval))
    }

    /// Stops background work at shutdown: the SQLite checkpointer and the
    /// hub's marker; PostgreSQL's pool, so its sessions end now rather than
    /// when the last clone of the store goes.
    pub fn close(&self) {
        match &self.0 {
            Engine::Sqlite(s) => s.close(),
            Engine::Postgres(s) => s.close(),
        }
    }
}

/// Copies the embedded database of `settings` to the new file `to`, while
/// a hub may run on it (`united-hub backup`); `progress` hears bytes written
/// and about how many there will be. PostgreSQL has its own tools.
pub fn backup(
    settings: &Settings,
    to: &std::path::Path,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<BackupSummary> {
    anyhow::ensure!(
        settings.database_url.is_none(),
        "a hub on PostgreSQL is backed up with PostgreSQL's tools (pg_dump, or base backups \
         with WAL archiving); see docs/operations.md"
    );
    sqlite::backup::backup(&settings.data_dir, to, progress)
}

/// Puts a backup made by [`backup`] in place as the database of
/// `settings`' data directory, which must have none (`united-hub restore`).
pub fn restore(settings: &Settings, from: &std::path::Path) -> anyhow::Result<BackupSummary> {
    anyhow::ensure!(
        settings.database_url.is_none(),
        "restore a PostgreSQL database with PostgreSQL's tools (pg_restore); see docs/operations.md"
    );
    sqlite::backup::restore(from, &settings.data_dir)
}

/// How the tools' PostgreSQL sessions name themselves (hub nodes say
/// `united-hub`).
const TOOL: &str = "united-hub-tool";

async fn open_engine(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    application: &str,
) -> anyhow::Result<(Store, u32)> {
    match &settings.database_url {
        None => open_sqlite(settings, metrics),
        Some(url) => {
            let (store, applied) = PgStore::connect(
                url.expose(),
                application,
                Duration::from_secs(settings.challenge_ttl),
                metrics.clone(),
            )
            .await
            .with_context(|| format!("opening {url}"))?;
            Ok((Store(Engine::Postgres(store)), applied))
        }
    }
}

/// Opens the embedded SQLite store in `--data-dir`, migrated, with its
/// writer and checkpointer started. Returns it and the migrations applied.
fn open_sqlite(settings: &Settings, metrics: &Arc<Metrics>) -> anyhow::Result<(Store, u32)> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    let path = db::db_path(&settings.data_dir);
    let mut writer_conn =
        db::open_writer(&path).with_context(|| format!("opening {}", path.display()))?;
    let applied = migrations::migrate(&mut writer_conn).context("migrating")?;
    let pool = db::open_pool(&path).context("opening the read pool")?;
    // The tail is known before the first read, and shared by the writer
    // with every reader (`db::order::Tail`).
    let progress = order::Progress::read(&writer_conn).context("reading the conversation order")?;
    let tail = order::Tail::default();
    tail.replace(&progress);
    let checkpointer =
        Checkpointer::start(path.clone(), metrics.clone()).context("starting the checkpointer")?;
    let lanes = Arc::new(Lanes::default());
    let writer = {
        let slot = Mutex::new(Some((writer_conn, progress)));
        let (lanes, metrics, path, tail) =
            (lanes.clone(), metrics.clone(), path.clone(), tail.clone());
        SyncArbiter::start(1, move || {
            let (conn, progress) = slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                // The factory runs again only if the writer thread is
                // restarted; the first connection was checked above.
                .unwrap_or_else(|| {
                    let conn = db::open_writer(&path).expect("reopening the writer");
                    let progress = order::Progress::read(&conn).expect("reading the order");
                    tail.replace(&progress);
                    (conn, progress)
                });
            let committed = Committed::new(progress, tail.clone());
            DbExecutor::new(conn, committed, lanes.clone(), metrics.clone())
        })
    };
    let writer = Writer::new(writer, lanes, metrics.clone());
    let store = SqliteStore::new(
        path.clone(),
        pool,
        writer,
        tail,
        Duration::from_secs(settings.challenge_ttl),
        checkpointer,
        metrics.clone(),
    );
    Ok((Store(Engine::Sqlite(Arc::new(store))), applied))
}
