//! Where a group commit goes: the engine's writer. Its own module, so that
//! the engines (which make it) and the batchers (which use it) do not import
//! each other.

use actix::Recipient;

use crate::actors::db_executor::{Lane, Writer};
use crate::db::{CommitMessages, DbError, Skipped};

/// Where group commits go.
#[derive(Clone)]
pub enum CommitTarget {
    /// SQLite: the writer's commit lane, ahead of every other write.
    Writer(Writer),
    /// An actor that commits: `store::postgres::PgCommitter`, or a test's
    /// stand-in.
    Actor(Recipient<CommitMessages>),
}

impl CommitTarget {
    /// Commits one batch; each result says whether that message was written.
    pub async fn commit(self, msg: CommitMessages) -> Result<Vec<Result<(), Skipped>>, DbError> {
        match self {
            CommitTarget::Writer(writer) => writer.call(Lane::Commit, msg).await,
            CommitTarget::Actor(actor) => actor.send(msg).await?,
        }
    }
}
