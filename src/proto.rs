//! Protobuf types generated from `proto/` by `build.rs` (never committed).
//!
//! These are wire types: they are built at the edge (the session actor, the
//! fan-out encoder) and never kept in actor state. The conversions from the
//! domain types (`model`) and the encoders of server events live here, so
//! no other module builds protobuf by hand.

use bytes::Bytes;

use crate::model::{Conversation, DmKey, Pubkey, StoredMessage};

/// `united.dm`: conversations, encrypted messages, keys and their requests.
pub mod dm {
    include!(concat!(env!("OUT_DIR"), "/united.dm.rs"));
}

/// `united.ws`: the `Envelope` every WebSocket frame carries.
pub mod ws {
    include!(concat!(env!("OUT_DIR"), "/united.ws.rs"));
}

/// `united.cluster`: what the nodes of a cluster publish to each other.
pub mod cluster {
    include!(concat!(env!("OUT_DIR"), "/united.cluster.rs"));
}

pub use ws::envelope::Payload;
pub use ws::Envelope;

/// Encodes a server-initiated event once; every session gets the same bytes.
pub fn encode_event(payload: Payload) -> Bytes {
    encode_envelope(String::new(), payload)
}

/// Encodes one envelope.
pub fn encode_envelope(request_id: String, payload: Payload) -> Bytes {
    use prost::Message as _;
    Envelope {
        request_id,
        payload: Some(payload),
    }
    .encode_to_vec()
    .into()
}

impl From<&Conversation> for dm::DmConversation {
    fn from(c: &Conversation) -> Self {
        dm::DmConversation {
            id: c.id.to_string(),
            participant_a_pubkey: c.participant_a.to_string(),
            participant_b_pubkey: c.participant_b.to_string(),
            participant_a_display_name: c.participant_a_display_name.clone(),
            participant_b_display_name: c.participant_b_display_name.clone(),
            created_at: c.created_at,
            last_message_at: c.last_message_at,
            last_message_preview: String::new(),
        }
    }
}

impl From<&StoredMessage> for dm::EncryptedDmMessage {
    fn from(m: &StoredMessage) -> Self {
        dm::EncryptedDmMessage {
            id: m.id.to_string(),
            conversation_id: m.conversation_id.to_string(),
            sender_pubkey: m.sender.to_string(),
            encrypted_payload: m.encrypted_payload.clone(),
            nonce: Bytes::copy_from_slice(&m.nonce),
            ephemeral_pubkey: m
                .ephemeral_pubkey
                .map(|k| Bytes::copy_from_slice(&k))
                .unwrap_or_default(),
            timestamp: m.timestamp,
            server_sequence: m.server_sequence,
            sender_display_name: m.sender_display_name.clone(),
        }
    }
}

/// The `DmMessageEvent` of a committed message, encoded once for every
/// session it goes to.
pub fn message_event(m: &StoredMessage) -> Bytes {
    encode_event(Payload::DmMessageEvent(dm::DmMessageEvent {
        message: Some(m.into()),
    }))
}

/// The `DmConversationCreatedEvent` of a new conversation.
pub fn conversation_created_event(c: &Conversation) -> Bytes {
    encode_event(Payload::DmConversationCreatedEvent(
        dm::DmConversationCreatedEvent {
            conversation: Some(c.into()),
        },
    ))
}

/// The `DmKeyRotatedEvent` of `user`'s newly stored key.
pub fn key_rotated_event(user: &Pubkey, key: &DmKey) -> Bytes {
    encode_event(Payload::DmKeyRotatedEvent(dm::DmKeyRotatedEvent {
        user_pubkey: user.to_string(),
        new_x25519_pubkey: Bytes::copy_from_slice(&key.x25519_pubkey),
        timestamp: key.published_at,
    }))
}
