//! The PostgreSQL schema, its migrations (under an advisory lock) and the
//! cluster's shared secrets.

use deadpool_postgres::Client;

use crate::db::rows::{self};
use crate::db::DbError;

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
    // 6: no foreign key from a message to its conversation. The group commit
    // inserts a message only into a conversation whose row it has just
    // locked and advanced (`messages::commit_messages`), and conversations
    // are never deleted, so the key checked nothing the commit had not; its
    // trigger cost a query per message, a quarter of PostgreSQL's time in a
    // group commit (issue 26).
    r#"
    ALTER TABLE dm_messages DROP CONSTRAINT IF EXISTS dm_messages_conversation_id_fkey;
    "#,
];

/// The schema version this build expects.
pub const LATEST: u32 = MIGRATIONS.len() as u32;

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
