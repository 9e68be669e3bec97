//! `/healthz` and `/metrics`.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::state::AppState;

/// How long `/healthz` waits for the database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "{\"status\": \"ok\"}"), (status = 503, description = "the database (or, in cluster mode, NATS) does not answer")))]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let database = tokio::time::timeout(HEALTH_TIMEOUT, state.store.health()).await;
    let bus = state.cluster.as_ref().is_none_or(|c| c.bus_connected());
    match database {
        Ok(Ok(())) if bus => HttpResponse::Ok().json(json!({"status": "ok"})),
        _ => HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(json!({"status": "unavailable"})),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
