//! Group commits on PostgreSQL, run on the store's runtime.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use deadpool_postgres::Pool;

use crate::db::postgres::{self as sql, checkout};
use crate::db::{CommitMessages, DbError, Skipped};
use crate::metrics::Metrics;
use crate::model::now_ms;

/// How often a group commit is tried before its messages fail: the first
/// try assumes its ids are new ([`sql::Ids::AssumeNew`]); the others check
/// them, and three of them outlast a race lost to another node (a deadlock,
/// an id inserted meanwhile).
const COMMIT_TRIES: usize = 4;

/// Group commits on PostgreSQL: the `WriteBatcher`'s target in cluster
/// mode. It keeps no state; the batcher keeps one batch in flight per node.
pub struct PgCommitter {
    pub(super) handle: tokio::runtime::Handle,
    pub(super) pool: Pool,
    pub(super) metrics: Arc<Metrics>,
}

impl Actor for PgCommitter {
    type Context = Context<Self>;
}

impl Handler<CommitMessages> for PgCommitter {
    type Result = ResponseFuture<Result<Vec<Result<(), Skipped>>, DbError>>;

    fn handle(&mut self, msg: CommitMessages, _: &mut Context<Self>) -> Self::Result {
        let pool = self.pool.clone();
        let metrics = self.metrics.clone();
        let task = self.handle.spawn(async move {
            let started = Instant::now();
            let mut tries = 0;
            let result = loop {
                tries += 1;
                // A retry looks the ids up: a stored one (a client's resend)
                // is what makes the first try fail most often.
                let ids = if tries == 1 {
                    sql::Ids::AssumeNew
                } else {
                    sql::Ids::Check
                };
                let attempt = async {
                    let mut client = checkout(&pool).await?;
                    sql::commit_messages(&mut client, &msg.0, now_ms(), ids).await
                }
                .await;
                match attempt {
                    Err(e) if tries < COMMIT_TRIES && sql::is_retryable(&e) => {
                        tracing::debug!(error = %e, tries, "group commit lost a race; running it again");
                    }
                    other => break other,
                }
            };
            metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            metrics.write_batch_size.observe(msg.0.len() as f64);
            result
        });
        Box::pin(async move {
            task.await
                .map_err(|e| DbError::Other(format!("commit task failed: {e}")))?
        })
    }
}
