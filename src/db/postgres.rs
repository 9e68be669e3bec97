//! The PostgreSQL engine (cluster mode): schema, migrations and every
//! statement, on a `deadpool_postgres` client. `store::postgres` runs these
//! on its own runtime.
//!
//! The schema is SQLite's (same tables, names and Unix-ms times) with one
//! addition: `dm_conversations.last_seq`, the conversation's last committed
//! sequence. A group commit advances it with a conditional update
//! (`WHERE last_seq = first - 1`), so a message is written only if its
//! sequence follows the last committed one, whichever node assigned it.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::{Client, GenericClient};
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use uuid::Uuid;

use super::rows::{self, Rotation};
use super::{DbError, LoginOutcome, MessageWrite, Purged, Skipped};
use crate::model::{
    take_page, Conversation, DmKey, History, HistoryPage, OfflinePage, Pubkey, StoredMessage, User,
    PAGE_BODY_BYTES, PAGE_MESSAGE_OVERHEAD,
};
use crate::tickets::TicketHolder;

/// Taken (per session) while migrating, so nodes that start together
/// migrate one after the other. The number is arbitrary but fixed.
const MIGRATION_LOCK: i64 = 0x756e_6974_6564_0001;

/// The migrations in order; migration `i` brings the schema to version `i + 1`.
/// Append new ones; never edit old ones.
const MIGRATIONS: &[&str] = &[
    // 1: the seed's tables, plus what the nodes of a cluster share. Public
    // keys compare byte-wise (`COLLATE "C"`), as in SQLite.
    r#"
    CREATE TABLE users (
        public_key   TEXT COLLATE "C" PRIMARY KEY,
        display_name TEXT NOT NULL,
        created_at   BIGINT NOT NULL,
        updated_at   BIGINT NOT NULL
    );

    CREATE TABLE refresh_tokens (
        token_hash  BYTEA PRIMARY KEY,
        user_pubkey TEXT COLLATE "C" NOT NULL REFERENCES users(public_key),
        created_at  BIGINT NOT NULL,
        expires_at  BIGINT NOT NULL
    );
    CREATE INDEX idx_refresh_tokens_expires ON refresh_tokens(expires_at);

    CREATE TABLE dm_public_keys (
        ed25519_pubkey TEXT COLLATE "C" PRIMARY KEY REFERENCES users(public_key),
        x25519_pubkey  BYTEA NOT NULL,
        published_at   BIGINT NOT NULL,
        updated_at     BIGINT NOT NULL
    );

    CREATE TABLE dm_conversations (
        id              UUID PRIMARY KEY,
        participant_a   TEXT COLLATE "C" NOT NULL REFERENCES users(public_key),
        participant_b   TEXT COLLATE "C" NOT NULL REFERENCES users(public_key),
        created_at      BIGINT NOT NULL,
        last_message_at BIGINT,
        last_seq        BIGINT NOT NULL DEFAULT 0,
        UNIQUE(participant_a, participant_b),
        CHECK(participant_a < participant_b)
    );
    CREATE INDEX idx_dm_conversations_a ON dm_conversations(participant_a);
    CREATE INDEX idx_dm_conversations_b ON dm_conversations(participant_b);

    CREATE TABLE dm_messages (
        id                  UUID PRIMARY KEY,
        conversation_id     UUID NOT NULL REFERENCES dm_conversations(id) ON DELETE CASCADE,
        sender_pubkey       TEXT COLLATE "C" NOT NULL,
        encrypted_payload   BYTEA NOT NULL,
        nonce               BYTEA NOT NULL,
        ephemeral_pubkey    BYTEA,
        timestamp           BIGINT NOT NULL,
        server_sequence     BIGINT NOT NULL,
        sender_display_name TEXT,
        created_at          BIGINT NOT NULL,
        UNIQUE(conversation_id, server_sequence)
    );

    CREATE TABLE dm_offline_queue (
        id               BIGSERIAL PRIMARY KEY,
        recipient_pubkey TEXT COLLATE "C" NOT NULL,
        dm_message_id    UUID NOT NULL REFERENCES dm_messages(id) ON DELETE CASCADE,
        queued_at        BIGINT NOT NULL,
        delivered        BOOLEAN NOT NULL DEFAULT false,
        UNIQUE(recipient_pubkey, dm_message_id)
    );
    CREATE INDEX idx_dm_offline_recipient ON dm_offline_queue(recipient_pubkey, delivered, id);
    CREATE INDEX idx_dm_offline_queued_at ON dm_offline_queue(queued_at);

    CREATE TABLE auth_challenges (
        id         UUID PRIMARY KEY,
        challenge  BYTEA NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX idx_auth_challenges_expires ON auth_challenges(expires_at);

    CREATE TABLE cluster_secrets (
        name  TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    );

    CREATE TABLE janitor_runs (
        id          INT PRIMARY KEY CHECK (id = 1),
        last_run_at BIGINT NOT NULL
    );
    INSERT INTO janitor_runs (id, last_run_at) VALUES (1, 0);
    "#,
    // 2: refresh-token families (as SQLite's migration 2).
    r#"
    ALTER TABLE refresh_tokens ADD COLUMN family TEXT;
    ALTER TABLE refresh_tokens ADD COLUMN used BOOLEAN NOT NULL DEFAULT false;
    UPDATE refresh_tokens SET family = encode(token_hash, 'hex') WHERE family IS NULL;
    CREATE INDEX idx_refresh_tokens_family ON refresh_tokens(family);
    "#,
    // 3: per-client challenge caps. `client` is a keyed hash of the client's
    // IPv4 address or IPv6 /64 (never the address itself).
    r#"
    ALTER TABLE auth_challenges ADD COLUMN client BYTEA;
    CREATE INDEX idx_auth_challenges_client ON auth_challenges(client, expires_at);
    "#,
    // 4: WebSocket tickets (contract §8), by hash: a ticket from one node
    // opens a session on any node, once.
    r#"
    CREATE TABLE ws_tickets (
        ticket_hash      BYTEA PRIMARY KEY,
        user_pubkey      TEXT COLLATE "C" NOT NULL,
        token_expires_at BIGINT NOT NULL,
        expires_at       BIGINT NOT NULL
    );
    CREATE INDEX idx_ws_tickets_user ON ws_tickets(user_pubkey, expires_at);
    CREATE INDEX idx_ws_tickets_expires ON ws_tickets(expires_at);
    "#,
    // 5: the JWT key is no longer kept in the database (contract §8): every
    // node reads it from --jwt-secret-file. The key earlier versions stored
    // is deleted, so a reader of the database cannot mint tokens with it.
    r#"
    DELETE FROM cluster_secrets WHERE name = 'jwt';
    "#,
];

/// The schema version this build expects.
pub const LATEST: u32 = MIGRATIONS.len() as u32;

/// Whether an error means the server cannot be reached (or is going away),
/// as opposed to refusing a statement.
pub fn is_connection_error(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    match err.code() {
        // Class 08: connection exception; class 57: operator intervention
        // (admin shutdown, cannot connect now).
        Some(code) => code.code().starts_with("08") || code.code().starts_with("57"),
        None => true,
    }
}

/// Whether a whole transaction may simply be run again: a deadlock, a
/// serialization failure, or a unique id inserted meanwhile by another node.
pub fn is_retryable(err: &DbError) -> bool {
    let DbError::Postgres(e) = err else {
        return false;
    };
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::UNIQUE_VIOLATION
    )
}

