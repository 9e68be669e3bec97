//! The HTTP surface: routes, extractor error handling and the access log.
//!
//! # Architecture Invariant
//! No SQL and no business rules here: handlers parse, call `service`, render.

mod auth;
mod dm;
pub mod extract;
mod ops;
mod ws;

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::{web, Error, HttpRequest};

use crate::error::ApiError;
use crate::state::AppState;

/// Registers every route, with JSON errors for whatever the extractors refuse.
pub fn configure(cfg: &mut web::ServiceConfig, state: &AppState) {
    let json = web::JsonConfig::default()
        .limit(state.settings.max_json_bytes())
        .error_handler(json_error);
    let query = web::QueryConfig::default().error_handler(query_error);
    cfg.app_data(json)
        .app_data(query)
        .service(resource("/healthz").route(web::get().to(ops::healthz)))
        .service(resource("/metrics").route(web::get().to(ops::metrics)))
        .service(resource("/api/auth/challenge").route(web::post().to(auth::challenge)))
        .service(resource("/api/auth/verify").route(web::post().to(auth::verify)))
        .service(resource("/api/auth/refresh").route(web::post().to(auth::refresh)))
        .service(resource("/api/users/{pubkey}").route(web::get().to(auth::user)))
        .service(resource("/api/dm/keys").route(web::post().to(dm::publish_key)))
        .service(resource("/api/dm/keys/{pubkey}").route(web::get().to(dm::get_key)))
        .service(
            resource("/api/dm/conversations")
                .route(web::get().to(dm::list_conversations))
                .route(web::post().to(dm::create_conversation)),
        )
        .service(resource("/api/dm/messages").route(web::post().to(dm::send_message)))
        .service(resource("/api/dm/messages/{conversation_id}").route(web::get().to(dm::history)))
        .service(resource("/api/dm/offline").route(web::get().to(dm::offline)))
        .service(resource("/api/dm/offline/ack").route(web::post().to(dm::ack)))
        .service(resource("/ws").route(web::get().to(ws::upgrade)))
        .default_service(web::to(not_found));
}

/// A resource that answers a wrong method with a JSON 405.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route"))
}

async fn method_not_allowed() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

fn json_error(err: JsonPayloadError, _: &HttpRequest) -> Error {
    match err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::PayloadTooLarge("the request body is too large".into()).into()
        }
        JsonPayloadError::ContentType => {
            ApiError::invalid("the body must be JSON (Content-Type: application/json)").into()
        }
        JsonPayloadError::Deserialize(e) => {
            ApiError::invalid(format!("malformed JSON: {e}")).into()
        }
        other => ApiError::invalid(format!("unreadable body: {other}")).into(),
    }
}

fn query_error(err: QueryPayloadError, _: &HttpRequest) -> Error {
    ApiError::invalid(format!("bad query: {err}")).into()
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
