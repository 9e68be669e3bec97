//! Write transactions. Only `actors::DbExecutor` calls these, on its one
//! connection; every transaction is `BEGIN IMMEDIATE`.
//!
//! Why it is this long: every SQLite write transaction, one function each,
//! and their tests (144 lines).

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use uuid::Uuid;

use super::portable::{Row as PortableRow, Table};
use super::rows::{self, Rotation};
use super::{order, reads, DbError};
use crate::model::{Conversation, DmKey, Pubkey, StoredMessage, User};

fn begin(conn: &mut Connection) -> Result<Transaction<'_>, DbError> {
    Ok(conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
}

/// What a login does to the users table.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Known user (display name updated if one was given) or newly registered.
    User(User),
    /// Unknown pubkey and no display name to register it with.
    NeedsDisplayName,
}

/// Registers on first login, updates the display name on a later one.
pub fn login_user(
    conn: &mut Connection,
    pubkey: &Pubkey,
    display_name: Option<&str>,
    now: u64,
) -> Result<LoginOutcome, DbError> {
    let tx = begin(conn)?;
    let existing = reads::user(&tx, pubkey)?;
    let outcome = match (existing, display_name) {
        (Some(user), None) => LoginOutcome::User(user),
        (Some(_), Some(name)) | (None, Some(name)) => {
            tx.execute(
                "INSERT INTO users (public_key, display_name, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?3) \
                 ON CONFLICT(public_key) DO UPDATE SET display_name = ?2, updated_at = ?3",
                params![pubkey.as_str(), name, now as i64],
            )?;
            LoginOutcome::User(User {
                public_key: pubkey.clone(),
                display_name: name.to_owned(),
            })
        }
        (None, None) => LoginOutcome::NeedsDisplayName,
    };
    tx.commit()?;
    Ok(outcome)
}

/// Stores a login's first refresh token, the start of a new family.
pub fn insert_refresh_token(
    conn: &mut Connection,
    hash: &[u8; 32],
    user: &Pubkey,
    now: u64,
    expires_at: u64,
) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO refresh_tokens (token_hash, user_pubkey, created_at, expires_at, family) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        &hash[..],
        user.as_str(),
        now as i64,
        expires_at as i64,
        Uuid::new_v4().to_string()
    ])?;
    Ok(())
}