/// Applies every migration newer than the database; returns how many ran.
/// Safe when several nodes start at once: they take an advisory lock in turn.
pub async fn migrate(client: &mut Client) -> Result<u32, DbError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = migrate_locked(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn migrate_locked(client: &mut Client) -> Result<u32, DbError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    INT PRIMARY KEY,
                applied_at BIGINT NOT NULL
            )",
        )
        .await?;
    let current: i32 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let mut applied = 0;
    for (version, sql) in rows::pending_migrations(MIGRATIONS, current as u32)? {
        let version = version as i32;
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&version, &(crate::model::now_ms() as i64)],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, "applied migration");
        applied += 1;
    }
    Ok(applied)
}

/// The cluster's secret called `name`: the stored one, or `generated` if
/// this node is the first to ask.
pub async fn shared_secret(
    client: &Client,
    name: &str,
    generated: &[u8],
) -> Result<Vec<u8>, DbError> {
    client
        .execute(
            "INSERT INTO cluster_secrets (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING",
            &[&name, &generated],
        )
        .await?;
    let row = client
        .query_one(
            "SELECT value FROM cluster_secrets WHERE name = $1",
            &[&name],
        )
        .await?;
    Ok(row.get(0))
}

// ---------------------------------------------------------------------------
// Rows

const MESSAGE_COLUMNS: &str = "m.id, m.conversation_id, m.sender_pubkey, m.encrypted_payload, \
     m.nonce, m.ephemeral_pubkey, m.timestamp, m.server_sequence, m.sender_display_name, m.created_at";

const CONVERSATION_SELECT: &str =
    "SELECT c.id, c.participant_a, c.participant_b, ua.display_name, \
     ub.display_name, c.created_at, COALESCE(c.last_message_at, 0) \
     FROM dm_conversations c \
     JOIN users ua ON ua.public_key = c.participant_a \
     JOIN users ub ON ub.public_key = c.participant_b";

impl rows::Columns for Row {
    type Error = DbError;
    fn text(&self, i: usize) -> Result<String, DbError> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        Ok(self.try_get(i)?)
    }
    fn blob(&self, i: usize) -> Result<Vec<u8>, DbError> {
        Ok(self.try_get(i)?)
    }
    fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self.try_get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64, DbError> {
        Ok(self.try_get(i)?)
    }
    fn uuid(&self, i: usize) -> Result<Uuid, DbError> {
        Ok(self.try_get(i)?)
    }
    fn invalid(&self, i: usize, why: &'static str) -> DbError {
        DbError::Other(format!("column {i}: {why}"))
    }
}

