//! Keys, conversations, messages and the offline queue.

use std::sync::Arc;

use uuid::Uuid;

use crate::actors::conversation::SendOutcome;
use crate::actors::directory::ConversationDirectory;
use crate::actors::registry::SessionRegistry;
use crate::answers::AnswerBudget;
use crate::answers::AnswerPermit;
use crate::cluster::ClusterNode;
use crate::error::HubError;
use crate::model::{
    is_small_order_x25519, Conversation, DmKey, History, HistoryPage, NewMessage, OfflinePage,
    Pubkey, MAX_HISTORY_LIMIT, MAX_OFFLINE_LIMIT,
};
use crate::proto;
use crate::ratelimit::RateLimits;
use crate::store::Store;

/// Keys, conversations, messages and the offline queue, with only what they
/// need: the store, the per-user limits, the conversation actors, the answer
/// budget, and where events go (this node's sessions and, in cluster mode,
/// the other nodes). Both transports hold one.
pub struct DmService {
    pub(crate) store: Store,
    pub(crate) limits: Arc<RateLimits>,
    pub(crate) conversations: Arc<ConversationDirectory>,
    pub(crate) answers: Arc<AnswerBudget>,
    pub(crate) registry: Arc<SessionRegistry>,
    pub(crate) cluster: Option<Arc<ClusterNode>>,
    /// `--max-payload-bytes`: the ciphertext a message may carry.
    pub(crate) max_payload_bytes: usize,
}

impl DmService {
    /// The ciphertext bytes a message may carry (`--max-payload-bytes`).
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// Publishes the caller's X25519 key. When it changes, the caller's sessions
    /// and those of everyone who shares a conversation with them hear of it.
    pub async fn publish_key(&self, user: &Pubkey, key: [u8; 32]) -> Result<DmKey, HubError> {
        if is_small_order_x25519(&key) {
            return Err(HubError::invalid(
                "x25519_pubkey is a small-order point (the zero key among them)",
            ));
        }
        self.limits.check_key(user)?;
        let (stored, changed) = self.store.upsert_dm_key(user.clone(), key).await?;
        if changed {
            let partners = self.store.partners_of(user.clone()).await?;
            let event = proto::key_rotated_event(user, &stored);
            let mut to = partners;
            to.push(user.clone());
            self.push_event(&to, event);
        }
        Ok(stored)
    }

    pub async fn get_key(&self, user: Pubkey) -> Result<DmKey, HubError> {
        self.store
            .dm_key(user)
            .await?
            .ok_or(HubError::NotFound("no published key for this user"))
    }

    /// Creates (or finds) the caller's conversation with `recipient`.
    /// Returns it and whether it was created.
    pub async fn create_conversation(
        &self,
        caller: &Pubkey,
        recipient: Pubkey,
    ) -> Result<(Conversation, bool), HubError> {
        if &recipient == caller {
            return Err(HubError::SelfConversation);
        }
        self.limits.check_conversation(caller)?;
        if self.store.user(recipient.clone()).await?.is_none() {
            return Err(HubError::NotFound("no such user"));
        }
        let (a, b) = if caller < &recipient {
            (caller.clone(), recipient)
        } else {
            (recipient, caller.clone())
        };
        let (conversation, created) = self.store.create_conversation(a, b).await?;
        if created {
            let event = proto::conversation_created_event(&conversation);
            let to = [
                conversation.participant_a.clone(),
                conversation.participant_b.clone(),
            ];
            self.push_event(&to, event);
        }
        Ok((conversation, created))
    }

    pub async fn list_conversations(&self, caller: &Pubkey) -> Result<Vec<Conversation>, HubError> {
        self.limits.check_read(caller)?;
        Ok(self.store.conversations_of(caller.clone()).await?)
    }

    /// Sends a message through its conversation's actor. Answers once the
    /// message is committed.
    pub async fn send(
        &self,
        sender: &Pubkey,
        message: NewMessage,
    ) -> Result<SendOutcome, HubError> {
        self.limits.check_send(sender)?;
        self.conversations.send(sender.clone(), message).await
    }

    /// Loads a conversation and checks that the caller is in it.
    async fn member_conversation(
        &self,
        caller: &Pubkey,
        id: Uuid,
    ) -> Result<Conversation, HubError> {
        let conversation = self
            .store
            .conversation(id)
            .await?
            .ok_or(HubError::NotFound("no such conversation"))?;
        if !conversation.has_participant(caller) {
            return Err(HubError::NotParticipant);
        }
        Ok(conversation)
    }

    /// A page of history; `limit` is already validated (1 or more) and is capped.
    /// The page comes with its reservation of the caller's answer budget: the
    /// transport shrinks it to the encoded answer and holds it until the socket
    /// has taken the answer ([`crate::answers`]).
    pub async fn history(
        &self,
        caller: &Pubkey,
        conversation_id: Uuid,
        page: HistoryPage,
        limit: u32,
    ) -> Result<(History, AnswerPermit), HubError> {
        self.limits.check_read(caller)?;
        self.member_conversation(caller, conversation_id).await?;
        let limit = limit.clamp(1, MAX_HISTORY_LIMIT);
        let permit = self.answers.reserve_page(caller).await?;
        let history = self.store.history(conversation_id, page, limit).await?;
        Ok((history, permit))
    }

    /// A page of the caller's undelivered offline entries, oldest first, marked
    /// delivered. `limit` 0 means the default; it is capped at 1000. The budget
    /// is reserved before any entry is marked, so a refusal loses nothing.
    pub async fn take_offline(
        &self,
        caller: &Pubkey,
        limit: u32,
    ) -> Result<(OfflinePage, AnswerPermit), HubError> {
        self.limits.check_read(caller)?;
        let limit = match limit {
            0 => MAX_OFFLINE_LIMIT,
            n => n.min(MAX_OFFLINE_LIMIT),
        };
        let permit = self.answers.reserve_page(caller).await?;
        let page = self.store.take_offline(caller.clone(), limit).await?;
        Ok((page, permit))
    }

    /// Marks the caller's named entries delivered; other users' are never touched.
    pub async fn ack_offline(&self, caller: &Pubkey, ids: Vec<Uuid>) -> Result<u32, HubError> {
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(self.store.ack_offline(caller.clone(), ids).await?)
    }

    /// Hands an event that is not part of a conversation's sequence (a key
    /// rotation, a new conversation) to every live session of `users`, on this
    /// node and, in cluster mode, on every other.
    fn push_event(&self, users: &[Pubkey], event: bytes::Bytes) {
        for user in users {
            self.registry.push(user, &event);
        }
        if let Some(cluster) = &self.cluster {
            cluster.publish_event(users, event);
        }
    }
}

/// Most ids one ack may name.
pub const MAX_ACK_IDS: usize = 1000;

/// Parses the ids of an ack request.
pub fn parse_ack_ids<'a>(
    ids: impl ExactSizeIterator<Item = &'a str>,
) -> Result<Vec<Uuid>, HubError> {
    if ids.len() > MAX_ACK_IDS {
        return Err(HubError::invalid(format!(
            "at most {MAX_ACK_IDS} ids per ack"
        )));
    }
    ids.map(|id| crate::model::parse_uuid(id, "message_ids").map_err(HubError::from))
        .collect()
}
