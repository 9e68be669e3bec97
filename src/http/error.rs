//! A [`HubError`] at the HTTP and WebSocket edge: its status, its JSON
//! body and `Retry-After` header, and its WebSocket `ErrorResponse`. Only
//! the edge (`http::*`, the session and its codec) uses this.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::error::HubError;
use crate::json::{ErrorDetailJson, ErrorJson};
use crate::proto;

/// A handler's error: the domain's, answered the contract's way.
pub struct ApiError(pub HubError);

impl<E: Into<HubError>> From<E> for ApiError {
    fn from(err: E) -> Self {
        ApiError(err.into())
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The HTTP status of each kind of error (contract §4).
pub fn status(err: &HubError) -> StatusCode {
    match err {
        HubError::InvalidRequest(_) | HubError::SelfConversation => StatusCode::BAD_REQUEST,
        HubError::Unauthorized(_)
        | HubError::TokenExpired
        | HubError::BadSignature
        | HubError::ChallengeExpired
        | HubError::UnknownChallenge
        | HubError::InvalidRefreshToken => StatusCode::UNAUTHORIZED,
        HubError::NotParticipant | HubError::ForbiddenOrigin => StatusCode::FORBIDDEN,
        HubError::NotFound(_) => StatusCode::NOT_FOUND,
        HubError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        HubError::Conflict(_) => StatusCode::CONFLICT,
        HubError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        HubError::RateLimited { .. } | HubError::TooManySessions(_) => {
            StatusCode::TOO_MANY_REQUESTS
        }
        HubError::ShuttingDown | HubError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        HubError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        status(&self.0)
    }

    fn error_response(&self) -> HttpResponse {
        let err = &self.0;
        err.log();
        let mut res = HttpResponse::build(status(err));
        if let Some(retry_after) = err.retry_after() {
            res.insert_header(("Retry-After", retry_after.to_string()));
        }
        if let HubError::TooManySessions(_) = err {
            res.insert_header(("Retry-After", "5"));
        }
        res.json(ErrorJson {
            error: ErrorDetailJson {
                code: err.code().to_owned(),
                message: err.to_string(),
            },
        })
    }
}

/// The WebSocket form of `err`, answering `request_id`.
pub fn ws_error(err: &HubError, request_id: &str) -> proto::ws::ErrorResponse {
    proto::ws::ErrorResponse {
        code: u32::from(status(err).as_u16()),
        message: err.to_string(),
        request_id: request_id.to_owned(),
        error_code: err.code().to_owned(),
        retry_after: err.retry_after().unwrap_or(0),
    }
}