fn message_from_row(row: &Row) -> Result<StoredMessage, DbError> {
    rows::message(row)
}

fn conversation_from_row(row: &Row) -> Result<Conversation, DbError> {
    rows::conversation(row)
}

// ---------------------------------------------------------------------------
// Identity

/// Why a challenge was not stored.
pub enum ChallengeRefused {
    /// The client already holds `cap` live challenges; the oldest expires
    /// at this time (ms).
    OverCap { oldest_expires_at: u64 },
}

/// Stores a challenge, unless `owner` (a client key's hash) already holds
/// `cap` live ones. Concurrent requests of one client may overshoot the cap
/// by how many run at once: the count and the insert are one statement but
/// not serialised per client.
pub async fn insert_challenge(
    client: &Client,
    id: Uuid,
    challenge: &[u8; 32],
    expires_at: u64,
    owner: Option<&[u8]>,
    cap: i64,
    now: u64,
) -> Result<Result<(), ChallengeRefused>, DbError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO auth_challenges (id, challenge, expires_at, client) \
             SELECT $1, $2, $3, $4 \
             WHERE $4::bytea IS NULL OR (SELECT COUNT(*) FROM auth_challenges \
                 WHERE client = $4 AND expires_at > $5) < $6",
        )
        .await?;
    let inserted = client
        .execute(
            &stmt,
            &[
                &id,
                &&challenge[..],
                &(expires_at as i64),
                &owner,
                &(now as i64),
                &cap,
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(Ok(()));
    }
    let oldest: Option<i64> = client
        .query_one(
            "SELECT MIN(expires_at) FROM auth_challenges WHERE client = $1 AND expires_at > $2",
            &[&owner, &(now as i64)],
        )
        .await?
        .get(0);
    Ok(Err(ChallengeRefused::OverCap {
        oldest_expires_at: oldest.map_or(now, |t| t as u64),
    }))
}

/// Removes a challenge and returns its bytes and expiry, if it existed.
pub async fn take_challenge(client: &Client, id: Uuid) -> Result<Option<([u8; 32], u64)>, DbError> {
    let stmt = client
        .prepare_cached("DELETE FROM auth_challenges WHERE id = $1 RETURNING challenge, expires_at")
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&id]).await? else {
        return Ok(None);
    };
    Ok(Some((
        rows::fixed::<_, 32>(&row, 0, "stored challenge has the wrong length")?,
        row.try_get::<_, i64>(1)? as u64,
    )))
}

/// Purges expired challenges and WebSocket tickets; returns how many.
pub async fn purge_challenges(client: &Client, now: u64) -> Result<u64, DbError> {
    let now = now as i64;
    let challenges = client
        .execute(
            "DELETE FROM auth_challenges WHERE expires_at <= $1",
            &[&now],
        )
        .await?;
    let tickets = client
        .execute("DELETE FROM ws_tickets WHERE expires_at <= $1", &[&now])
        .await?;
    Ok(challenges + tickets)
}

/// Stores a WebSocket ticket's hash, unless its user already holds `cap`
/// live ones; says whether it was stored.
pub async fn insert_ticket(
    client: &Client,
    hash: &[u8; 32],
    holder: &TicketHolder,
    expires_at: u64,
    cap: i64,
    now: u64,
) -> Result<bool, DbError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO ws_tickets (ticket_hash, user_pubkey, token_expires_at, expires_at) \
             SELECT $1, $2, $3, $4 \
             WHERE (SELECT COUNT(*) FROM ws_tickets WHERE user_pubkey = $2 AND expires_at > $5) < $6",
        )
        .await?;
    let inserted = client
        .execute(
            &stmt,
            &[
                &&hash[..],
                &holder.user.as_str(),
                &(holder.token_expires_at as i64),
                &(expires_at as i64),
                &(now as i64),
                &cap,
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// Removes a ticket and returns what it stood for, if it was live.
pub async fn take_ticket(
    client: &Client,
    hash: &[u8; 32],
    now: u64,
) -> Result<Option<TicketHolder>, DbError> {
    let stmt = client
        .prepare_cached(
            "DELETE FROM ws_tickets WHERE ticket_hash = $1 \
             RETURNING user_pubkey, token_expires_at, expires_at",
        )
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&&hash[..]]).await? else {
        return Ok(None);
    };
    if row.try_get::<_, i64>(2)? <= now as i64 {
        return Ok(None);
    }
    Ok(Some(TicketHolder {
        user: Pubkey::from_db(row.try_get(0)?),
        token_expires_at: row.try_get::<_, i64>(1)? as u64,
    }))
}

