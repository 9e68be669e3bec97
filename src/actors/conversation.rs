//! `ConversationActor`: one per active conversation (per node). It owns the
//! conversation's sequence counter and its messages in flight, and fans each
//! committed message out to the participants' sessions.
//!
//! The path of one message:
//! 1. [`SendDm`] arrives (from HTTP or a WebSocket session). The actor checks
//!    membership, claims a client-chosen id, assigns `next_seq`, decides
//!    whether the recipient is offline, and appends the message to the next
//!    group commit without waiting: the next message can be assigned at once.
//! 2. The group commit (`store::commit`) writes it with others in one
//!    transaction and sends back [`MessagesCommitted`], in sequence order.
//! 3. Only then the actor answers the sender and pushes `DmMessageEvent` to
//!    every live session of both participants. A recipient that had a session
//!    at assignment time but takes no push gets an offline entry now.
//!
//! A message the store did not write comes back as a failure. A resend of a
//! stored id ([`Skipped::DuplicateId`]) is answered from the stored row (200,
//! or 409 if the content differs). A message skipped because an earlier one
//! failed, or because another node committed its sequence first
//! ([`Skipped::Stale`], cluster mode), is not failed: once nothing is in
//! flight the actor re-reads the last committed sequence and assigns it
//! again, in the original order.
//!
//! # Architecture Invariant
//! Only this actor assigns `server_sequence` on its node, and it never reuses
//! a number that was committed: after any failure it re-reads the last
//! committed sequence from the store before assigning again. The store
//! refuses a message whose sequence does not follow the last committed one,
//! so neither a failure nor a second assigner on another node can leave a
//! gap or a duplicate.
//!
//! Why it is this long: sequence assignment, the in-flight queue with its
//! retries, and fan-out are one state machine.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::claims::{Claim, IdClaims};
use super::registry::SessionRegistry;
use crate::cluster::ClusterNode;
use crate::db::{MessageWrite, Skipped};
use crate::error::HubError;
use crate::metrics::Metrics;
use crate::model::{now_ms, Conversation, NewMessage, Pubkey, StoredMessage};
use crate::proto;
use crate::store::commit::{AppendMessage, Appender, CommitFailure, MessagesCommitted};
use crate::store::Store;

/// How often an actor checks whether it has been idle long enough to stop.
const IDLE_CHECK: Duration = Duration::from_secs(10);
/// An actor with nothing in flight stops after this long without a message.
const IDLE_AFTER: Duration = Duration::from_secs(60);
/// How often one message is assigned again after losing its sequence to
/// another node before the sender gets 503 (the conversation is too busy).
const MAX_ATTEMPTS: u32 = 32;

/// The answer to a send.
#[derive(Clone, Debug)]
pub struct SendOutcome {
    pub message: Arc<StoredMessage>,
    /// `false` for an idempotent resend (HTTP 200 instead of 201).
    pub created: bool,
}

#[derive(Debug)]
pub enum SendError {
    Api(HubError),
    /// The actor is stopping; ask the directory for a fresh one.
    Stopped,
}

impl From<HubError> for SendError {
    fn from(e: HubError) -> Self {
        SendError::Api(e)
    }
}

/// Sends one message into this conversation. The answer goes to `reply`,
/// not through actix's answer channel: the caller awaits it directly, so
/// the commit's result wakes the caller's task and nothing in between (no
/// task of the actor's to await the commit, no second channel).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendDm {
    pub sender: Pubkey,
    pub message: NewMessage,
    /// When the send was asked for (for `united_send_stage_seconds`).
    pub at: Instant,
    /// Gets the answer once the message is committed (or refused). Dropped
    /// unanswered only with a send the actor never took, one left in the
    /// mailbox of an actor that stopped: the caller sends it again.
    pub reply: Waiter,
}

/// A participant changed their display name.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RenameParticipant {
    pub user: Pubkey,
    pub display_name: String,
}

/// Called with the actor's id and address when it stops for being idle.
pub type OnStop = Arc<dyn Fn(&Uuid, &Addr<ConversationActor>) + Send + Sync>;

/// What a conversation actor needs from the rest of the hub, and no more.
#[derive(Clone)]
pub struct ConversationHandles {
    pub store: Store,
    /// Where assigned messages go to be committed.
    pub appender: Appender,
    pub registry: Arc<SessionRegistry>,
    pub claims: Arc<IdClaims>,
    pub metrics: Arc<Metrics>,
    /// Cluster mode: presence on other nodes and ordered delivery.
    pub cluster: Option<Arc<ClusterNode>>,
    pub on_stop: OnStop,
}

