//! The actors of the hub, one per file. See `ARCHITECTURE.md` for the map.
//!
//! - `session::WsSession`: one per WebSocket connection.
//! - `conversation::ConversationActor`: one per active conversation; assigns
//!   sequences and fans out. `directory::ConversationDirectory` finds them.
//! - `janitor::JanitorActor`: the periodic purge.
//! - `registry::SessionRegistry`: who is online (a shared map, not an actor).

pub mod claims;
pub mod conversation;
pub mod directory;
pub mod janitor;
pub mod registry;
pub mod session;
pub mod ws_codec;
