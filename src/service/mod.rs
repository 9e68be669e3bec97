//! What the hub does, independent of transport. HTTP handlers (`http`) and
//! WebSocket sessions (`actors::session`) parse their input into domain types,
//! call these functions, and render the result; so both transports behave
//! identically by construction.

pub mod auth;
pub mod dm;
