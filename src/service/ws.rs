//! WebSocket requests: one `Envelope` in, exactly one `Envelope` out with the
//! same `request_id`, through the same `service` functions as HTTP.

use std::sync::Arc;

use bytes::Bytes;

use crate::error::ApiError;
use crate::model::{
    parse_uuid, HistoryPage, NewMessage, Pubkey, StoredMessage, DEFAULT_HISTORY_LIMIT,
};
use crate::proto::{self, dm, Payload};
use crate::service;
use crate::state::AppState;

/// True for the payloads a client may send; the rest are server-only.
pub fn is_request(payload: &Payload) -> bool {
    matches!(
        payload,
        Payload::DmSendRequest(_)
            | Payload::DmHistoryRequest(_)
            | Payload::DmConversationListRequest(_)
            | Payload::DmConversationCreateRequest(_)
            | Payload::DmOfflineRequest(_)
            | Payload::DmOfflineAckRequest(_)
    )
}

/// The error envelope for `request_id`.
pub fn error_envelope(request_id: &str, err: &ApiError) -> Bytes {
    err.log();
    proto::encode_envelope(
        request_id.to_owned(),
        Payload::Error(err.to_proto(request_id)),
    )
}

/// Handles one request and encodes its answer.
pub async fn handle(
    state: Arc<AppState>,
    user: Pubkey,
    request_id: String,
    payload: Payload,
) -> Bytes {
    match dispatch(&state, &user, payload).await {
        Ok(answer) => proto::encode_envelope(request_id, answer),
        Err(err) => error_envelope(&request_id, &err),
    }
}

fn messages(list: &[StoredMessage]) -> Vec<dm::EncryptedDmMessage> {
    list.iter().map(StoredMessage::to_proto).collect()
}

async fn dispatch(
    state: &Arc<AppState>,
    user: &Pubkey,
    payload: Payload,
) -> Result<Payload, ApiError> {
    match payload {
        Payload::DmSendRequest(r) => {
            let message = NewMessage::validate(
                (!r.id.is_empty()).then_some(r.id.as_str()),
                &r.conversation_id,
                r.encrypted_payload,
                &r.nonce,
                (!r.ephemeral_pubkey.is_empty()).then_some(&r.ephemeral_pubkey[..]),
                r.timestamp,
                state.settings.max_payload_bytes,
            )?;
            let outcome = service::dm::send(state, user, message).await?;
            Ok(Payload::DmSendResponse(dm::DmSendResponse {
                message: Some(outcome.message.to_proto()),
            }))
        }
        Payload::DmHistoryRequest(r) => {
            let conversation = parse_uuid(&r.conversation_id, "conversation_id")?;
            let page = if r.after_sequence > 0 {
                HistoryPage::After(r.after_sequence)
            } else {
                HistoryPage::Before((r.before_sequence > 0).then_some(r.before_sequence))
            };
            let limit = if r.limit == 0 {
                DEFAULT_HISTORY_LIMIT
            } else {
                r.limit
            };
            let history = service::dm::history(state, user, conversation, page, limit).await?;
            Ok(Payload::DmHistoryResponse(dm::DmHistoryResponse {
                messages: messages(&history.messages),
                has_more: history.has_more,
            }))
        }
        Payload::DmConversationListRequest(_) => {
            let list = service::dm::list_conversations(state, user).await?;
            Ok(Payload::DmConversationListResponse(
                dm::DmConversationListResponse {
                    conversations: list.iter().map(|c| c.to_proto()).collect(),
                },
            ))
        }
        Payload::DmConversationCreateRequest(r) => {
            let recipient = Pubkey::parse(&r.recipient_pubkey)?;
            let (conversation, created) =
                service::dm::create_conversation(state, user, recipient).await?;
            Ok(Payload::DmConversationCreateResponse(
                dm::DmConversationCreateResponse {
                    conversation: Some(conversation.to_proto()),
                    created,
                },
            ))
        }
        Payload::DmOfflineRequest(_) => {
            let list = service::dm::take_offline(state, user).await?;
            Ok(Payload::DmOfflineMessagesResponse(
                dm::DmOfflineMessagesResponse {
                    messages: messages(&list),
                },
            ))
        }
        Payload::DmOfflineAckRequest(r) => {
            let ids = service::dm::parse_ack_ids(r.message_ids.iter().map(String::as_str))?;
            let acked = service::dm::ack_offline(state, user, ids).await?;
            Ok(Payload::DmOfflineAckResponse(dm::DmOfflineAckResponse {
                acked,
            }))
        }
        _ => Err(ApiError::invalid("this payload is sent only by the server")),
    }
}
