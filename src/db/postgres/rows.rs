//! How PostgreSQL rows and errors look to the rest of the engine: the
//! columns behind `db::rows`, the selects every query shares, which errors
//! mean the server is gone, and the pool checkout.

use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::db::rows::{self};
use crate::db::DbError;
use crate::model::{Conversation, StoredMessage};

pub(super) const MESSAGE_COLUMNS: &str = "m.id, m.conversation_id, m.sender_pubkey, m.encrypted_payload, \
     m.nonce, m.ephemeral_pubkey, m.timestamp, m.server_sequence, m.sender_display_name, m.created_at";

/// A conversation's columns, as `conversation_from_row` reads them. The
/// names come from scalar subqueries, not joins: PostgreSQL then looks two
/// names up by key for each conversation it returns. With joins, a table
/// not analyzed yet (a cluster minutes old) or a generic plan made
/// PostgreSQL hash the whole `users` table for every list of
/// conversations: 5 ms at 8,000 users, and a 2-node cluster took 8-22 s to
/// connect 8,000 sessions (issue 26). Every participant is a user (foreign
/// keys), so the names are never missing.
macro_rules! conversation_columns {
    () => {
        "c.id, c.participant_a, c.participant_b, \
         (SELECT u.display_name FROM users u WHERE u.public_key = c.participant_a), \
         (SELECT u.display_name FROM users u WHERE u.public_key = c.participant_b), \
         c.created_at, COALESCE(c.last_message_at, 0)"
    };
}
pub(super) use conversation_columns;

pub(super) const CONVERSATION_SELECT: &str = concat!(
    "SELECT ",
    conversation_columns!(),
    " FROM dm_conversations c"
);

impl rows::Columns for Row {
    type Error = DbError;
    fn text(&self, i: usize) -> Result<String, DbError> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        Ok(self.try_get(i)?)
    }
    fn blob(&self, i: usize) -> Result<Vec<u8>, DbError> {
        Ok(self.try_get(i)?)
    }
    fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self.try_get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64, DbError> {
        Ok(self.try_get(i)?)
    }
    fn uuid(&self, i: usize) -> Result<Uuid, DbError> {
        Ok(self.try_get(i)?)
    }
    fn invalid(&self, i: usize, why: &'static str) -> DbError {
        DbError::Other(format!("column {i}: {why}"))
    }
}

pub(super) fn message_from_row(row: &Row) -> Result<StoredMessage, DbError> {
    rows::message(row)
}

pub(super) fn conversation_from_row(row: &Row) -> Result<Conversation, DbError> {
    rows::conversation(row)
}

/// Whether a statement failed on a unique key (an id stored meanwhile, or
/// one [`super::Ids::AssumeNew`] assumed new).
pub fn is_unique_violation(err: &DbError) -> bool {
    matches!(err, DbError::Postgres(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION))
}

/// Whether an error means the server cannot be reached (or is going away),
/// as opposed to refusing a statement.
pub fn is_connection_error(err: &tokio_postgres::Error) -> bool {
    if err.is_closed() {
        return true;
    }
    match err.code() {
        // Class 08: connection exception; class 57: operator intervention
        // (admin shutdown, cannot connect now).
        Some(code) => code.code().starts_with("08") || code.code().starts_with("57"),
        None => true,
    }
}

/// Whether a whole transaction may simply be run again: a deadlock, a
/// serialization failure, or a unique id inserted meanwhile by another node.
pub fn is_retryable(err: &DbError) -> bool {
    let DbError::Postgres(e) = err else {
        return false;
    };
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::UNIQUE_VIOLATION
    )
}

/// Checks a connection out of the pool; failing to is `Unavailable`, with
/// every cause (a TLS handshake's says which certificate check failed).
pub async fn checkout(
    pool: &deadpool_postgres::Pool,
) -> Result<deadpool_postgres::Object, DbError> {
    pool.get().await.map_err(|e| {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            why.push_str(": ");
            why.push_str(&cause.to_string());
            source = cause.source();
        }
        DbError::Unavailable(why)
    })
}
