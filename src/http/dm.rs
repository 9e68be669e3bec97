//! `/api/dm/*`.

use actix_web::http::header::ContentType;
use actix_web::{web, HttpResponse};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;

use super::body::BudgetedBody;
use super::error::ApiError;
use super::extract::AuthUser;
use crate::answers::AnswerPermit;
use crate::error::HubError;
use crate::json::{
    AckBody, AckJson, ConversationJson, ConversationListJson, CreateConversationBody, ErrorJson,
    HistoryJson, KeyJson, MessageJson, OfflineJson, PublishKeyBody, SendMessageBody,
};
use crate::model::{parse_uuid, HistoryPage, NewMessage, Pubkey, DEFAULT_HISTORY_LIMIT};
use crate::service;
use crate::service::dm::DmService;

fn created_or_ok(created: bool) -> actix_web::HttpResponseBuilder {
    if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    }
}

#[utoipa::path(post, path = "/api/dm/keys", tag = "keys", security(("bearer" = [])), request_body = PublishKeyBody,
    responses((status = 200, body = KeyJson), (status = 400, description = "invalid_request", body = ErrorJson), (status = 401, description = "unauthorized or token_expired", body = ErrorJson), (status = 413, description = "payload_too_large", body = ErrorJson), (status = 429, description = "rate_limited (Retry-After)", body = ErrorJson)))]
pub async fn publish_key(
    dm: web::Data<DmService>,
    AuthUser(user): AuthUser,
    body: web::Json<PublishKeyBody>,
) -> Result<HttpResponse, ApiError> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(&body.x25519_pubkey, &mut key)
        .map_err(|_| HubError::invalid("x25519_pubkey must be 64 hex characters"))?;
    let stored = dm.publish_key(&user, key).await?;
    Ok(HttpResponse::Ok().json(KeyJson::from(&stored)))
}

#[utoipa::path(get, path = "/api/dm/keys/{pubkey}", tag = "keys", security(("bearer" = [])),
    params(("pubkey" = String, Path, description = "64 hex characters", pattern = "^[0-9a-fA-F]{64}$")),
    responses((status = 200, body = KeyJson), (status = 400, description = "invalid_request", body = ErrorJson), (status = 401, description = "unauthorized or token_expired", body = ErrorJson), (status = 404, description = "not_found", body = ErrorJson)))]
pub async fn get_key(
    dm: web::Data<DmService>,
    _caller: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let key = dm.get_key(Pubkey::parse(&path)?).await?;
    Ok(HttpResponse::Ok().json(KeyJson::from(&key)))
}

#[utoipa::path(post, path = "/api/dm/conversations", tag = "conversations", security(("bearer" = [])),
    request_body = CreateConversationBody,
    responses((status = 201, description = "created", body = ConversationJson), (status = 200, description = "already existed", body = ConversationJson),
        (status = 400, description = "invalid_request or self_conversation", body = ErrorJson), (status = 401, description = "unauthorized or token_expired", body = ErrorJson), (status = 404, description = "not_found", body = ErrorJson), (status = 413, description = "payload_too_large", body = ErrorJson), (status = 429, description = "rate_limited (Retry-After)", body = ErrorJson)))]
pub async fn create_conversation(
    dm: web::Data<DmService>,
    AuthUser(user): AuthUser,
    body: web::Json<CreateConversationBody>,
) -> Result<HttpResponse, ApiError> {
    let recipient = Pubkey::parse(&body.recipient_pubkey)?;
    let (conversation, created) = dm.create_conversation(&user, recipient).await?;
    Ok(created_or_ok(created).json(ConversationJson::from(&conversation)))
}

#[utoipa::path(get, path = "/api/dm/conversations", tag = "conversations", security(("bearer" = [])),
    responses((status = 200, body = ConversationListJson), (status = 401, description = "unauthorized or token_expired", body = ErrorJson)))]
pub async fn list_conversations(
    dm: web::Data<DmService>,
    AuthUser(user): AuthUser,
) -> Result<HttpResponse, ApiError> {
    let conversations = dm.list_conversations(&user).await?;
    Ok(HttpResponse::Ok().json(ConversationListJson {
        conversations: conversations.iter().map(ConversationJson::from).collect(),
    }))
}

/// A 200 JSON answer that holds `permit` until the connection has taken it.
fn budgeted_json(
    body: &impl serde::Serialize,
    permit: AnswerPermit,
) -> Result<HttpResponse, ApiError> {
    let json = serde_json::to_vec(body).map_err(HubError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(BudgetedBody::new(Bytes::from(json), permit)))
}

fn b64(value: &str, field: &str) -> Result<Vec<u8>, ApiError> {
    B64.decode(value)
        .map_err(|_| HubError::invalid(format!("{field} is not standard base64")).into())
}