/// Where the answer to a send goes.
pub type Waiter = oneshot::Sender<Result<SendOutcome, SendError>>;

/// The answer channel of a send the actor has taken. Dropped unanswered
/// (the actor dropped with the send in flight, as when the node stops), it
/// answers with an internal error: only a send never taken is dropped
/// silently, and only that one is sent again (`ConversationDirectory`).
struct Answer(Option<Waiter>);

impl Answer {
    fn send(mut self, result: Result<SendOutcome, SendError>) {
        if let Some(waiter) = self.0.take() {
            let _ = waiter.send(result);
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(waiter) = self.0.take() {
            let _ = waiter.send(Err(SendError::Api(HubError::internal(anyhow::anyhow!(
                "conversation actor dropped a send"
            )))));
        }
    }
}

/// A message of this conversation on its way to the store.
struct InFlight {
    /// `server_sequence` is 0 until the message is assigned.
    message: Arc<StoredMessage>,
    /// The message's `DmMessageEvent` envelope, encoded when it is assigned
    /// (empty before).
    event: Bytes,
    recipient: Pubkey,
    /// The recipient's offline entry is in the same transaction.
    offline_queued: bool,
    /// The client-chosen id's claim (released when the entry is dropped).
    _claim: Option<Claim>,
    /// The sender, then any resend that arrived while it was in flight.
    waiters: Vec<(Answer, bool)>,
    /// Times it was assigned a sequence.
    attempts: u32,
}

impl InFlight {
    fn fail(self, err: impl Fn() -> HubError) {
        for (waiter, _) in self.waiters {
            waiter.send(Err(SendError::Api(err())));
        }
    }
}

pub struct ConversationActor {
    /// Participants and their display names, as loaded at start.
    conversation: Conversation,
    /// The sequence the next assigned message gets.
    next_seq: u64,
    /// Assigned and appended, not yet committed, in sequence order.
    in_flight: VecDeque<InFlight>,
    /// Lost their sequence; assigned again after the resync, first.
    retry: VecDeque<InFlight>,
    /// Arrived while a resync was pending; assigned after `retry`.
    waiting: VecDeque<InFlight>,
    /// `next_seq` may be stale: re-read it once nothing is in flight.
    needs_resync: bool,
    last_active: Instant,
    stopping: bool,
    handles: ConversationHandles,
}

impl ConversationActor {
    pub fn new(conversation: Conversation, last_seq: u64, handles: ConversationHandles) -> Self {
        ConversationActor {
            conversation,
            next_seq: last_seq + 1,
            in_flight: VecDeque::new(),
            retry: VecDeque::new(),
            waiting: VecDeque::new(),
            needs_resync: false,
            last_active: Instant::now(),
            stopping: false,
            handles,
        }
    }

    fn other(&self, user: &Pubkey) -> &Pubkey {
        let c = &self.conversation;
        if &c.participant_a == user {
            &c.participant_b
        } else {
            &c.participant_a
        }
    }

    fn display_name(&self, user: &Pubkey) -> &str {
        let c = &self.conversation;
        if &c.participant_a == user {
            &c.participant_a_display_name
        } else {
            &c.participant_b_display_name
        }
    }

    /// Whether `user` has a live session on any node.
    fn is_online(&self, user: &Pubkey) -> bool {
        self.handles.registry.is_online(user)
            || self
                .handles
                .cluster
                .as_ref()
                .is_some_and(|c| c.online_elsewhere(user))
    }

    fn pending(&mut self) -> impl Iterator<Item = &mut InFlight> {
        self.in_flight
            .iter_mut()
            .chain(self.retry.iter_mut())
            .chain(self.waiting.iter_mut())
    }

