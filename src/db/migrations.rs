//! Versioned schema migrations, tracked in `PRAGMA user_version`.
//!
//! Each migration runs in its own transaction and bumps `user_version`, so
//! running them twice is a no-op. Append new migrations; never edit old ones.

use rusqlite::Connection;

use super::DbError;

/// The migrations in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: identity and the four DM tables of the seed plan. Times are Unix ms.
    "
    CREATE TABLE users (
        public_key   TEXT PRIMARY KEY,
        display_name TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL
    );

    CREATE TABLE refresh_tokens (
        token_hash  BLOB PRIMARY KEY,
        user_pubkey TEXT NOT NULL REFERENCES users(public_key),
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    CREATE INDEX idx_refresh_tokens_expires ON refresh_tokens(expires_at);

    CREATE TABLE dm_public_keys (
        ed25519_pubkey TEXT PRIMARY KEY REFERENCES users(public_key),
        x25519_pubkey  BLOB NOT NULL,
        published_at   INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL
    );

    CREATE TABLE dm_conversations (
        id              TEXT PRIMARY KEY,
        participant_a   TEXT NOT NULL REFERENCES users(public_key),
        participant_b   TEXT NOT NULL REFERENCES users(public_key),
        created_at      INTEGER NOT NULL,
        last_message_at INTEGER,
        UNIQUE(participant_a, participant_b),
        CHECK(participant_a < participant_b)
    );
    CREATE INDEX idx_dm_conversations_a ON dm_conversations(participant_a);
    CREATE INDEX idx_dm_conversations_b ON dm_conversations(participant_b);

    CREATE TABLE dm_messages (
        id                  TEXT PRIMARY KEY,
        conversation_id     TEXT NOT NULL REFERENCES dm_conversations(id) ON DELETE CASCADE,
        sender_pubkey       TEXT NOT NULL,
        encrypted_payload   BLOB NOT NULL,
        nonce               BLOB NOT NULL,
        ephemeral_pubkey    BLOB,
        timestamp           INTEGER NOT NULL,
        server_sequence     INTEGER NOT NULL,
        sender_display_name TEXT,
        created_at          INTEGER NOT NULL,
        UNIQUE(conversation_id, server_sequence)
    );

    CREATE TABLE dm_offline_queue (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        recipient_pubkey TEXT NOT NULL,
        dm_message_id    TEXT NOT NULL REFERENCES dm_messages(id) ON DELETE CASCADE,
        queued_at        INTEGER NOT NULL,
        delivered        INTEGER NOT NULL DEFAULT 0,
        UNIQUE(recipient_pubkey, dm_message_id)
    );
    CREATE INDEX idx_dm_offline_recipient ON dm_offline_queue(recipient_pubkey, delivered, id);
    CREATE INDEX idx_dm_offline_queued_at ON dm_offline_queue(queued_at);
    ",
    // 2: refresh-token families: a rotated token is kept (used = 1) until it
    // expires, so that presenting it again revokes its family.
    "
    ALTER TABLE refresh_tokens ADD COLUMN family TEXT;
    ALTER TABLE refresh_tokens ADD COLUMN used INTEGER NOT NULL DEFAULT 0;
    UPDATE refresh_tokens SET family = lower(hex(token_hash)) WHERE family IS NULL;
    CREATE INDEX idx_refresh_tokens_family ON refresh_tokens(family);
    ",
];

/// The schema version this build expects.
pub const LATEST: u32 = MIGRATIONS.len() as u32;

/// Applies every migration newer than the database; returns how many ran.
pub fn migrate(conn: &mut Connection) -> Result<u32, DbError> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let mut applied = 0;
    for (version, sql) in super::rows::pending_migrations(MIGRATIONS, current)? {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "applied migration");
        applied += 1;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), LATEST);
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, LATEST);
    }
}
