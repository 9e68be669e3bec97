//! The reference client: what tests, the demo and the load generator use to
//! talk to a hub, and an example for other client authors.
//!
//! - [`crypto`]: identities, key conversion and the `united-hub dm v2` scheme.
//! - [`check_peer_key`] / [`read_json`]: the key check before sealing, and
//!   what to show of a message (verified, unauthenticated v1, or nothing).
//! - [`HubClient`]: login and every HTTP call, typed.
//! - [`WsClient`]: one WebSocket; correlates `request_id`s and hands pushed
//!   events out as a stream.
//! - [`connect_live`] / [`reconnect`] / [`catch_up`]: come back after being
//!   away and miss nothing.
//!
//! It runs on the actix (tokio current-thread) runtime: call it from inside
//! an actix `System`.

mod catch_up;
pub mod crypto;
mod http;
mod verify;
mod ws;

pub use catch_up::{catch_up, connect_live, reconnect};
pub use http::{send_body, ClientError, HubClient};
pub use verify::{check_peer_key, read_json, read_json_in, read_proto, Reading};
pub use ws::{Events, Incoming, WsClient};

use actix_service::{Service, ServiceExt};
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, Connector, Resolver};
use actix_web::rt::net::TcpStream;
use awc::http::Uri;

/// The HTTP and WebSocket connector of every client here: awc's plain TCP
/// connector, with `TCP_NODELAY` set on each new connection.
///
/// awc leaves Nagle's algorithm on. A small frame written while an earlier
/// one (a pong, say) is still unacknowledged then waits for the hub's
/// delayed ACK, up to 40 ms. Browsers set `TCP_NODELAY` on WebSockets; so do
/// these clients, the load generator among them.
pub fn connector() -> awc::Connector<
    impl Service<ConnectInfo<Uri>, Response = Connection<Uri, TcpStream>, Error = ConnectError> + Clone,
> {
    let tcp = Connector::new(Resolver::default()).service().map(
        |connection: Connection<Uri, TcpStream>| {
            // Only a latency hint: a socket that refuses it still works.
            let _ = connection.io_ref().set_nodelay(true);
            connection
        },
    );
    awc::Connector::new().connector(tcp)
}
