//! The conversation order: which message holds each (conversation,
//! sequence). An index the writer fills in batches, not per message.
//!
//! Messages of about a thousand conversations interleave in every group
//! commit. A `UNIQUE(conversation_id, server_sequence)` index on
//! `dm_messages` put each message of a commit in another leaf page of the
//! index, and SQLite writes a changed page whole: at 20,000 messages/s, 371
//! of a commit's 437 WAL frames were those leaves, a 4 KiB page per message
//! into the WAL and again into the database file (BENCHMARKS.md, "Where a
//! send's time goes"). So `dm_messages` has no such index. The order is
//! `dm_message_order`, a `WITHOUT ROWID` table keyed by (conversation,
//! sequence) that points at the message's `local_id`. Once [`INDEX_BATCH`]
//! messages wait, the writer sweeps them into the order in key order, a few
//! conversations a commit ([`SWEEP_CONVERSATIONS`]), so each conversation's
//! leaf is written once per sweep and no commit carries the whole sweep. The key is
//! the conversation's 16 bytes, not the 36 characters of its text: more
//! keys a page, fewer pages a sweep.
//!
//! The messages not indexed yet are those above
//! `dm_message_order_state.indexed_through`, less those of the
//! conversations the sweep in progress has passed: the tail. The writer
//! keeps the tail by conversation in memory ([`Tail`]), shared with the
//! readers, so a read by conversation takes that conversation's part of it
//! and reads only the order, never scanning the tail's rows. Scanning them
//! cost each read up to [`INDEX_BATCH`] rows, and a thousand conversations
//! starting at once (a restart under load) held the writer and the read
//! pool for over 100 ms (docs/benchmarks-history.md).
//!
//! # Invariants
//! - `local_id` is the table's `INTEGER PRIMARY KEY`, so `VACUUM` (and
//!   `VACUUM INTO`, the offline backup) keeps it: the order's pointers stay
//!   true in a copy.
//! - The state (`indexed_through`, `sweep_through`, `sweep_key`) moves only
//!   in the transaction that indexes the rows it names.
//! - Messages are deleted only all at once (`writes::clear_tables`), which
//!   empties the order and resets `indexed_through`: a `local_id` below it
//!   is never reused.
//! - The [`Tail`] changes only after the commit it describes: a message
//!   joins it once committed and leaves it once its sweep is committed.
//!   A reader takes its part before its query, so the query sees each
//!   message of the part in the order or as a row, possibly both (readers
//!   drop the second by sequence), and never neither.
//! - (conversation, sequence) is unique. The writer checks that each
//!   message follows its conversation's last (`writes::commit_messages`),
//!   and the order's primary key refuses a duplicate when it is filled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, Transaction};

use super::DbError;

/// Messages committed before the writer starts indexing them: about 200 ms
/// of commits at 20,000 messages/s. The cost of indexing is mostly the
/// leaves it touches (one or two per conversation), not its rows, so a
/// larger batch costs less a message; a read by conversation scans at most
/// about this many rows of the tail. Writer and checkpointer CPU a message
/// at 20,000/s (`scripts/hub-threads.sh`, medians of 3, the batch indexed
/// in one commit): 23.3 µs with the per-message index, 18.1 with 2,048,
/// 14.7 with 4,096, 13.4 with 8,192.
pub const INDEX_BATCH: u64 = 4096;

/// Conversations a commit indexes while a sweep runs. Indexing 4,096
/// messages of 1,000 conversations in one commit held the writer about
/// 15 ms, and p99 at 5,000 messages/s went from 4 to 18 ms; sixteen parts by
/// the id's last digit (~60 conversations a commit) still gave 11 ms.
pub const SWEEP_CONVERSATIONS: usize = 16;

/// The rows of `dm_messages m` that the order does not hold yet (SQL):
/// those above `indexed_through`, except those up to `sweep_through` of a
/// conversation the sweep has passed (its key at most `sweep_key`).
fn tail_of_all() -> String {
    format!(
        "m.local_id > (SELECT indexed_through FROM dm_message_order_state) \
         AND (m.local_id > (SELECT sweep_through FROM dm_message_order_state) \
              OR {KEY_SQL} > coalesce((SELECT sweep_key FROM dm_message_order_state), x''))"
    )
}

