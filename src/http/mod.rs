//! The HTTP surface: routes, extractor error handling and the access log.
//!
//! # Architecture Invariant
//! No SQL and no business rules here: handlers parse, call `service`, render.

mod auth;
pub mod body;
mod dm;
pub mod error;
pub mod extract;
pub mod openapi;
mod ops;
mod webapp;
mod ws;

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::header;
use actix_web::{web, Error, HttpRequest, ResponseError as _};

use self::error::ApiError;
use crate::error::HubError;
use crate::state::AppState;

/// Registers every route, with JSON errors for whatever the extractors refuse.
pub fn configure(cfg: &mut web::ServiceConfig, state: &AppState) {
    let json = web::JsonConfig::default()
        .limit(state.settings.max_json_bytes())
        .error_handler(json_error);
    let query = web::QueryConfig::default().error_handler(query_error);
    cfg.app_data(json)
        .app_data(query)
        .service(resource("/healthz", "GET").route(web::get().to(ops::healthz)))
        .service(resource("/metrics", "GET").route(web::get().to(ops::metrics)))
        .service(resource("/openapi.json", "GET").route(web::get().to(openapi::openapi_json)))
        .service(resource("/api/auth/challenge", "POST").route(web::post().to(auth::challenge)))
        .service(resource("/api/auth/verify", "POST").route(web::post().to(auth::verify)))
        .service(resource("/api/auth/refresh", "POST").route(web::post().to(auth::refresh)))
        .service(resource("/api/auth/ws-ticket", "POST").route(web::post().to(auth::ws_ticket)))
        .service(resource("/api/users/{pubkey}", "GET").route(web::get().to(auth::user)))
        .service(resource("/api/dm/keys", "POST").route(web::post().to(dm::publish_key)))
        .service(resource("/api/dm/keys/{pubkey}", "GET").route(web::get().to(dm::get_key)))
        .service(
            resource("/api/dm/conversations", "GET, POST")
                .route(web::get().to(dm::list_conversations))
                .route(web::post().to(dm::create_conversation)),
        )
        .service(resource("/api/dm/messages", "POST").route(web::post().to(dm::send_message)))
        .service(
            resource("/api/dm/messages/{conversation_id}", "GET").route(web::get().to(dm::history)),
        )
        .service(resource("/api/dm/offline", "GET").route(web::get().to(dm::offline)))
        .service(resource("/api/dm/offline/ack", "POST").route(web::post().to(dm::ack)))
        .service(resource("/ws", "GET").route(web::get().to(ws::upgrade)))
        .configure(webapp::routes)
        .default_service(web::to(not_found));
}

/// A resource that answers a wrong method with a JSON 405 and an `Allow`
/// header naming `allow`, the methods its routes serve.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        let mut res = ApiError(HubError::MethodNotAllowed).error_response();
        res.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        res
    }))
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(HubError::NotFound("no such route").into())
}

fn json_error(err: JsonPayloadError, _: &HttpRequest) -> Error {
    match err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError(HubError::PayloadTooLarge(
                "the request body is too large".into(),
            ))
            .into()
        }
        JsonPayloadError::ContentType => ApiError(HubError::invalid(
            "the body must be JSON (Content-Type: application/json)",
        ))
        .into(),
        JsonPayloadError::Deserialize(e) => {
            ApiError(HubError::invalid(format!("malformed JSON: {e}"))).into()
        }
        other => ApiError(HubError::invalid(format!("unreadable body: {other}"))).into(),
    }
}

fn query_error(err: QueryPayloadError, _: &HttpRequest) -> Error {
    ApiError(HubError::invalid(format!("bad query: {err}"))).into()
}

/// The access log and request-latency metric. Logs the route pattern, never
/// the path (it may hold ids) or the query string (it may hold a token).
pub async fn access_log(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    if let Some(state) = state {
        if route != "/ws" {
            state
                .metrics
                .request_seconds
                .with_label_values(&[route.as_str(), &status.to_string()])
                .observe(elapsed.as_secs_f64());
        }
    }
    tracing::info!(
        %method,
        route,
        status,
        micros = elapsed.as_micros() as u64,
        "request"
    );
    Ok(res)
}
