//! Login, refresh and user lookup.

use std::sync::Arc;

use uuid::Uuid;

use crate::auth::{self, IssuedChallenge};
use crate::db::LoginOutcome;
use crate::error::ApiError;
use crate::model::{now_ms, Pubkey, User};
use crate::ratelimit::ClientKey;
use crate::state::AppState;

/// A validated `POST /api/auth/verify`.
pub struct VerifyRequest {
    pub public_key: Pubkey,
    pub challenge_id: Uuid,
    pub signature: [u8; 64],
    pub display_name: Option<String>,
}

/// Tokens for a logged-in user.
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
    pub user: User,
}

/// A new login challenge; `client` (the caller's IPv4 address or IPv6 /64)
/// counts toward its per-client cap.
pub async fn challenge(
    state: &AppState,
    client: Option<ClientKey>,
) -> Result<IssuedChallenge, ApiError> {
    state.store.issue_challenge(client).await
}

/// Checks a challenge answer; registers the user on first login.
pub async fn verify(state: &Arc<AppState>, req: VerifyRequest) -> Result<Session, ApiError> {
    let challenge = state.store.take_challenge(req.challenge_id).await?;
    auth::verify_login(&req.public_key, &challenge, &req.signature)?;
    let outcome = state
        .store
        .login_user(req.public_key.clone(), req.display_name.clone())
        .await?;
    let user = match outcome {
        LoginOutcome::User(user) => user,
        LoginOutcome::NeedsDisplayName => {
            return Err(ApiError::invalid(
                "display_name is required on the first login",
            ))
        }
    };
    if let Some(name) = &req.display_name {
        state.conversations.rename(&user.public_key, name);
    }
    let (refresh_token, hash) = auth::new_refresh_token();
    state
        .store
        .store_refresh_token(hash, user.public_key.clone(), refresh_expiry(state))
        .await?;
    let (access_token, expires_in) = state.jwt.issue(&user.public_key)?;
    tracing::info!(user = ?user.public_key, "login");
    Ok(Session {
        access_token,
        refresh_token,
        expires_in,
        user,
    })
}

/// Rotates a refresh token: the old one stops working.
pub async fn refresh(state: &AppState, refresh_token: &str) -> Result<Session, ApiError> {
    let (new_token, new_hash) = auth::new_refresh_token();
    let user = state
        .store
        .rotate_refresh_token(
            auth::hash_refresh_token(refresh_token),
            new_hash,
            refresh_expiry(state),
        )
        .await?
        .ok_or(ApiError::InvalidRefreshToken)?;
    let (access_token, expires_in) = state.jwt.issue(&user.public_key)?;
    Ok(Session {
        access_token,
        refresh_token: new_token,
        expires_in,
        user,
    })
}

fn refresh_expiry(state: &AppState) -> u64 {
    now_ms() + state.settings.refresh_token_ttl * 1000
}

pub async fn user(state: &AppState, pubkey: Pubkey) -> Result<User, ApiError> {
    state
        .store
        .user(pubkey)
        .await?
        .ok_or(ApiError::NotFound("no such user"))
}
