//! Group commit: how a conversation's assigned messages reach the
//! database, in batches.
//!
//! Conversations hand each assigned message to the [`Appender`] the store
//! gives them ([`crate::store::Store::appender`]); what stands behind it is
//! the engine's business:
//! - SQLite: a queue that the writer thread drains itself
//!   (`store::sqlite::commit_lane`). No thread sits between the
//!   conversations and the writer.
//! - PostgreSQL: a [`TaskLane`], the same queue drained by one task at a
//!   time on the store's runtime, which awaits each transaction.
//!
//! Both keep one commit in flight. Appends that arrive while it commits
//! wait in a FIFO queue and go out together as the next batch: under light
//! load a batch is one message (no added latency), under heavy load one
//! fsync covers up to [`MAX_BATCH`] messages. Both tell a
//! [`CommitListener`] (the cluster, which publishes to the other nodes)
//! what each batch committed.
//!
//! Order: appends are queued in arrival order, batches commit one after the
//! other, and each conversation's results come back in the order its
//! messages were appended.
//!
//! Why it is this long: nearly half is the lane's tests.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use std::panic::AssertUnwindSafe;
use uuid::Uuid;

use crate::db::{DbError, MessageWrite, Skipped};
use crate::metrics::Metrics;

/// Most messages in one transaction. Measured here: 128 rows per transaction
/// reach ~70,000 rows/s; larger batches add latency for little gain.
pub const MAX_BATCH: usize = 512;

/// Hears what each group commit wrote: the cluster node, which publishes
/// it to the other nodes. Called once per batch, on the committing thread,
/// before any conversation hears its results.
pub trait CommitListener: Send + Sync {
    fn committed(&self, appends: &[&AppendMessage]);
}

/// Tells `listener` which of `batch`'s writes `result` says committed.
pub(crate) fn tell_committed(
    listener: Option<&Arc<dyn CommitListener>>,
    batch: &[AppendMessage],
    result: &Result<Vec<Result<(), Skipped>>, DbError>,
) {
    if let (Some(listener), Ok(results)) = (listener, result) {
        let committed: Vec<&AppendMessage> = batch
            .iter()
            .zip(results)
            .filter(|(_, r)| r.is_ok())
            .map(|(a, _)| a)
            .collect();
        listener.committed(&committed);
    }
}

/// Where a conversation's assigned messages go to be committed: a
/// [`TaskLane`], or the SQLite writer's own queue. Cheap to clone.
#[derive(Clone)]
pub struct Appender(Arc<dyn Append>);

/// What an engine puts behind an [`Appender`].
pub(crate) trait Append: Send + Sync {
    fn append(&self, append: AppendMessage);
}

impl Appender {
    pub(crate) fn new(to: impl Append + 'static) -> Self {
        Appender(Arc::new(to))
    }

    /// Queues `append` for the next group commit.
    pub fn append(&self, append: AppendMessage) {
        self.0.append(append);
    }
}

/// Why a message was not committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitFailure {
    /// The transaction failed; nothing of its batch was written.
    Batch(BatchError),
    /// An earlier message of the conversation failed; this one was not written.
    Skipped(Skipped),
}

/// Why a whole batch failed, as the senders will hear it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchError {
    pub reason: String,
    /// The database could not be reached: the sender may retry (503).
    pub unavailable: bool,
}

impl BatchError {
    pub fn to_hub_error(&self) -> crate::error::HubError {
        if self.unavailable {
            crate::error::HubError::Unavailable { retry_after: 1 }
        } else {
            crate::error::HubError::internal(anyhow::anyhow!(
                "message not committed: {}",
                self.reason
            ))
        }
    }
}

/// One message's outcome: its sequence and whether it was committed.
pub type CommitResult = (u64, Result<(), CommitFailure>);

/// The outcome of some of one conversation's messages, in sequence order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MessagesCommitted {
    pub results: Vec<CommitResult>,
    /// When the lane got the commit's result (for
    /// `united_send_stage_seconds`).
    pub committed_at: std::time::Instant,
}