pub async fn user(client: &impl GenericClient, pubkey: &Pubkey) -> Result<Option<User>, DbError> {
    let stmt = client
        .prepare_cached("SELECT public_key, display_name FROM users WHERE public_key = $1")
        .await?;
    let row = client.query_opt(&stmt, &[&pubkey.as_str()]).await?;
    row.map(|r| {
        Ok(User {
            public_key: Pubkey::from_db(r.try_get(0)?),
            display_name: r.try_get(1)?,
        })
    })
    .transpose()
}

pub async fn login_user(
    client: &Client,
    pubkey: &Pubkey,
    display_name: Option<&str>,
    now: u64,
) -> Result<LoginOutcome, DbError> {
    let Some(name) = display_name else {
        return Ok(match user(client, pubkey).await? {
            Some(user) => LoginOutcome::User(user),
            None => LoginOutcome::NeedsDisplayName,
        });
    };
    let stmt = client
        .prepare_cached(
            "INSERT INTO users (public_key, display_name, created_at, updated_at) \
             VALUES ($1, $2, $3, $3) \
             ON CONFLICT (public_key) DO UPDATE SET display_name = $2, updated_at = $3",
        )
        .await?;
    client
        .execute(&stmt, &[&pubkey.as_str(), &name, &(now as i64)])
        .await?;
    Ok(LoginOutcome::User(User {
        public_key: pubkey.clone(),
        display_name: name.to_owned(),
    }))
}

/// Stores a login's first refresh token, the start of a new family.
pub async fn insert_refresh_token(
    client: &Client,
    hash: &[u8; 32],
    user: &Pubkey,
    now: u64,
    expires_at: u64,
) -> Result<(), DbError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO refresh_tokens (token_hash, user_pubkey, created_at, expires_at, family) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .await?;
    client
        .execute(
            &stmt,
            &[
                &&hash[..],
                &user.as_str(),
                &(now as i64),
                &(expires_at as i64),
                &Uuid::new_v4().to_string(),
            ],
        )
        .await?;
    Ok(())
}

