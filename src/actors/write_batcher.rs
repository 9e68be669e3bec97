//! Group commit in front of the store's writer.
//!
//! A `SyncArbiter` actor takes one message at a time and cannot look into its
//! mailbox, so batching happens beside it. Conversations hand each assigned
//! message to an [`Appender`], which is one of:
//! - [`WriterQueue`] (SQLite): a queue the writer thread drains itself. The
//!   first append into an idle queue puts one job in the writer's commit
//!   lane; the job takes up to [`MAX_BATCH`] messages, commits them in one
//!   transaction, sends each conversation its results, and queues itself
//!   again while appends wait. No thread sits between the conversations and
//!   the writer.
//! - [`WriteBatcher`] (PostgreSQL): an actor that keeps at most one
//!   [`CommitMessages`] in flight to the committing actor, and publishes
//!   each committed batch to the cluster.
//!
//! Both keep one commit in flight. Appends that arrive while it commits
//! wait in a FIFO queue and go out together as the next batch: under light
//! load a batch is one message (no added latency), under heavy load one
//! fsync covers up to [`MAX_BATCH`] messages.
//!
//! Order: appends are queued in arrival order, batches commit one after the
//! other, and each conversation's results come back in the order its
//! messages were appended.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::prelude::*;
use uuid::Uuid;

use crate::actors::db_executor::{DbExecutor, Lane, Writer};
use crate::cluster::ClusterNode;
use crate::db::{CommitMessages, DbError, MessageWrite, Skipped};
use crate::metrics::Metrics;
use crate::store::commit::CommitTarget;

/// Most messages in one transaction. Measured here: 128 rows per transaction
/// reach ~70,000 rows/s; larger batches add latency for little gain.
pub const MAX_BATCH: usize = 512;

/// Where a conversation's assigned messages go to be committed.
#[derive(Clone)]
pub enum Appender {
    /// Through a [`WriteBatcher`] actor (PostgreSQL).
    Batcher(Addr<WriteBatcher>),
    /// Into the SQLite writer's own queue.
    Writer(WriterQueue),
}

impl Appender {
    /// The appender for the store's commit target: SQLite's writer batches
    /// on its own thread; any other target gets a `WriteBatcher` (started
    /// here), which also publishes to the cluster. Cluster mode runs on
    /// PostgreSQL only.
    pub fn start(
        target: CommitTarget,
        cluster: Option<Arc<ClusterNode>>,
        metrics: Arc<Metrics>,
    ) -> Appender {
        match target {
            CommitTarget::Writer(writer) if cluster.is_none() => {
                Appender::Writer(WriterQueue::new(writer))
            }
            target => Appender::Batcher(
                WriteBatcher::with_target(target)
                    .publishing_to(cluster)
                    .measuring(metrics)
                    .start(),
            ),
        }
    }

    /// Queues `append` for the next group commit.
    pub fn append(&self, append: AppendMessage) {
        match self {
            Appender::Batcher(batcher) => batcher.do_send(append),
            Appender::Writer(queue) => queue.append(append),
        }
    }
}

/// Group commit on the SQLite writer's thread (see the module comment).
#[derive(Clone)]
pub struct WriterQueue(Arc<QueueInner>);

struct QueueInner {
    writer: Writer,
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    pending: VecDeque<AppendMessage>,
    /// A commit job is in the writer's lane or running: at most one is.
    scheduled: bool,
}