/// The order's key of `dm_messages m`'s conversation: its id's 16 bytes.
const KEY_SQL: &str = "unhex(replace(m.conversation_id, '-', ''))";

/// The schema (migration 3 creates it, beside the rebuilt `dm_messages`).
/// Between sweeps, `sweep_through` equals `indexed_through` and
/// `sweep_key` is NULL.
pub(crate) const SCHEMA: &str = "
    CREATE TABLE dm_message_order (
        conversation    BLOB NOT NULL,
        server_sequence INTEGER NOT NULL,
        message         INTEGER NOT NULL,
        PRIMARY KEY (conversation, server_sequence)
    ) WITHOUT ROWID;
    CREATE TABLE dm_message_order_state (
        id              INTEGER PRIMARY KEY CHECK (id = 1),
        indexed_through INTEGER NOT NULL,
        sweep_through   INTEGER NOT NULL,
        sweep_key       BLOB
    );
    INSERT INTO dm_message_order_state VALUES (1, 0, 0, NULL);
";

/// One message for the order: conversation key, sequence, `local_id`.
pub type Entry = ([u8; 16], i64, i64);

/// Where the order stands, as the writer keeps it between commits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every message up to here is in the order.
    indexed_through: i64,
    /// The sweep in progress indexes the messages up to here; equal to
    /// `indexed_through` between sweeps.
    sweep_through: i64,
    /// The last conversation the sweep indexed.
    sweep_key: Option<Vec<u8>>,
    /// What the sweep has still to index, in key order.
    pending: std::collections::VecDeque<Entry>,
    /// The messages above `sweep_through`, as they were committed: the
    /// next sweep sorts them here, without a query.
    waiting: Vec<Entry>,
}

impl Progress {
    /// The order's state as the database has it.
    pub fn read(conn: &Connection) -> Result<Progress, DbError> {
        let (indexed_through, sweep_through, sweep_key) = conn.query_row(
            "SELECT indexed_through, sweep_through, sweep_key FROM dm_message_order_state",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let mut progress = Progress {
            indexed_through,
            sweep_through,
            sweep_key,
            ..Progress::default()
        };
        progress.waiting = entries(conn, sweep_through, i64::MAX, None)?;
        if sweep_through > indexed_through {
            let after = progress.sweep_key.clone();
            progress.pending = entries(conn, indexed_through, sweep_through, after)?.into();
        }
        Ok(progress)
    }

    /// Messages not in the order yet, as the writer counts them.
    pub fn unindexed(&self) -> u64 {
        (self.waiting.len() + self.pending.len()) as u64
    }

    /// A commit's share of the indexing, in its transaction, after it wrote
    /// the messages `written`: starts a sweep once [`INDEX_BATCH`] messages
    /// wait, and indexes [`SWEEP_CONVERSATIONS`] conversations of it a
    /// commit. Returns the state to keep once the transaction commits, and
    /// the messages this commit put in the order.
    pub fn advance(
        mut self,
        tx: &Transaction<'_>,
        written: Vec<Entry>,
    ) -> Result<(Progress, Vec<Entry>), DbError> {
        self.waiting.extend(written);
        let mut swept = Vec::new();
        if self.sweep_through == self.indexed_through {
            if (self.waiting.len() as u64) < INDEX_BATCH {
                return Ok((self, swept));
            }
            let mut batch = std::mem::take(&mut self.waiting);
            let last = batch.iter().map(|e| e.2).max();
            self.sweep_through = last.unwrap_or(self.sweep_through);
            batch.sort_unstable();
            self.pending = batch.into();
            self.sweep_key = None;
        }
        let mut insert = tx.prepare_cached(
            "INSERT INTO dm_message_order (conversation, server_sequence, message) \
             VALUES (?1, ?2, ?3)",
        )?;
        let mut conversations = 0;
        while let Some((key, seq, local_id)) = self.pending.front() {
            if self.sweep_key.as_deref() != Some(&key[..]) {
                if conversations == SWEEP_CONVERSATIONS {
                    break;
                }
                conversations += 1;
                self.sweep_key = Some(key.to_vec());
            }
            insert.execute(rusqlite::params![&key[..], seq, local_id])?;
            swept.extend(self.pending.pop_front());
        }
        if self.pending.is_empty() {
            self.indexed_through = self.sweep_through;
            self.sweep_key = None;
        }
        tx.execute(
            "UPDATE dm_message_order_state \
             SET indexed_through = ?1, sweep_through = ?2, sweep_key = ?3",
            rusqlite::params![self.indexed_through, self.sweep_through, self.sweep_key],
        )?;
        Ok((self, swept))
    }
}

/// A conversation's part of the tail: (sequence, `local_id`) of each of its
/// messages the order does not hold yet, in sequence order.
pub type Part = Vec<(i64, i64)>;

/// The tail by conversation, kept by the writer and read by everyone who
/// reads by conversation. Cheap to clone.
///
/// A reader takes its conversation's part ([`Tail::part`]) *before* it
/// queries the order: see the module's invariants.
#[derive(Clone, Debug, Default)]
pub struct Tail(Arc<Mutex<HashMap<[u8; 16], Part>>>);

impl Tail {
    /// The tail as the database has it (a fresh process, tests).
    pub fn read(conn: &Connection) -> Result<Tail, DbError> {
        let tail = Tail::default();
        tail.replace(&Progress::read(conn)?);
        Ok(tail)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], Part>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `conversation`'s part of the tail, oldest first.
    pub fn part(&self, conversation: &uuid::Uuid) -> Part {
        self.lock()
            .get(conversation.as_bytes())
            .cloned()
            .unwrap_or_default()
    }

