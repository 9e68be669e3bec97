//! `ConversationActor`: one per active conversation. It owns the
//! conversation's sequence counter and its messages in flight, and fans each
//! committed message out to the participants' sessions.
//!
//! The path of one message:
//! 1. [`SendDm`] arrives (from HTTP or a WebSocket session). The actor checks
//!    membership and idempotency, assigns `next_seq`, decides whether the
//!    recipient is offline, and appends the message to the `WriteBatcher`
//!    without waiting: the next message can be assigned at once.
//! 2. The batcher commits it with others in one transaction and sends back
//!    [`MessagesCommitted`], in sequence order.
//! 3. Only then the actor answers the sender and pushes `DmMessageEvent` to
//!    every live session of both participants. A recipient that had a session
//!    at assignment time but takes no push gets an offline entry now.
//!
//! # Architecture Invariant
//! Only this actor assigns `server_sequence`, and it never reuses a number
//! that was committed: after any failure it re-reads the last committed
//! sequence from the database before assigning again. The `DbExecutor`
//! refuses a message whose sequence does not follow the last committed one,
//! so a failed message can never leave a gap behind later ones.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::db_executor::QueueOffline;
use super::write_batcher::{AppendMessage, CommitFailure, MessagesCommitted};
use crate::db::reads;
use crate::error::ApiError;
use crate::model::{now_ms, Conversation, NewMessage, Pubkey, StoredMessage};
use crate::proto::{self, Payload};
use crate::state::AppState;

/// How often an actor checks whether it has been idle long enough to stop.
const IDLE_CHECK: Duration = Duration::from_secs(10);
/// An actor with nothing in flight stops after this long without a message.
const IDLE_AFTER: Duration = Duration::from_secs(60);

/// The answer to a send.
#[derive(Clone, Debug)]
pub struct SendOutcome {
    pub message: Arc<StoredMessage>,
    /// `false` for an idempotent resend (HTTP 200 instead of 201).
    pub created: bool,
}

#[derive(Debug)]
pub enum SendError {
    Api(ApiError),
    /// The actor is stopping; ask the directory for a fresh one.
    Stopped,
}

impl From<ApiError> for SendError {
    fn from(e: ApiError) -> Self {
        SendError::Api(e)
    }
}

/// Sends one message into this conversation.
#[derive(Message)]
#[rtype(result = "Result<SendOutcome, SendError>")]
pub struct SendDm {
    pub sender: Pubkey,
    pub message: NewMessage,
}

/// A participant changed their display name.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RenameParticipant {
    pub user: Pubkey,
    pub display_name: String,
}

type Waiter = oneshot::Sender<Result<SendOutcome, SendError>>;

/// A message with its sequence, appended to the batcher, not yet committed.
struct InFlight {
    message: Arc<StoredMessage>,
    /// The recipient's offline entry is in the same transaction.
    offline_queued: bool,
    /// Whether the client chose the id (then it is claimed in `IdClaims`).
    client_id: bool,
    /// The sender, then any resend that arrived while it was in flight.
    waiters: Vec<(Waiter, bool)>,
}

pub struct ConversationActor {
    /// Participants and their display names, as loaded at start.
    conversation: Conversation,
    /// The sequence the next accepted message gets.
    next_seq: u64,
    /// Assigned but not yet committed, in sequence order.
    in_flight: VecDeque<InFlight>,
    /// A commit failed: re-read `next_seq` once nothing is in flight.
    needs_resync: bool,
    last_active: Instant,
    stopping: bool,
    state: Arc<AppState>,
}

impl ConversationActor {
    pub fn new(conversation: Conversation, last_seq: u64, state: Arc<AppState>) -> Self {
        ConversationActor {
            conversation,
            next_seq: last_seq + 1,
            in_flight: VecDeque::new(),
            needs_resync: false,
            last_active: Instant::now(),
            stopping: false,
            state,
        }
    }

