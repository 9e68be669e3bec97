//! `JanitorActor`: every `--janitor-interval` it deletes offline-queue entries
//! older than `--offline-ttl` (30 days by default), expired refresh tokens and
//! expired login challenges, and logs and counts what it purged. Messages
//! themselves stay in history. In cluster mode every node runs a janitor, and
//! the store lets one purge through per interval for the whole cluster.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::metrics::Metrics;
use crate::model::now_ms;
use crate::ratelimit::RateLimits;
use crate::store::Store;

pub struct JanitorActor {
    store: Store,
    metrics: Arc<Metrics>,
    limits: Arc<RateLimits>,
    interval: Duration,
    offline_ttl: Duration,
    /// A purge is running; the next tick skips rather than piles up.
    running: bool,
}

impl JanitorActor {
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        limits: Arc<RateLimits>,
        interval: Duration,
        offline_ttl: Duration,
    ) -> Self {
        JanitorActor {
            store,
            metrics,
            limits,
            interval,
            offline_ttl,
            running: false,
        }
    }

    fn purge(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            return;
        }
        self.running = true;
        self.limits.retain_recent();
        let store = self.store.clone();
        let cutoff = now_ms().saturating_sub(self.offline_ttl.as_millis() as u64);
        let interval = self.interval;
        async move {
            let challenges = store.purge_challenges().await;
            let purged = store.purge_expired(cutoff, interval).await;
            let oldest = store.oldest_offline().await;
            (challenges, purged, oldest)
        }
        .into_actor(self)
        .map(move |(challenges, purged, oldest), act, _| {
            act.running = false;
            match oldest {
                Ok(oldest) => {
                    let age = oldest.map_or(0, |at| now_ms().saturating_sub(at) / 1000);
                    act.metrics.offline_oldest_age_seconds.set(age as i64);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "janitor could not read the offline queue's age")
                }
            }
            let challenges = challenges.unwrap_or_else(|e| {
                tracing::error!(error = %e, "janitor could not purge challenges");
                0
            });
            match purged {
                Ok(Some(purged)) => {
                    act.metrics.janitor_runs.inc();
                    act.metrics.offline_purged.inc_by(purged.offline_entries);
                    tracing::info!(
                        offline_entries = purged.offline_entries,
                        refresh_tokens = purged.refresh_tokens,
                        challenges,
                        "janitor purged expired entries"
                    );
                }
                Ok(None) => {
                    tracing::debug!("another node ran this interval's purge");
                }
                Err(e) => tracing::error!(error = %e, "janitor purge failed"),
            }
        })
        .spawn(ctx);
    }
}

impl Actor for JanitorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::info!(interval_secs = self.interval.as_secs(), "janitor started");
        ctx.run_interval(self.interval, |act, ctx| act.purge(ctx));
    }
}

/// Stops the janitor (at shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopJanitor;

impl Handler<StopJanitor> for JanitorActor {
    type Result = ();
    fn handle(&mut self, _: StopJanitor, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