/// Asks for a message to be committed with the next batch.
pub struct AppendMessage {
    pub write: MessageWrite,
    /// The message's `DmMessageEvent` envelope, encoded once by its
    /// conversation: what its sessions are pushed, and what the cluster's
    /// [`CommitListener`] publishes to the other nodes (it was encoded a
    /// second time there, issue 26). Opaque bytes to the store.
    pub event: bytes::Bytes,
    /// Where the outcome goes (the conversation's actor).
    pub reply: Recipient<MessagesCommitted>,
    /// When it was appended (for `united_send_stage_seconds`).
    pub at: std::time::Instant,
}

/// Commits one batch in one transaction: what a [`TaskLane`] drives.
pub(crate) trait CommitBatch: Send + Sync + 'static {
    fn commit(&self, writes: Vec<MessageWrite>) -> BoxFuture<'static, CommitOutcome>;
}

/// What a group commit returns: per message, written or why not.
pub(crate) type CommitOutcome = Result<Vec<Result<(), Skipped>>, DbError>;

/// Group commit on an async runtime: appends wait in a queue, and one task
/// at a time takes up to [`MAX_BATCH`] of them, commits them, tells the
/// [`CommitListener`] and answers the conversations, and goes on while
/// appends wait. An append is a push under a lock; no actor or thread sits
/// between the conversations and the transaction (issue 26: an actor in
/// between cost each message of a cluster node 1.5 µs of CPU).
#[derive(Clone)]
pub struct TaskLane(Arc<TaskLaneInner>);

struct TaskLaneInner {
    runtime: tokio::runtime::Handle,
    target: Box<dyn CommitBatch>,
    listener: Option<Arc<dyn CommitListener>>,
    /// Where `united_send_stage_seconds{stage="batch_wait"|"in_commit"}` go.
    metrics: Option<Arc<Metrics>>,
    pending: Pending,
}

/// The appends waiting for a lane's next batch, and whether its commit job
/// (SQLite's writer job, a [`TaskLane`]'s task) is scheduled: at most one
/// is, so batches commit one after the other, in append order.
#[derive(Default)]
pub(crate) struct Pending(Mutex<PendingState>);

#[derive(Default)]
struct PendingState {
    queue: VecDeque<AppendMessage>,
    scheduled: bool,
}

impl Pending {
    fn state(&self) -> std::sync::MutexGuard<'_, PendingState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `append`. True when no job was scheduled: the caller
    /// schedules one, which is then the only one.
    pub(crate) fn push(&self, append: AppendMessage) -> bool {
        let mut state = self.state();
        state.queue.push_back(append);
        !std::mem::replace(&mut state.scheduled, true)
    }

    /// For the scheduled job: the next batch, up to [`MAX_BATCH`] appends;
    /// `None` when nothing waits, which ends the job.
    pub(crate) fn next_batch(&self) -> Option<Vec<AppendMessage>> {
        let mut state = self.state();
        let take = state.queue.len().min(MAX_BATCH);
        if take == 0 {
            state.scheduled = false;
            return None;
        }
        Some(state.queue.drain(..take).collect())
    }

    /// For the scheduled job, after a batch: whether appends wait (the job
    /// goes on); if none do, the job ends here.
    pub(crate) fn more(&self) -> bool {
        let mut state = self.state();
        state.scheduled = !state.queue.is_empty();
        state.scheduled
    }
}

/// `united_send_stage_seconds{stage="batch_wait"}` for each append of
/// `batch`, as it leaves the queue.
pub(crate) fn observe_batch_wait(metrics: &Metrics, batch: &[AppendMessage]) {
    for append in batch {
        (metrics.stages.batch_wait).observe(append.at.elapsed().as_secs_f64());
    }
}

/// `united_send_stage_seconds{stage="in_commit"}` for each append of
/// `batch`: how long its transaction took.
pub(crate) fn observe_in_commit(metrics: &Metrics, batch: &[AppendMessage], took: f64) {
    for _ in batch {
        metrics.stages.in_commit.observe(took);
    }
}

