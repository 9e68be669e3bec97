//! `JanitorActor`: every `--janitor-interval` it deletes offline-queue entries
//! older than `--offline-ttl` (30 days by default), expired refresh tokens and
//! expired login challenges, and logs and counts what it purged. Messages
//! themselves stay in history.

use std::sync::Arc;

use actix::prelude::*;

use super::db_executor::PurgeExpired;
use crate::service::dm::offline_cutoff;
use crate::state::AppState;

pub struct JanitorActor {
    state: Arc<AppState>,
    /// A purge is running; the next tick skips rather than piles up.
    running: bool,
}

impl JanitorActor {
    pub fn new(state: Arc<AppState>) -> Self {
        JanitorActor {
            state,
            running: false,
        }
    }

    fn purge(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            return;
        }
        self.running = true;
        let challenges = self.state.challenges.purge_expired();
        self.state.limits.retain_recent();
        self.state
            .writer
            .send(PurgeExpired {
                offline_cutoff: offline_cutoff(&self.state),
            })
            .into_actor(self)
            .map(move |result, act, _| {
                act.running = false;
                match result {
                    Ok(Ok(purged)) => {
                        act.state
                            .metrics
                            .offline_purged
                            .inc_by(purged.offline_entries);
                        tracing::info!(
                            offline_entries = purged.offline_entries,
                            refresh_tokens = purged.refresh_tokens,
                            challenges,
                            "janitor purged expired entries"
                        );
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "janitor purge failed"),
                    Err(e) => tracing::error!(error = %e, "janitor purge failed"),
                }
            })
            .spawn(ctx);
    }
}

impl Actor for JanitorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let interval = self.state.settings.janitor_interval();
        tracing::info!(interval_secs = interval.as_secs(), "janitor started");
        ctx.run_interval(interval, |act, ctx| act.purge(ctx));
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
