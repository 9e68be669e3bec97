//! The one error type of the API boundary.
//!
//! Every failure a client can see, over HTTP or WebSocket, is an [`ApiError`]:
//! it knows its HTTP status, its stable snake_case code and a message for
//! people. Internal causes are kept as `source()` and logged, never sent.

use crate::json::{ErrorDetailJson, ErrorJson};
use crate::proto;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("you cannot open a conversation with yourself")]
    SelfConversation,
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("the access token has expired")]
    TokenExpired,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the challenge has expired")]
    ChallengeExpired,
    #[error("unknown or already used challenge")]
    UnknownChallenge,
    #[error("the refresh token is unknown, expired or already used")]
    InvalidRefreshToken,
    #[error("you are not a participant of this conversation")]
    NotParticipant,
    #[error("this origin may not open a WebSocket here")]
    ForbiddenOrigin,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(&'static str),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("too many requests; retry after {retry_after} s")]
    RateLimited { retry_after: u32 },
    /// A session cap (per user or per IP): close one before opening another.
    #[error("{0}")]
    TooManySessions(String),
    #[error("the hub is shutting down")]
    ShuttingDown,
    #[error("the database or the cluster bus cannot be reached; retry after {retry_after} s")]
    Unavailable { retry_after: u32 },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        ApiError::InvalidRequest(msg.into())
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(err.into())
    }

    /// The stable machine-readable code of the contract.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::SelfConversation => "self_conversation",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::TokenExpired => "token_expired",
            ApiError::BadSignature => "bad_signature",
            ApiError::ChallengeExpired => "challenge_expired",
            ApiError::UnknownChallenge => "unknown_challenge",
            ApiError::InvalidRefreshToken => "invalid_refresh_token",
            ApiError::NotParticipant => "not_participant",
            ApiError::ForbiddenOrigin => "forbidden_origin",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RateLimited { .. } | ApiError::TooManySessions(_) => "rate_limited",
            ApiError::ShuttingDown | ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) | ApiError::SelfConversation => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_)
            | ApiError::TokenExpired
            | ApiError::BadSignature
            | ApiError::ChallengeExpired
            | ApiError::UnknownChallenge
            | ApiError::InvalidRefreshToken => StatusCode::UNAUTHORIZED,
            ApiError::NotParticipant | ApiError::ForbiddenOrigin => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } | ApiError::TooManySessions(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::ShuttingDown | ApiError::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The WebSocket form of this error, answering `request_id`.
    pub fn to_proto(&self, request_id: &str) -> proto::ws::ErrorResponse {
        proto::ws::ErrorResponse {
            code: u32::from(self.status().as_u16()),
            message: self.to_string(),
            request_id: request_id.to_owned(),
            error_code: self.code().to_owned(),
            retry_after: match self {
                ApiError::RateLimited { retry_after } | ApiError::Unavailable { retry_after } => {
                    *retry_after
                }
                _ => 0,
            },
        }
    }

    /// Logs the cause of a 5xx; client errors are the client's business.
    pub fn log(&self) {
        if let ApiError::Internal(cause) = self {
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        self.log();
        let mut res = HttpResponse::build(self.status());
        if let ApiError::RateLimited { retry_after } | ApiError::Unavailable { retry_after } = self
        {
            res.insert_header(("Retry-After", retry_after.to_string()));
        }
        if let ApiError::TooManySessions(_) = self {
            res.insert_header(("Retry-After", "5"));
        }
        res.json(ErrorJson {
            error: ErrorDetailJson {
                code: self.code().to_owned(),
                message: self.to_string(),
            },
        })
    }
}

impl ApiError {
    /// A storage failure as a client sees it: 503 when the database cannot
    /// be reached (the client may retry), 500 otherwise.
    pub fn from_store(err: &crate::db::DbError) -> Self {
        if err.is_unavailable() {
            tracing::warn!(error = %err, "the database is unavailable");
            ApiError::Unavailable { retry_after: 1 }
        } else {
            ApiError::Internal(anyhow::anyhow!("{err:#}"))
        }
    }
}

impl From<crate::model::InputError> for ApiError {
    fn from(err: crate::model::InputError) -> Self {
        match err {
            crate::model::InputError::Invalid(m) => ApiError::InvalidRequest(m),
            crate::model::InputError::TooLarge(m) => ApiError::PayloadTooLarge(m),
        }
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(err: crate::db::DbError) -> Self {
        if err.is_unavailable() {
            tracing::warn!(error = %err, "the database is unavailable");
            ApiError::Unavailable { retry_after: 1 }
        } else {
            ApiError::Internal(err.into())
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(err: actix::MailboxError) -> Self {
        ApiError::Internal(err.into())
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(err: actix_web::error::BlockingError) -> Self {
        ApiError::Internal(anyhow::anyhow!("blocking task failed: {err}"))
    }
}
