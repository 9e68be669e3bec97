//! `AppState`: what every handler and actor shares, built once by
//! `startup::Application::build`.

use std::sync::Arc;

use actix::Addr;
use rusqlite::Connection;

use crate::actors::checkpointer::Checkpointer;
use crate::actors::db_executor::DbExecutor;
use crate::actors::directory::{ConversationDirectory, IdClaims};
use crate::actors::registry::SessionRegistry;
use crate::actors::write_batcher::WriteBatcher;
use crate::auth::{ChallengeStore, JwtKeys};
use crate::config::Settings;
use crate::db::{DbError, Pool};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;

pub struct AppState {
    pub settings: Settings,
    /// Read connections.
    pub pool: Pool,
    /// The one writer.
    pub writer: Addr<DbExecutor>,
    /// Group commit in front of the writer, for messages.
    pub batcher: Addr<WriteBatcher>,
    /// Live sessions by user.
    pub registry: SessionRegistry,
    /// Live conversation actors by conversation.
    pub conversations: ConversationDirectory,
    /// Client message ids in flight.
    pub claims: IdClaims,
    pub jwt: JwtKeys,
    pub limits: RateLimits,
    pub challenges: ChallengeStore,
    pub metrics: Arc<Metrics>,
    /// Stopped (taken) at shutdown.
    pub checkpointer: std::sync::Mutex<Option<Checkpointer>>,
}

impl AppState {
    /// Runs a read on a pooled connection, off the async threads.
    pub async fn read<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool.clone();
        let result = actix_web::web::block(move || {
            let conn = pool.get()?;
            f(&conn)
        })
        .await?;
        Ok(result?)
    }
}
