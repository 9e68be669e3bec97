//! The OpenAPI 3 document of the HTTP API, served at `/openapi.json`.
//!
//! Each handler carries its `#[utoipa::path]` next to its code, so the
//! document moves with it; `tests/api/openapi.rs` calls every documented
//! operation against a live hub to keep it true.

use actix_web::HttpResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::json::*;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "united-hub",
        description = "HTTP API of united-hub, a relay of end-to-end-encrypted direct messages. \
                       The WebSocket protocol at /ws is described in docs/protocol.md.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        super::ops::healthz,
        super::ops::metrics,
        super::auth::challenge,
        super::auth::verify,
        super::auth::refresh,
        super::auth::ws_ticket,
        super::auth::user,
        super::dm::publish_key,
        super::dm::get_key,
        super::dm::list_conversations,
        super::dm::create_conversation,
        super::dm::send_message,
        super::dm::history,
        super::dm::offline,
        super::dm::ack,
        super::ws::upgrade,
        openapi_json,
    ),
    components(schemas(
        ChallengeResponse, VerifyBody, RefreshBody, WsTicketJson, UserJson, TokenResponse, PublishKeyBody, KeyJson,
        CreateConversationBody, ConversationJson, ConversationListJson, SendMessageBody, MessageJson,
        HistoryJson, OfflineJson, AckBody, AckJson, ErrorJson, ErrorDetailJson
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("JWT".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json")))]
pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(ApiDoc::openapi().to_json().unwrap_or_default())
}
