//! Storage: one [`Store`] over two engines.
//!
//! - **SQLite** (the default, embedded in `--data-dir`): WAL with
//!   `synchronous=FULL`; reads go through the r2d2 pool, every write through
//!   the one connection owned by `actors::DbExecutor` ([`sqlite::SqliteStore`]).
//! - **PostgreSQL** (`--database-url`, cluster mode): a connection pool on a
//!   runtime of its own ([`postgres::PgStore`]).
//!
//! Actors, services and HTTP handlers only see [`Store`]: they never know
//! which engine answers.
//!
//! # Architecture Invariant
//! A message is written only by a group commit ([`Store::commit_target`]),
//! and only if its `server_sequence` follows the conversation's last
//! committed one: both engines refuse anything else, so the table never has
//! a gap or a duplicate, whoever assigned the number.

pub mod postgres;
pub mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::auth::IssuedChallenge;
use crate::db::{CommitTarget, DbError, LoginOutcome, Purged};
use crate::error::ApiError;
use crate::model::{Conversation, DmKey, History, HistoryPage, Pubkey, StoredMessage, User};

/// The hub's storage, whichever engine holds it. Cheap to clone.
#[derive(Clone)]
pub enum Store {
    Sqlite(Arc<sqlite::SqliteStore>),
    Postgres(Arc<postgres::PgStore>),
}

/// Calls the same method on whichever engine this is.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Sqlite(s) => s.$method($($arg),*).await,
            Store::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// A short name for logs and metrics: `sqlite` or `postgres`.
    pub fn engine(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Where the `WriteBatcher` sends its batches.
    pub fn commit_target(&self) -> CommitTarget {
        match self {
            Store::Sqlite(s) => s.commit_target(),
            Store::Postgres(s) => s.commit_target(),
        }
    }

    /// Answers when the database can take a write and a read.
    pub async fn health(&self) -> Result<(), DbError> {
        dispatch!(self.health())
    }

    // -- identity ----------------------------------------------------------

    pub async fn issue_challenge(&self) -> Result<IssuedChallenge, ApiError> {
        match self {
            Store::Sqlite(s) => s.issue_challenge(),
            Store::Postgres(s) => s.issue_challenge().await,
        }
    }

    /// Consumes a challenge; see `auth::ChallengeStore::take`.
    pub async fn take_challenge(&self, id: Uuid) -> Result<[u8; 32], ApiError> {
        match self {
            Store::Sqlite(s) => s.take_challenge(&id),
            Store::Postgres(s) => s.take_challenge(id).await,
        }
    }

    /// Drops expired challenges; returns how many.
    pub async fn purge_challenges(&self) -> Result<u64, DbError> {
        dispatch!(self.purge_challenges())
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

    // -- offline queue -----------------------------------------------------

    /// Queues a committed message for a recipient whose live push failed.
    pub async fn queue_offline(
        &self,
        recipient: Pubkey,
        message_id: Uuid,
    ) -> Result<bool, DbError> {
        dispatch!(self.queue_offline(recipient, message_id))
    }

    /// The recipient's undelivered entries, oldest first, marked delivered.
    pub async fn take_offline(&self, recipient: Pubkey) -> Result<Vec<StoredMessage>, DbError> {
        dispatch!(self.take_offline(recipient))
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

    /// Stops background work (the SQLite checkpointer) at shutdown.
    pub fn close(&self) {
        if let Store::Sqlite(s) = self {
            s.close();
        }
    }
}
