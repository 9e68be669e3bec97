//! Group commit on the SQLite writer's thread.
//!
//! A `SyncArbiter` actor takes one message at a time and cannot look into
//! its mailbox, so batching happens beside it: the first append into an idle
//! [`CommitLane`] puts one job in the writer's commit lane; the job takes up
//! to [`MAX_BATCH`] messages, commits them in one transaction, sends each
//! conversation its results, and queues itself again while appends wait.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::writer::{DbExecutor, Lane, Writer};
use crate::db::MessageWrite;
use crate::store::commit::{
    dispatch, tell_committed, Append, AppendMessage, CommitListener, MAX_BATCH,
};

impl Append for CommitLane {
    /// Queues `append`; wakes the writer if no commit job is scheduled.
    fn append(&self, append: AppendMessage) {
        let idle = {
            let mut state = self.state();
            state.pending.push_back(append);
            !std::mem::replace(&mut state.scheduled, true)
        };
        if idle {
            self.schedule();
        }
    }
}

/// The queue of appends in front of the writer. Cheap to clone.
#[derive(Clone)]
pub struct CommitLane(Arc<LaneInner>);

struct LaneInner {
    writer: Writer,
    listener: Option<Arc<dyn CommitListener>>,
    state: Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    pending: VecDeque<AppendMessage>,
    /// A commit job is in the writer's lane or running: at most one is.
    scheduled: bool,
}

impl CommitLane {
    pub fn new(writer: Writer, listener: Option<Arc<dyn CommitListener>>) -> Self {
        CommitLane(Arc::new(LaneInner {
            writer,
            listener,
            state: Mutex::default(),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts one commit job in the writer's commit lane.
    fn schedule(&self) {
        let lane = self.clone();
        (self.0.writer).run(Lane::Commit, move |executor| lane.commit_next(executor));
    }

    /// On the writer thread: commits the next batch, answers its
    /// conversations, and schedules the batch after it if appends wait.
    fn commit_next(&self, executor: &mut DbExecutor) {
        let batch: Vec<AppendMessage> = {
            let mut state = self.state();
            let take = state.pending.len().min(MAX_BATCH);
            if take == 0 {
                state.scheduled = false;
                return;
            }
            state.pending.drain(..take).collect()
        };
        let stages = &self.0.writer.metrics().stages;
        for append in &batch {
            (stages.batch_wait).observe(append.at.elapsed().as_secs_f64());
        }
        let writes: Vec<MessageWrite> = batch.iter().map(|a| a.write.clone()).collect();
        let started = Instant::now();
        let result = executor.commit(&writes);
        let took = started.elapsed().as_secs_f64();
        for _ in &batch {
            stages.in_commit.observe(took);
        }
        tell_committed(self.0.listener.as_ref(), &batch, &result);
        dispatch(batch, result);
        let more = {
            let mut state = self.state();
            state.scheduled = !state.pending.is_empty();
            state.scheduled
        };
        if more {
            // Through the lane again, not a loop here: a housekeeping write
            // queued meanwhile waits for one commit at most.
            self.schedule();
        }
    }
}
