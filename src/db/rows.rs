//! What both engines share: how a row becomes a domain type, the rules
//! their transactions apply, and which migrations a database needs. Each
//! engine reads its columns through [`Columns`]; the mapping and the rules
//! are written once, here.

use bytes::Bytes;
use uuid::Uuid;

use super::DbError;
use crate::model::{Conversation, Pubkey, StoredMessage};

/// The columns of one result row, however the engine stores them.
pub(crate) trait Columns {
    type Error;
    fn text(&self, i: usize) -> Result<String, Self::Error>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, Self::Error>;
    fn blob(&self, i: usize) -> Result<Vec<u8>, Self::Error>;
    fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>, Self::Error>;
    fn int(&self, i: usize) -> Result<i64, Self::Error>;
    fn uuid(&self, i: usize) -> Result<Uuid, Self::Error>;
    /// The error for a stored value that cannot be what it should.
    fn invalid(&self, i: usize, why: &'static str) -> Self::Error;
}

/// A blob column of exactly `N` bytes (a key, a nonce, a challenge).
pub(crate) fn fixed<R: Columns, const N: usize>(
    row: &R,
    i: usize,
    why: &'static str,
) -> Result<[u8; N], R::Error> {
    sized(row, i, row.blob(i)?, why)
}

fn sized<R: Columns, const N: usize>(
    row: &R,
    i: usize,
    v: Vec<u8>,
    why: &'static str,
) -> Result<[u8; N], R::Error> {
    v.try_into().map_err(|_| row.invalid(i, why))
}

/// A message from a row of the columns both engines select in this order:
/// id, conversation, sender, payload, nonce, ephemeral key, timestamp,
/// sequence, sender's display name, created_at.
pub(crate) fn message<R: Columns>(row: &R) -> Result<StoredMessage, R::Error> {
    let ephemeral_pubkey = match row.opt_blob(5)? {
        Some(v) => Some(sized(
            row,
            5,
            v,
            "stored ephemeral key has the wrong length",
        )?),
        None => None,
    };
    Ok(StoredMessage {
        id: row.uuid(0)?,
        conversation_id: row.uuid(1)?,
        sender: Pubkey::from_db(row.text(2)?),
        encrypted_payload: Bytes::from(row.blob(3)?),
        nonce: fixed(row, 4, "stored nonce has the wrong length")?,
        ephemeral_pubkey,
        timestamp: row.int(6)? as u64,
        server_sequence: row.int(7)? as u64,
        sender_display_name: row.opt_text(8)?.unwrap_or_default(),
        created_at: row.int(9)? as u64,
    })
}

/// A conversation from a row of: id, participant a, participant b, their
/// display names, created_at, last message's time (0 without one).
pub(crate) fn conversation<R: Columns>(row: &R) -> Result<Conversation, R::Error> {
    Ok(Conversation {
        id: row.uuid(0)?,
        participant_a: Pubkey::from_db(row.text(1)?),
        participant_b: Pubkey::from_db(row.text(2)?),
        participant_a_display_name: row.text(3)?,
        participant_b_display_name: row.text(4)?,
        created_at: row.int(5)? as u64,
        last_message_at: row.int(6)? as u64,
    })
}

/// What presenting a stored refresh token leads to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rotation {
    /// Used before: someone replays a rotated token. Its whole family is
    /// revoked and the caller gets 401.
    RevokeFamily,
    /// Expired: 401, nothing changes.
    Refuse,
    /// Live: mark it used and store its successor in the same family.
    Rotate,
}

/// The refresh rule (contract §3), for a token that exists.
pub(crate) fn rotation(used: bool, expires_at: i64, now: u64) -> Rotation {
    if used {
        Rotation::RevokeFamily
    } else if expires_at <= now as i64 {
        Rotation::Refuse
    } else {
        Rotation::Rotate
    }
}

/// The migrations a database at schema version `current` still needs, with
/// the version each brings it to. A database newer than this build is
/// refused: running an older binary on it could lose data it does not know.
pub(crate) fn pending_migrations<T>(
    all: &[T],
    current: u32,
) -> Result<impl Iterator<Item = (u32, &T)>, DbError> {
    if current as usize > all.len() {
        return Err(DbError::Other(format!(
            "the database's schema is at version {current}, newer than this build knows ({}): \
             run the newer build, or restore a backup taken before it",
            all.len()
        )));
    }
    Ok(all
        .iter()
        .enumerate()
        .skip(current as usize)
        .map(|(index, migration)| (index as u32 + 1, migration)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refresh_rule() {
        assert_eq!(rotation(true, i64::MAX, 1), Rotation::RevokeFamily);
        assert_eq!(rotation(true, 0, 1), Rotation::RevokeFamily);
        assert_eq!(rotation(false, 1, 1), Rotation::Refuse);
        assert_eq!(rotation(false, 2, 1), Rotation::Rotate);
    }

    #[test]
    fn a_database_newer_than_the_build_is_refused() {
        let all = ["a", "b", "c"];
        let plan: Vec<_> = pending_migrations(&all, 1).unwrap().collect();
        assert_eq!(plan, vec![(2, &"b"), (3, &"c")]);
        assert_eq!(pending_migrations(&all, 3).unwrap().count(), 0);
        let Err(e) = pending_migrations(&all, 4) else {
            panic!("a newer schema was accepted")
        };
        assert!(e.to_string().contains("version 4"), "{e}");
    }
}
