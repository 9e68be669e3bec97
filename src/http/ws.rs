//! `GET /ws`: authenticates, then upgrades to a `WsSession`.
//!
//! The token comes from `Authorization: Bearer`, or, for browsers that
//! cannot set headers on a WebSocket, from `?ticket=` (a single-use ticket
//! from `POST /api/auth/ws-ticket`, so no token is put in a URL) or
//! `?access_token=`. A bad token or ticket gets a 401 JSON error and no
//! session exists; a session opened with a ticket lasts as long as the token
//! that asked for the ticket.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::error::ApiError;
use super::extract::bearer_token;
use crate::actors::session::WsSession;
use crate::error::HubError;
use crate::json::ErrorJson;
use crate::state::AppState;

#[derive(Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
    ticket: Option<String>,
}

#[utoipa::path(get, path = "/ws", tag = "websocket", security(("bearer" = [])),
    params(("access_token" = Option<String>, Query, description = "the access token, for clients that cannot set headers"),
        ("ticket" = Option<String>, Query, description = "a single-use ticket from POST /api/auth/ws-ticket (browsers: keeps the token out of URLs)")),
    responses((status = 101, description = "switching to the WebSocket protocol (docs/protocol.md)"),
        (status = 400, description = "invalid_request: not a WebSocket upgrade request", body = ErrorJson), (status = 401, description = "unauthorized or token_expired", body = ErrorJson),
        (status = 403, description = "forbidden_origin", body = ErrorJson)))]
pub async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<TokenQuery>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or(TokenQuery {
            access_token: None,
            ticket: None,
        });
    let (user, expires_at) = match (bearer_token(&req), query.access_token, query.ticket) {
        (Some(token), _, _) => state.jwt.verify_with_expiry(token)?,
        (None, Some(token), _) => state.jwt.verify_with_expiry(&token)?,
        (None, None, Some(ticket)) => {
            let holder = state.store.take_ticket(&ticket).await?;
            (holder.user, holder.token_expires_at)
        }
        (None, None, None) => return Err(HubError::Unauthorized("missing access token").into()),
    };
    check_origin(&req, &state.settings.allowed_origins)?;
    if state.registry.is_closing() {
        return Err(HubError::ShuttingDown.into());
    }
    let admission = state.registry.admit(&user, state.limits.client_key(&req))?;
    // Cluster mode: the node follows the user's events before the session
    // can answer anything, so it misses no push committed after that.
    let watch = match &state.cluster {
        Some(cluster) => Some(cluster.watch(&user).await?),
        None => None,
    };
    let session = WsSession::new(user, expires_at, state.sessions.clone(), admission, watch);
    session
        .start(&req, stream, state.settings.max_frame_bytes)
        .map_err(|e| HubError::invalid(format!("not a WebSocket upgrade: {e}")).into())
}

/// With an allow-list configured, the upgrade must carry one of its origins.
fn check_origin(req: &HttpRequest, allowed: &[String]) -> Result<(), ApiError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let origin = req.headers().get("Origin").and_then(|o| o.to_str().ok());
    match origin {
        Some(o) if allowed.iter().any(|a| a.eq_ignore_ascii_case(o)) => Ok(()),
        _ => Err(HubError::ForbiddenOrigin.into()),
    }
}
