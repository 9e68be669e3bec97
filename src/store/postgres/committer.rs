//! Group commits on PostgreSQL, run on the store's runtime.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use deadpool_postgres::Pool;

use crate::db::postgres::{self as sql, checkout};
use crate::db::{CommitMessages, DbError, MessageWrite, Skipped};
use crate::metrics::Metrics;
use crate::model::now_ms;
use crate::store::commit::{CommitBatch, CommitOutcome};
use futures_util::future::BoxFuture;

/// How often a group commit is tried before its messages fail: the first
/// try assumes its ids are new ([`sql::Ids::AssumeNew`]); the others check
/// them, and three of them outlast a race lost to another node (a deadlock,
/// an id inserted meanwhile).
const COMMIT_TRIES: usize = 4;

/// How long group commits look their ids up after a try that assumed them
/// new failed on a stored one ([`IdPolicy`]).
const CHECK_IDS_FOR: Duration = Duration::from_secs(10);

/// Group commits on PostgreSQL of whole batches
/// ([`crate::store::Store::commit`]); conversations' appends go through a
/// `TaskLane` with [`PgBatches`].
pub struct PgCommitter {
    pub(super) handle: tokio::runtime::Handle,
    pub(super) pool: Pool,
    pub(super) metrics: Arc<Metrics>,
    pub(super) ids: Arc<IdPolicy>,
}

/// Whether a group commit's first try looks its ids up.
///
/// It does not, as a rule ([`sql::Ids::AssumeNew`]): a stored id then fails
/// the whole try, and the batch runs again with the lookup. A client that
/// resends a stored id again and again would make every batch of its node
/// fail once, each failure a whole batch's work; so after a failure, first
/// tries look their ids up for [`CHECK_IDS_FOR`]: such a client costs the
/// node the lookup (what every commit did before issue 26), no more.
#[derive(Default)]
pub struct IdPolicy {
    check_until: Mutex<Option<Instant>>,
}

impl IdPolicy {
    fn first_try(&self, now: Instant) -> sql::Ids {
        let until = *self.check_until.lock().unwrap_or_else(|e| e.into_inner());
        if until.is_some_and(|u| now < u) {
            sql::Ids::Check
        } else {
            sql::Ids::AssumeNew
        }
    }

    fn stored_id_met(&self, now: Instant) {
        *self.check_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(now + CHECK_IDS_FOR);
    }
}

impl Actor for PgCommitter {
    type Context = Context<Self>;
}

impl Handler<CommitMessages> for PgCommitter {
    type Result = ResponseFuture<Result<Vec<Result<(), Skipped>>, DbError>>;

    fn handle(&mut self, msg: CommitMessages, _: &mut Context<Self>) -> Self::Result {
        let pool = self.pool.clone();
        let metrics = self.metrics.clone();
        let policy = self.ids.clone();
        let task = self
            .handle
            .spawn(async move { commit(&pool, &metrics, &policy, &msg.0).await });
        Box::pin(async move {
            task.await
                .map_err(|e| DbError::Other(format!("commit task failed: {e}")))?
        })
    }
}

/// Commits `writes` in one transaction, trying again what lost a race.
async fn commit(
    pool: &Pool,
    metrics: &Metrics,
    policy: &IdPolicy,
    writes: &[MessageWrite],
) -> Result<Vec<Result<(), Skipped>>, DbError> {
    let started = Instant::now();
    let mut tries = 0;
    let result = loop {
        tries += 1;
        // A retry looks the ids up: a stored one (a client's resend)
        // is what makes the first try fail most often.
        let ids = if tries == 1 {
            policy.first_try(Instant::now())
        } else {
            sql::Ids::Check
        };
        let attempt = async {
            let mut client = checkout(pool).await?;
            sql::commit_messages(&mut client, writes, now_ms(), ids).await
        }
        .await;
        if ids == sql::Ids::AssumeNew && attempt.as_ref().is_err_and(sql::is_unique_violation) {
            policy.stored_id_met(Instant::now());
        }
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
    metrics.write_batch_size.observe(writes.len() as f64);
    result
}

/// What a [`TaskLane`] of this store commits with.
pub(super) struct PgBatches {
    pub(super) pool: Pool,
    pub(super) metrics: Arc<Metrics>,
    pub(super) ids: Arc<IdPolicy>,
}

impl CommitBatch for PgBatches {
    fn commit(&self, writes: Vec<MessageWrite>) -> BoxFuture<'static, CommitOutcome> {
        let (pool, metrics, ids) = (self.pool.clone(), self.metrics.clone(), self.ids.clone());
        Box::pin(async move { commit(&pool, &metrics, &ids, &writes).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_stored_id_first_tries_check_ids_for_a_while() {
        let policy = IdPolicy::default();
        let t0 = Instant::now();
        assert_eq!(policy.first_try(t0), sql::Ids::AssumeNew);
        policy.stored_id_met(t0);
        assert_eq!(policy.first_try(t0 + CHECK_IDS_FOR / 2), sql::Ids::Check);
        assert_eq!(policy.first_try(t0 + CHECK_IDS_FOR), sql::Ids::AssumeNew);
        // A client that keeps resending keeps the check on.
        policy.stored_id_met(t0 + CHECK_IDS_FOR);
        assert_eq!(
            policy.first_try(t0 + CHECK_IDS_FOR * 3 / 2),
            sql::Ids::Check
        );
    }
}
