//! The actors of the hub, one per file. See `ARCHITECTURE.md` for the map.
//!
//! - `session::WsSession`: one per WebSocket connection.
//! - `conversation::ConversationActor`: one per active conversation; assigns
//!   sequences and fans out. `directory::ConversationDirectory` finds them.
//! - `write_batcher::WriteBatcher`: group commit in front of the writer.
//! - `db_executor::DbExecutor`: the single SQLite writer, on a `SyncArbiter`.
//! - `janitor::JanitorActor`: the periodic purge.
//! - `checkpointer::Checkpointer`: WAL checkpoints off the write path (a thread).
//! - `registry::SessionRegistry`: who is online (a shared map, not an actor).

pub mod checkpointer;
pub mod claims;
pub mod conversation;
pub mod db_executor;
pub mod directory;
pub mod janitor;
pub mod registry;
pub mod session;
pub mod write_batcher;
pub mod ws_codec;
