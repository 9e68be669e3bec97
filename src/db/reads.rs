//! Read queries. They take any `&Connection`; callers use the pool.
//!
//! # Architecture Invariant
//! Nothing here writes.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Row};
use uuid::Uuid;

use super::order;
use super::portable::{Kind, Row as PortableRow, Table, Value};
use super::{rows, DbError};
use crate::model::{
    take_page, Conversation, DmKey, History, HistoryPage, Pubkey, StoredMessage, User,
};

pub(crate) const MESSAGE_COLUMNS: &str = "m.id, m.conversation_id, m.sender_pubkey, m.encrypted_payload, \
     m.nonce, m.ephemeral_pubkey, m.timestamp, m.server_sequence, m.sender_display_name, m.created_at";

/// `last_message_at` is read from the conversation's last message rather
/// than kept in `dm_conversations`: updating that row in every group commit
/// wrote one more page per conversation of the batch to the WAL
/// (docs/benchmarks-history.md, issue 13). The column stays in the schema,
/// unused by this engine. Here it is the order's last message (one seek);
/// the callers put the tail's newest in front of it ([`order::Tail`]).
fn conversation_select(filter: &str) -> String {
    format!(
        "SELECT c.id, c.participant_a, c.participant_b, ua.display_name, \
         ub.display_name, c.created_at, \
         COALESCE((SELECT m.created_at FROM dm_message_order o \
                   JOIN dm_messages m ON m.local_id = o.message \
                   WHERE o.conversation = unhex(replace(c.id, '-', '')) \
                   ORDER BY o.server_sequence DESC LIMIT 1), \
                  0) AS last_at \
         FROM dm_conversations c \
         JOIN users ua ON ua.public_key = c.participant_a \
         JOIN users ub ON ub.public_key = c.participant_b {filter}"
    )
}

/// When the message with `local_id` was stored (a message of the tail).
fn created_at(conn: &Connection, local_id: i64) -> Result<Option<u64>, DbError> {
    let mut stmt = conn.prepare_cached("SELECT created_at FROM dm_messages WHERE local_id = ?1")?;
    let at: Option<i64> = stmt.query_row([local_id], |r| r.get(0)).optional()?;
    Ok(at.map(|t| t as u64))
}

impl rows::Columns for Row<'_> {
    type Error = rusqlite::Error;
    fn text(&self, i: usize) -> rusqlite::Result<String> {
        self.get(i)
    }
    fn opt_text(&self, i: usize) -> rusqlite::Result<Option<String>> {
        self.get(i)
    }
    fn blob(&self, i: usize) -> rusqlite::Result<Vec<u8>> {
        self.get(i)
    }
    fn opt_blob(&self, i: usize) -> rusqlite::Result<Option<Vec<u8>>> {
        self.get(i)
    }
    fn int(&self, i: usize) -> rusqlite::Result<i64> {
        self.get(i)
    }
    /// Ids are stored as text.
    fn uuid(&self, i: usize) -> rusqlite::Result<Uuid> {
        let s: String = self.get(i)?;
        Uuid::parse_str(&s).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    }
    fn invalid(&self, i: usize, why: &'static str) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, why.into())
    }
}

pub(crate) fn message_from_row(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    rows::message(row)
}

fn conversation_from_row(row: &Row<'_>) -> rusqlite::Result<Conversation> {
    rows::conversation(row)
}

pub fn user(conn: &Connection, pubkey: &Pubkey) -> Result<Option<User>, DbError> {
    let mut stmt =
        conn.prepare_cached("SELECT public_key, display_name FROM users WHERE public_key = ?1")?;
    let user = stmt
        .query_row([pubkey.as_str()], |r| {
            Ok(User {
                public_key: Pubkey::from_db(r.get(0)?),
                display_name: r.get(1)?,
            })
        })
        .optional()?;
    Ok(user)
}

pub fn dm_key(conn: &Connection, pubkey: &Pubkey) -> Result<Option<DmKey>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT x25519_pubkey, published_at FROM dm_public_keys WHERE ed25519_pubkey = ?1",
    )?;
    let key = stmt
        .query_row([pubkey.as_str()], |r| {
            Ok(DmKey {
                ed25519_pubkey: pubkey.clone(),
                x25519_pubkey: rows::fixed::<_, 32>(
                    r,
                    0,
                    "stored x25519 key has the wrong length",
                )?,
                published_at: r.get::<_, i64>(1)? as u64,
            })
        })
        .optional()?;
    Ok(key)
}

/// One conversation. `last` is its newest message in the tail
/// ([`order::Tail::last`], taken before this read).
pub fn conversation(
    conn: &Connection,
    id: &Uuid,
    last: Option<(i64, i64)>,
) -> Result<Option<Conversation>, DbError> {
    let mut stmt = conn.prepare_cached(&conversation_select("WHERE c.id = ?1"))?;
    let Some(mut conversation) = stmt
        .query_row([id.to_string()], conversation_from_row)
        .optional()?
    else {
        return Ok(None);
    };
    if let Some((_, local_id)) = last {
        if let Some(at) = created_at(conn, local_id)? {
            conversation.last_message_at = at;
        }
    }
    Ok(Some(conversation))
}

