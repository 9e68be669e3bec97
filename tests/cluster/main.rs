//! Cluster mode: several hubs on one PostgreSQL, with NATS between them.
//!
//! Every test starts its own PostgreSQL (`initdb` into a temporary directory,
//! as a non-root user) and its own `nats-server`, each on a free port, as
//! child processes (`united_hub::localcluster`), and stops them at the end.
//! Nothing is skipped: without the server binaries these tests fail and say
//! what to install.

/// The shared helpers start single nodes here; the cluster fixture is in
/// `support`.
pub const CLUSTER: bool = false;

#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

mod crash;
mod fanout;
mod faults;
mod migrate;
mod rolling;
mod secrets;
mod store;
mod support;
mod trust;
