//! The reference client: what tests, the demo and the load generator use to
//! talk to a hub, and an example for other client authors.
//!
//! - [`crypto`]: identities, key conversion and the `united-hub dm v1` scheme.
//! - [`HubClient`]: login and every HTTP call, typed.
//! - [`WsClient`]: one WebSocket; correlates `request_id`s and hands pushed
//!   events out as a stream.
//! - [`reconnect`] / [`catch_up`]: come back after being away and miss nothing.
//!
//! It runs on the actix (tokio current-thread) runtime: call it from inside
//! an actix `System`.

mod catch_up;
pub mod crypto;
mod http;
mod ws;

pub use catch_up::{catch_up, reconnect};
pub use http::{send_body, ClientError, HubClient};
pub use ws::{Events, Incoming, WsClient};
