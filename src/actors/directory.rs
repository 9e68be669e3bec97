//! `ConversationDirectory`: finds the `ConversationActor` of a conversation,
//! starting it on demand (its sequence loaded from the store).
//!
//! An actor that has been idle stops and takes itself out of the directory;
//! a send that reaches it while it stops is retried on a fresh actor, which
//! reads the last committed sequence again. Nothing is in flight in an actor
//! that stops, so the fresh one starts from the truth.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::conversation::{
    ConversationActor, ConversationHandles, RenameParticipant, SendDm, SendError, SendOutcome,
};
use crate::error::HubError;
use crate::model::{NewMessage, Pubkey};

/// How often a send is retried when it meets a stopping actor.
const SEND_ATTEMPTS: usize = 3;
/// The longest a send may take by default, whatever happens (a stalled
/// commit or a lost answer would otherwise hang the request): then 503, and
/// the client's retry with the same id is idempotent. `--send-timeout`.
const SEND_TIMEOUT: Duration = Duration::from_secs(crate::config::defaults::SEND_TIMEOUT);

type Actors = Mutex<HashMap<Uuid, Addr<ConversationActor>>>;

pub struct ConversationDirectory {
    /// Live actors by conversation id.
    actors: Arc<Actors>,
    /// Counts renames, so an actor that read names during one re-reads them.
    renames: AtomicU64,
    /// Given to every actor it starts.
    handles: ConversationHandles,
    send_timeout: Duration,
}

fn lock(actors: &Actors) -> std::sync::MutexGuard<'_, HashMap<Uuid, Addr<ConversationActor>>> {
    actors.lock().unwrap_or_else(|e| e.into_inner())
}

impl ConversationDirectory {
    /// `handles.on_stop` is replaced: stopping actors leave this directory.
    pub fn new(mut handles: ConversationHandles) -> Self {
        let actors: Arc<Actors> = Arc::default();
        let weak: Weak<Actors> = Arc::downgrade(&actors);
        handles.on_stop = Arc::new(move |id, addr| {
            if let Some(actors) = weak.upgrade() {
                let mut actors = lock(&actors);
                if actors.get(id) == Some(addr) {
                    actors.remove(id);
                }
            }
        });
        ConversationDirectory {
            actors,
            renames: AtomicU64::new(0),
            handles,
            send_timeout: SEND_TIMEOUT,
        }
    }

    /// Sets the longest a send may take.
    pub fn with_send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// Sends a message through its conversation's actor.
    pub async fn send(&self, sender: Pubkey, message: NewMessage) -> Result<SendOutcome, HubError> {
        let started = std::time::Instant::now();
        match tokio::time::timeout(self.send_timeout, self.send_once(sender, message)).await {
            Ok(outcome) => {
                (self.handles.metrics.stages.total).observe(started.elapsed().as_secs_f64());
                outcome
            }
            Err(_) => {
                tracing::error!("a send took longer than {:?}", self.send_timeout);
                Err(HubError::Unavailable { retry_after: 1 })
            }
        }
    }

    async fn send_once(
        &self,
        sender: Pubkey,
        message: NewMessage,
    ) -> Result<SendOutcome, HubError> {
        for _ in 0..SEND_ATTEMPTS {
            let addr = self.get_or_start(&message.conversation_id).await?;
            let (reply, answer) = oneshot::channel();
            let request = SendDm {
                sender: sender.clone(),
                message: message.clone(),
                at: std::time::Instant::now(),
                reply,
            };
            // Into the mailbox without an answer channel of actix's; only a
            // full mailbox waits for room, as `send` would.
            if let Err(actix::prelude::SendError::Full(request)) = addr.try_send(request) {
                let _ = addr.send(request).await;
            }
            match answer.await {
                Ok(Ok(outcome)) => return Ok(outcome),
                Ok(Err(SendError::Api(e))) => return Err(e),
                // Stopping, or stopped with the send still in its mailbox
                // (the send dropped unanswered): a fresh actor takes it.
                Ok(Err(SendError::Stopped)) | Err(_) => {
                    self.forget(&message.conversation_id, &addr);
                }
            }
        }
        Err(HubError::internal(anyhow::anyhow!(
            "conversation actor kept stopping"
        )))
    }

    async fn get_or_start(&self, id: &Uuid) -> Result<Addr<ConversationActor>, HubError> {
        if let Some(addr) = lock(&self.actors).get(id).filter(|a| a.connected()) {
            return Ok(addr.clone());
        }
        let renames_before = self.renames.load(Ordering::Acquire);
        let loaded = self.handles.store.conversation_with_last_seq(*id).await?;
        let Some((conversation, last_seq)) = loaded else {
            return Err(HubError::NotFound("no such conversation"));
        };
        let participants = [
            conversation.participant_a.clone(),
            conversation.participant_b.clone(),
        ];
        let addr = {
            let mut actors = lock(&self.actors);
            // Another caller may have started it while we read.
            if let Some(addr) = actors.get(id).filter(|a| a.connected()) {
                return Ok(addr.clone());
            }
            let addr = ConversationActor::new(conversation, last_seq, self.handles.clone()).start();
            actors.insert(*id, addr.clone());
            addr
        };
        if self.renames.load(Ordering::Acquire) != renames_before {
            // A rename happened while the names were read: read them again,
            // so this actor cannot keep a stale one.
            if let Ok(Some(fresh)) = self.handles.store.conversation(*id).await {
                for (user, name) in [
                    (participants[0].clone(), fresh.participant_a_display_name),
                    (participants[1].clone(), fresh.participant_b_display_name),
                ] {
                    addr.do_send(RenameParticipant {
                        user,
                        display_name: name,
                    });
                }
            }
        }
        Ok(addr)
    }

    /// Removes `addr` if it is still the registered actor of `id`.
    pub fn forget(&self, id: &Uuid, addr: &Addr<ConversationActor>) {
        (self.handles.on_stop)(id, addr);
    }

    /// Tells every live actor about a display-name change (the new name is
    /// stored already). The addresses are copied out first: the directory is
    /// not locked while the actors are messaged.
    pub fn rename(&self, user: &Pubkey, display_name: &str) {
        self.renames.fetch_add(1, Ordering::AcqRel);
        let actors: Vec<Addr<ConversationActor>> = lock(&self.actors).values().cloned().collect();
        for addr in actors {
            addr.do_send(RenameParticipant {
                user: user.clone(),
                display_name: display_name.to_owned(),
            });
        }
    }

    /// Drops every actor address (at shutdown), so the actors can stop.
    pub fn clear(&self) {
        lock(&self.actors).clear();
    }
}