    /// Checks a send and puts it on its way; a refusal is answered at once.
    fn accept(&mut self, msg: SendDm, ctx: &mut Context<Self>) {
        let SendDm {
            sender,
            message,
            at,
            reply,
        } = msg;
        let answer = Answer(Some(reply));
        if self.stopping {
            return answer.send(Err(SendError::Stopped));
        }
        self.handles
            .metrics
            .stages
            .to_actor
            .observe(at.elapsed().as_secs_f64());
        if !self.conversation.has_participant(&sender) {
            return answer.send(Err(HubError::NotParticipant.into()));
        }
        let reused = || Err(HubError::Conflict("message id reused with different content").into());

        if let Some(id) = message.id {
            if let Some(entry) = self.pending().find(|e| e.message.id == id) {
                if !entry.message.same_content(&message, &sender) {
                    return answer.send(reused());
                }
                entry.waiters.push((answer, false));
                return;
            }
        }
        // Claimed before anything else, so that no other conversation of
        // this node can take the id meanwhile; a stored id is found by the
        // commit (`Skipped::DuplicateId`). Released when the entry is dropped.
        let claim = match message.id {
            Some(id) => match self.handles.claims.claim_guard(id) {
                Some(claim) => Some(claim),
                None => return answer.send(reused()),
            },
            None => None,
        };

        let recipient = self.other(&sender).clone();
        let entry = InFlight {
            message: Arc::new(StoredMessage {
                id: message.id.unwrap_or_else(Uuid::now_v7),
                conversation_id: self.conversation.id,
                sender_display_name: self.display_name(&sender).to_owned(),
                sender,
                encrypted_payload: message.encrypted_payload,
                nonce: message.nonce,
                ephemeral_pubkey: message.ephemeral_pubkey,
                timestamp: message.timestamp,
                server_sequence: 0,
                created_at: now_ms(),
            }),
            event: Bytes::new(),
            recipient,
            offline_queued: false,
            _claim: claim,
            waiters: vec![(answer, true)],
            attempts: 0,
        };
        if self.needs_resync {
            self.waiting.push_back(entry);
            self.resync_when_idle(ctx);
        } else {
            self.assign(entry, ctx);
        }
    }

    /// Gives `entry` the next sequence and appends it to the next group commit.
    fn assign(&mut self, mut entry: InFlight, ctx: &mut Context<Self>) {
        let mut message = (*entry.message).clone();
        message.server_sequence = self.next_seq;
        self.next_seq += 1;
        entry.event = proto::message_event(&message);
        entry.message = Arc::new(message);
        entry.attempts += 1;
        // Decided now, written in the same transaction as the message.
        entry.offline_queued = !self.is_online(&entry.recipient);
        self.handles.appender.append(AppendMessage {
            write: MessageWrite {
                message: entry.message.clone(),
                recipient: entry.recipient.clone(),
                offline_queued: entry.offline_queued,
            },
            event: entry.event.clone(),
            reply: ctx.address().recipient(),
            at: Instant::now(),
        });
        self.in_flight.push_back(entry);
    }

    /// Once nothing is in flight, re-reads the last committed sequence and
    /// assigns what waits, in order. The actor takes no other message while
    /// it reads, so nothing can be assigned from the stale counter.
    fn resync_when_idle(&mut self, ctx: &mut Context<Self>) {
        if !self.needs_resync || !self.in_flight.is_empty() {
            return;
        }
        let store = self.handles.store.clone();
        let id = self.conversation.id;
        ctx.wait(
            async move { store.last_sequence(id).await }
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(last) => {
                        tracing::debug!(conversation = %act.conversation.id, last, "resynced sequence");
                        act.next_seq = last + 1;
                        act.needs_resync = false;
                        let queued: Vec<InFlight> =
                            act.retry.drain(..).chain(act.waiting.drain(..)).collect();
                        for entry in queued {
                            act.assign(entry, ctx);
                        }
                    }
                    Err(e) => {
                        tracing::error!(conversation = %act.conversation.id, error = %e, "resync failed");
                        let failed: Vec<InFlight> =
                            act.retry.drain(..).chain(act.waiting.drain(..)).collect();
                        for entry in failed {
                            entry.fail(|| HubError::from_store(&e));
                        }
                    }
                }),
        );
    }

    /// A resend of a stored id: answered from the stored row.
    fn answer_duplicate(&self, entry: InFlight, ctx: &mut Context<Self>) {
        let store = self.handles.store.clone();
        let id = entry.message.id;
        async move { store.message(id).await }
            .into_actor(self)
            .map(move |stored, _, _| {
                for (waiter, _) in entry.waiters {
                    let answer = match &stored {
                        Ok(Some(stored)) if stored.same_as(&entry.message) => Ok(SendOutcome {
                            message: Arc::new(stored.clone()),
                            created: false,
                        }),
                        Ok(Some(_)) => Err(HubError::Conflict(
                            "message id reused with different content",
                        )),
                        Ok(None) => Err(HubError::internal(anyhow::anyhow!(
                            "a duplicate message id is not stored"
                        ))),
                        Err(e) => Err(HubError::from_store(e)),
                    };
                    waiter.send(answer.map_err(SendError::Api));
                }
            })
            .spawn(ctx);
    }

    /// Answers the waiters and fans the committed message out.
    fn committed(&mut self, entry: InFlight, ctx: &mut Context<Self>) {
        let handles = &self.handles;
        handles.metrics.messages_accepted.inc();
        let message = entry.message;
        let event = entry.event;
        let recipient = entry.recipient;
        if entry.offline_queued {
            handles.metrics.offline_queued.inc();
        }
        // The sender's answer first: its waiter's task then runs before the
        // sender's session, which the push below wakes, so the session
        // writes the answer and its own event in one poll, one `sendto`
        // (the contract lets them come in either order).
        for (waiter, created) in entry.waiters {
            waiter.send(Ok(SendOutcome {
                message: message.clone(),
                created,
            }));
        }
        let delivered_to_recipient = match &handles.cluster {
            // Delivered in sequence order with what other nodes commit; the
            // node queues offline itself when nobody took the push.
            Some(cluster) => {
                cluster.deliver_local(&message, &recipient, entry.offline_queued, event);
                None
            }
            None => {
                let pushed = handles.registry.push(&recipient, &event);
                handles.registry.push(&message.sender, &event);
                Some(pushed.delivered)
            }
        };
        if !entry.offline_queued && delivered_to_recipient == Some(0) {
            // The recipient was online at assignment but no session took the
            // push: queue it now, in a second small write.
            handles.metrics.offline_queued.inc();
            let store = handles.store.clone();
            let id = message.id;
            async move {
                if let Err(e) = store.queue_offline(recipient, id).await {
                    tracing::error!(error = %e, message = %id, "offline fallback failed");
                }
            }
            .into_actor(self)
            .spawn(ctx);
        }
    }
}