/// Consumes a live refresh token and stores its successor (same family),
/// atomically; an already used token revokes its family (see SQLite's
/// `writes::rotate_refresh_token`).
pub async fn rotate_refresh_token(
    client: &mut Client,
    old_hash: &[u8; 32],
    new_hash: &[u8; 32],
    now: u64,
    expires_at: u64,
) -> Result<Option<User>, DbError> {
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "SELECT user_pubkey, family, used, expires_at FROM refresh_tokens \
             WHERE token_hash = $1 FOR UPDATE",
            &[&&old_hash[..]],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (owner, family, used, expiry): (String, String, bool, i64) = (
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    );
    match rows::rotation(used, expiry, now) {
        Rotation::RevokeFamily => {
            let revoked = tx
                .execute("DELETE FROM refresh_tokens WHERE family = $1", &[&family])
                .await?;
            tx.commit().await?;
            tracing::warn!(
                revoked,
                "a rotated refresh token was used again; its family is revoked"
            );
            return Ok(None);
        }
        Rotation::Refuse => return Ok(None),
        Rotation::Rotate => {}
    }
    tx.execute(
        "UPDATE refresh_tokens SET used = true WHERE token_hash = $1",
        &[&&old_hash[..]],
    )
    .await?;
    let owner = Pubkey::from_db(owner);
    let found = user(&tx, &owner).await?;
    tx.execute(
        "INSERT INTO refresh_tokens (token_hash, user_pubkey, created_at, expires_at, family) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &&new_hash[..],
            &owner.as_str(),
            &(now as i64),
            &(expires_at as i64),
            &family,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(found)
}

// ---------------------------------------------------------------------------
// Keys and conversations

pub async fn dm_key(client: &impl GenericClient, user: &Pubkey) -> Result<Option<DmKey>, DbError> {
    let stmt = client
        .prepare_cached(
            "SELECT x25519_pubkey, published_at FROM dm_public_keys WHERE ed25519_pubkey = $1",
        )
        .await?;
    let row = client.query_opt(&stmt, &[&user.as_str()]).await?;
    row.map(|r| {
        Ok(DmKey {
            ed25519_pubkey: user.clone(),
            x25519_pubkey: rows::fixed::<_, 32>(&r, 0, "stored x25519 key has the wrong length")?,
            published_at: r.try_get::<_, i64>(1)? as u64,
        })
    })
    .transpose()
}

/// Upserts a user's X25519 key. Returns the stored key and whether it changed.
pub async fn upsert_dm_key(
    client: &mut Client,
    user: &Pubkey,
    key: &[u8; 32],
    now: u64,
) -> Result<(DmKey, bool), DbError> {
    let tx = client.transaction().await?;
    // Serialises publishes of one user, so "changed" is exact.
    tx.execute(
        "SELECT 1 FROM users WHERE public_key = $1 FOR UPDATE",
        &[&user.as_str()],
    )
    .await?;
    let result = match dm_key(&tx, user).await? {
        Some(stored) if &stored.x25519_pubkey == key => (stored, false),
        _ => {
            tx.execute(
                "INSERT INTO dm_public_keys (ed25519_pubkey, x25519_pubkey, published_at, updated_at) \
                 VALUES ($1, $2, $3, $3) \
                 ON CONFLICT (ed25519_pubkey) DO UPDATE SET x25519_pubkey = $2, \
                 published_at = $3, updated_at = $3",
                &[&user.as_str(), &&key[..], &(now as i64)],
            )
            .await?;
            let stored = DmKey {
                ed25519_pubkey: user.clone(),
                x25519_pubkey: *key,
                published_at: now,
            };
            (stored, true)
        }
    };
    tx.commit().await?;
    Ok(result)
}

/// Creates the conversation of a normalised pair, or returns the existing one.
/// The pair's unique constraint decides between nodes that create at once.
pub async fn create_conversation(
    client: &Client,
    a: &Pubkey,
    b: &Pubkey,
    now: u64,
) -> Result<(Conversation, bool), DbError> {
    debug_assert!(a < b, "the pair is normalised by the caller");
    let inserted = client
        .query_opt(
            "INSERT INTO dm_conversations (id, participant_a, participant_b, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (participant_a, participant_b) DO NOTHING \
             RETURNING id",
            &[&Uuid::new_v4(), &a.as_str(), &b.as_str(), &(now as i64)],
        )
        .await?;
    let created = inserted.is_some();
    let row = client
        .query_one(
            &format!("{CONVERSATION_SELECT} WHERE c.participant_a = $1 AND c.participant_b = $2"),
            &[&a.as_str(), &b.as_str()],
        )
        .await?;
    Ok((conversation_from_row(&row)?, created))
}

pub async fn conversation(client: &Client, id: &Uuid) -> Result<Option<Conversation>, DbError> {
    let stmt = client
        .prepare_cached(&format!("{CONVERSATION_SELECT} WHERE c.id = $1"))
        .await?;
    client
        .query_opt(&stmt, &[id])
        .await?
        .map(|r| conversation_from_row(&r))
        .transpose()
}

pub async fn conversation_with_last_seq(
    client: &Client,
    id: &Uuid,
) -> Result<Option<(Conversation, u64)>, DbError> {
    // `CONVERSATION_SELECT` with `c.last_seq` as an eighth column.
    let stmt = client
        .prepare_cached(
            "SELECT c.id, c.participant_a, c.participant_b, ua.display_name, ub.display_name, \
             c.created_at, COALESCE(c.last_message_at, 0), c.last_seq \
             FROM dm_conversations c \
             JOIN users ua ON ua.public_key = c.participant_a \
             JOIN users ub ON ub.public_key = c.participant_b WHERE c.id = $1",
        )
        .await?;
    client
        .query_opt(&stmt, &[id])
        .await?
        .map(|r| Ok((conversation_from_row(&r)?, r.try_get::<_, i64>(7)? as u64)))
        .transpose()
}

pub async fn conversations_of(
    client: &Client,
    user: &Pubkey,
) -> Result<Vec<Conversation>, DbError> {
    let stmt = client
        .prepare_cached(&format!(
            "{CONVERSATION_SELECT} WHERE c.participant_a = $1 OR c.participant_b = $1 \
             ORDER BY c.last_message_at IS NULL, c.last_message_at DESC, c.created_at DESC, c.id"
        ))
        .await?;
    client
        .query(&stmt, &[&user.as_str()])
        .await?
        .iter()
        .map(conversation_from_row)
        .collect()
}

/// The conversations of `user` with their last committed sequences.
pub async fn sequences_of(client: &Client, user: &Pubkey) -> Result<Vec<(Uuid, u64)>, DbError> {
    let stmt = client
        .prepare_cached(
            "SELECT id, last_seq FROM dm_conversations WHERE participant_a = $1 \
             UNION ALL SELECT id, last_seq FROM dm_conversations WHERE participant_b = $1",
        )
        .await?;
    client
        .query(&stmt, &[&user.as_str()])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get::<_, i64>(1)? as u64)))
        .collect()
}

/// The last committed sequences of the given conversations.
pub async fn last_sequences(client: &Client, ids: &[Uuid]) -> Result<Vec<(Uuid, u64)>, DbError> {
    let stmt = client
        .prepare_cached("SELECT id, last_seq FROM dm_conversations WHERE id = ANY($1)")
        .await?;
    client
        .query(&stmt, &[&ids])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get::<_, i64>(1)? as u64)))
        .collect()
}

pub async fn partners_of(client: &Client, user: &Pubkey) -> Result<Vec<Pubkey>, DbError> {
    let stmt = client
        .prepare_cached(
            "SELECT participant_b FROM dm_conversations WHERE participant_a = $1 \
             UNION SELECT participant_a FROM dm_conversations WHERE participant_b = $1",
        )
        .await?;
    client
        .query(&stmt, &[&user.as_str()])
        .await?
        .iter()
        .map(|r| Ok(Pubkey::from_db(r.try_get(0)?)))
        .collect()
}

