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
    awc::Connector::new()
        .connector(tcp)
        .rustls_0_23(tls_config())
}

/// CAs trusted besides the system's ([`trust_ca_pem`]).
static EXTRA_ROOTS: std::sync::RwLock<Vec<rustls_pki_types::CertificateDer<'static>>> =
    std::sync::RwLock::new(Vec::new());

/// Trusts the CA certificates in `pem` too, for every client made after
/// this call (a hub with a private CA, a test's). `chat`'s `--ca-file`.
pub fn trust_ca_pem(pem: &[u8]) -> Result<(), ClientError> {
    use rustls_pki_types::pem::PemObject as _;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Transport(format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(ClientError::Transport(
            "no certificate in the CA file".into(),
        ));
    }
    EXTRA_ROOTS
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .extend(certs);
    Ok(())
}

/// TLS for `https://` and `wss://`: the system's roots and the CAs given to
/// [`trust_ca_pem`], HTTP/1.1. Built once, and again only after a CA was
/// added (the load generator makes thousands of clients).
fn tls_config() -> std::sync::Arc<rustls::ClientConfig> {
    type Cached = Option<(usize, std::sync::Arc<rustls::ClientConfig>)>;
    static CACHED: std::sync::Mutex<Cached> = std::sync::Mutex::new(None);
    let extra = EXTRA_ROOTS.read().unwrap_or_else(|e| e.into_inner());
    let mut cached = CACHED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((n, config)) = cached.as_ref() {
        if *n == extra.len() {
            return config.clone();
        }
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    roots.add_parsable_certificates(extra.iter().cloned());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = std::sync::Arc::new(config);
    *cached = Some((extra.len(), config.clone()));
    config
}
