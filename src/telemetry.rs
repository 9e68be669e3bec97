//! Structured logs with tracing. `RUST_LOG` sets the filter (default `info`).
//!
//! What is never logged: ciphertext, tokens, secrets, query strings.

use tracing_subscriber::EnvFilter;

/// Libraries that see raw requests (headers, request lines with query
/// strings), raw data (statement parameters, bus payloads and subjects) or
/// TLS handshakes (randoms, session ids, key shares) stay at `info` whatever
/// `RUST_LOG` says: their debug and trace output could carry a token, a
/// public key, ciphertext or key material.
const CLAMPED: &[&str] = &[
    "actix_http",
    "actix_web",
    "actix_server",
    "awc",
    "h2",
    "mio",
    "tokio_postgres",
    "postgres_protocol",
    "deadpool_postgres",
    "async_nats",
    "rustls",
    "tokio_rustls",
    "tokio_postgres_rustls",
];

pub fn init() {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Only ever lowers their level: with RUST_LOG=warn they stay at warn.
    let verbose = filter
        .max_level_hint()
        .is_none_or(|max| max > tracing::level_filters::LevelFilter::INFO);
    for target in CLAMPED.iter().filter(|_| verbose) {
        if let Ok(directive) = format!("{target}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