// ---------------------------------------------------------------------------
// Messages

pub async fn message(client: &Client, id: &Uuid) -> Result<Option<StoredMessage>, DbError> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM dm_messages m WHERE m.id = $1"
        ))
        .await?;
    client
        .query_opt(&stmt, &[id])
        .await?
        .map(|r| message_from_row(&r))
        .transpose()
}

pub async fn last_sequence(client: &Client, conversation: &Uuid) -> Result<u64, DbError> {
    let stmt = client
        .prepare_cached("SELECT last_seq FROM dm_conversations WHERE id = $1")
        .await?;
    Ok(client
        .query_opt(&stmt, &[conversation])
        .await?
        .map(|r| r.try_get::<_, i64>(0))
        .transpose()?
        .unwrap_or(0) as u64)
}

/// One page of history, cut at `limit` messages or at the page's byte cap
/// ([`take_page`]); `has_more` is exact (one extra row is read).
pub async fn history(
    client: &Client,
    conversation: &Uuid,
    page: HistoryPage,
    limit: u32,
) -> Result<History, DbError> {
    let fetch = i64::from(limit) + 1;
    let rows = match page {
        HistoryPage::Before(before) => {
            let before = before
                .map(|b| b.min(i64::MAX as u64) as i64)
                .unwrap_or(i64::MAX);
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM dm_messages m \
                     WHERE m.conversation_id = $1 AND m.server_sequence < $2 \
                     ORDER BY m.server_sequence DESC LIMIT $3"
                ))
                .await?;
            client
                .query(&stmt, &[conversation, &before, &fetch])
                .await?
        }
        HistoryPage::After(after) => {
            let after = after.min(i64::MAX as u64) as i64;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM dm_messages m \
                     WHERE m.conversation_id = $1 AND m.server_sequence > $2 \
                     ORDER BY m.server_sequence ASC LIMIT $3"
                ))
                .await?;
            client.query(&stmt, &[conversation, &after, &fetch]).await?
        }
    };
    let (messages, has_more) = take_page(rows.iter().map(message_from_row), limit, |m| {
        m.encrypted_payload.len()
    })?;
    Ok(History { messages, has_more })
}