impl Actor for ConversationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::debug!(conversation = %self.conversation.id, next_seq = self.next_seq, "conversation actor started");
        ctx.run_interval(IDLE_CHECK, |act, ctx| {
            let idle = act.in_flight.is_empty() && act.retry.is_empty() && act.waiting.is_empty();
            if idle && act.last_active.elapsed() >= IDLE_AFTER {
                act.stopping = true;
                (act.handles.on_stop)(&act.conversation.id, &ctx.address());
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        tracing::debug!(conversation = %self.conversation.id, "conversation actor stopped");
    }
}

impl Handler<SendDm> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: SendDm, ctx: &mut Context<Self>) {
        self.last_active = Instant::now();
        self.accept(msg, ctx);
    }
}

impl Handler<MessagesCommitted> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: MessagesCommitted, ctx: &mut Context<Self>) {
        self.handles
            .metrics
            .stages
            .back_to_actor
            .observe(msg.committed_at.elapsed().as_secs_f64());
        for (seq, outcome) in msg.results {
            let Some(front) = self.in_flight.front() else {
                tracing::error!(seq, "commit result with nothing in flight");
                continue;
            };
            if front.message.server_sequence != seq {
                tracing::error!(
                    seq,
                    expected = front.message.server_sequence,
                    "commit result out of order"
                );
                continue;
            }
            let Some(entry) = self.in_flight.pop_front() else {
                continue;
            };
            match outcome {
                Ok(()) => self.committed(entry, ctx),
                Err(CommitFailure::Skipped(Skipped::DuplicateId)) => {
                    self.needs_resync = true;
                    self.answer_duplicate(entry, ctx);
                }
                Err(CommitFailure::Skipped(skipped)) => {
                    self.needs_resync = true;
                    if entry.attempts >= MAX_ATTEMPTS {
                        tracing::warn!(conversation = %self.conversation.id, ?skipped, "gave up assigning a message");
                        entry.fail(|| HubError::Unavailable { retry_after: 1 });
                    } else {
                        self.handles.metrics.sequence_retries.inc();
                        self.retry.push_back(entry);
                    }
                }
                Err(CommitFailure::Batch(failure)) => {
                    self.needs_resync = true;
                    entry.fail(|| failure.to_hub_error());
                }
            }
        }
        self.resync_when_idle(ctx);
    }
}

impl Handler<RenameParticipant> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: RenameParticipant, _: &mut Context<Self>) {
        let c = &mut self.conversation;
        if c.participant_a == msg.user {
            c.participant_a_display_name = msg.display_name;
        } else if c.participant_b == msg.user {
            c.participant_b_display_name = msg.display_name;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The directory sends again only a send whose answer channel was
    /// dropped silently, which must mean the actor never took it.
    #[test]
    fn a_taken_send_dropped_unanswered_answers_with_an_error() {
        let (waiter, mut answer) = oneshot::channel();
        drop(Answer(Some(waiter)));
        match answer.try_recv() {
            Ok(Err(SendError::Api(e))) => assert_eq!(e.code(), "internal"),
            other => panic!("expected an internal error, got {other:?}"),
        }

        let (waiter, mut answer) = oneshot::channel();
        Answer(Some(waiter)).send(Err(SendError::Stopped));
        assert!(matches!(answer.try_recv(), Ok(Err(SendError::Stopped))));
    }
}
