//! `/healthz` and `/metrics`.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::actors::db_executor::Ping;
use crate::state::AppState;

/// How long `/healthz` waits for the database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "{\"status\": \"ok\"}"), (status = 503, description = "the database does not answer")))]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let writer = state.writer.send(Ping).timeout(HEALTH_TIMEOUT);
    let reader = state.read(|conn| {
        conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    });
    let (writer, reader) = futures_util::future::join(writer, reader).await;
    match (writer, reader) {
        (Ok(Ok(())), Ok(())) => HttpResponse::Ok().json(json!({"status": "ok"})),
        _ => HttpResponse::ServiceUnavailable().json(json!({"status": "unavailable"})),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
