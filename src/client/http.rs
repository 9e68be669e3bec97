//! `HubClient`: the HTTP API, typed.

use std::time::{Duration, Instant};

use awc::http::{Method, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::crypto::Identity;
use crate::json::*;
use crate::model::MAX_HISTORY_LIMIT;

/// How long one HTTP call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub answered with an error status.
    #[error("HTTP {status}: {code}: {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
    },
    #[error("transport: {0}")]
    Transport(String),
    #[error("unexpected answer: {0}")]
    Decode(String),
    #[error("crypto: {0}")]
    Crypto(#[from] super::crypto::CryptoError),
    /// The hub's key for `peer` is not derived from that identity: whatever
    /// is sealed to it could be read by whoever made it, not by the peer.
    #[error(
        "the key the hub hands out for {peer} is not derived from that identity: \
         refusing to send to it (possible key substitution)"
    )]
    KeySubstituted { peer: String },
}

impl ClientError {
    /// The HTTP status, when the hub answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The contract's error code, when the hub answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Status { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Refresh the access token when it has less than this left.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// A client of one hub, for one user once logged in.
#[derive(Clone)]
pub struct HubClient {
    base_url: String,
    http: awc::Client,
    access_token: Option<String>,
    /// The current refresh token and when the access token expires.
    refresh: Option<(String, Instant)>,
}

impl HubClient {
    /// `base_url` like `http://127.0.0.1:1984`.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self::with_http(
            base_url,
            awc::Client::builder()
                .connector(super::connector())
                .timeout(REQUEST_TIMEOUT)
                .finish(),
        )
    }

    /// Shares one HTTP client (and its connection pool) among many users,
    /// as the load generator does.
    pub fn with_http(base_url: impl Into<String>, http: awc::Client) -> Self {
        HubClient {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            http,
            access_token: None,
            refresh: None,
        }
    }

    /// Talks to another node of the same hub from now on, with the same
    /// tokens (every node of a cluster accepts them).
    pub fn switch_to(&mut self, base_url: impl Into<String>) {
        self.base_url = base_url.into();
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn access_token(&self) -> Option<&str> {
        self.access_token.as_deref()
    }

    /// The refresh token kept from the last login or refresh.
    pub fn refresh_token(&self) -> Option<&str> {
        self.refresh.as_ref().map(|(token, _)| token.as_str())
    }

    pub fn set_access_token(&mut self, token: impl Into<String>) {
        self.access_token = Some(token.into());
    }

    fn keep(&mut self, tokens: &TokenResponse) {
        self.access_token = Some(tokens.access_token.clone());
        let expires = Instant::now() + Duration::from_secs(tokens.expires_in);
        self.refresh = Some((tokens.refresh_token.clone(), expires));
    }

    /// Refreshes the access token if it expires within [`REFRESH_MARGIN`].
    /// Returns whether it refreshed. Call it before long-lived work (a
    /// WebSocket reconnect, a send after a pause).
    pub async fn refresh_if_needed(&mut self) -> Result<bool, ClientError> {
        let Some((token, expires)) = self.refresh.clone() else {
            return Ok(false);
        };
        if expires.saturating_duration_since(Instant::now()) > REFRESH_MARGIN {
            return Ok(false);
        }
        self.refresh(&token).await?;
        Ok(true)
    }

    /// The `ws://` URL of this hub's `/ws`.
    pub fn ws_url(&self) -> String {
        format!("{}/ws", self.base_url.replacen("http", "ws", 1))
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(StatusCode, T), ClientError> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base_url, path));
        if let Some(token) = &self.access_token {
            req = req.bearer_auth(token);
        }
        let result = match body {
            Some(body) => req.send_json(body).await,
            None => req.send().await,
        };
        let mut res = result.map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = res.status();
        let bytes = res
            .body()
            .limit(64 * 1024 * 1024)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if !status.is_success() {
            let err: ErrorJson = serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::Decode(format!("HTTP {status} without a JSON error body: {e}"))
            })?;
            return Err(ClientError::Status {
                status: status.as_u16(),
                code: err.error.code,
                message: err.error.message,
            });
        }
        let value =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok((status, value))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Ok(self.call::<(), T>(Method::GET, path, None).await?.1)
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(StatusCode, T), ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn challenge(&self) -> Result<ChallengeResponse, ClientError> {
        Ok(self
            .call::<(), _>(Method::POST, "/api/auth/challenge", None)
            .await?
            .1)
    }

    /// Answers a challenge; `display_name` is required on the first login.
    pub async fn verify(
        &self,
        identity: &Identity,
        challenge: &ChallengeResponse,
        display_name: Option<&str>,
    ) -> Result<TokenResponse, ClientError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&challenge.challenge, &mut bytes)
            .map_err(|e| ClientError::Decode(format!("challenge: {e}")))?;
        let body = VerifyBody {
            public_key: identity.public_key_hex(),
            challenge_id: challenge.challenge_id.clone(),
            signature: hex::encode(identity.sign_login(&bytes)),
            display_name: display_name.map(str::to_owned),
        };
        Ok(self.post("/api/auth/verify", &body).await?.1)
    }

    /// Challenge, sign, verify; keeps the access token for later calls.
    pub async fn login(
        &mut self,
        identity: &Identity,
        display_name: Option<&str>,
    ) -> Result<TokenResponse, ClientError> {
        let challenge = self.challenge().await?;
        let tokens = self.verify(identity, &challenge, display_name).await?;
        self.keep(&tokens);
        Ok(tokens)
    }

    /// Rotates the refresh token; keeps the new access token.
    pub async fn refresh(&mut self, refresh_token: &str) -> Result<TokenResponse, ClientError> {
        let body = RefreshBody {
            refresh_token: refresh_token.to_owned(),
        };
        let tokens: TokenResponse = self.post("/api/auth/refresh", &body).await?.1;
        self.keep(&tokens);
        Ok(tokens)
    }

    /// A single-use ticket for `GET /ws?ticket=` (contract §8), so that a
    /// socket can open without the access token in its URL.
    pub async fn ws_ticket(&self) -> Result<WsTicketJson, ClientError> {
        Ok(self
            .call::<(), _>(Method::POST, "/api/auth/ws-ticket", None)
            .await?
            .1)
    }

    pub async fn user(&self, pubkey: &str) -> Result<UserJson, ClientError> {
        self.get(&format!("/api/users/{pubkey}")).await
    }

    pub async fn publish_key(&self, x25519: &[u8; 32]) -> Result<KeyJson, ClientError> {
        let body = PublishKeyBody {
            x25519_pubkey: hex::encode(x25519),
        };
        Ok(self.post("/api/dm/keys", &body).await?.1)
    }

    pub async fn get_key(&self, pubkey: &str) -> Result<KeyJson, ClientError> {
        self.get(&format!("/api/dm/keys/{pubkey}")).await
    }

    /// The recipient's published X25519 key, as bytes, unchecked: seal
    /// only to [`checked_recipient_key`](Self::checked_recipient_key).
    pub async fn recipient_key(&self, pubkey: &str) -> Result<[u8; 32], ClientError> {
        let key = self.get_key(pubkey).await?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&key.x25519_pubkey, &mut out)
            .map_err(|e| ClientError::Decode(format!("x25519_pubkey: {e}")))?;
        Ok(out)
    }

    /// The peer's published X25519 key after the key check
    /// ([`check_peer_key`](super::check_peer_key)): a key that is not derived
    /// from `peer_pubkey` is [`ClientError::KeySubstituted`]. Call it before
    /// the first message to a peer, and again after its key rotates.
    pub async fn checked_recipient_key(&self, peer_pubkey: &str) -> Result<[u8; 32], ClientError> {
        // Not a pubkey: refused before any request.
        let peer = crate::model::Pubkey::parse(peer_pubkey)
            .map_err(|_| super::crypto::CryptoError::BadPublicKey)?;
        let published = self.recipient_key(peer.as_str()).await?;
        super::check_peer_key(peer.as_str(), &published)?;
        Ok(published)
    }

    /// Returns the conversation and whether it was created.
    pub async fn create_conversation(
        &self,
        recipient_pubkey: &str,
    ) -> Result<(ConversationJson, bool), ClientError> {
        let body = CreateConversationBody {
            recipient_pubkey: recipient_pubkey.to_owned(),
        };
        let (status, conversation) = self.post("/api/dm/conversations", &body).await?;
        Ok((conversation, status == StatusCode::CREATED))
    }

    pub async fn conversations(&self) -> Result<Vec<ConversationJson>, ClientError> {
        Ok(self
            .get::<ConversationListJson>("/api/dm/conversations")
            .await?
            .conversations)
    }

    /// Sends a raw message body; returns the stored message and whether it was new.
    pub async fn send(&self, body: &SendMessageBody) -> Result<(MessageJson, bool), ClientError> {
        let (status, message) = self.post("/api/dm/messages", body).await?;
        Ok((message, status == StatusCode::CREATED))
    }

    /// Seals `plaintext` for `recipient_x25519` (the `united-hub dm v2`
    /// scheme; take the key from
    /// [`checked_recipient_key`](Self::checked_recipient_key)) and sends it
    /// under a fresh client id, so a retry of the same body is idempotent.
    /// Returns the stored message and whether it was new.
    pub async fn send_sealed(
        &self,
        sender: &Identity,
        recipient_x25519: &[u8; 32],
        conversation_id: &str,
        plaintext: &[u8],
    ) -> Result<(MessageJson, bool), ClientError> {
        let sealed = super::crypto::seal(sender, recipient_x25519, conversation_id, plaintext)?;
        let body = send_body(
            Some(uuid::Uuid::now_v7().to_string()),
            conversation_id,
            &sealed,
            crate::model::now_ms(),
        );
        self.send(&body).await
    }

    /// `query` like `before=10&limit=20` or `after=0`.
    pub async fn history(
        &self,
        conversation_id: &str,
        query: &str,
    ) -> Result<HistoryJson, ClientError> {
        self.get(&format!("/api/dm/messages/{conversation_id}?{query}"))
            .await
    }

    /// Every message after sequence `after`, oldest first: the catch-up form
    /// of history, paged to the end.
    pub async fn history_after(
        &self,
        conversation_id: &str,
        mut after: u64,
    ) -> Result<Vec<MessageJson>, ClientError> {
        let mut all = Vec::new();
        loop {
            let page = self
                .history(
                    conversation_id,
                    &format!("after={after}&limit={MAX_HISTORY_LIMIT}"),
                )
                .await?;
            if let Some(last) = page.messages.last() {
                after = last.server_sequence;
            }
            all.extend(page.messages);
            if !page.has_more {
                return Ok(all);
            }
        }
    }

    /// The latest `count` messages of a conversation (0: all of them), oldest
    /// first, paging back with `before` as far as asked; and whether older
    /// ones remain.
    pub async fn recent(
        &self,
        conversation_id: &str,
        count: usize,
    ) -> Result<(Vec<MessageJson>, bool), ClientError> {
        let mut newest_first: Vec<MessageJson> = Vec::new();
        loop {
            let wanted = match count {
                0 => usize::MAX,
                n => n - newest_first.len(),
            };
            let limit = wanted.min(MAX_HISTORY_LIMIT as usize);
            let query = match newest_first.last() {
                Some(oldest) => format!("before={}&limit={limit}", oldest.server_sequence),
                None => format!("limit={limit}"),
            };
            let page = self.history(conversation_id, &query).await?;
            let got = page.messages.len();
            newest_first.extend(page.messages);
            let enough = count != 0 && newest_first.len() >= count;
            if !page.has_more || enough || got == 0 {
                newest_first.reverse();
                return Ok((newest_first, page.has_more));
            }
        }
    }

    /// The whole offline queue: pages until `has_more` is false.
    pub async fn offline(&self) -> Result<Vec<MessageJson>, ClientError> {
        let mut all = Vec::new();
        loop {
            let page = self.offline_page(None).await?;
            all.extend(page.messages);
            if !page.has_more {
                return Ok(all);
            }
        }
    }

    /// One page of the offline queue (`limit` 1..=1000, default 1000).
    pub async fn offline_page(&self, limit: Option<u32>) -> Result<OfflineJson, ClientError> {
        match limit {
            Some(n) => self.get(&format!("/api/dm/offline?limit={n}")).await,
            None => self.get("/api/dm/offline").await,
        }
    }

    pub async fn ack(&self, message_ids: &[String]) -> Result<u32, ClientError> {
        let body = AckBody {
            message_ids: message_ids.to_vec(),
        };
        Ok(self
            .post::<_, AckJson>("/api/dm/offline/ack", &body)
            .await?
            .1
            .acked)
    }
}

/// A send body from sealed parts.
pub fn send_body(
    id: Option<String>,
    conversation_id: &str,
    sealed: &super::crypto::Sealed,
    timestamp: u64,
) -> SendMessageBody {
    SendMessageBody {
        id,
        conversation_id: conversation_id.to_owned(),
        encrypted_payload: B64.encode(&sealed.ciphertext),
        nonce: B64.encode(sealed.nonce),
        ephemeral_pubkey: Some(B64.encode(sealed.ephemeral_pubkey)),
        timestamp,
    }
}