    fn other(&self, user: &Pubkey) -> (&Pubkey, &str) {
        let c = &self.conversation;
        if &c.participant_a == user {
            (&c.participant_b, &c.participant_b_display_name)
        } else {
            (&c.participant_a, &c.participant_a_display_name)
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

    /// Re-reads the last committed sequence.
    fn resync(&mut self) -> Result<(), ApiError> {
        let conn = self.state.pool.get().map_err(ApiError::internal)?;
        let last = reads::max_sequence(&conn, &self.conversation.id)?;
        tracing::warn!(conversation = %self.conversation.id, last, "resynced sequence after a failed commit");
        self.next_seq = last + 1;
        self.needs_resync = false;
        Ok(())
    }

    /// Checks a send and either answers it at once (a resend of a committed
    /// message) or puts it in flight. Returns the receiver of the answer.
    fn accept(
        &mut self,
        msg: SendDm,
        ctx: &mut Context<Self>,
    ) -> Result<oneshot::Receiver<Result<SendOutcome, SendError>>, SendError> {
        if self.stopping {
            return Err(SendError::Stopped);
        }
        let SendDm { sender, message } = msg;
        if !self.conversation.has_participant(&sender) {
            return Err(ApiError::NotParticipant.into());
        }
        let (tx, rx) = oneshot::channel();

        if let Some(id) = message.id {
            if let Some(entry) = self.in_flight.iter_mut().find(|e| e.message.id == id) {
                if !entry.message.same_content(&message, &sender) {
                    return Err(
                        ApiError::Conflict("message id reused with different content").into(),
                    );
                }
                entry.waiters.push((tx, false));
                return Ok(rx);
            }
            let stored = {
                let conn = self.state.pool.get().map_err(ApiError::internal)?;
                reads::message(&conn, &id).map_err(ApiError::from)?
            };
            if let Some(stored) = stored {
                if !stored.same_content(&message, &sender) {
                    return Err(
                        ApiError::Conflict("message id reused with different content").into(),
                    );
                }
                let _ = tx.send(Ok(SendOutcome {
                    message: Arc::new(stored),
                    created: false,
                }));
                return Ok(rx);
            }
            if !self.state.claims.claim(id) {
                // In flight in another conversation.
                return Err(ApiError::Conflict("message id reused with different content").into());
            }
        }

        if self.needs_resync && self.in_flight.is_empty() {
            if let Err(e) = self.resync() {
                if let Some(id) = message.id {
                    self.state.claims.release(&id);
                }
                return Err(e.into());
            }
        }

        let (recipient, _) = self.other(&sender);
        let recipient = recipient.clone();
        let stored = Arc::new(StoredMessage {
            id: message.id.unwrap_or_else(Uuid::new_v4),
            conversation_id: self.conversation.id,
            sender_display_name: self.display_name(&sender).to_owned(),
            sender,
            encrypted_payload: message.encrypted_payload,
            nonce: message.nonce,
            ephemeral_pubkey: message.ephemeral_pubkey,
            timestamp: message.timestamp,
            server_sequence: self.next_seq,
            created_at: now_ms(),
        });
        self.next_seq += 1;
        // Decided now, written in the same transaction as the message.
        let offline_for = (!self.state.registry.is_online(&recipient)).then_some(recipient);
        self.state.batcher.do_send(AppendMessage {
            message: stored.clone(),
            offline_for: offline_for.clone(),
            reply: ctx.address().recipient(),
        });
        self.in_flight.push_back(InFlight {
            message: stored,
            offline_queued: offline_for.is_some(),
            client_id: message.id.is_some(),
            waiters: vec![(tx, true)],
        });
        Ok(rx)
    }

    /// Answers the waiters and fans the committed message out.
    fn committed(&mut self, entry: InFlight, ctx: &mut Context<Self>) {
        let state = &self.state;
        state.metrics.messages_accepted.inc();
        let message = entry.message;
        let event = proto::encode_event(Payload::DmMessageEvent(proto::dm::DmMessageEvent {
            message: Some(message.to_proto()),
        }));
        let (recipient, _) = self.other(&message.sender);
        let recipient = recipient.clone();
        let to_recipient = state.registry.push(&recipient, &event);
        state.registry.push(&message.sender, &event);
        for (waiter, created) in entry.waiters {
            let _ = waiter.send(Ok(SendOutcome {
                message: message.clone(),
                created,
            }));
        }
        if entry.offline_queued {
            state.metrics.offline_queued.inc();
        } else if to_recipient.delivered == 0 {
            // The recipient was online at assignment but no session took the
            // push: queue it now, in a second small write.
            state.metrics.offline_queued.inc();
            let id = message.id;
            state
                .writer
                .send(QueueOffline {
                    recipient,
                    message_id: id,
                })
                .into_actor(self)
                .map(move |result, _, _| match result {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, message = %id, "offline fallback failed")
                    }
                    Err(e) => tracing::error!(error = %e, message = %id, "offline fallback failed"),
                })
                .spawn(ctx);
        }
    }
}

impl Actor for ConversationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        tracing::debug!(conversation = %self.conversation.id, next_seq = self.next_seq, "conversation actor started");
        ctx.run_interval(IDLE_CHECK, |act, ctx| {
            if act.in_flight.is_empty() && act.last_active.elapsed() >= IDLE_AFTER {
                act.stopping = true;
                act.state
                    .conversations
                    .forget(&act.conversation.id, &ctx.address());
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        tracing::debug!(conversation = %self.conversation.id, "conversation actor stopped");
    }
}

impl Handler<SendDm> for ConversationActor {
    type Result = ResponseFuture<Result<SendOutcome, SendError>>;

    fn handle(&mut self, msg: SendDm, ctx: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        match self.accept(msg, ctx) {
            Ok(rx) => Box::pin(async move {
                rx.await.unwrap_or_else(|_| {
                    Err(SendError::Api(ApiError::internal(anyhow::anyhow!(
                        "conversation actor dropped a send"
                    ))))
                })
            }),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}

impl Handler<MessagesCommitted> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: MessagesCommitted, ctx: &mut Context<Self>) {
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
            if entry.client_id {
                self.state.claims.release(&entry.message.id);
            }
            match outcome {
                Ok(()) => self.committed(entry, ctx),
                Err(failure) => {
                    self.needs_resync = true;
                    let reason = match failure {
                        CommitFailure::Batch(e) => e,
                        CommitFailure::Skipped(s) => format!("{s:?}"),
                    };
                    for (waiter, _) in entry.waiters {
                        let _ = waiter.send(Err(SendError::Api(ApiError::internal(
                            anyhow::anyhow!("message not committed: {reason}"),
                        ))));
                    }
                }
            }
        }
        if self.needs_resync && self.in_flight.is_empty() {
            // On failure the next send retries the resync.
            let _ = self.resync();
        }
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
