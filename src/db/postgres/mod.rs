//! The PostgreSQL engine (cluster mode): schema, migrations and every
//! statement, on a `deadpool_postgres` client. `store::postgres` runs these
//! on its own runtime.
//!
//! The schema is SQLite's (same tables, names and Unix-ms times) with one
//! addition: `dm_conversations.last_seq`, the conversation's last committed
//! sequence. A group commit advances it with a conditional update
//! (`WHERE last_seq = first - 1`), so a message is written only if its
//! sequence follows the last committed one, whichever node assigned it.

mod conversations;
mod identity;
mod messages;
mod offline;
pub mod portable;
mod rows;
mod schema;

pub use conversations::*;
pub use identity::*;
pub use messages::*;
pub use offline::*;
pub use rows::{checkout, is_connection_error, is_retryable, is_unique_violation};
pub use schema::{migrate, shared_secret, LATEST};