#[utoipa::path(post, path = "/api/dm/messages", tag = "messages", security(("bearer" = [])), request_body = SendMessageBody,
    responses((status = 201, description = "stored and committed", body = MessageJson), (status = 200, description = "an idempotent resend", body = MessageJson),
        (status = 400, description = "invalid_request", body = ErrorJson), (status = 401, description = "unauthorized or token_expired", body = ErrorJson), (status = 403, description = "not_participant", body = ErrorJson), (status = 404, description = "not_found", body = ErrorJson), (status = 409, description = "conflict: the id was used with other content", body = ErrorJson), (status = 413, description = "payload_too_large", body = ErrorJson), (status = 429, description = "rate_limited (Retry-After)", body = ErrorJson)))]
pub async fn send_message(
    dm: web::Data<DmService>,
    AuthUser(user): AuthUser,
    body: web::Json<SendMessageBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let payload = b64(&body.encrypted_payload, "encrypted_payload")?;
    let nonce = b64(&body.nonce, "nonce")?;
    let ephemeral = body
        .ephemeral_pubkey
        .as_deref()
        .map(|k| b64(k, "ephemeral_pubkey"))
        .transpose()?;
    let message = NewMessage::validate(
        body.id.as_deref(),
        &body.conversation_id,
        Bytes::from(payload),
        &nonce,
        ephemeral.as_deref(),
        body.timestamp,
        dm.max_payload_bytes(),
    )?;
    let outcome = dm.send(&user, message).await?;
    Ok(created_or_ok(outcome.created).json(MessageJson::from(&*outcome.message)))
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
}

impl HistoryQuery {
    fn page(&self) -> Result<(HistoryPage, u32), ApiError> {
        let limit = match self.limit {
            Some(0) => return Err(HubError::invalid("limit must be at least 1").into()),
            Some(n) => n,
            None => DEFAULT_HISTORY_LIMIT,
        };
        let page = match (self.before, self.after) {
            (Some(_), Some(_)) => {
                return Err(HubError::invalid("give before or after, not both").into())
            }
            (Some(0), None) => return Err(HubError::invalid("before must be at least 1").into()),
            (before, None) => HistoryPage::Before(before),
            (None, Some(after)) => HistoryPage::After(after),
        };
        Ok((page, limit))
    }
}

#[utoipa::path(get, path = "/api/dm/messages/{conversation_id}", tag = "messages", security(("bearer" = [])),
    params(("conversation_id" = String, Path, description = "UUID", format = Uuid),
        ("before" = Option<u64>, Query, description = "newest first, server_sequence < before (not with after)", minimum = 1),
        ("after" = Option<u64>, Query, description = "oldest first, server_sequence > after"),
        ("limit" = Option<u32>, Query, description = "1 or more, default 50, served as at most 100", minimum = 1)),
    responses((status = 200, body = HistoryJson), (status = 400, description = "invalid_request", body = ErrorJson), (status = 401, description = "unauthorized or token_expired", body = ErrorJson), (status = 403, description = "not_participant", body = ErrorJson), (status = 404, description = "not_found", body = ErrorJson), (status = 429, description = "rate_limited (Retry-After)", body = ErrorJson)))]
pub async fn history(
    dm: web::Data<DmService>,
    AuthUser(user): AuthUser,
    path: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let conversation = parse_uuid(&path, "conversation_id")?;
    let (page, limit) = query.page()?;
    let (history, permit) = dm.history(&user, conversation, page, limit).await?;
    let body = HistoryJson {
        messages: history.messages.iter().map(MessageJson::from).collect(),
        has_more: history.has_more,
    };
    budgeted_json(&body, permit)
}

#[derive(Deserialize)]
pub struct OfflineQuery {
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/dm/offline", tag = "offline", security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, description = "1 or more, default 1000, served as at most 1000", minimum = 1)),
    responses((status = 200, description = "undelivered entries, oldest first; now marked delivered; has_more: call again", body = OfflineJson), (status = 400, description = "invalid_request", body = ErrorJson), (status = 401, description = "unauthorized or token_expired", body = ErrorJson), (status = 429, description = "rate_limited (Retry-After)", body = ErrorJson)))]
pub async fn offline(
    dm: web::Data<DmService>,
    AuthUser(user): AuthUser,
    query: web::Query<OfflineQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = match query.limit {
        Some(0) => return Err(HubError::invalid("limit must be at least 1").into()),
        Some(n) => n,
        None => 0,
    };
    let (page, permit) = dm.take_offline(&user, limit).await?;
    let body = OfflineJson {
        messages: page.messages.iter().map(MessageJson::from).collect(),
        has_more: page.has_more,
    };
    budgeted_json(&body, permit)
}

#[utoipa::path(post, path = "/api/dm/offline/ack", tag = "offline", security(("bearer" = [])), request_body = AckBody,
    responses((status = 200, body = AckJson), (status = 400, description = "invalid_request", body = ErrorJson), (status = 401, description = "unauthorized or token_expired", body = ErrorJson), (status = 413, description = "payload_too_large", body = ErrorJson)))]
pub async fn ack(
    dm: web::Data<DmService>,
    AuthUser(user): AuthUser,
    body: web::Json<AckBody>,
) -> Result<HttpResponse, ApiError> {
    let ids = service::dm::parse_ack_ids(body.message_ids.iter().map(String::as_str))?;
    let acked = dm.ack_offline(&user, ids).await?;
    Ok(HttpResponse::Ok().json(AckJson { acked }))
}