impl WriterQueue {
    pub fn new(writer: Writer) -> Self {
        WriterQueue(Arc::new(QueueInner {
            writer,
            state: Mutex::default(),
        }))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `append`; wakes the writer if no commit job is scheduled.
    pub fn append(&self, append: AppendMessage) {
        let idle = {
            let mut state = self.state();
            state.pending.push_back(append);
            !std::mem::replace(&mut state.scheduled, true)
        };
        if idle {
            self.schedule();
        }
    }

    /// Puts one commit job in the writer's commit lane.
    fn schedule(&self) {
        let queue = self.clone();
        (self.0.writer).run(Lane::Commit, move |executor, _| queue.commit_next(executor));
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
    pub fn to_api_error(&self) -> crate::error::ApiError {
        if self.unavailable {
            crate::error::ApiError::Unavailable { retry_after: 1 }
        } else {
            crate::error::ApiError::internal(anyhow::anyhow!(
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
    /// When the batcher got the commit's result (for
    /// `united_send_stage_seconds`).
    pub committed_at: std::time::Instant,
}

/// Asks for a message to be committed with the next batch.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AppendMessage {
    pub write: MessageWrite,
    /// Where the outcome goes (the conversation's actor).
    pub reply: Recipient<MessagesCommitted>,
    /// When it was appended (for `united_send_stage_seconds`).
    pub at: std::time::Instant,
}

pub struct WriteBatcher {
    target: CommitTarget,
    /// Cluster mode: committed events go to the other nodes, once per batch.
    cluster: Option<Arc<ClusterNode>>,
    /// Where `united_send_stage_seconds{stage="batch_wait"}` goes.
    metrics: Option<Arc<Metrics>>,
    queue: VecDeque<AppendMessage>,
    in_flight: bool,
}

impl WriteBatcher {
    /// A batcher that commits to `target`: the store's writer, or a
    /// stand-in in the batcher's unit tests.
    pub fn with_target(target: CommitTarget) -> Self {
        WriteBatcher {
            target,
            cluster: None,
            metrics: None,
            queue: VecDeque::new(),
            in_flight: false,
        }
    }

    /// Publishes every committed batch to the cluster's other nodes.
    pub fn publishing_to(mut self, cluster: Option<Arc<ClusterNode>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// Records how long each message waited for its batch.
    pub fn measuring(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight || self.queue.is_empty() {
            return;
        }
        let take = self.queue.len().min(MAX_BATCH);
        let batch: Vec<AppendMessage> = self.queue.drain(..take).collect();
        if let Some(metrics) = &self.metrics {
            for append in &batch {
                (metrics.stages.batch_wait).observe(append.at.elapsed().as_secs_f64());
            }
        }
        let writes = batch.iter().map(|a| a.write.clone()).collect();
        self.in_flight = true;
        let sent_at = std::time::Instant::now();
        // Only one commit is ever in flight, so this spawned future cannot
        // overtake another one.
        self.target
            .clone()
            .commit(CommitMessages(writes))
            .into_actor(self)
            .then(move |result, act, ctx| {
                if let Some(metrics) = &act.metrics {
                    let took = sent_at.elapsed().as_secs_f64();
                    for _ in &batch {
                        metrics.stages.in_commit.observe(took);
                    }
                }
                if let (Some(cluster), Ok(results)) = (&act.cluster, &result) {
                    let committed: Vec<&MessageWrite> = batch
                        .iter()
                        .zip(results)
                        .filter(|(_, r)| r.is_ok())
                        .map(|(a, _)| &a.write)
                        .collect();
                    cluster.publish_committed(&committed);
                }
                dispatch(batch, result);
                act.in_flight = false;
                act.flush(ctx);
                fut::ready(())
            })
            .spawn(ctx);
    }
}

/// Sends each conversation the outcome of its messages, in batch order.
fn dispatch(batch: Vec<AppendMessage>, result: Result<Vec<Result<(), Skipped>>, DbError>) {
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

impl Actor for WriteBatcher {
    type Context = Context<Self>;
}

impl Handler<AppendMessage> for WriteBatcher {
    type Result = ();
    fn handle(&mut self, msg: AppendMessage, ctx: &mut Context<Self>) {
        self.queue.push_back(msg);
        self.flush(ctx);
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

    /// Stands in for the `DbExecutor`: records each batch, optionally fails
    /// it, and takes `delay` to commit.
    struct FakeDb {
        batches: Batches,
        /// The index of the batch that fails, if any.
        fail_batch: Option<usize>,
        delay: Duration,
    }

    impl Actor for FakeDb {
        type Context = Context<Self>;
    }

    impl Handler<CommitMessages> for FakeDb {
        type Result = ResponseFuture<Result<Vec<Result<(), Skipped>>, DbError>>;
        fn handle(&mut self, msg: CommitMessages, _: &mut Context<Self>) -> Self::Result {
            let mut batches = self.batches.lock().unwrap();
            let fail = self.fail_batch == Some(batches.len());
            batches.push(
                msg.0
                    .iter()
                    .map(|w| (w.message.conversation_id, w.message.server_sequence))
                    .collect(),
            );
            let n = msg.0.len();
            let delay = self.delay;
            Box::pin(async move {
                actix_web::rt::time::sleep(delay).await;
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
        batcher: Addr<WriteBatcher>,
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
        let batches = Arc::new(Mutex::new(Vec::new()));
        let db = FakeDb {
            batches: batches.clone(),
            fail_batch,
            delay,
        }
        .start();
        let batcher = WriteBatcher::with_target(CommitTarget::Actor(db.recipient())).start();
        let collector = || {
            let got = Arc::new(Mutex::new(Vec::new()));
            let addr = Collector(got.clone()).start();
            (Uuid::new_v4(), got, addr.recipient())
        };
        Rig {
            batcher,
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
        rig.batcher.do_send(AppendMessage {
            write: MessageWrite {
                message: message(which.0, seq),
                recipient: Pubkey::from_db("cd".repeat(32)),
                offline_queued: false,
            },
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
        assert_eq!(b[2], (3, Ok(())), "the batcher goes on after a failure");
    }
}
