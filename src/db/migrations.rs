//! Versioned schema migrations, tracked in `PRAGMA user_version`.
//!
//! Each migration runs in its own transaction and bumps `user_version`, so
//! running them twice is a no-op. Append new migrations; never edit old ones.
//!
//! Foreign keys are off while they run, as SQLite's procedure for changing
//! a table asks (a table is changed by copying it, and dropping the old
//! copy must not cascade); each migration checks them before it commits.

use rusqlite::{Connection, OptionalExtension, Transaction};

use super::{order, DbError};

/// One step of the schema: SQL, or code for what SQL alone cannot say
/// (progress on a large table).
enum Migration {
    Sql(&'static str),
    Code(fn(&Transaction<'_>) -> Result<(), DbError>),
}
use Migration::{Code, Sql};

/// The migrations in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[Migration] = &[
    // 1: identity and the four DM tables of the seed plan. Times are Unix ms.
    Sql("
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
    "),
    // 2: refresh-token families: a rotated token is kept (used = 1) until it
    // expires, so that presenting it again revokes its family.
    Sql("
    ALTER TABLE refresh_tokens ADD COLUMN family TEXT;
    ALTER TABLE refresh_tokens ADD COLUMN used INTEGER NOT NULL DEFAULT 0;
    UPDATE refresh_tokens SET family = lower(hex(token_hash)) WHERE family IS NULL;
    CREATE INDEX idx_refresh_tokens_family ON refresh_tokens(family);
    "),
    // 3: the conversation order filled in batches (`db::order`): dm_messages
    // rebuilt without UNIQUE(conversation_id, server_sequence).
    Code(order::rebuild_messages),
];

/// The schema version this build expects.
pub const LATEST: u32 = MIGRATIONS.len() as u32;

/// Applies every migration newer than the database; returns how many ran.
pub fn migrate(conn: &mut Connection) -> Result<u32, DbError> {
    migrate_to(conn, MIGRATIONS)
}

/// Applies the migrations of `all` newer than the database.
fn migrate_to(conn: &mut Connection, all: &[Migration]) -> Result<u32, DbError> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let keys: bool = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    conn.pragma_update(None, "foreign_keys", false)?;
    let result = apply(conn, all, current);
    conn.pragma_update(None, "foreign_keys", keys)?;
    result
}

fn apply(conn: &mut Connection, all: &[Migration], current: u32) -> Result<u32, DbError> {
    let mut applied = 0;
    for (version, migration) in super::rows::pending_migrations(all, current)? {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        match migration {
            Sql(sql) => tx.execute_batch(sql)?,
            Code(step) => step(&tx)?,
        }
        let broken: Option<String> = tx
            .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
            .optional()?;
        if let Some(table) = broken {
            return Err(DbError::Other(format!(
                "migration {version} would break a foreign key of {table}"
            )));
        }
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

    /// Migration 3 rebuilds `dm_messages` of a database that holds
    /// messages: every row stays, with its rowid, offline entries are not
    /// cascaded away, the order holds every message, and foreign keys are
    /// on and enforced again afterwards.
    #[test]
    fn the_messages_rebuild_keeps_every_row_and_offline_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::db::open_writer(&dir.path().join("hub.db")).unwrap();
        assert_eq!(migrate_to(&mut conn, &MIGRATIONS[..2]).unwrap(), 2);
        conn.execute_batch(
            "INSERT INTO users VALUES ('a', 'A', 1, 1), ('b', 'B', 1, 1);
             INSERT INTO dm_conversations VALUES ('0191e7a2-0000-7000-8000-000000000001', 'a', 'b', 1, NULL);",
        )
        .unwrap();
        for i in 1..=300i64 {
            conn.execute(
                "INSERT INTO dm_messages VALUES (?1, '0191e7a2-0000-7000-8000-000000000001', 'a', x'00', x'01', NULL, 1, ?2, 'A', ?3)",
                rusqlite::params![format!("m{i}"), i, 100 + i],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO dm_offline_queue (recipient_pubkey, dm_message_id, queued_at)                  VALUES ('b', ?1, 1)",
                [format!("m{i}")],
            )
            .unwrap();
        }
        let rows = |conn: &Connection, sql: &str| -> i64 {
            conn.query_row(sql, [], |r| r.get(0)).unwrap()
        };
        let rowids = rows(
            &conn,
            "SELECT sum(rowid * server_sequence) FROM dm_messages",
        );

        assert_eq!(migrate(&mut conn).unwrap(), LATEST - 2);
        assert_eq!(rows(&conn, "SELECT count(*) FROM dm_messages"), 300);
        assert_eq!(
            rows(
                &conn,
                "SELECT sum(rowid * server_sequence) FROM dm_messages"
            ),
            rowids,
            "rowids kept"
        );
        assert_eq!(rows(&conn, "SELECT count(*) FROM dm_offline_queue"), 300);
        assert_eq!(rows(&conn, "SELECT count(*) FROM dm_message_order"), 300);
        let id = uuid::Uuid::parse_str("0191e7a2-0000-7000-8000-000000000001").unwrap();
        let tail = crate::db::order::Tail::read(&conn).unwrap();
        assert!(tail.is_empty(), "the migration indexes every message");
        assert_eq!(
            crate::db::reads::max_sequence(&conn, &id, None).unwrap(),
            300
        );
        assert_eq!(
            rows(&conn, "SELECT indexed_through FROM dm_message_order_state"),
            rows(&conn, "SELECT max(rowid) FROM dm_messages")
        );
        assert_eq!(
            rows(
                &conn,
                "SELECT count(*) FROM pragma_index_list('dm_messages')"
            ),
            1,
            "only the id's index is left"
        );
        assert_eq!(
            rows(&conn, "PRAGMA foreign_keys"),
            1,
            "foreign keys on again"
        );
        let orphan = conn.execute(
            "INSERT INTO dm_offline_queue (recipient_pubkey, dm_message_id, queued_at)              VALUES ('b', 'nope', 1)",
            [],
        );
        assert!(orphan.is_err(), "the offline queue's foreign key holds");
        conn.execute("DELETE FROM dm_conversations", []).unwrap();
        assert_eq!(
            rows(&conn, "SELECT count(*) FROM dm_offline_queue"),
            0,
            "and cascades through the rebuilt table"
        );
    }
}