impl Append for TaskLane {
    fn append(&self, append: AppendMessage) {
        if self.0.pending.push(append) {
            let lane = self.clone();
            self.0.runtime.spawn(lane.run());
        }
    }
}

impl TaskLane {
    /// A lane that commits with `target`, on `runtime`.
    pub(crate) fn new(
        runtime: tokio::runtime::Handle,
        target: impl CommitBatch,
        listener: Option<Arc<dyn CommitListener>>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        TaskLane(Arc::new(TaskLaneInner {
            runtime,
            target: Box::new(target),
            listener,
            metrics,
            pending: Pending::default(),
        }))
    }

    /// Commits batches while appends wait: one at a time, in append order.
    async fn run(self) {
        while let Some(batch) = self.0.pending.next_batch() {
            if let Some(metrics) = &self.0.metrics {
                observe_batch_wait(metrics, &batch);
            }
            let writes = batch.iter().map(|a| a.write.clone()).collect();
            let started = std::time::Instant::now();
            // A panic in the engine fails this batch, not the lane: the
            // task must live on to answer every conversation.
            let result = AssertUnwindSafe(self.0.target.commit(writes))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(DbError::Other("the group commit panicked".into())));
            if let Some(metrics) = &self.0.metrics {
                observe_in_commit(metrics, &batch, started.elapsed().as_secs_f64());
            }
            tell_committed(self.0.listener.as_ref(), &batch, &result);
            dispatch(batch, result);
        }
    }
}