/// The caller's conversations: most recent message first, then conversations
/// without messages, newest first.
pub fn conversations_of(
    conn: &Connection,
    tail: &order::Tail,
    user: &Pubkey,
) -> Result<Vec<Conversation>, DbError> {
    // Which conversations, then their newest messages in the tail, then the
    // order (the tail's parts before the order: `order::Tail`).
    let mut ids = conn.prepare_cached(
        "SELECT id FROM dm_conversations WHERE participant_a = ?1 OR participant_b = ?1",
    )?;
    let ids: Vec<String> = ids
        .query_map([user.as_str()], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let lasts: HashMap<Uuid, i64> = ids
        .iter()
        .filter_map(|id| Uuid::parse_str(id).ok())
        .filter_map(|id| tail.last(&id).map(|(_, local_id)| (id, local_id)))
        .collect();
    let mut stmt = conn.prepare_cached(&conversation_select(
        "WHERE c.participant_a = ?1 OR c.participant_b = ?1",
    ))?;
    let mut conversations: Vec<Conversation> = stmt
        .query_map([user.as_str()], conversation_from_row)?
        .collect::<Result<_, _>>()?;
    for conversation in &mut conversations {
        if let Some(&local_id) = lasts.get(&conversation.id) {
            if let Some(at) = created_at(conn, local_id)? {
                conversation.last_message_at = at;
            }
        }
    }
    conversations.sort_by(|a, b| {
        (a.last_message_at == 0)
            .cmp(&(b.last_message_at == 0))
            .then(b.last_message_at.cmp(&a.last_message_at))
            .then(b.created_at.cmp(&a.created_at))
            .then(a.id.cmp(&b.id))
    });
    Ok(conversations)
}

/// Everyone who shares a conversation with `user`.
pub fn partners_of(conn: &Connection, user: &Pubkey) -> Result<Vec<Pubkey>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT participant_b FROM dm_conversations WHERE participant_a = ?1 \
         UNION SELECT participant_a FROM dm_conversations WHERE participant_b = ?1",
    )?;
    let rows = stmt.query_map([user.as_str()], |r| Ok(Pubkey::from_db(r.get(0)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn message(conn: &Connection, id: &Uuid) -> Result<Option<StoredMessage>, DbError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM dm_messages m WHERE m.id = ?1"
    ))?;
    Ok(stmt
        .query_row([id.to_string()], message_from_row)
        .optional()?)
}

/// A page of the recipient's undelivered offline entries, oldest first (at
/// most `limit`, cut at the page's byte cap): their queue ids and messages,
/// and whether more wait.
pub fn offline_entries(
    conn: &Connection,
    recipient: &Pubkey,
    limit: u32,
) -> Result<(Vec<(i64, StoredMessage)>, bool), DbError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS}, q.id FROM dm_offline_queue q JOIN dm_messages m ON m.id = q.dm_message_id \
         WHERE q.recipient_pubkey = ?1 AND q.delivered = 0 ORDER BY q.id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![recipient.as_str(), i64::from(limit) + 1], |row| {
        Ok((row.get::<_, i64>(10)?, message_from_row(row)?))
    })?;
    Ok(take_page(rows, limit, |(_, m)| m.encrypted_payload.len())?)
}

/// The highest committed sequence of a conversation (0 when it has none).
/// When the oldest undelivered offline entry was queued (ms), if any.
pub fn oldest_offline(conn: &Connection) -> Result<Option<u64>, DbError> {
    let at: Option<i64> = conn.query_row(
        "SELECT MIN(queued_at) FROM dm_offline_queue WHERE delivered = 0",
        [],
        |r| r.get(0),
    )?;
    Ok(at.map(|t| t as u64))
}

/// The conversation's last committed sequence: the order's last, or
/// `last`, its newest message in the tail ([`order::Tail::last`], taken
/// before this read), whichever is later.
pub fn max_sequence(
    conn: &Connection,
    conversation: &Uuid,
    last: Option<(i64, i64)>,
) -> Result<u64, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT COALESCE(max(server_sequence), 0) FROM dm_message_order WHERE conversation = ?1",
    )?;
    let ordered: i64 = stmt.query_row([&conversation.as_bytes()[..]], |r| r.get(0))?;
    Ok(ordered.max(last.map_or(0, |(seq, _)| seq)) as u64)
}