/// Consumes a live refresh token and stores its successor (same family),
/// atomically. `None` when the old token is unknown, expired or already
/// used. Presenting an already used token revokes its whole family (the
/// OAuth 2.0 security BCP): a stolen token and its successors die together.
pub fn rotate_refresh_token(
    conn: &mut Connection,
    old_hash: &[u8; 32],
    new_hash: &[u8; 32],
    now: u64,
    expires_at: u64,
) -> Result<Option<User>, DbError> {
    let tx = begin(conn)?;
    let row: Option<(String, String, bool, i64)> = tx
        .query_row(
            "SELECT user_pubkey, family, used, expires_at FROM refresh_tokens WHERE token_hash = ?1",
            params![&old_hash[..]],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((owner, family, used, expiry)) = row else {
        return Ok(None);
    };
    match rows::rotation(used, expiry, now) {
        Rotation::RevokeFamily => {
            let revoked = tx.execute("DELETE FROM refresh_tokens WHERE family = ?1", [&family])?;
            tx.commit()?;
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
        "UPDATE refresh_tokens SET used = 1 WHERE token_hash = ?1",
        params![&old_hash[..]],
    )?;
    let owner = Pubkey::from_db(owner);
    let user = reads::user(&tx, &owner)?;
    tx.execute(
        "INSERT INTO refresh_tokens (token_hash, user_pubkey, created_at, expires_at, family) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            &new_hash[..],
            owner.as_str(),
            now as i64,
            expires_at as i64,
            family
        ],
    )?;
    tx.commit()?;
    Ok(user)
}

/// Upserts a user's X25519 key. Returns the stored key and whether it changed.
pub fn upsert_dm_key(
    conn: &mut Connection,
    user: &Pubkey,
    key: &[u8; 32],
    now: u64,
) -> Result<(DmKey, bool), DbError> {
    let tx = begin(conn)?;
    let existing = reads::dm_key(&tx, user)?;
    let result = match existing {
        Some(stored) if &stored.x25519_pubkey == key => (stored, false),
        _ => {
            tx.execute(
                "INSERT INTO dm_public_keys (ed25519_pubkey, x25519_pubkey, published_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?3) \
                 ON CONFLICT(ed25519_pubkey) DO UPDATE SET x25519_pubkey = ?2, \
                 published_at = ?3, updated_at = ?3",
                params![user.as_str(), &key[..], now as i64],
            )?;
            let stored = DmKey {
                ed25519_pubkey: user.clone(),
                x25519_pubkey: *key,
                published_at: now,
            };
            (stored, true)
        }
    };
    tx.commit()?;
    Ok(result)
}

/// Creates the conversation of a normalised pair, or returns the existing one.
/// The writer is serial, so two concurrent creates cannot both insert, and
/// `tail` (the writer's) is exact here.
pub fn create_conversation(
    conn: &mut Connection,
    tail: &order::Tail,
    a: &Pubkey,
    b: &Pubkey,
    now: u64,
) -> Result<(Conversation, bool), DbError> {
    debug_assert!(a < b, "the pair is normalised by the caller");
    let tx = begin(conn)?;
    let existing: Option<String> = tx
        .query_row(
            "SELECT id FROM dm_conversations WHERE participant_a = ?1 AND participant_b = ?2",
            params![a.as_str(), b.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    let (id, created) = match existing {
        Some(id) => (id, false),
        None => {
            let id = Uuid::new_v4().to_string();
            tx.execute(
                "INSERT INTO dm_conversations (id, participant_a, participant_b, created_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![id, a.as_str(), b.as_str(), now as i64],
            )?;
            (id, true)
        }
    };
    let id = Uuid::parse_str(&id).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let conversation = reads::conversation(&tx, &id, tail.last(&id))?
        .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    tx.commit()?;
    Ok((conversation, created))
}

/// One message of a group commit.
#[derive(Clone, Debug)]
pub struct MessageWrite {
    pub message: std::sync::Arc<StoredMessage>,
    /// The other participant (the one who is not the sender).
    pub recipient: Pubkey,
    /// Write the recipient's offline-queue entry in the same transaction.
    pub offline_queued: bool,
}

/// Why one message of a committed batch was not written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// Its sequence does not follow the conversation's last committed one
    /// (an earlier message of the conversation failed): writing it would
    /// leave a gap.
    SequenceGap,
    /// Its id is already stored: a resend of a committed message (or the same
    /// id in another conversation). The sender's actor answers it from the
    /// stored row.
    DuplicateId,
    /// Another node committed this sequence first (cluster mode): the actor
    /// re-reads the last sequence and assigns again.
    Stale,
}

/// What the writer knows of what it committed: each conversation's last
/// committed sequence, so that a group commit does not read
/// `MAX(server_sequence)` once per conversation, and where the sweep of the
/// conversation order stands ([`order::Progress`]), with the tail it shares
/// with the readers ([`order::Tail`]). Only the writer commits messages
/// (and nothing deletes them), so an entry stays true until the writer
/// changes it.
#[derive(Debug, Default)]
pub struct Committed {
    last: HashMap<Uuid, u64>,
    /// Read from the database when `None` (then `tail` is rebuilt too).
    order: Option<order::Progress>,
    tail: order::Tail,
}

impl Committed {
    /// Entries kept at most; past that the map starts again empty and fills
    /// from the database as conversations come back.
    const CAPACITY: usize = 65_536;

    /// The writer's knowledge of a database whose order stands at
    /// `progress`, with `tail` already its tail.
    pub fn new(progress: order::Progress, tail: order::Tail) -> Self {
        Committed {
            last: HashMap::new(),
            order: Some(progress),
            tail,
        }
    }

    fn get(&self, conversation: &Uuid) -> Option<u64> {
        self.last.get(conversation).copied()
    }

    /// Records what a committed transaction wrote, and what it swept.
    fn committed(
        &mut self,
        last: HashMap<Uuid, u64>,
        order: order::Progress,
        added: &[order::Entry],
        swept: &[order::Entry],
    ) {
        if self.last.len() + last.len() > Self::CAPACITY {
            self.last.clear();
        }
        self.last.extend(last);
        self.order = Some(order);
        self.tail.apply(added, swept);
    }
}

/// Commits a batch of messages from any number of conversations in one
/// transaction: one fsync for all of them.
///
/// Each message must carry the next sequence of its conversation; a message
/// that does not is skipped (and so is every later one of that conversation),
/// so the table never has a gap. A message whose id is already stored is
/// skipped as [`Skipped::DuplicateId`] before its insert could fail, so one
/// client's resend never fails the other messages of the batch.
///
/// Each commit does its share of filling the conversation order
/// ([`order::Progress::advance`]).
pub fn commit_messages(
    conn: &mut Connection,
    known: &mut Committed,
    batch: &[MessageWrite],
    now: u64,
) -> Result<Vec<Result<(), Skipped>>, DbError> {
    let tx = begin(conn)?;
    let progress = match known.order.take() {
        Some(progress) => progress,
        None => {
            let progress = order::Progress::read(&tx)?;
            known.tail.replace(&progress);
            progress
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    let mut written = Vec::with_capacity(batch.len());
    // What this transaction writes; `known` learns it once it commits.
    let mut last_seq: HashMap<Uuid, u64> = HashMap::new();
    {
        let mut insert_message = tx.prepare_cached(
            "INSERT INTO dm_messages (id, conversation_id, sender_pubkey, encrypted_payload, nonce, \
             ephemeral_pubkey, timestamp, server_sequence, sender_display_name, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut insert_offline = tx.prepare_cached(
            "INSERT OR IGNORE INTO dm_offline_queue (recipient_pubkey, dm_message_id, queued_at) \
             VALUES (?1, ?2, ?3)",
        )?;
        let mut stored_id = tx.prepare_cached("SELECT 1 FROM dm_messages WHERE id = ?1")?;
        // Conversations with a skipped message: the rest of theirs wait too.
        let mut broken: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
        for write in batch {
            let m = &write.message;
            let id = m.id.to_string();
            if stored_id.exists([&id])? {
                broken.insert(m.conversation_id);
                results.push(Err(Skipped::DuplicateId));
                continue;
            }
            let last = match last_seq.get(&m.conversation_id) {
                Some(seq) => *seq,
                None => match known.get(&m.conversation_id) {
                    Some(seq) => seq,
                    None => reads::max_sequence(
                        &tx,
                        &m.conversation_id,
                        known.tail.last(&m.conversation_id),
                    )?,
                },
            };
            if broken.contains(&m.conversation_id) || m.server_sequence != last + 1 {
                broken.insert(m.conversation_id);
                results.push(Err(Skipped::SequenceGap));
                continue;
            }
            insert_message.execute(params![
                id,
                m.conversation_id.to_string(),
                m.sender.as_str(),
                &m.encrypted_payload[..],
                &m.nonce[..],
                m.ephemeral_pubkey.as_ref().map(|k| &k[..]),
                m.timestamp as i64,
                m.server_sequence as i64,
                m.sender_display_name,
                m.created_at as i64,
            ])?;
            written.push((
                *m.conversation_id.as_bytes(),
                m.server_sequence as i64,
                tx.last_insert_rowid(),
            ));
            if write.offline_queued {
                insert_offline.execute(params![write.recipient.as_str(), id, now as i64])?;
            }
            last_seq.insert(m.conversation_id, m.server_sequence);
            results.push(Ok(()));
        }
    }
    let added = written.clone();
    let (progress, swept) = progress.advance(&tx, written)?;
    tx.commit()?;
    known.committed(last_seq, progress, &added, &swept);
    Ok(results)
}

/// Queues an already committed message for a recipient whose live push failed.
pub fn queue_offline(
    conn: &mut Connection,
    recipient: &Pubkey,
    message_id: &Uuid,
    now: u64,
) -> Result<bool, DbError> {
    let n = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO dm_offline_queue (recipient_pubkey, dm_message_id, queued_at) \
             VALUES (?1, ?2, ?3)",
        )?
        .execute(params![
            recipient.as_str(),
            message_id.to_string(),
            now as i64
        ])?;
    Ok(n == 1)
}

/// Marks the named queue entries of `recipient` delivered; returns the ids
/// that this call changed (a concurrent fetch may have taken some first).
pub fn mark_delivered(
    conn: &mut Connection,
    recipient: &Pubkey,
    queue_ids: &[i64],
) -> Result<Vec<i64>, DbError> {
    let tx = begin(conn)?;
    let mut changed = Vec::with_capacity(queue_ids.len());
    {
        let mut stmt = tx.prepare_cached(
            "UPDATE dm_offline_queue SET delivered = 1 \
             WHERE id = ?1 AND recipient_pubkey = ?2 AND delivered = 0",
        )?;
        for id in queue_ids {
            if stmt.execute(params![id, recipient.as_str()])? == 1 {
                changed.push(*id);
            }
        }
    }
    tx.commit()?;
    Ok(changed)
}

/// Marks the caller's named entries delivered; returns how many changed.
pub fn ack_offline(
    conn: &mut Connection,
    recipient: &Pubkey,
    ids: &[Uuid],
) -> Result<u32, DbError> {
    let tx = begin(conn)?;
    let mut changed = 0;
    {
        let mut stmt = tx.prepare_cached(
            "UPDATE dm_offline_queue SET delivered = 1 \
             WHERE recipient_pubkey = ?1 AND dm_message_id = ?2 AND delivered = 0",
        )?;
        for id in ids {
            changed += stmt.execute(params![recipient.as_str(), id.to_string()])? as u32;
        }
    }
    tx.commit()?;
    Ok(changed)
}

/// What one janitor run removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub offline_entries: u64,
    pub refresh_tokens: u64,
}

/// Deletes offline entries queued before `offline_cutoff` and refresh tokens
/// expired by `now`, then checkpoints the WAL so deleted bytes leave it too.
pub fn purge_expired(
    conn: &mut Connection,
    offline_cutoff: u64,
    now: u64,
) -> Result<Purged, DbError> {
    let tx = begin(conn)?;
    let offline_entries = tx.execute(
        "DELETE FROM dm_offline_queue WHERE queued_at < ?1",
        [offline_cutoff as i64],
    )? as u64;
    let refresh_tokens = tx.execute(
        "DELETE FROM refresh_tokens WHERE expires_at <= ?1",
        [now as i64],
    )? as u64;
    tx.commit()?;
    if offline_entries + refresh_tokens > 0 {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    Ok(Purged {
        offline_entries,
        refresh_tokens,
    })
}

/// Deletes every row of the portable tables, children first, in one
/// transaction (`united-hub migrate --replace`).
pub fn clear_tables(conn: &mut Connection, tables: &[Table]) -> Result<u64, DbError> {
    let tx = begin(conn)?;
    let mut deleted = 0;
    for table in tables.iter().rev() {
        deleted += tx.execute(&format!("DELETE FROM {}", table.name), [])? as u64;
        if table.name == "dm_messages" {
            order::clear(&tx)?;
        }
    }
    tx.commit()?;
    Ok(deleted)
}

/// Inserts rows of a portable table as they are, in one transaction (for
/// `united-hub migrate`, into an empty database).
pub fn import_rows(
    conn: &mut Connection,
    table: &Table,
    rows: &[PortableRow],
) -> Result<(), DbError> {
    let placeholders: Vec<String> = (1..=table.columns.len()).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({})",
        table.name,
        table.column_list(),
        placeholders.join(", ")
    );
    let tx = begin(conn)?;
    {
        let mut stmt = tx.prepare_cached(&sql)?;
        for row in rows {
            let values: Vec<rusqlite::types::Value> = row.iter().map(reads::sqlite_value).collect();
            stmt.execute(rusqlite::params_from_iter(values))?;
        }
    }
    // Imported messages are in the conversation order at once: a
    // duplicate (conversation, sequence) fails this batch, not a later
    // commit.
    if table.name == "dm_messages" {
        order::index_all(&tx)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::db::migrations::migrate;
    use crate::model::HistoryPage;

    fn db_with_conversation() -> (Connection, Uuid, Pubkey, Pubkey) {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let a = Pubkey::from_db("aa".repeat(32));
        let b = Pubkey::from_db("bb".repeat(32));
        login_user(&mut conn, &a, Some("A"), 1).unwrap();
        login_user(&mut conn, &b, Some("B"), 1).unwrap();
        let (c, created) =
            create_conversation(&mut conn, &order::Tail::default(), &a, &b, 1).unwrap();
        assert!(created);
        (conn, c.id, a, b)
    }

    fn write(
        conversation: Uuid,
        sender: &Pubkey,
        seq: u64,
        offline_for: Option<&Pubkey>,
    ) -> MessageWrite {
        let other = Pubkey::from_db("ff".repeat(32));
        MessageWrite {
            message: Arc::new(StoredMessage {
                id: Uuid::new_v4(),
                conversation_id: conversation,
                sender: sender.clone(),
                encrypted_payload: bytes::Bytes::from_static(b"ct"),
                nonce: [1; 24],
                ephemeral_pubkey: Some([2; 32]),
                timestamp: 5,
                server_sequence: seq,
                sender_display_name: "A".into(),
                created_at: 10 + seq,
            }),
            recipient: offline_for.cloned().unwrap_or(other),
            offline_queued: offline_for.is_some(),
        }
    }

    #[test]
    fn the_sequence_cache_learns_only_what_committed() {
        let (mut conn, c, a, _) = db_with_conversation();
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        let known = &mut Committed::default();
        let unknown = Uuid::new_v4();
        let failed = commit_messages(
            &mut conn,
            known,
            &[write(c, &a, 1, None), write(unknown, &a, 1, None)],
            20,
        );
        assert!(
            failed.is_err(),
            "a message of an unknown conversation fails the batch"
        );
        // Nothing was written, so 1 is still next: a cache that had learned
        // 1 from the failed batch would call it a gap.
        let first = commit_messages(&mut conn, known, &[write(c, &a, 1, None)], 21).unwrap();
        assert_eq!(first, vec![Ok(())]);
        let gap = commit_messages(&mut conn, known, &[write(c, &a, 3, None)], 22).unwrap();
        assert_eq!(gap, vec![Err(Skipped::SequenceGap)]);
        let next = commit_messages(&mut conn, known, &[write(c, &a, 2, None)], 23).unwrap();
        assert_eq!(next, vec![Ok(())]);
        assert_eq!(
            reads::max_sequence(&conn, &c, known.tail.last(&c)).unwrap(),
            2
        );
    }

    #[test]
    fn a_batch_never_leaves_a_gap() {
        let (mut conn, c, a, b) = db_with_conversation();
        let known = &mut Committed::default();
        let ok = commit_messages(
            &mut conn,
            known,
            &[write(c, &a, 1, Some(&b)), write(c, &a, 2, None)],
            20,
        )
        .unwrap();
        assert_eq!(ok, vec![Ok(()), Ok(())]);
        // 4 does not follow 2: skipped, and so is 5 after it; the rest of the
        // batch (another conversation would be) is unaffected.
        let skipped = commit_messages(
            &mut conn,
            known,
            &[write(c, &a, 4, None), write(c, &a, 5, None)],
            21,
        )
        .unwrap();
        assert_eq!(
            skipped,
            vec![Err(Skipped::SequenceGap), Err(Skipped::SequenceGap)]
        );
        let resumed = commit_messages(&mut conn, known, &[write(c, &a, 3, None)], 22).unwrap();
        assert_eq!(resumed, vec![Ok(())]);
        assert_eq!(
            reads::max_sequence(&conn, &c, known.tail.last(&c)).unwrap(),
            3
        );
        let offline: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM dm_offline_queue WHERE recipient_pubkey = ?1",
                [b.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(offline, 1, "the offline entry went in with its message");
        let conversation = reads::conversation(&conn, &c, known.tail.last(&c))
            .unwrap()
            .unwrap();
        assert_eq!(conversation.last_message_at, 13);
        assert_eq!(
            reads::conversation(&conn, &c, None)
                .unwrap()
                .unwrap()
                .last_message_at,
            0,
            "without the tail, the order alone has no message yet"
        );
    }

    #[test]
    fn offline_entries_are_marked_once_and_ack_touches_only_the_callers_entries() {
        let (mut conn, c, a, b) = db_with_conversation();
        let w1 = write(c, &a, 1, Some(&b));
        let w2 = write(c, &a, 2, Some(&b));
        let known = &mut Committed::default();
        commit_messages(&mut conn, known, &[w1.clone(), w2.clone()], 20).unwrap();
        assert_eq!(
            ack_offline(&mut conn, &a, &[w1.message.id]).unwrap(),
            0,
            "not A's entry"
        );
        assert_eq!(ack_offline(&mut conn, &b, &[w1.message.id]).unwrap(), 1);
        let (entries, more) = reads::offline_entries(&conn, &b, 10).unwrap();
        assert!(!more);
        assert_eq!(
            entries.iter().map(|(_, m)| m.id).collect::<Vec<_>>(),
            vec![w2.message.id]
        );
        assert_eq!(entries[0].1, *w2.message);
        let ids: Vec<i64> = entries.iter().map(|(id, _)| *id).collect();
        assert!(
            mark_delivered(&mut conn, &a, &ids).unwrap().is_empty(),
            "not A's"
        );
        assert_eq!(mark_delivered(&mut conn, &b, &ids).unwrap(), ids);
        assert!(
            mark_delivered(&mut conn, &b, &ids).unwrap().is_empty(),
            "once"
        );
        assert!(reads::offline_entries(&conn, &b, 10).unwrap().0.is_empty());
    }

    /// Conversations of `a` with `n` partners, and a writer's knowledge of
    /// the database (its tail shared as the hub shares it).
    fn db_with_partners(n: usize) -> (Connection, Vec<Uuid>, Uuid, Pubkey, order::Tail, Committed) {
        let (mut conn, quiet, a, _) = db_with_conversation();
        let tail = order::Tail::default();
        let mut ids = Vec::new();
        for i in 0..n {
            let partner = Pubkey::from_db(format!("{:02x}", i + 16).repeat(32));
            login_user(&mut conn, &partner, Some("P"), 1).unwrap();
            let (first, second) = if a.as_str() < partner.as_str() {
                (&a, &partner)
            } else {
                (&partner, &a)
            };
            ids.push(
                create_conversation(&mut conn, &tail, first, second, 1)
                    .unwrap()
                    .0
                    .id,
            );
        }
        let known = Committed::new(order::Progress::read(&conn).unwrap(), tail.clone());
        (conn, ids, quiet, a, tail, known)
    }

    /// Commits `count` messages spread round-robin over `ids`, after `last`
    /// (each conversation's last sequence, updated).
    fn commit_round(
        conn: &mut Connection,
        known: &mut Committed,
        ids: &[Uuid],
        sender: &Pubkey,
        last: &mut [u64],
        count: u64,
    ) {
        let batch: Vec<_> = (0..count)
            .map(|i| {
                let k = i as usize % ids.len();
                last[k] += 1;
                write(ids[k], sender, last[k], None)
            })
            .collect();
        let results = commit_messages(conn, known, &batch, 20).unwrap();
        assert!(results.iter().all(|r| r.is_ok()));
    }

    /// Every sequence `history` gives for `conversation`, forwards in pages
    /// of 97, then backwards from the newest.
    fn history_both_ways(
        conn: &Connection,
        conversation: &Uuid,
        part: &[(i64, i64)],
    ) -> (Vec<u64>, Vec<u64>) {
        let mut seen = Vec::new();
        loop {
            let after = seen.last().copied().unwrap_or(0);
            let page =
                reads::history(conn, conversation, part, HistoryPage::After(after), 97).unwrap();
            seen.extend(page.messages.iter().map(|m| m.server_sequence));
            if !page.has_more {
                break;
            }
        }
        let mut back = Vec::new();
        loop {
            let before = back.last().copied();
            let page =
                reads::history(conn, conversation, part, HistoryPage::Before(before), 97).unwrap();
            back.extend(page.messages.iter().map(|m| m.server_sequence));
            if !page.has_more {
                break;
            }
        }
        (seen, back)
    }

    /// Reads by conversation see each message once, in order, whether the
    /// order holds it or it is still in the tail: before a sweep, in the
    /// middle of one (some conversations swept, more messages above it) and
    /// after. The writer's tail is the one the database gives (as after a
    /// restart), and counts what the order lacks.
    #[test]
    fn reads_by_conversation_join_the_order_and_its_tail() {
        let n = order::SWEEP_CONVERSATIONS + 4;
        let (mut conn, ids, quiet, a, tail, mut known) = db_with_partners(n);
        let mut last = vec![0u64; n];
        let count = |conn: &Connection, sql: &str| -> u64 {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64
        };
        let check = |conn: &Connection, last: &[u64]| {
            let stored = count(conn, "SELECT count(*) FROM dm_messages");
            let indexed = count(conn, "SELECT count(*) FROM dm_message_order");
            let progress = order::Progress::read(conn).unwrap();
            assert_eq!(progress.unindexed(), stored - indexed);
            assert_eq!(tail.len() as u64, stored - indexed);
            let fresh = order::Tail::read(conn).unwrap();
            for (conversation, &last) in ids.iter().zip(last) {
                assert_eq!(tail.part(conversation), fresh.part(conversation));
                let newest = tail.last(conversation);
                assert_eq!(
                    reads::max_sequence(conn, conversation, newest).unwrap(),
                    last
                );
                let at = reads::conversation(conn, conversation, newest)
                    .unwrap()
                    .unwrap();
                assert_eq!(at.last_message_at, 10 + last);
                let (seen, back) = history_both_ways(conn, conversation, &tail.part(conversation));
                assert_eq!(seen, (1..=last).collect::<Vec<_>>());
                assert_eq!(back, (1..=last).rev().collect::<Vec<_>>());
            }
            indexed
        };
        // All in the tail.
        commit_round(&mut conn, &mut known, &ids, &a, &mut last, 1000);
        assert_eq!(check(&conn, &last), 0);
        // The commit that reaches INDEX_BATCH starts a sweep and indexes
        // its first SWEEP_CONVERSATIONS conversations.
        commit_round(
            &mut conn,
            &mut known,
            &ids,
            &a,
            &mut last,
            order::INDEX_BATCH - 1000,
        );
        let swept = check(&conn, &last);
        assert!(swept > 0 && swept < order::INDEX_BATCH, "{swept}");
        // The next commit ends the sweep: all of it is in the order.
        commit_round(&mut conn, &mut known, &ids, &a, &mut last, 40);
        assert_eq!(check(&conn, &last), order::INDEX_BATCH);
        let conversations = reads::conversations_of(&conn, &tail, &a).unwrap();
        assert_eq!(conversations.len(), n + 1);
        assert_eq!(
            conversations[n].id, quiet,
            "the one without messages comes last"
        );
        assert!(conversations[..n].iter().all(|c| c.last_message_at > 10));
        // Imports index everything at once, the tail too; the writer reads
        // the order again after one (`SqliteStore::import_rows`).
        let tx = conn.transaction().unwrap();
        assert_eq!(order::index_all(&tx).unwrap(), 40);
        tx.commit().unwrap();
        tail.replace(&order::Progress::read(&conn).unwrap());
        assert!(tail.is_empty());
        assert_eq!(check(&conn, &last), order::INDEX_BATCH + 40);
    }

    /// A reader takes its part of the tail before its query, and a sweep
    /// may commit in between: the query finds some of the part's messages
    /// in the order as well, and still gives each message once, none
    /// missing.
    #[test]
    fn a_part_taken_before_a_sweep_reads_each_message_once() {
        let n = order::SWEEP_CONVERSATIONS + 4;
        let (mut conn, ids, _, a, tail, mut known) = db_with_partners(n);
        let mut last = vec![0u64; n];
        commit_round(
            &mut conn,
            &mut known,
            &ids,
            &a,
            &mut last,
            order::INDEX_BATCH - 1,
        );
        let before = last.clone();
        let parts: Vec<_> = ids
            .iter()
            .map(|id| (tail.part(id), tail.last(id)))
            .collect();
        // One more message starts the sweep, which indexes the first
        // conversations at once.
        commit_round(&mut conn, &mut known, &ids, &a, &mut last, 1);
        let indexed: i64 = conn
            .query_row("SELECT count(*) FROM dm_message_order", [], |r| r.get(0))
            .unwrap();
        assert!(indexed > 0, "the sweep started");
        for (k, (conversation, (part, newest))) in ids.iter().zip(&parts).enumerate() {
            let (seen, back) = history_both_ways(&conn, conversation, part);
            // The message committed after the part may be seen (its
            // conversation swept) or not; nothing else may differ.
            assert!(
                seen == (1..=before[k]).collect::<Vec<_>>()
                    || seen == (1..=last[k]).collect::<Vec<_>>(),
                "conversation {k}: {seen:?}"
            );
            let mut back = back;
            back.reverse();
            assert_eq!(back, seen);
            let max = reads::max_sequence(&conn, conversation, *newest).unwrap();
            assert!(max == before[k] || max == last[k]);
        }
    }
}