    /// The newest message of `conversation` in the tail.
    pub fn last(&self, conversation: &uuid::Uuid) -> Option<(i64, i64)> {
        self.lock()
            .get(conversation.as_bytes())
            .and_then(|part| part.last().copied())
    }

    /// Messages in the tail.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Becomes the tail of `progress` (read from the database).
    pub fn replace(&self, progress: &Progress) {
        let mut map: HashMap<[u8; 16], Part> = HashMap::new();
        for (key, seq, local_id) in progress.pending.iter().chain(&progress.waiting) {
            map.entry(*key).or_default().push((*seq, *local_id));
        }
        for part in map.values_mut() {
            part.sort_unstable();
        }
        *self.lock() = map;
    }

    /// After a commit: `added` joined the tail (in commit order) and
    /// `swept` left it for the order.
    pub fn apply(&self, added: &[Entry], swept: &[Entry]) {
        let mut map = self.lock();
        // Added first: a sweep may take messages of its own commit.
        for (key, seq, local_id) in added {
            map.entry(*key).or_default().push((*seq, *local_id));
        }
        // A sweep takes a conversation's oldest messages, in key order, and
        // a conversation's `local_id`s grow with its sequence: each run of
        // one key is a prefix of that conversation's part.
        for run in swept.chunk_by(|a, b| a.0 == b.0) {
            let (key, _, through) = run[run.len() - 1];
            if let Some(part) = map.get_mut(&key) {
                let cut = part.partition_point(|&(_, id)| id <= through);
                part.drain(..cut);
                if part.is_empty() {
                    map.remove(&key);
                }
            }
        }
    }
}

/// The messages with a `local_id` in (`above`, `through`] and a key after
/// `after`, in key order.
fn entries(
    conn: &Connection,
    above: i64,
    through: i64,
    after: Option<Vec<u8>>,
) -> Result<Vec<Entry>, DbError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {KEY_SQL} AS key, m.server_sequence, m.local_id FROM dm_messages m \
         WHERE m.local_id > ?1 AND m.local_id <= ?2 AND key > coalesce(?3, x'') \
         ORDER BY key, m.server_sequence"
    ))?;
    let rows = stmt.query_map(rusqlite::params![above, through, after], |r| {
        let key: Vec<u8> = r.get(0)?;
        let key = <[u8; 16]>::try_from(key.as_slice()).map_err(|_| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Blob,
                "a conversation id that is not a UUID".into(),
            )
        })?;
        Ok((key, r.get(1)?, r.get(2)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Indexes every message not in the order yet, at once, in the caller's
/// transaction (migration 3, imports); returns how many.
pub fn index_all(tx: &Transaction<'_>) -> Result<u64, DbError> {
    let indexed = tx.execute(
        &format!(
            "INSERT INTO dm_message_order (conversation, server_sequence, message) \
             SELECT {KEY_SQL} AS key, m.server_sequence, m.local_id FROM dm_messages m \
             WHERE {} ORDER BY key, m.server_sequence",
            tail_of_all()
        ),
        [],
    )? as u64;
    tx.execute(
        "UPDATE dm_message_order_state SET indexed_through = through, \
         sweep_through = through, sweep_key = NULL \
         FROM (SELECT coalesce(max(local_id), 0) AS through FROM dm_messages)",
        [],
    )?;
    Ok(indexed)
}

/// Empties the order, for a `dm_messages` emptied in the same transaction.
pub fn clear(tx: &Transaction<'_>) -> Result<(), DbError> {
    tx.execute("DELETE FROM dm_message_order", [])?;
    tx.execute(
        "UPDATE dm_message_order_state \
         SET indexed_through = 0, sweep_through = 0, sweep_key = NULL",
        [],
    )?;
    Ok(())
}

/// Rows copied per step of [`rebuild_messages`], between progress lines.
const REBUILD_STEP: i64 = 50_000;

/// Migration 3: `dm_messages` again without `UNIQUE(conversation_id,
/// server_sequence)` (SQLite drops a table constraint only by copying the
/// table) and with its rowid named (`local_id`), and the order, filled
/// from every message. Rowids are kept. One
/// transaction, so a stop half-way leaves the database as it was; a large
/// table logs its progress. Foreign keys are off while migrations run
/// (`migrations::migrate`), so dropping the old table deletes no offline
/// entry.
pub(crate) fn rebuild_messages(tx: &Transaction<'_>) -> Result<(), DbError> {
    tx.execute_batch(
        "CREATE TABLE dm_messages_rebuilt (
            local_id            INTEGER PRIMARY KEY,
            id                  TEXT NOT NULL UNIQUE,
            conversation_id     TEXT NOT NULL REFERENCES dm_conversations(id) ON DELETE CASCADE,
            sender_pubkey       TEXT NOT NULL,
            encrypted_payload   BLOB NOT NULL,
            nonce               BLOB NOT NULL,
            ephemeral_pubkey    BLOB,
            timestamp           INTEGER NOT NULL,
            server_sequence     INTEGER NOT NULL,
            sender_display_name TEXT,
            created_at          INTEGER NOT NULL
        );",
    )?;
    let total: i64 = tx.query_row("SELECT count(*) FROM dm_messages", [], |r| r.get(0))?;
    let mut copy = tx.prepare(
        "INSERT INTO dm_messages_rebuilt (local_id, id, conversation_id, sender_pubkey, \
         encrypted_payload, nonce, ephemeral_pubkey, timestamp, server_sequence, \
         sender_display_name, created_at) \
         SELECT rowid, id, conversation_id, sender_pubkey, encrypted_payload, nonce, \
         ephemeral_pubkey, timestamp, server_sequence, sender_display_name, created_at \
         FROM dm_messages WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
    )?;
    let (mut after, mut copied) = (0i64, 0i64);
    while copied < total {
        let n = copy.execute([after, REBUILD_STEP])? as i64;
        if n == 0 {
            break;
        }
        copied += n;
        after = tx.query_row("SELECT max(local_id) FROM dm_messages_rebuilt", [], |r| {
            r.get(0)
        })?;
        if total > REBUILD_STEP {
            tracing::info!(copied, total, "migration 3: copying dm_messages");
        }
    }
    drop(copy);
    tx.execute_batch(
        "DROP TABLE dm_messages;
         ALTER TABLE dm_messages_rebuilt RENAME TO dm_messages;",
    )?;
    tx.execute_batch(SCHEMA)?;
    if total > REBUILD_STEP {
        tracing::info!(total, "migration 3: indexing dm_messages by conversation");
    }
    index_all(tx)?;
    Ok(())
}