/// Commits a batch of messages from any number of conversations, and from
/// any number of nodes at once, in one transaction.
///
/// Per conversation, the batch's messages must continue the stored
/// `last_seq`: one conditional `UPDATE` per batch checks and advances every
/// conversation at once. A conversation whose `last_seq` moved (another node
/// committed first) has its messages refused as [`Skipped::Stale`]; a stored
/// id is [`Skipped::DuplicateId`], and what follows it in its conversation
/// [`Skipped::SequenceGap`]. Conversation rows are locked in id order, so two
/// nodes' batches cannot deadlock. Round trips per batch: seven, whatever
/// its size (eight when a run was refused).
pub async fn commit_messages(
    client: &mut Client,
    batch: &[MessageWrite],
    now: u64,
) -> Result<Vec<Result<(), Skipped>>, DbError> {
    let tx = client.transaction().await?;

    let ids: Vec<Uuid> = batch.iter().map(|w| w.message.id).collect();
    let stored: HashSet<Uuid> = tx
        .query("SELECT id FROM dm_messages WHERE id = ANY($1)", &[&ids])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;

    // Per conversation, in batch order: the contiguous run that can be
    // written, up to the first duplicate or break in the sequence.
    struct Run {
        first: u64,
        last: u64,
        last_at: u64,
        /// Batch indexes of the run.
        members: Vec<usize>,
        /// The run ended; later messages of the conversation are skipped.
        broken: bool,
    }
    let mut results: Vec<Result<(), Skipped>> = vec![Ok(()); batch.len()];
    let mut runs: HashMap<Uuid, Run> = HashMap::new();
    // Ids met earlier in this batch: a second copy is a duplicate too.
    let mut in_batch: HashSet<Uuid> = HashSet::new();
    for (index, write) in batch.iter().enumerate() {
        let m = &write.message;
        let run = runs.entry(m.conversation_id).or_insert(Run {
            first: m.server_sequence,
            last: m.server_sequence.saturating_sub(1),
            last_at: 0,
            members: Vec::new(),
            // Sequences start at 1; a 0 can never be written.
            broken: m.server_sequence == 0,
        });
        if stored.contains(&m.id) || !in_batch.insert(m.id) {
            results[index] = Err(Skipped::DuplicateId);
            run.broken = true;
        } else if run.broken || m.server_sequence != run.last + 1 {
            results[index] = Err(Skipped::SequenceGap);
            run.broken = true;
        } else {
            run.last = m.server_sequence;
            run.last_at = run.last_at.max(m.created_at);
            run.members.push(index);
        }
    }
    runs.retain(|_, run| !run.members.is_empty());

    let mut conversations: Vec<Uuid> = runs.keys().copied().collect();
    conversations.sort_unstable();
    tx.execute(
        "SELECT 1 FROM (SELECT id FROM dm_conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE) l",
        &[&conversations],
    )
    .await?;
    let firsts: Vec<i64> = conversations.iter().map(|c| runs[c].first as i64).collect();
    let lasts: Vec<i64> = conversations.iter().map(|c| runs[c].last as i64).collect();
    let ats: Vec<i64> = conversations
        .iter()
        .map(|c| runs[c].last_at as i64)
        .collect();
    let advanced: HashSet<Uuid> = tx
        .query(
            "UPDATE dm_conversations c SET last_seq = i.last, \
             last_message_at = GREATEST(COALESCE(c.last_message_at, 0), i.at) \
             FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::int8[]) AS i(id, first, last, at) \
             WHERE c.id = i.id AND c.last_seq = i.first - 1 RETURNING c.id",
            &[&conversations, &firsts, &lasts, &ats],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;

    // A refused run is `Stale` when another node committed past it, and a
    // `SequenceGap` when it starts beyond the stored last sequence.
    let refused: Vec<Uuid> = conversations
        .iter()
        .filter(|c| !advanced.contains(c))
        .copied()
        .collect();
    let stored_last: HashMap<Uuid, u64> = if refused.is_empty() {
        HashMap::new()
    } else {
        tx.query(
            "SELECT id, last_seq FROM dm_conversations WHERE id = ANY($1)",
            &[&refused],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get::<_, i64>(1)? as u64)))
        .collect::<Result<_, DbError>>()?
    };

    let mut rows = MessageColumns::default();
    let mut offline_to: Vec<&str> = Vec::new();
    let mut offline_ids: Vec<Uuid> = Vec::new();
    for (conversation, run) in &runs {
        if !advanced.contains(conversation) {
            let ahead = stored_last
                .get(conversation)
                .is_some_and(|l| *l >= run.first);
            let why = if ahead {
                Skipped::Stale
            } else {
                Skipped::SequenceGap
            };
            for &index in &run.members {
                results[index] = Err(why);
            }
            continue;
        }
        for &index in &run.members {
            let write = &batch[index];
            rows.push(&write.message);
            if write.offline_queued {
                offline_to.push(write.recipient.as_str());
                offline_ids.push(write.message.id);
            }
        }
    }
    if !rows.id.is_empty() {
        tx.execute(
            "INSERT INTO dm_messages (id, conversation_id, sender_pubkey, encrypted_payload, nonce, \
             ephemeral_pubkey, timestamp, server_sequence, sender_display_name, created_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bytea[], $5::bytea[], \
             $6::bytea[], $7::int8[], $8::int8[], $9::text[], $10::int8[])",
            &[
                &rows.id,
                &rows.conversation_id,
                &rows.sender,
                &rows.payload,
                &rows.nonce,
                &rows.ephemeral,
                &rows.timestamp,
                &rows.sequence,
                &rows.display_name,
                &rows.created_at,
            ],
        )
        .await?;
    }
    if !offline_ids.is_empty() {
        let queued_at = vec![now as i64; offline_ids.len()];
        tx.execute(
            "INSERT INTO dm_offline_queue (recipient_pubkey, dm_message_id, queued_at) \
             SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::int8[]) \
             ON CONFLICT (recipient_pubkey, dm_message_id) DO NOTHING",
            &[&offline_to, &offline_ids, &queued_at],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(results)
}

/// Column arrays for one multi-row insert.
#[derive(Default)]
struct MessageColumns<'a> {
    id: Vec<Uuid>,
    conversation_id: Vec<Uuid>,
    sender: Vec<&'a str>,
    payload: Vec<&'a [u8]>,
    nonce: Vec<&'a [u8]>,
    ephemeral: Vec<Option<&'a [u8]>>,
    timestamp: Vec<i64>,
    sequence: Vec<i64>,
    display_name: Vec<&'a str>,
    created_at: Vec<i64>,
}

impl<'a> MessageColumns<'a> {
    fn push(&mut self, m: &'a StoredMessage) {
        self.id.push(m.id);
        self.conversation_id.push(m.conversation_id);
        self.sender.push(m.sender.as_str());
        self.payload.push(&m.encrypted_payload);
        self.nonce.push(&m.nonce);
        self.ephemeral
            .push(m.ephemeral_pubkey.as_ref().map(|k| &k[..]));
        self.timestamp.push(m.timestamp as i64);
        self.sequence.push(m.server_sequence as i64);
        self.display_name.push(&m.sender_display_name);
        self.created_at.push(m.created_at as i64);
    }
}

// ---------------------------------------------------------------------------
// Offline queue

