//! Messages: reads, history pages and the group commit.

use std::collections::{HashMap, HashSet};
use std::pin::pin;

use bytes::{BufMut as _, Bytes, BytesMut};

use deadpool_postgres::{Client, Transaction};
use futures_util::SinkExt as _;
use tokio_postgres::types::{IsNull, ToSql, Type};
use uuid::Uuid;

use super::rows::{message_from_row, MESSAGE_COLUMNS};
use crate::db::{DbError, MessageWrite, Skipped};
use crate::model::{take_page, History, HistoryPage, StoredMessage};

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
/// nodes' batches cannot deadlock. Round trips per batch: five, whatever
/// its size (one more for offline entries, for refused runs, and for
/// `Ids::Check`); the statements are prepared once per connection.
pub async fn commit_messages(
    client: &mut Client,
    batch: &[MessageWrite],
    now: u64,
    ids: Ids,
) -> Result<Vec<Result<(), Skipped>>, DbError> {
    let tx = client.transaction().await?;
    let stored = match ids {
        Ids::AssumeNew => HashSet::new(),
        Ids::Check => stored_ids(&tx, batch).await?,
    };
    let (mut results, runs) = plan_runs(batch, &stored);
    let advanced = advance(&tx, &runs).await?;
    refuse_stale(&tx, &runs, &advanced, &mut results).await?;
    insert_runs(&tx, batch, &runs, &advanced, now).await?;
    tx.commit().await?;
    Ok(results)
}

/// Whether a group commit looks up its message ids first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ids {
    /// No lookup: ids are fresh v7 UUIDs, or a client's rare resend. A
    /// stored one fails the insert with a unique violation, which rolls the
    /// whole transaction back; the caller then runs the batch again with
    /// [`Ids::Check`]. The lookup was an index probe a message and a round
    /// trip a commit, for a case almost no batch has.
    AssumeNew,
    /// Look the ids up, so a stored one is answered as
    /// [`Skipped::DuplicateId`] and the rest of the batch is written.
    Check,
}

async fn stored_ids(
    tx: &Transaction<'_>,
    batch: &[MessageWrite],
) -> Result<HashSet<Uuid>, DbError> {
    let ids: Vec<Uuid> = batch.iter().map(|w| w.message.id).collect();
    let known = tx
        .prepare_cached("SELECT id FROM dm_messages WHERE id = ANY($1)")
        .await?;
    Ok(tx
        .query(&known, &[&ids])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?)
}

/// One conversation's part of a batch: the contiguous run that can be
/// written, up to the first duplicate or break in the sequence.
struct Run {
    first: u64,
    last: u64,
    last_at: u64,
    /// Batch indexes of the run.
    members: Vec<usize>,
    /// The run ended; later messages of the conversation are skipped.
    broken: bool,
}

/// Splits a batch into runs per conversation, in batch order; messages
/// already `stored` (or met earlier in the batch) are duplicates, and what
/// follows a duplicate or a break in the sequence is a gap. Only runs with
/// members are returned.
fn plan_runs(
    batch: &[MessageWrite],
    stored: &HashSet<Uuid>,
) -> (Vec<Result<(), Skipped>>, HashMap<Uuid, Run>) {
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
    (results, runs)
}

/// Locks the runs' conversations in id order and advances each whose
/// stored `last_seq` the run continues; returns those.
async fn advance(
    tx: &Transaction<'_>,
    runs: &HashMap<Uuid, Run>,
) -> Result<HashSet<Uuid>, DbError> {
    let mut conversations: Vec<Uuid> = runs.keys().copied().collect();
    conversations.sort_unstable();
    let lock = tx
        .prepare_cached(
            "SELECT 1 FROM (SELECT id FROM dm_conversations WHERE id = ANY($1) ORDER BY id FOR UPDATE) l",
        )
        .await?;
    tx.execute(&lock, &[&conversations]).await?;
    let firsts: Vec<i64> = conversations.iter().map(|c| runs[c].first as i64).collect();
    let lasts: Vec<i64> = conversations.iter().map(|c| runs[c].last as i64).collect();
    let ats: Vec<i64> = conversations
        .iter()
        .map(|c| runs[c].last_at as i64)
        .collect();
    let update = tx
        .prepare_cached(
            "UPDATE dm_conversations c SET last_seq = i.last, \
             last_message_at = GREATEST(COALESCE(c.last_message_at, 0), i.at) \
             FROM UNNEST($1::uuid[], $2::int8[], $3::int8[], $4::int8[]) AS i(id, first, last, at) \
             WHERE c.id = i.id AND c.last_seq = i.first - 1 RETURNING c.id",
        )
        .await?;
    tx.query(&update, &[&conversations, &firsts, &lasts, &ats])
        .await?
        .iter()
        .map(|r| Ok(r.try_get(0)?))
        .collect()
}

