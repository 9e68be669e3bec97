//! The hub's lasting data as rows both engines read and write: what
//! `united-hub migrate` copies from one engine to the other.
//!
//! Each [`Table`] lists its columns once, with the [`Kind`] that says how
//! each engine stores it (an id is `TEXT` in SQLite and `UUID` in
//! PostgreSQL, a flag `INTEGER` and `BOOLEAN`). Tables come in the order
//! their foreign keys need. Login challenges and WebSocket tickets live for
//! seconds and are not copied; nor is PostgreSQL's `last_seq`, which the
//! import sets from the messages it copied.

use uuid::Uuid;

/// How a column is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    OptText,
    Int,
    OptInt,
    Blob,
    OptBlob,
    Uuid,
    Bool,
}

/// One value of a portable row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
    Uuid(Uuid),
    Bool(bool),
}

pub type Row = Vec<Value>;

/// A table as both engines have it.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    /// The primary key, which pages are read in order of. Always the first
    /// column.
    pub key: &'static str,
    pub columns: &'static [(&'static str, Kind)],
}

impl Table {
    /// The column list for a `SELECT` or `INSERT`.
    pub fn column_list(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|(n, _)| *n).collect();
        names.join(", ")
    }

    /// The key of a row of this table, to read the page after it.
    pub fn key_of(row: &Row) -> Value {
        row[0].clone()
    }
}

/// Every table `migrate` copies, parents first.
pub const TABLES: &[Table] = &[
    Table {
        name: "users",
        key: "public_key",
        columns: &[
            ("public_key", Kind::Text),
            ("display_name", Kind::Text),
            ("created_at", Kind::Int),
            ("updated_at", Kind::Int),
        ],
    },
    Table {
        name: "refresh_tokens",
        key: "token_hash",
        columns: &[
            ("token_hash", Kind::Blob),
            ("user_pubkey", Kind::Text),
            ("created_at", Kind::Int),
            ("expires_at", Kind::Int),
            ("family", Kind::OptText),
            ("used", Kind::Bool),
        ],
    },
    Table {
        name: "dm_public_keys",
        key: "ed25519_pubkey",
        columns: &[
            ("ed25519_pubkey", Kind::Text),
            ("x25519_pubkey", Kind::Blob),
            ("published_at", Kind::Int),
            ("updated_at", Kind::Int),
        ],
    },
    Table {
        name: "dm_conversations",
        key: "id",
        columns: &[
            ("id", Kind::Uuid),
            ("participant_a", Kind::Text),
            ("participant_b", Kind::Text),
            ("created_at", Kind::Int),
            ("last_message_at", Kind::OptInt),
        ],
    },
    Table {
        name: "dm_messages",
        key: "id",
        columns: &[
            ("id", Kind::Uuid),
            ("conversation_id", Kind::Uuid),
            ("sender_pubkey", Kind::Text),
            ("encrypted_payload", Kind::Blob),
            ("nonce", Kind::Blob),
            ("ephemeral_pubkey", Kind::OptBlob),
            ("timestamp", Kind::Int),
            ("server_sequence", Kind::Int),
            ("sender_display_name", Kind::OptText),
            ("created_at", Kind::Int),
        ],
    },
    Table {
        name: "dm_offline_queue",
        key: "id",
        columns: &[
            ("id", Kind::Int),
            ("recipient_pubkey", Kind::Text),
            ("dm_message_id", Kind::Uuid),
            ("queued_at", Kind::Int),
            ("delivered", Kind::Bool),
        ],
    },
];

/// The table called `name`.
pub fn table(name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.name == name)
}
