//! `/api/auth/*` and `/api/users/{pubkey}`.

use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::extract::{bearer_token, AuthUser};
use crate::error::HubError;
use crate::json::{
    ChallengeResponse, ErrorJson, RefreshBody, TokenResponse, UserJson, VerifyBody, WsTicketJson,
};
use crate::model::{parse_display_name, parse_uuid, Pubkey};
use crate::service::{self, auth::VerifyRequest};
use crate::state::AppState;
use crate::tickets::TicketHolder;

#[utoipa::path(post, path = "/api/auth/challenge", tag = "auth",
    responses((status = 200, body = ChallengeResponse), (status = 429, description = "rate_limited (Retry-After)", body = ErrorJson)))]
pub async fn challenge(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.limits.check_auth(&req)?;
    let issued = state
        .auth
        .challenge(state.limits.challenge_client(&req))
        .await?;
    Ok(HttpResponse::Ok().json(ChallengeResponse {
        challenge_id: issued.id.to_string(),
        challenge: hex::encode(issued.bytes),
        expires_at: issued.expires_at_ms,
    }))
}

fn parse_verify(body: VerifyBody) -> Result<VerifyRequest, ApiError> {
    let public_key = Pubkey::parse(&body.public_key)?;
    let challenge_id = parse_uuid(&body.challenge_id, "challenge_id")?;
    let mut signature = [0u8; 64];
    hex::decode_to_slice(&body.signature, &mut signature)
        .map_err(|_| HubError::invalid("signature must be 128 hex characters"))?;
    let display_name = body
        .display_name
        .as_deref()
        .map(parse_display_name)
        .transpose()?;
    Ok(VerifyRequest {
        public_key,
        challenge_id,
        signature,
        display_name,
    })
}

fn token_response(session: service::auth::Session) -> HttpResponse {
    HttpResponse::Ok().json(TokenResponse {
        access_token: session.access_token,
        refresh_token: session.refresh_token,
        token_type: "Bearer".into(),
        expires_in: session.expires_in,
        user: UserJson::from(&session.user),
    })
}

#[utoipa::path(post, path = "/api/auth/verify", tag = "auth", request_body = VerifyBody,
    responses((status = 200, body = TokenResponse), (status = 400, description = "invalid_request", body = ErrorJson),
        (status = 401, description = "bad_signature, challenge_expired or unknown_challenge", body = ErrorJson), (status = 413, description = "payload_too_large", body = ErrorJson), (status = 429, description = "rate_limited (Retry-After)", body = ErrorJson)))]
pub async fn verify(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<VerifyBody>,
) -> Result<HttpResponse, ApiError> {
    state.limits.check_auth(&req)?;
    let request = parse_verify(body.into_inner())?;
    let session = state.auth.verify(request).await?;
    Ok(token_response(session))
}

#[utoipa::path(post, path = "/api/auth/ws-ticket", tag = "auth", security(("bearer" = [])),
    responses((status = 200, description = "a single-use ticket for GET /ws?ticket=, valid 30 seconds", body = WsTicketJson),
        (status = 401, description = "unauthorized or token_expired", body = ErrorJson), (status = 429, description = "rate_limited (Retry-After)", body = ErrorJson)))]
pub async fn ws_ticket(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let token = bearer_token(&req).ok_or(HubError::Unauthorized("missing access token"))?;
    let (user, token_expires_at) = state.jwt.verify_with_expiry(token)?;
    state.limits.check_auth(&req)?;
    let holder = TicketHolder {
        user,
        token_expires_at,
    };
    let ttl = std::time::Duration::from_secs(state.settings.ws_ticket_ttl);
    let (ticket, expires_at) = state.store.issue_ticket(holder, ttl).await?;
    Ok(HttpResponse::Ok().json(WsTicketJson { ticket, expires_at }))
}

#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth", request_body = RefreshBody,
    responses((status = 200, body = TokenResponse), (status = 400, description = "invalid_request", body = ErrorJson),
        (status = 401, description = "invalid_refresh_token", body = ErrorJson), (status = 413, description = "payload_too_large", body = ErrorJson), (status = 429, description = "rate_limited (Retry-After)", body = ErrorJson)))]
pub async fn refresh(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<RefreshBody>,
) -> Result<HttpResponse, ApiError> {
    state.limits.check_auth(&req)?;
    let session = state.auth.refresh(&body.refresh_token).await?;
    Ok(token_response(session))
}

#[utoipa::path(get, path = "/api/users/{pubkey}", tag = "auth", security(("bearer" = [])),
    params(("pubkey" = String, Path, description = "64 hex characters", pattern = "^[0-9a-fA-F]{64}$")),
    responses((status = 200, body = UserJson), (status = 400, description = "invalid_request", body = ErrorJson), (status = 401, description = "unauthorized or token_expired", body = ErrorJson), (status = 404, description = "not_found", body = ErrorJson)))]
pub async fn user(
    state: web::Data<AppState>,
    _caller: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let pubkey = Pubkey::parse(&path)?;
    let user = state.auth.user(pubkey).await?;
    Ok(HttpResponse::Ok().json(UserJson::from(&user)))
}
