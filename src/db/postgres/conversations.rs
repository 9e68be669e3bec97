//! Keys and conversations.

use deadpool_postgres::{Client, GenericClient};
use uuid::Uuid;

use super::rows::{conversation_columns, conversation_from_row, CONVERSATION_SELECT};
use crate::db::rows::{self};
use crate::db::DbError;
use crate::model::{Conversation, DmKey, Pubkey};

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
        .prepare_cached(concat!(
            "SELECT ",
            conversation_columns!(),
            ", c.last_seq FROM dm_conversations c WHERE c.id = $1"
        ))
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
