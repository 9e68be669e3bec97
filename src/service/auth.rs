//! Login, refresh and user lookup.

use std::sync::Arc;

use uuid::Uuid;

use crate::actors::directory::ConversationDirectory;
use crate::auth::JwtKeys;
use crate::auth::{self, IssuedChallenge};
use crate::db::LoginOutcome;
use crate::error::HubError;
use crate::model::{now_ms, Pubkey, User};
use crate::ratelimit::ClientKey;
use crate::store::Store;

/// Login, refresh and user lookup, with only what they need: the store,
/// the token keys, the refresh tokens' lifetime, and the conversation
/// actors (which learn a new display name).
pub struct AuthService {
    pub(crate) store: Store,
    pub(crate) jwt: Arc<JwtKeys>,
    pub(crate) conversations: Arc<ConversationDirectory>,
    /// `--refresh-token-ttl`, seconds.
    pub(crate) refresh_token_ttl: u64,
}

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

impl AuthService {
    /// A new login challenge; `client` (the caller's IPv4 address or IPv6 /64)
    /// counts toward its per-client cap.
    pub async fn challenge(&self, client: Option<ClientKey>) -> Result<IssuedChallenge, HubError> {
        self.store.issue_challenge(client).await
    }

    /// Checks a challenge answer; registers the user on first login.
    pub async fn verify(&self, req: VerifyRequest) -> Result<Session, HubError> {
        let challenge = self.store.take_challenge(req.challenge_id).await?;
        auth::verify_login(&req.public_key, &challenge, &req.signature)?;
        let outcome = self
            .store
            .login_user(req.public_key.clone(), req.display_name.clone())
            .await?;
        let user = match outcome {
            LoginOutcome::User(user) => user,
            LoginOutcome::NeedsDisplayName => {
                return Err(HubError::invalid(
                    "display_name is required on the first login",
                ))
            }
        };
        if let Some(name) = &req.display_name {
            self.conversations.rename(&user.public_key, name);
        }
        let (refresh_token, hash) = auth::new_refresh_token();
        self.store
            .store_refresh_token(hash, user.public_key.clone(), self.refresh_expiry())
            .await?;
        let (access_token, expires_in) = self.jwt.issue(&user.public_key)?;
        tracing::info!(user = ?user.public_key, "login");
        Ok(Session {
            access_token,
            refresh_token,
            expires_in,
            user,
        })
    }

    /// Rotates a refresh token: the old one stops working.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, HubError> {
        let (new_token, new_hash) = auth::new_refresh_token();
        let user = self
            .store
            .rotate_refresh_token(
                auth::hash_refresh_token(refresh_token),
                new_hash,
                self.refresh_expiry(),
            )
            .await?
            .ok_or(HubError::InvalidRefreshToken)?;
        let (access_token, expires_in) = self.jwt.issue(&user.public_key)?;
        Ok(Session {
            access_token,
            refresh_token: new_token,
            expires_in,
            user,
        })
    }

    fn refresh_expiry(&self) -> u64 {
        now_ms() + self.refresh_token_ttl * 1000
    }

    pub async fn user(&self, pubkey: Pubkey) -> Result<User, HubError> {
        self.store
            .user(pubkey)
            .await?
            .ok_or(HubError::NotFound("no such user"))
    }
}
