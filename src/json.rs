//! The JSON bodies of the HTTP API, field for field as in the contract.
//! The hub serialises them; the reference client (`client`) parses them.
//!
//! X25519 keys and signatures are hex; ciphertext, nonces and ephemeral keys
//! are standard base64 with padding; times are Unix ms.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::model::{Conversation, DmKey, StoredMessage, User};

// Field documentation lives in docs/protocol.md; the schemas here give names,
// types and which fields are required (the OpenAPI document at /openapi.json).

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct ChallengeResponse {
    pub challenge_id: String,
    pub challenge: String,
    pub expires_at: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct VerifyBody {
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub public_key: String,
    #[schema(format = Uuid, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub challenge_id: String,
    #[schema(pattern = "^[0-9a-fA-F]{128}$")]
    pub signature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    pub display_name: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct RefreshBody {
    pub refresh_token: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct UserJson {
    pub public_key: String,
    pub display_name: String,
}

impl From<&User> for UserJson {
    fn from(u: &User) -> Self {
        UserJson {
            public_key: u.public_key.to_string(),
            display_name: u.display_name.clone(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub user: UserJson,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct PublishKeyBody {
    #[schema(pattern = "^(?!0{64}$)[0-9a-fA-F]{64}$")]
    pub x25519_pubkey: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct KeyJson {
    pub ed25519_pubkey: String,
    pub x25519_pubkey: String,
    pub published_at: u64,
}

impl From<&DmKey> for KeyJson {
    fn from(k: &DmKey) -> Self {
        KeyJson {
            ed25519_pubkey: k.ed25519_pubkey.to_string(),
            x25519_pubkey: hex::encode(k.x25519_pubkey),
            published_at: k.published_at,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct CreateConversationBody {
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub recipient_pubkey: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct ConversationJson {
    pub id: String,
    pub participant_a_pubkey: String,
    pub participant_b_pubkey: String,
    pub participant_a_display_name: String,
    pub participant_b_display_name: String,
    pub created_at: u64,
    pub last_message_at: u64,
    pub last_message_preview: String,
}

impl From<&Conversation> for ConversationJson {
    fn from(c: &Conversation) -> Self {
        ConversationJson {
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

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct ConversationListJson {
    pub conversations: Vec<ConversationJson>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct SendMessageBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = Uuid, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub id: Option<String>,
    #[schema(format = Uuid, pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub conversation_id: String,
    #[schema(format = Byte, min_length = 4, max_length = 87384, pattern = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$")]
    pub encrypted_payload: String,
    #[schema(format = Byte, pattern = "^[A-Za-z0-9+/]{32}$")]
    pub nonce: String,
    #[serde(default)]
    #[schema(format = Byte, pattern = "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")]
    pub ephemeral_pubkey: Option<String>,
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    pub timestamp: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct MessageJson {
    pub id: String,
    pub conversation_id: String,
    pub sender_pubkey: String,
    pub encrypted_payload: String,
    pub nonce: String,
    pub ephemeral_pubkey: Option<String>,
    pub timestamp: u64,
    pub server_sequence: u64,
    pub sender_display_name: String,
}

impl From<&StoredMessage> for MessageJson {
    fn from(m: &StoredMessage) -> Self {
        MessageJson {
            id: m.id.to_string(),
            conversation_id: m.conversation_id.to_string(),
            sender_pubkey: m.sender.to_string(),
            encrypted_payload: B64.encode(&m.encrypted_payload),
            nonce: B64.encode(m.nonce),
            ephemeral_pubkey: m.ephemeral_pubkey.map(|k| B64.encode(k)),
            timestamp: m.timestamp,
            server_sequence: m.server_sequence,
            sender_display_name: m.sender_display_name.clone(),
        }
    }
}

impl MessageJson {
    /// The JSON form of a message received over the WebSocket.
    pub fn from_proto(m: &crate::proto::dm::EncryptedDmMessage) -> Self {
        MessageJson {
            id: m.id.clone(),
            conversation_id: m.conversation_id.clone(),
            sender_pubkey: m.sender_pubkey.clone(),
            encrypted_payload: B64.encode(&m.encrypted_payload),
            nonce: B64.encode(&m.nonce),
            ephemeral_pubkey: (!m.ephemeral_pubkey.is_empty())
                .then(|| B64.encode(&m.ephemeral_pubkey)),
            timestamp: m.timestamp,
            server_sequence: m.server_sequence,
            sender_display_name: m.sender_display_name.clone(),
        }
    }

    /// The WebSocket form of a message read over HTTP (fields that are not
    /// base64 come out empty, which no check takes for a real value).
    pub fn to_proto(&self) -> crate::proto::dm::EncryptedDmMessage {
        let bytes = |s: &str| B64.decode(s).unwrap_or_default();
        crate::proto::dm::EncryptedDmMessage {
            id: self.id.clone(),
            conversation_id: self.conversation_id.clone(),
            sender_pubkey: self.sender_pubkey.clone(),
            encrypted_payload: bytes(&self.encrypted_payload).into(),
            nonce: bytes(&self.nonce).into(),
            ephemeral_pubkey: self
                .ephemeral_pubkey
                .as_deref()
                .map(bytes)
                .unwrap_or_default()
                .into(),
            timestamp: self.timestamp,
            server_sequence: self.server_sequence,
            sender_display_name: self.sender_display_name.clone(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct HistoryJson {
    pub messages: Vec<MessageJson>,
    pub has_more: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct OfflineJson {
    pub messages: Vec<MessageJson>,
    /// Undelivered entries remain: call again.
    pub has_more: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct AckBody {
    #[schema(max_items = 1000, value_type = Vec<uuid::Uuid>)]
    pub message_ids: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct AckJson {
    pub acked: u32,
}

/// `{"error": {"code": ..., "message": ...}}`
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct ErrorJson {
    pub error: ErrorDetailJson,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct ErrorDetailJson {
    pub code: String,
    pub message: String,
}

/// `POST /api/auth/ws-ticket`: a single-use ticket for `GET /ws?ticket=`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct WsTicketJson {
    pub ticket: String,
    /// Unix ms.
    pub expires_at: u64,
}
