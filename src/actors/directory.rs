//! `ConversationDirectory`: finds the `ConversationActor` of a conversation,
//! starting it on demand (its sequence loaded from the database).
//!
//! An actor that has been idle stops and takes itself out of the directory;
//! a send that reaches it while it stops is retried on a fresh actor, which
//! reads the last committed sequence again. Nothing is in flight in an actor
//! that stops, so the fresh one starts from the truth.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use uuid::Uuid;

use super::conversation::{ConversationActor, RenameParticipant, SendDm, SendError, SendOutcome};
use crate::db::reads;
use crate::error::ApiError;
use crate::model::{NewMessage, Pubkey};
use crate::state::AppState;

/// How often a send is retried when it meets a stopping actor.
const SEND_ATTEMPTS: usize = 3;

#[derive(Default)]
pub struct ConversationDirectory {
    /// Live actors by conversation id.
    actors: Mutex<HashMap<Uuid, Addr<ConversationActor>>>,
}

impl ConversationDirectory {
    fn actors(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Addr<ConversationActor>>> {
        self.actors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a message through its conversation's actor.
    pub async fn send(
        state: &Arc<AppState>,
        sender: Pubkey,
        message: NewMessage,
    ) -> Result<SendOutcome, ApiError> {
        let directory = &state.conversations;
        for _ in 0..SEND_ATTEMPTS {
            let addr = directory
                .get_or_start(state, &message.conversation_id)
                .await?;
            let request = SendDm {
                sender: sender.clone(),
                message: message.clone(),
            };
            match addr.send(request).await {
                Ok(Ok(outcome)) => return Ok(outcome),
                Ok(Err(SendError::Api(e))) => return Err(e),
                Ok(Err(SendError::Stopped)) | Err(MailboxError::Closed) => {
                    directory.forget(&message.conversation_id, &addr);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::internal(anyhow::anyhow!(
            "conversation actor kept stopping"
        )))
    }

    async fn get_or_start(
        &self,
        state: &Arc<AppState>,
        id: &Uuid,
    ) -> Result<Addr<ConversationActor>, ApiError> {
        if let Some(addr) = self.actors().get(id).filter(|a| a.connected()) {
            return Ok(addr.clone());
        }
        let id = *id;
        let loaded = state
            .read(move |conn| {
                let Some(conversation) = reads::conversation(conn, &id)? else {
                    return Ok(None);
                };
                let last = reads::max_sequence(conn, &id)?;
                Ok(Some((conversation, last)))
            })
            .await?;
        let Some((conversation, last_seq)) = loaded else {
            return Err(ApiError::NotFound("no such conversation"));
        };
        let mut actors = self.actors();
        // Another caller may have started it while we read.
        if let Some(addr) = actors.get(&id).filter(|a| a.connected()) {
            return Ok(addr.clone());
        }
        let addr = ConversationActor::new(conversation, last_seq, state.clone()).start();
        actors.insert(id, addr.clone());
        Ok(addr)
    }

    /// Removes `addr` if it is still the registered actor of `id`.
    pub fn forget(&self, id: &Uuid, addr: &Addr<ConversationActor>) {
        let mut actors = self.actors();
        if actors.get(id) == Some(addr) {
            actors.remove(id);
        }
    }

    /// Tells every live actor about a display-name change.
    pub fn rename(&self, user: &Pubkey, display_name: &str) {
        for addr in self.actors().values() {
            addr.do_send(RenameParticipant {
                user: user.clone(),
                display_name: display_name.to_owned(),
            });
        }
    }

    /// Drops every actor address (at shutdown), so the actors can stop.
    pub fn clear(&self) {
        self.actors().clear();
    }
}

/// Client-chosen message ids in flight in any conversation. A message id is
/// unique across the hub; claiming it before assignment makes the same id in
/// two conversations at once a clean 409 instead of a failed commit.
#[derive(Default)]
pub struct IdClaims {
    ids: Mutex<HashSet<Uuid>>,
}

impl IdClaims {
    /// `false` if the id is already claimed.
    pub fn claim(&self, id: Uuid) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id)
    }

    pub fn release(&self, id: &Uuid) {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}
