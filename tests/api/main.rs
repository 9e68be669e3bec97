//! Integration tests: the real hub on port 0 with a temporary data directory,
//! driven over HTTP and binary WebSocket frames with real Ed25519 signatures
//! and real X25519 + XChaCha20-Poly1305 encryption.

/// This binary runs the suite on one node (`tests/api_cluster` runs most of
/// it again on a 3-node cluster).
pub const CLUSTER: bool = false;

mod abuse;
mod auth;
mod backup;
mod cli;
mod crash;
mod crypto;
mod delivery;
mod dm;
mod durability;
mod e2e;
mod hardening;
mod helpers;
mod internet;
mod openapi;
mod ops;
mod pages;
mod proxy;
mod tickets;
mod tls;
mod validation;
mod websocket;
mod writer;
mod ws_first;