/// Fails the members of every run that did not advance: `Stale` when
/// another node committed past it, `SequenceGap` when it starts beyond the
/// stored last sequence.
async fn refuse_stale(
    tx: &Transaction<'_>,
    runs: &HashMap<Uuid, Run>,
    advanced: &HashSet<Uuid>,
    results: &mut [Result<(), Skipped>],
) -> Result<(), DbError> {
    let refused: Vec<Uuid> = runs
        .keys()
        .filter(|c| !advanced.contains(c))
        .copied()
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    let stored_last: HashMap<Uuid, u64> = tx
        .query(
            "SELECT id, last_seq FROM dm_conversations WHERE id = ANY($1)",
            &[&refused],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get::<_, i64>(1)? as u64)))
        .collect::<Result<_, DbError>>()?;
    for conversation in &refused {
        let run = &runs[conversation];
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
    }
    Ok(())
}

/// Inserts the messages of the runs that advanced (one binary `COPY`), and
/// the offline entries of those whose recipient was offline (one statement).
///
/// `COPY` rather than a multi-row `INSERT`: PostgreSQL then writes the rows
/// a page at a time (`heap_multi_insert`, one WAL record a page) and skips
/// the executor's work per row, so a message costs it about a third less
/// (issue 26). It needs `dm_messages` to have no row triggers, which is why
/// migration 6 dropped the table's foreign key.
async fn insert_runs(
    tx: &Transaction<'_>,
    batch: &[MessageWrite],
    runs: &HashMap<Uuid, Run>,
    advanced: &HashSet<Uuid>,
    now: u64,
) -> Result<(), DbError> {
    let written: Vec<&MessageWrite> = runs
        .iter()
        .filter(|(c, _)| advanced.contains(*c))
        .flat_map(|(_, run)| run.members.iter().map(|&index| &batch[index]))
        .collect();
    if !written.is_empty() {
        copy_messages(tx, &written).await?;
    }
    let (offline_to, offline_ids): (Vec<&str>, Vec<Uuid>) = written
        .iter()
        .filter(|w| w.offline_queued)
        .map(|w| (w.recipient.as_str(), w.message.id))
        .unzip();
    if !offline_ids.is_empty() {
        let queued_at = vec![now as i64; offline_ids.len()];
        let queue = tx
            .prepare_cached(
                "INSERT INTO dm_offline_queue (recipient_pubkey, dm_message_id, queued_at) \
                 SELECT * FROM UNNEST($1::text[], $2::uuid[], $3::int8[]) \
                 ON CONFLICT (recipient_pubkey, dm_message_id) DO NOTHING",
            )
            .await?;
        tx.execute(&queue, &[&offline_to, &offline_ids, &queued_at])
            .await?;
    }
    Ok(())
}

/// The columns of `dm_messages` a commit writes, in `COPY` order.
const COPY_MESSAGES: &str = "COPY dm_messages (id, conversation_id, sender_pubkey, \
    encrypted_payload, nonce, ephemeral_pubkey, timestamp, server_sequence, \
    sender_display_name, created_at) FROM STDIN (FORMAT binary)";

const COPY_TYPES: [Type; 10] = [
    Type::UUID,
    Type::UUID,
    Type::TEXT,
    Type::BYTEA,
    Type::BYTEA,
    Type::BYTEA,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::INT8,
];

/// The `COPY`'s rows in PostgreSQL's binary format, whole, so they go to the
/// connection as one message: `BinaryCopyInWriter` hands it one every 4 KiB,
/// each a wake-up of the connection task and a write of its own.
fn copy_data(written: &[&MessageWrite]) -> Result<Bytes, DbError> {
    const MAGIC: &[u8] = b"PGCOPY\n\xff\r\n\0";
    let mut buf = BytesMut::with_capacity(
        32 + written
            .iter()
            .map(|w| 256 + w.message.encrypted_payload.len())
            .sum::<usize>(),
    );
    buf.put_slice(MAGIC);
    buf.put_i32(0); // flags
    buf.put_i32(0); // header extension
    for write in written {
        let m = &write.message;
        let values: [&(dyn ToSql + Sync); 10] = [
            &m.id,
            &m.conversation_id,
            &m.sender.as_str(),
            &&m.encrypted_payload[..],
            &&m.nonce[..],
            &m.ephemeral_pubkey.as_ref().map(|k| &k[..]),
            &(m.timestamp as i64),
            &(m.server_sequence as i64),
            &m.sender_display_name.as_str(),
            &(m.created_at as i64),
        ];
        buf.put_i16(values.len() as i16);
        for (value, ty) in values.iter().zip(&COPY_TYPES) {
            let at = buf.len();
            buf.put_i32(0);
            let len = match value
                .to_sql_checked(ty, &mut buf)
                .map_err(|e| DbError::Other(format!("encoding a message for COPY: {e}")))?
            {
                IsNull::Yes => -1,
                IsNull::No => i32::try_from(buf.len() - at - 4)
                    .map_err(|_| DbError::Other("a COPY field over 2 GiB".into()))?,
            };
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
    buf.put_i16(-1); // the end of the rows
    Ok(buf.freeze())
}

async fn copy_messages(tx: &Transaction<'_>, written: &[&MessageWrite]) -> Result<(), DbError> {
    let data = copy_data(written)?;
    let statement = tx.prepare_cached(COPY_MESSAGES).await?;
    let mut sink = pin!(tx.copy_in::<_, Bytes>(&statement).await?);
    sink.send(data).await?;
    sink.as_mut().finish().await?;
    Ok(())
}
