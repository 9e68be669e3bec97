//! Group commit on the SQLite writer's thread.
//!
//! A `SyncArbiter` actor takes one message at a time and cannot look into
//! its mailbox, so batching happens beside it: the first append into an idle
//! [`CommitLane`] puts one job in the writer's commit lane; the job takes up
//! to [`MAX_BATCH`](crate::store::commit::MAX_BATCH) messages, commits them in one transaction, sends each
//! conversation its results, and queues itself again while appends wait.

use std::sync::Arc;
use std::time::Instant;

use super::writer::{DbExecutor, Lane, Writer};
use crate::db::MessageWrite;
use crate::store::commit::{
    dispatch, observe_batch_wait, observe_in_commit, tell_committed, Append, AppendMessage,
    CommitListener, Pending,
};

impl Append for CommitLane {
    /// Queues `append`; wakes the writer if no commit job is scheduled.
    fn append(&self, append: AppendMessage) {
        if self.0.pending.push(append) {
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
    pending: Pending,
}

impl CommitLane {
    pub fn new(writer: Writer, listener: Option<Arc<dyn CommitListener>>) -> Self {
        CommitLane(Arc::new(LaneInner {
            writer,
            listener,
            pending: Pending::default(),
        }))
    }

    /// Puts one commit job in the writer's commit lane.
    fn schedule(&self) {
        let lane = self.clone();
        (self.0.writer).run(Lane::Commit, move |executor| lane.commit_next(executor));
    }

    /// On the writer thread: commits the next batch, answers its
    /// conversations, and schedules the batch after it if appends wait.
    fn commit_next(&self, executor: &mut DbExecutor) {
        let Some(batch) = self.0.pending.next_batch() else {
            return;
        };
        let metrics = self.0.writer.metrics();
        observe_batch_wait(metrics, &batch);
        let writes: Vec<MessageWrite> = batch.iter().map(|a| a.write.clone()).collect();
        let started = Instant::now();
        let result = executor.commit(&writes);
        observe_in_commit(metrics, &batch, started.elapsed().as_secs_f64());
        tell_committed(self.0.listener.as_ref(), &batch, &result);
        dispatch(batch, result);
        if self.0.pending.more() {
            // Through the lane again, not a loop here: a housekeeping write
            // queued meanwhile waits for one commit at most.
            self.schedule();
        }
    }
}
