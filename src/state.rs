//! `AppState`: what the HTTP handlers and WebSocket sessions share, built
//! once by `startup::Application::build`. Actors get only the handles they
//! need (`ConversationHandles`, the janitor's store), never this.

use std::sync::Arc;

use crate::actors::directory::ConversationDirectory;
use crate::actors::registry::SessionRegistry;
use crate::answers::AnswerBudget;
use crate::auth::JwtKeys;
use crate::cluster::ClusterNode;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::store::Store;

pub struct AppState {
    pub settings: Settings,
    /// SQLite or PostgreSQL.
    pub store: Store,
    /// Live sessions of this node, by user.
    pub registry: Arc<SessionRegistry>,
    /// Live conversation actors of this node.
    pub conversations: ConversationDirectory,
    pub jwt: JwtKeys,
    pub limits: Arc<RateLimits>,
    /// Memory for history and offline answers not yet read, per user and
    /// for the node.
    pub answers: AnswerBudget,
    pub metrics: Arc<Metrics>,
    /// Cluster mode (`--nats-url`): the bus, presence and ordered delivery.
    pub cluster: Option<Arc<ClusterNode>>,
}
