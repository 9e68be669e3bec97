//! The integration suite of `tests/api`, run again against a 3-node cluster
//! (PostgreSQL and NATS started for each test, see `united_hub::localcluster`).
//! Each user calls a different node home, and each of a user's sessions opens
//! on the next node, so every guarantee these tests check on one node is
//! checked across nodes: sessions of one user on several nodes, senders and
//! recipients on different nodes, HTTP on one node and WebSocket on another.
//!
//! Left out, because they test one process rather than the contract: SQLite
//! files and pragmas (`durability`, `hardening`, `crash`), the session
//! registry's bookkeeping (`websocket`), `/metrics` and `/healthz` of one
//! node (`ops`), the OpenAPI document (`openapi`), the end-to-end vectors
//! (`crypto`) and the command-line tools (`cli`). `tests/cluster` covers
//! what only a cluster has: faults, SIGKILL of a node, migrations.

/// `spawn_app` starts a 3-node cluster in this binary.
pub const CLUSTER: bool = true;

#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

#[path = "../api/auth.rs"]
mod auth;
#[path = "../api/delivery.rs"]
mod delivery;
#[path = "../api/dm.rs"]
mod dm;
#[path = "../api/pages.rs"]
mod pages;
#[path = "../api/tickets.rs"]
mod tickets;
#[path = "../api/validation.rs"]
mod validation;
#[path = "../api/ws_first.rs"]
mod ws_first;
