//! `AppState`: what the HTTP edge holds, built once by
//! `startup::Application::build`. The services own only what they use
//! (`service::auth::AuthService`, `service::dm::DmService`); the edge adds
//! what HTTP needs around them (rate limits by client address, token
//! checks, tickets, health). WebSocket sessions get their own
//! `actors::session::SessionContext`, and actors only their handles
//! (`ConversationHandles`, the janitor's store): none of them gets this.

use std::sync::Arc;

use crate::actors::registry::SessionRegistry;
use crate::actors::session::SessionContext;
use crate::auth::JwtKeys;
use crate::cluster::ClusterNode;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::service::auth::AuthService;
use crate::service::dm::DmService;
use crate::store::Store;

pub struct AppState {
    pub settings: Settings,
    pub auth: Arc<AuthService>,
    pub dm: Arc<DmService>,
    /// What every WebSocket session shares.
    pub sessions: Arc<SessionContext>,
    /// SQLite or PostgreSQL: health and WebSocket tickets.
    pub store: Store,
    /// Live sessions of this node, by user.
    pub registry: Arc<SessionRegistry>,
    pub jwt: Arc<JwtKeys>,
    pub limits: Arc<RateLimits>,
    pub metrics: Arc<Metrics>,
    /// Cluster mode (`--nats-url`): the bus, presence and ordered delivery.
    pub cluster: Option<Arc<ClusterNode>>,
}
