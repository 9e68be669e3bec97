//! The WebSocket's wire, beside the session: one binary `Envelope` in, its
//! request validated and run through the same `service` functions as HTTP,
//! exactly one `Envelope` out with the same `request_id`. The services know
//! nothing of frames or protobuf; this codec and `proto`'s conversions do.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use uuid::Uuid;

use crate::answers::AnswerPermit;
use crate::error::HubError;
use crate::model::{
    parse_uuid, HistoryPage, NewMessage, Pubkey, StoredMessage, DEFAULT_HISTORY_LIMIT,
};
use crate::proto::{self, dm, Envelope, Payload};
use crate::service;
use crate::service::dm::DmService;

/// A request read from a frame, validated, not yet run.
#[derive(Debug)]
pub enum Request {
    Send(NewMessage),
    History {
        conversation: Uuid,
        page: HistoryPage,
        limit: u32,
    },
    ListConversations,
    CreateConversation(Pubkey),
    /// The page size asked for (0: the default).
    Offline(u32),
    Ack(Vec<Uuid>),
}

/// Why a frame could not be used at all (it counts toward the bad-frame limit).
#[derive(Debug, PartialEq, Eq)]
pub struct BadFrame {
    /// The Envelope's `request_id`, when it could be read.
    pub request_id: String,
    pub why: &'static str,
}

/// Decodes a binary frame into its `request_id` and a client payload.
pub fn decode_frame(data: Bytes) -> Result<(String, Payload), BadFrame> {
    let envelope = Envelope::decode(data).map_err(|_| BadFrame {
        request_id: String::new(),
        why: "the frame is not a protobuf Envelope",
    })?;
    let request_id = envelope.request_id;
    let Some(payload) = envelope.payload else {
        return Err(BadFrame {
            request_id,
            why: "the Envelope has no payload",
        });
    };
    if !is_request(&payload) {
        return Err(BadFrame {
            request_id,
            why: "this payload is sent only by the server",
        });
    }
    Ok((request_id, payload))
}

/// True for the payloads a client may send; the rest are server-only.
pub fn is_request(payload: &Payload) -> bool {
    matches!(
        payload,
        Payload::AuthRequest(_)
            | Payload::DmSendRequest(_)
            | Payload::DmHistoryRequest(_)
            | Payload::DmConversationListRequest(_)
            | Payload::DmConversationCreateRequest(_)
            | Payload::DmOfflineRequest(_)
            | Payload::DmOfflineAckRequest(_)
    )
}

/// Validates a client payload into a [`Request`]: the same rules as HTTP.
pub fn parse(payload: Payload, max_payload_bytes: usize) -> Result<Request, HubError> {
    Ok(match payload {
        Payload::DmSendRequest(r) => Request::Send(NewMessage::validate(
            (!r.id.is_empty()).then_some(r.id.as_str()),
            &r.conversation_id,
            r.encrypted_payload,
            &r.nonce,
            (!r.ephemeral_pubkey.is_empty()).then_some(&r.ephemeral_pubkey[..]),
            r.timestamp,
            max_payload_bytes,
        )?),
        Payload::DmHistoryRequest(r) => Request::History {
            conversation: parse_uuid(&r.conversation_id, "conversation_id")?,
            page: if r.after_sequence > 0 {
                HistoryPage::After(r.after_sequence)
            } else {
                HistoryPage::Before((r.before_sequence > 0).then_some(r.before_sequence))
            },
            limit: if r.limit == 0 {
                DEFAULT_HISTORY_LIMIT
            } else {
                r.limit
            },
        },
        Payload::DmConversationListRequest(_) => Request::ListConversations,
        Payload::DmConversationCreateRequest(r) => {
            Request::CreateConversation(Pubkey::parse(&r.recipient_pubkey)?)
        }
        Payload::DmOfflineRequest(r) => Request::Offline(r.limit),
        Payload::DmOfflineAckRequest(r) => Request::Ack(service::dm::parse_ack_ids(
            r.message_ids.iter().map(String::as_str),
        )?),
        _ => return Err(HubError::invalid("this payload is sent only by the server")),
    })
}

/// The error envelope for `request_id`.
pub fn error_envelope(request_id: &str, err: &HubError) -> Bytes {
    err.log();
    proto::encode_envelope(
        request_id.to_owned(),
        Payload::Error(crate::http::error::ws_error(err, request_id)),
    )
}

/// Runs one request and encodes its answer. A history or offline page
/// comes with its share of the answer budget, shrunk to the answer's size:
/// the session holds it until the socket has taken the answer.
pub async fn handle(
    dm: Arc<DmService>,
    user: Pubkey,
    request_id: String,
    payload: Payload,
) -> (Bytes, Option<AnswerPermit>) {
    let answer = match parse(payload, dm.max_payload_bytes()) {
        Ok(request) => execute(&dm, &user, request).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok((answer, mut permit)) => {
            let bytes = proto::encode_envelope(request_id, answer);
            if let Some(p) = permit.as_mut() {
                p.shrink_to(bytes.len());
            }
            (bytes, permit)
        }
        Err(err) => (error_envelope(&request_id, &err), None),
    }
}

fn messages(list: &[StoredMessage]) -> Vec<dm::EncryptedDmMessage> {
    list.iter().map(dm::EncryptedDmMessage::from).collect()
}

async fn execute(
    dm: &DmService,
    user: &Pubkey,
    request: Request,
) -> Result<(Payload, Option<AnswerPermit>), HubError> {
    let answer = match request {
        Request::Send(message) => {
            let outcome = dm.send(user, message).await?;
            Payload::DmSendResponse(dm::DmSendResponse {
                message: Some(outcome.message.as_ref().into()),
            })
        }
        Request::History {
            conversation,
            page,
            limit,
        } => {
            let (history, permit) = dm.history(user, conversation, page, limit).await?;
            let answer = Payload::DmHistoryResponse(dm::DmHistoryResponse {
                messages: messages(&history.messages),
                has_more: history.has_more,
            });
            return Ok((answer, Some(permit)));
        }
        Request::ListConversations => {
            let list = dm.list_conversations(user).await?;
            Payload::DmConversationListResponse(dm::DmConversationListResponse {
                conversations: list.iter().map(dm::DmConversation::from).collect(),
            })
        }
        Request::CreateConversation(recipient) => {
            let (conversation, created) = dm.create_conversation(user, recipient).await?;
            Payload::DmConversationCreateResponse(dm::DmConversationCreateResponse {
                conversation: Some((&conversation).into()),
                created,
            })
        }
        Request::Offline(limit) => {
            let (page, permit) = dm.take_offline(user, limit).await?;
            let answer = Payload::DmOfflineMessagesResponse(dm::DmOfflineMessagesResponse {
                messages: messages(&page.messages),
                has_more: page.has_more,
            });
            return Ok((answer, Some(permit)));
        }
        Request::Ack(ids) => {
            let acked = dm.ack_offline(user, ids).await?;
            Payload::DmOfflineAckResponse(dm::DmOfflineAckResponse { acked })
        }
    };
    Ok((answer, None))
}
