//! united-hub: a realtime hub that relays end-to-end-encrypted direct
//! messages. Clients are Ed25519 identities; the hub orders, stores and
//! pushes ciphertext it can never read.
//!
//! # Layout
//! - [`startup`]: `Application`, which builds everything from [`config::Settings`].
//! - [`http`]: the HTTP routes and the `/ws` upgrade.
//! - [`actors`]: sessions, conversations, the group-commit writer, the janitor.
//! - [`service`]: what the hub does, shared by HTTP and WebSocket.
//! - [`store`]: storage behind one interface (SQLite or PostgreSQL); [`db`]:
//!   the SQL of both engines.
//! - [`cluster`]: cluster mode (PostgreSQL + NATS): fan-out between nodes,
//!   presence, ordered delivery and its repair.
//! - [`auth`]: challenges, JWTs and refresh tokens.
//! - [`model`], [`json`], [`proto`]: domain, JSON and protobuf types.
//!
//! `ARCHITECTURE.md` has the map; `docs/protocol.md` the wire protocol.

pub mod actors;
pub mod answers;
pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod json;
pub mod load;
pub mod localcluster;
pub mod metrics;
pub mod model;
pub mod net;
pub mod proto;
pub mod ratelimit;
pub mod runtime;
pub mod service;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tickets;
pub mod tls;
pub mod tools;

pub use config::Settings;
pub use startup::{AppHandle, Application};