pub async fn queue_offline(
    client: &Client,
    recipient: &Pubkey,
    message_id: &Uuid,
    now: u64,
) -> Result<bool, DbError> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO dm_offline_queue (recipient_pubkey, dm_message_id, queued_at) \
             VALUES ($1, $2, $3) ON CONFLICT (recipient_pubkey, dm_message_id) DO NOTHING",
        )
        .await?;
    let n = client
        .execute(&stmt, &[&recipient.as_str(), message_id, &(now as i64)])
        .await?;
    Ok(n == 1)
}

/// Takes up to `limit` of the recipient's undelivered entries, oldest first
/// and cut at the page's byte cap (as [`take_page`] cuts, in SQL), marking
/// them delivered in the same statement, and says whether more
/// remain. Entries another request is taking at the same moment are skipped,
/// never returned twice.
pub async fn take_offline(
    client: &Client,
    recipient: &Pubkey,
    limit: u32,
) -> Result<OfflinePage, DbError> {
    let stmt = client
        .prepare_cached(&format!(
            "WITH locked AS ( \
               SELECT q.id, (octet_length(m.encrypted_payload) + 2) / 3 * 4 + {PAGE_MESSAGE_OVERHEAD} AS size FROM dm_offline_queue q \
               JOIN dm_messages m ON m.id = q.dm_message_id \
               WHERE q.recipient_pubkey = $1 AND NOT q.delivered \
               ORDER BY q.id LIMIT $2 FOR UPDATE OF q SKIP LOCKED), \
             picked AS ( \
               SELECT id FROM ( \
                 SELECT id, sum(size) OVER (ORDER BY id) AS running, \
                        row_number() OVER (ORDER BY id) AS n FROM locked) s \
               WHERE n = 1 OR running <= $3), \
             taken AS ( \
               UPDATE dm_offline_queue SET delivered = true WHERE id IN (SELECT id FROM picked) \
               RETURNING id, dm_message_id) \
             SELECT {MESSAGE_COLUMNS} FROM taken t JOIN dm_messages m ON m.id = t.dm_message_id \
             ORDER BY t.id"
        ))
        .await?;
    let messages = client
        .query(
            &stmt,
            &[
                &recipient.as_str(),
                &i64::from(limit),
                &(PAGE_BODY_BYTES as i64),
            ],
        )
        .await?
        .iter()
        .map(message_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let more = client
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM dm_offline_queue \
             WHERE recipient_pubkey = $1 AND NOT delivered)",
        )
        .await?;
    let has_more: bool = client
        .query_one(&more, &[&recipient.as_str()])
        .await?
        .get(0);
    Ok(OfflinePage { messages, has_more })
}

/// Marks the caller's named entries delivered; returns how many changed.
pub async fn ack_offline(
    client: &Client,
    recipient: &Pubkey,
    ids: &[Uuid],
) -> Result<u32, DbError> {
    let stmt = client
        .prepare_cached(
            "UPDATE dm_offline_queue SET delivered = true \
             WHERE recipient_pubkey = $1 AND dm_message_id = ANY($2) AND NOT delivered",
        )
        .await?;
    Ok(client.execute(&stmt, &[&recipient.as_str(), &ids]).await? as u32)
}

/// Purges expired offline entries and refresh tokens, at most once per
/// `interval_ms` for the whole cluster: the run that advances
/// `janitor_runs.last_run_at` does the work, in the same transaction.
pub async fn purge_expired(
    client: &mut Client,
    offline_cutoff: u64,
    now: u64,
    interval_ms: u64,
) -> Result<Option<Purged>, DbError> {
    let tx = client.transaction().await?;
    let due = tx
        .execute(
            "UPDATE janitor_runs SET last_run_at = $1 WHERE id = 1 AND last_run_at <= $2",
            &[
                &(now as i64),
                // A tenth of an interval of slack, for ticks that drift.
                &(now.saturating_sub(interval_ms - interval_ms / 10) as i64),
            ],
        )
        .await?;
    if due == 0 {
        return Ok(None);
    }
    let offline_entries = tx
        .execute(
            "DELETE FROM dm_offline_queue WHERE queued_at < $1",
            &[&(offline_cutoff as i64)],
        )
        .await?;
    let refresh_tokens = tx
        .execute(
            "DELETE FROM refresh_tokens WHERE expires_at <= $1",
            &[&(now as i64)],
        )
        .await?;
    tx.commit().await?;
    Ok(Some(Purged {
        offline_entries,
        refresh_tokens,
    }))
}

/// Checks a connection out of the pool; failing to is `Unavailable`, with
/// every cause (a TLS handshake's says which certificate check failed).
pub async fn checkout(
    pool: &deadpool_postgres::Pool,
) -> Result<deadpool_postgres::Object, DbError> {
    pool.get().await.map_err(|e| {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            why.push_str(": ");
            why.push_str(&cause.to_string());
            source = cause.source();
        }
        DbError::Unavailable(why)
    })
}
