//! The offline queue and the janitor's purge.

use deadpool_postgres::Client;
use uuid::Uuid;

use super::rows::{message_from_row, MESSAGE_COLUMNS};
use crate::db::{DbError, Purged};
use crate::model::{OfflinePage, Pubkey, PAGE_BODY_BYTES, PAGE_MESSAGE_OVERHEAD};

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
/// When the oldest undelivered offline entry was queued (ms), if any.
pub async fn oldest_offline(client: &Client) -> Result<Option<u64>, DbError> {
    let at: Option<i64> = client
        .query_one(
            "SELECT MIN(queued_at) FROM dm_offline_queue WHERE NOT delivered",
            &[],
        )
        .await?
        .try_get(0)?;
    Ok(at.map(|t| t as u64))
}

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
