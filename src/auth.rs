//! Identity: login challenges, access tokens (JWT) and refresh tokens.
//!
//! A login signs `united-hub auth v1\n` followed by 32 random challenge
//! bytes with the identity's Ed25519 key. The prefix keeps a login signature
//! from ever being valid for anything else.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, VerifyingKey};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;
use crate::model::Pubkey;

/// What a login signature covers before the challenge bytes.
pub const LOGIN_PREFIX: &[u8] = b"united-hub auth v1\n";
/// The `iss` of every access token.
pub const ISSUER: &str = "united-hub";
/// The shortest HS256 key accepted.
pub const MIN_SECRET_BYTES: usize = 32;
/// Challenges waiting for an answer, at most; past that, new ones are refused
/// until old ones expire.
pub const MAX_PENDING_CHALLENGES: usize = 100_000;

/// The bytes a login signature covers.
pub fn login_message(challenge: &[u8; 32]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(LOGIN_PREFIX.len() + 32);
    msg.extend_from_slice(LOGIN_PREFIX);
    msg.extend_from_slice(challenge);
    msg
}

/// Verifies a login signature (strict: no malleable or small-order keys).
pub fn verify_login(
    pubkey: &Pubkey,
    challenge: &[u8; 32],
    signature: &[u8; 64],
) -> Result<(), ApiError> {
    let key = VerifyingKey::from_bytes(&pubkey.to_bytes()).map_err(|_| ApiError::BadSignature)?;
    let signature = Signature::from_bytes(signature);
    key.verify_strict(&login_message(challenge), &signature)
        .map_err(|_| ApiError::BadSignature)
}

// ---------------------------------------------------------------------------
// Challenges

struct PendingChallenge {
    bytes: [u8; 32],
    expires: Instant,
}

/// Issued challenges, in memory: each is answered once and lives `ttl`.
pub struct ChallengeStore {
    pending: Mutex<HashMap<Uuid, PendingChallenge>>,
    ttl: Duration,
}

/// A new challenge as the client sees it.
pub struct IssuedChallenge {
    pub id: Uuid,
    pub bytes: [u8; 32],
    pub expires_at_ms: u64,
}

impl ChallengeStore {
    pub fn new(ttl: Duration) -> Self {
        ChallengeStore {
            pending: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, PendingChallenge>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn issue(&self) -> Result<IssuedChallenge, ApiError> {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let id = Uuid::new_v4();
        let mut pending = self.pending();
        if pending.len() >= MAX_PENDING_CHALLENGES {
            let now = Instant::now();
            pending.retain(|_, c| c.expires > now);
            if pending.len() >= MAX_PENDING_CHALLENGES {
                return Err(ApiError::RateLimited { retry_after: 1 });
            }
        }
        pending.insert(
            id,
            PendingChallenge {
                bytes,
                expires: Instant::now() + self.ttl,
            },
        );
        Ok(IssuedChallenge {
            id,
            bytes,
            expires_at_ms: crate::model::now_ms() + self.ttl.as_millis() as u64,
        })
    }

    /// Consumes a challenge: whatever the outcome of this attempt, it cannot
    /// be used again.
    pub fn take(&self, id: &Uuid) -> Result<[u8; 32], ApiError> {
        let challenge = self
            .pending()
            .remove(id)
            .ok_or(ApiError::UnknownChallenge)?;
        if challenge.expires <= Instant::now() {
            return Err(ApiError::ChallengeExpired);
        }
        Ok(challenge.bytes)
    }

    /// Drops expired challenges; returns how many.
    pub fn purge_expired(&self) -> usize {
        let now = Instant::now();
        let mut pending = self.pending();
        let before = pending.len();
        pending.retain(|_, c| c.expires > now);
        before - pending.len()
    }
}

// ---------------------------------------------------------------------------
// Access tokens

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
    iss: String,
}

/// The HS256 key and the rules every access token is checked against.
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

impl JwtKeys {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        }
    }

    /// Issues an access token; returns it with its lifetime in seconds.
    pub fn issue(&self, user: &Pubkey) -> Result<(String, u64), ApiError> {
        let iat = crate::model::now_ms() / 1000;
        let claims = Claims {
            sub: user.to_string(),
            iat,
            exp: iat + self.ttl_secs,
            iss: ISSUER.into(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)?;
        Ok((token, self.ttl_secs))
    }

    /// Checks a token and returns its subject.
    pub fn verify(&self, token: &str) -> Result<Pubkey, ApiError> {
        self.verify_with_expiry(token).map(|(user, _)| user)
    }

    /// Checks a token and returns its subject and `exp` (Unix seconds).
    pub fn verify_with_expiry(&self, token: &str) -> Result<(Pubkey, u64), ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::TokenExpired,
                _ => ApiError::Unauthorized("invalid access token"),
            })?;
        let user = Pubkey::parse(&data.claims.sub)
            .map_err(|_| ApiError::Unauthorized("invalid access token"))?;
        Ok((user, data.claims.exp))
    }
}

/// A new HS256 key: 64 random hex characters, like a generated key file.
pub fn new_secret() -> Vec<u8> {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes).into_bytes()
}

/// Reads the HS256 key file, generating it (64 random hex characters, mode
/// 0600) if it does not exist.
pub fn load_or_create_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
    if !path.exists() {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(path) {
            Ok(mut file) => {
                file.write_all(hex::encode(bytes).as_bytes())?;
                file.sync_all()?;
                tracing::info!(path = %path.display(), "generated a new JWT secret");
            }
            // Another process created it first: read theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    let mut secret =
        fs::read(path).with_context(|| format!("reading the JWT secret {}", path.display()))?;
    while secret.last().is_some_and(|b| b.is_ascii_whitespace()) {
        secret.pop();
    }
    anyhow::ensure!(
        secret.len() >= MIN_SECRET_BYTES,
        "the JWT secret {} has {} bytes; at least {MIN_SECRET_BYTES} are required",
        path.display(),
        secret.len()
    );
    Ok(secret)
}

// ---------------------------------------------------------------------------
// Refresh tokens

/// A new random refresh token and the hash that is stored in its place.
pub fn new_refresh_token() -> (String, [u8; 32]) {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let hash = hash_refresh_token(&token);
    (token, hash)
}

pub fn hash_refresh_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_other_keys_fail() {
        let keys = JwtKeys::new(&[7u8; 32], 60);
        let user = Pubkey::parse(&"ab".repeat(32)).unwrap();
        let (token, ttl) = keys.issue(&user).unwrap();
        assert_eq!(ttl, 60);
        assert_eq!(keys.verify(&token).unwrap(), user);
        let other = JwtKeys::new(&[8u8; 32], 60);
        assert!(matches!(
            other.verify(&token),
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[test]
    fn a_challenge_is_used_once() {
        let store = ChallengeStore::new(Duration::from_secs(60));
        let issued = store.issue().unwrap();
        assert_eq!(store.take(&issued.id).unwrap(), issued.bytes);
        assert!(matches!(
            store.take(&issued.id),
            Err(ApiError::UnknownChallenge)
        ));
    }

    #[test]
    fn secret_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt_secret");
        let first = load_or_create_secret(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create_secret(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::write(&path, "short\n").unwrap();
        assert!(load_or_create_secret(&path).is_err());
    }
}