/// One page of history, cut at `limit` messages or at the page's byte cap
/// ([`take_page`]); `has_more` is exact (one extra row is read). `part` is
/// the conversation's part of the tail ([`order::Tail::part`], taken before
/// this read): the page is the first `limit` of the order's and the part's
/// messages, each once.
pub fn history(
    conn: &Connection,
    conversation: &Uuid,
    part: &[(i64, i64)],
    page: HistoryPage,
    limit: u32,
) -> Result<History, DbError> {
    let fetch = limit as usize + 1;
    let key = &conversation.as_bytes()[..];
    let (sql, bound, newest_first) = match page {
        HistoryPage::Before(before) => {
            let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
            (
                "o.server_sequence < ?2 ORDER BY o.server_sequence DESC",
                before,
                true,
            )
        }
        HistoryPage::After(after) => (
            "o.server_sequence > ?2 ORDER BY o.server_sequence ASC",
            after.min(i64::MAX as u64) as i64,
            false,
        ),
    };
    // By sequence: a message swept since the part was taken is in both.
    let mut found: std::collections::BTreeMap<i64, StoredMessage> = Default::default();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM dm_message_order o \
         JOIN dm_messages m ON m.local_id = o.message \
         WHERE o.conversation = ?1 AND {sql} LIMIT ?3"
    ))?;
    for message in stmt.query_map(params![key, bound, fetch as i64], message_from_row)? {
        let message = message?;
        found.insert(message.server_sequence as i64, message);
    }
    let in_page = |seq: i64| {
        if newest_first {
            seq < bound
        } else {
            seq > bound
        }
    };
    let mut wanted: Vec<i64> = part
        .iter()
        .filter(|(seq, _)| in_page(*seq) && !found.contains_key(seq))
        .map(|&(_, local_id)| local_id)
        .collect();
    if newest_first {
        wanted.reverse();
    }
    wanted.truncate(fetch);
    let mut row = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM dm_messages m WHERE m.local_id = ?1"
    ))?;
    for local_id in wanted {
        if let Some(message) = row.query_row([local_id], message_from_row).optional()? {
            found.insert(message.server_sequence as i64, message);
        }
    }
    let messages: Vec<StoredMessage> = if newest_first {
        found.into_values().rev().take(fetch).collect()
    } else {
        found.into_values().take(fetch).collect()
    };
    let (messages, has_more) = take_page(messages.into_iter().map(Ok::<_, DbError>), limit, |m| {
        m.encrypted_payload.len()
    })?;
    Ok(History { messages, has_more })
}

/// Rows of a portable table ([`crate::db::portable`]), in key order, after
/// `after` (from the start without it).
pub fn export_page(
    conn: &Connection,
    table: &Table,
    after: Option<&Value>,
    limit: u32,
) -> Result<Vec<PortableRow>, DbError> {
    let (cols, name, key) = (table.column_list(), table.name, table.key);
    let sql = match after {
        None => format!("SELECT {cols} FROM {name} ORDER BY {key} LIMIT ?1"),
        Some(_) => format!("SELECT {cols} FROM {name} WHERE {key} > ?2 ORDER BY {key} LIMIT ?1"),
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let read = |r: &Row<'_>| -> rusqlite::Result<PortableRow> {
        (table.columns.iter().enumerate())
            .map(|(i, (_, kind))| portable_value(r, i, *kind))
            .collect()
    };
    let rows = match after {
        None => stmt.query_map(params![limit], read)?,
        Some(after) => stmt.query_map(params![limit, sqlite_value(after)], read)?,
    };
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many rows a portable table holds.
pub fn count_rows(conn: &Connection, table: &Table) -> Result<u64, DbError> {
    let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {}", table.name), [], |r| {
        r.get(0)
    })?;
    Ok(n as u64)
}

fn portable_value(r: &Row<'_>, i: usize, kind: Kind) -> rusqlite::Result<Value> {
    use rows::Columns as _;
    let or_null = |v: Option<Value>| v.unwrap_or(Value::Null);
    Ok(match kind {
        Kind::Text => Value::Text(r.text(i)?),
        Kind::OptText => or_null(r.opt_text(i)?.map(Value::Text)),
        Kind::Int => Value::Int(r.int(i)?),
        Kind::OptInt => or_null(r.get::<_, Option<i64>>(i)?.map(Value::Int)),
        Kind::Blob => Value::Blob(r.blob(i)?),
        Kind::OptBlob => or_null(r.opt_blob(i)?.map(Value::Blob)),
        Kind::Uuid => Value::Uuid(r.uuid(i)?),
        Kind::Bool => Value::Bool(r.int(i)? != 0),
    })
}

/// A portable value as SQLite stores it: ids as text, flags as 0 or 1.
pub(crate) fn sqlite_value(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as Sql;
    match v {
        Value::Null => Sql::Null,
        Value::Int(n) => Sql::Integer(*n),
        Value::Text(s) => Sql::Text(s.clone()),
        Value::Blob(b) => Sql::Blob(b.clone()),
        Value::Uuid(u) => Sql::Text(u.to_string()),
        Value::Bool(b) => Sql::Integer(*b as i64),
    }
}