/// Sends each conversation the outcome of its messages, in batch order.
pub(crate) fn dispatch(
    batch: Vec<AppendMessage>,
    result: Result<Vec<Result<(), Skipped>>, DbError>,
) {
    let committed_at = std::time::Instant::now();
    if let Err(err) = &result {
        tracing::error!(
            error = format!("{err:#}"),
            messages = batch.len(),
            "group commit failed"
        );
    }
    // Group by conversation, keeping first-appearance order.
    let mut index_of: HashMap<Uuid, usize> = HashMap::new();
    let mut groups: Vec<(Recipient<MessagesCommitted>, Vec<CommitResult>)> = Vec::new();
    for (index, append) in batch.into_iter().enumerate() {
        let outcome = match &result {
            Ok(results) => match results.get(index) {
                Some(Ok(())) => Ok(()),
                Some(Err(skipped)) => Err(CommitFailure::Skipped(*skipped)),
                None => Err(CommitFailure::Batch(BatchError {
                    reason: "missing result".into(),
                    unavailable: false,
                })),
            },
            Err(err) => Err(CommitFailure::Batch(BatchError {
                reason: format!("{err:#}"),
                unavailable: err.is_unavailable(),
            })),
        };
        let message = &append.write.message;
        let seq = message.server_sequence;
        match index_of.get(&message.conversation_id) {
            Some(&i) => groups[i].1.push((seq, outcome)),
            None => {
                index_of.insert(message.conversation_id, groups.len());
                groups.push((append.reply, vec![(seq, outcome)]));
            }
        }
    }
    for (reply, results) in groups {
        // The reply target is the conversation's actor, which stays alive
        // while it has messages in flight.
        reply.do_send(MessagesCommitted {
            results,
            committed_at,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::model::{Pubkey, StoredMessage};

    /// Every batch the fake database saw: (conversation, sequence) pairs.
    type Batches = Arc<Mutex<Vec<Vec<(Uuid, u64)>>>>;

    /// Stands in for the engine's transaction: records each batch,
    /// optionally fails it, and takes `delay` to commit.
    struct FakeDb {
        batches: Batches,
        /// The index of the batch that fails, if any.
        fail_batch: Option<usize>,
        /// The index of the batch whose commit panics, if any.
        panic_batch: Option<usize>,
        delay: Duration,
    }

    impl CommitBatch for FakeDb {
        fn commit(&self, writes: Vec<MessageWrite>) -> BoxFuture<'static, CommitOutcome> {
            let mut batches = self.batches.lock().unwrap();
            let fail = self.fail_batch == Some(batches.len());
            let panic = self.panic_batch == Some(batches.len());
            batches.push(
                writes
                    .iter()
                    .map(|w| (w.message.conversation_id, w.message.server_sequence))
                    .collect(),
            );
            let n = writes.len();
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                assert!(!panic, "the engine panics in this commit");
                if fail {
                    Err(DbError::Sqlite(rusqlite::Error::InvalidQuery))
                } else {
                    Ok(vec![Ok(()); n])
                }
            })
        }
    }

    /// Stands in for a `ConversationActor`: collects its outcomes.
    struct Collector(Arc<Mutex<Vec<CommitResult>>>);

    impl Actor for Collector {
        type Context = Context<Self>;
    }

    impl Handler<MessagesCommitted> for Collector {
        type Result = ();
        fn handle(&mut self, msg: MessagesCommitted, _: &mut Context<Self>) {
            self.0.lock().unwrap().extend(msg.results);
        }
    }

    fn message(conversation: Uuid, seq: u64) -> Arc<StoredMessage> {
        Arc::new(StoredMessage {
            id: Uuid::new_v4(),
            conversation_id: conversation,
            sender: Pubkey::from_db("ab".repeat(32)),
            encrypted_payload: Bytes::from_static(b"x"),
            nonce: [0; 24],
            ephemeral_pubkey: None,
            timestamp: 1,
            server_sequence: seq,
            sender_display_name: String::new(),
            created_at: 1,
        })
    }

    struct Rig {
        lane: TaskLane,
        batches: Batches,
        a: (
            Uuid,
            Arc<Mutex<Vec<CommitResult>>>,
            Recipient<MessagesCommitted>,
        ),
        b: (
            Uuid,
            Arc<Mutex<Vec<CommitResult>>>,
            Recipient<MessagesCommitted>,
        ),
    }

    fn rig(fail_batch: Option<usize>, delay: Duration) -> Rig {
        rig_panicking(fail_batch, None, delay)
    }

    fn rig_panicking(
        fail_batch: Option<usize>,
        panic_batch: Option<usize>,
        delay: Duration,
    ) -> Rig {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let db = FakeDb {
            batches: batches.clone(),
            fail_batch,
            panic_batch,
            delay,
        };
        let lane = TaskLane::new(tokio::runtime::Handle::current(), db, None, None);
        let collector = || {
            let got = Arc::new(Mutex::new(Vec::new()));
            let addr = Collector(got.clone()).start();
            (Uuid::new_v4(), got, addr.recipient())
        };
        Rig {
            lane,
            batches,
            a: collector(),
            b: collector(),
        }
    }

    fn append(
        rig: &Rig,
        which: &(
            Uuid,
            Arc<Mutex<Vec<CommitResult>>>,
            Recipient<MessagesCommitted>,
        ),
        seq: u64,
    ) {
        rig.lane.append(AppendMessage {
            write: MessageWrite {
                message: message(which.0, seq),
                recipient: Pubkey::from_db("cd".repeat(32)),
                offline_queued: false,
            },
            event: bytes::Bytes::new(),
            reply: which.2.clone(),
            at: std::time::Instant::now(),
        });
    }

    async fn settle(got: &Arc<Mutex<Vec<CommitResult>>>, n: usize) -> Vec<CommitResult> {
        for _ in 0..500 {
            if got.lock().unwrap().len() >= n {
                break;
            }
            actix_web::rt::time::sleep(Duration::from_millis(2)).await;
        }
        got.lock().unwrap().clone()
    }

    #[actix_web::test]
    async fn order_within_a_conversation_is_kept_and_appends_group_into_batches() {
        let rig = rig(None, Duration::from_millis(20));
        for seq in 1..=20 {
            append(&rig, &rig.a, seq);
            if seq == 1 {
                // The test's runtime has one thread: let the lane's task
                // start the first commit before the rest arrive.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if seq <= 10 {
                append(&rig, &rig.b, seq);
            }
        }
        let a = settle(&rig.a.1, 20).await;
        let b = settle(&rig.b.1, 10).await;
        assert_eq!(
            a.iter().map(|r| r.0).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<_>>()
        );
        assert_eq!(
            b.iter().map(|r| r.0).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert!(a.iter().chain(&b).all(|r| r.1.is_ok()));

        let batches = rig.batches.lock().unwrap().clone();
        // The first append commits alone; the rest waited and went together.
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 29]
        );
        // Inside a batch, each conversation's messages stay in append order.
        for conversation in [rig.a.0, rig.b.0] {
            let seqs: Vec<u64> = batches
                .iter()
                .flatten()
                .filter(|(c, _)| *c == conversation)
                .map(|(_, s)| *s)
                .collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        }
    }

    #[actix_web::test]
    async fn a_failed_batch_fails_every_message_in_it_and_acknowledges_none() {
        // Batch 0 (a1 alone) commits; batch 1 (what queued meanwhile) fails;
        // batch 2 commits again.
        let rig = rig(Some(1), Duration::from_millis(20));
        append(&rig, &rig.a, 1);
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
        for seq in 2..=4 {
            append(&rig, &rig.a, seq);
        }
        append(&rig, &rig.b, 1);
        append(&rig, &rig.b, 2);
        let a = settle(&rig.a.1, 4).await;
        let b = settle(&rig.b.1, 2).await;
        assert_eq!(a[0], (1, Ok(())));
        assert_eq!(
            a[1..].iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert!(
            a[1..]
                .iter()
                .all(|r| matches!(r.1, Err(CommitFailure::Batch(_)))),
            "{a:?}"
        );
        assert!(
            b.iter()
                .all(|r| matches!(r.1, Err(CommitFailure::Batch(_)))),
            "{b:?}"
        );
        assert_eq!(
            rig.batches.lock().unwrap()[1].len(),
            5,
            "one batch held all five"
        );

        append(&rig, &rig.b, 3);
        let b = settle(&rig.b.1, 3).await;
        assert_eq!(b[2], (3, Ok(())), "the lane goes on after a failure");
    }

    #[actix_web::test]
    async fn a_commit_that_panics_fails_its_batch_and_the_lane_goes_on() {
        let rig = rig_panicking(None, Some(0), Duration::from_millis(5));
        append(&rig, &rig.a, 1);
        append(&rig, &rig.b, 1);
        let a = settle(&rig.a.1, 1).await;
        let b = settle(&rig.b.1, 1).await;
        assert!(matches!(a[0], (1, Err(CommitFailure::Batch(_)))), "{a:?}");
        assert!(matches!(b[0], (1, Err(CommitFailure::Batch(_)))), "{b:?}");
        append(&rig, &rig.a, 2);
        let a = settle(&rig.a.1, 2).await;
        assert_eq!(a[1], (2, Ok(())), "the next batch commits");
    }

    #[actix_web::test]
    async fn one_job_at_a_time_takes_the_queue_in_batches_of_at_most_max_batch() {
        let rig = rig(None, Duration::ZERO);
        let pending = Pending::default();
        let write = |seq| AppendMessage {
            write: MessageWrite {
                message: message(rig.a.0, seq),
                recipient: Pubkey::from_db("cd".repeat(32)),
                offline_queued: false,
            },
            event: Bytes::new(),
            reply: rig.a.2.clone(),
            at: std::time::Instant::now(),
        };
        assert!(pending.push(write(1)), "the first append schedules the job");
        for seq in 2..=(MAX_BATCH as u64 + 1) {
            assert!(!pending.push(write(seq)), "one job at a time");
        }
        let first = pending.next_batch().unwrap();
        assert_eq!(first.len(), MAX_BATCH);
        assert_eq!(first[0].write.message.server_sequence, 1);
        assert!(pending.more(), "one append still waits");
        assert!(!pending.push(write(0)), "the job is still scheduled");
        assert_eq!(pending.next_batch().unwrap().len(), 2);
        assert!(!pending.more(), "nothing waits: the job ends");
        assert!(pending.push(write(9)), "so the next append schedules one");
        assert_eq!(pending.next_batch().unwrap().len(), 1);
        assert!(
            pending.next_batch().is_none(),
            "an empty queue ends the job"
        );
        assert!(pending.push(write(10)));
    }
}
