//! The error of the hub's domain: what services, actors and the store's
//! callers fail with, whatever the transport. Each kind has the contract's
//! stable snake_case code and a message for people; internal causes are
//! kept as `source()` and logged, never sent. How a kind looks on the wire
//! (HTTP status, JSON body, `Retry-After`, the WebSocket's `ErrorResponse`)
//! is the edge's business: `http::error`.

#[derive(Debug, thiserror::Error)]
pub enum HubError {
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

impl HubError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        HubError::InvalidRequest(msg.into())
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        HubError::Internal(err.into())
    }

    /// The stable machine-readable code of the contract.
    pub fn code(&self) -> &'static str {
        match self {
            HubError::InvalidRequest(_) => "invalid_request",
            HubError::SelfConversation => "self_conversation",
            HubError::Unauthorized(_) => "unauthorized",
            HubError::TokenExpired => "token_expired",
            HubError::BadSignature => "bad_signature",
            HubError::ChallengeExpired => "challenge_expired",
            HubError::UnknownChallenge => "unknown_challenge",
            HubError::InvalidRefreshToken => "invalid_refresh_token",
            HubError::NotParticipant => "not_participant",
            HubError::ForbiddenOrigin => "forbidden_origin",
            HubError::NotFound(_) => "not_found",
            HubError::MethodNotAllowed => "method_not_allowed",
            HubError::Conflict(_) => "conflict",
            HubError::PayloadTooLarge(_) => "payload_too_large",
            HubError::RateLimited { .. } | HubError::TooManySessions(_) => "rate_limited",
            HubError::ShuttingDown | HubError::Unavailable { .. } => "unavailable",
            HubError::Internal(_) => "internal",
        }
    }

    /// The seconds a client should wait before trying again, for the
    /// errors that have one.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            HubError::RateLimited { retry_after } | HubError::Unavailable { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// Logs the cause of a 5xx; client errors are the client's business.
    pub fn log(&self) {
        if let HubError::Internal(cause) = self {
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
    }
}

impl HubError {
    /// A storage failure as a client sees it: 503 when the database cannot
    /// be reached (the client may retry), 500 otherwise.
    pub fn from_store(err: &crate::db::DbError) -> Self {
        if err.is_unavailable() {
            tracing::warn!(error = %err, "the database is unavailable");
            HubError::Unavailable { retry_after: 1 }
        } else {
            HubError::Internal(anyhow::anyhow!("{err:#}"))
        }
    }
}

impl From<crate::model::InputError> for HubError {
    fn from(err: crate::model::InputError) -> Self {
        match err {
            crate::model::InputError::Invalid(m) => HubError::InvalidRequest(m),
            crate::model::InputError::TooLarge(m) => HubError::PayloadTooLarge(m),
        }
    }
}

impl From<crate::db::DbError> for HubError {
    fn from(err: crate::db::DbError) -> Self {
        if err.is_unavailable() {
            tracing::warn!(error = %err, "the database is unavailable");
            HubError::Unavailable { retry_after: 1 }
        } else {
            HubError::Internal(err.into())
        }
    }
}

impl From<actix::MailboxError> for HubError {
    fn from(err: actix::MailboxError) -> Self {
        HubError::Internal(err.into())
    }
}
