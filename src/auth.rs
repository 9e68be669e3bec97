//! Identity: login challenges, access tokens (JWT) and refresh tokens.
//!
//! A login signs `united-hub auth v1\n` followed by 32 random challenge
//! bytes with the identity's Ed25519 key. The prefix keeps a login signature
//! from ever being valid for anything else.
//!
//! Why it is this long: challenges, tokens, refresh-token hashing and the
//! secret file, with their tests (231 lines).

use std::collections::{HashMap, VecDeque};
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

use crate::error::HubError;
use crate::model::Pubkey;
use crate::ratelimit::ClientKey;

/// What a login signature covers before the challenge bytes.
pub const LOGIN_PREFIX: &[u8] = b"united-hub auth v1\n";
/// The `iss` of every access token.
pub const ISSUER: &str = "united-hub";
/// The shortest HS256 key accepted.
pub const MIN_SECRET_BYTES: usize = 32;

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
) -> Result<(), HubError> {
    let key = VerifyingKey::from_bytes(&pubkey.to_bytes()).map_err(|_| HubError::BadSignature)?;
    let signature = Signature::from_bytes(signature);
    key.verify_strict(&login_message(challenge), &signature)
        .map_err(|_| HubError::BadSignature)
}

// ---------------------------------------------------------------------------
// Challenges
//
// The store must stay cheap and fair under a flood of `POST
// /api/auth/challenge`:
//
// - Every challenge has the same TTL, so issue order is expiry order: `order`
//   is a queue of (expiry, id) and expired challenges are popped from its
//   front on every issue and take. Each challenge is popped once: amortised
//   O(1), and no operation scans the store.
// - One client key (an IPv4 address or an IPv6 /64, see
//   `ratelimit::client_key`) holds at most `MAX_PENDING_PER_CLIENT` live
//   challenges; past that it gets 429 until its oldest expires.
// - The whole store holds at most `MAX_PENDING_CHALLENGES`. When that many
//   are live, the oldest one gives its place to the new one if it has been
//   live for `EVICTION_GRACE` (an honest client answers well within that);
//   otherwise the request is refused with 429. So an attacker who rotates
//   addresses cannot lock honest clients out for the TTL: to keep the store
//   full of challenges younger than the grace, it must issue
//   `MAX_PENDING_CHALLENGES / EVICTION_GRACE` (10,000) challenges per second
//   from at least `MAX_PENDING_CHALLENGES / MAX_PENDING_PER_CLIENT` (6,250)
//   distinct IPv4 addresses or /64s, each also within the per-client auth
//   rate limit; and a challenge younger than the grace is never evicted.
// - Memory: `by_id` and `by_client` hold at most `MAX_PENDING_CHALLENGES`
//   entries; `order` also keeps the ids of taken challenges until they reach
//   the front, and is compacted when those outnumber the held ones (amortised
//   O(1) again), so it holds at most 2 × `MAX_PENDING_CHALLENGES` + 1,024.
//   Filling the store to the cap grows the process by about 40 MB (some
//   400 bytes per challenge, allocator slack and table growth included).

/// Challenges held at most (live ones, and expired ones kept to answer
/// `challenge_expired`, which make room first).
pub const MAX_PENDING_CHALLENGES: usize = 100_000;
/// Live challenges one client key (an IPv4 address or an IPv6 /64) may hold.
pub const MAX_PENDING_PER_CLIENT: usize = 16;
/// When the store is full, a live challenge at least this old may be evicted
/// to make room; a younger one never is (capped at the TTL).
pub const EVICTION_GRACE: Duration = Duration::from_secs(10);
/// How long an expired challenge is still recognised (`challenge_expired`
/// rather than `unknown_challenge`) while the store has room.
const EXPIRED_REMEMBERED: Duration = Duration::from_secs(60);
/// Taken ids `order` may keep beyond the held ones before it is compacted.
const ORDER_SLACK: usize = 1024;

struct PendingChallenge {
    bytes: [u8; 32],
    expires: Instant,
    client: Option<ClientKey>,
}

#[derive(Default)]
struct Pending {
    by_id: HashMap<Uuid, PendingChallenge>,
    /// (expiry, id) in issue order, which is expiry order. Ids no longer in
    /// `by_id` (taken) are skipped when they reach the front.
    order: VecDeque<(Instant, Uuid)>,
    /// Each client's live challenges, oldest first.
    by_client: HashMap<ClientKey, Vec<Uuid>>,
}

impl Pending {
    /// Drops challenges expired at `now` (with `remember`, only those expired
    /// for longer than `EXPIRED_REMEMBERED`) from the front of the queue.
    fn pop_expired(&mut self, now: Instant, remember: bool) -> usize {
        let keep = if remember {
            EXPIRED_REMEMBERED
        } else {
            Duration::ZERO
        };
        let mut dropped = 0;
        while let Some(&(expires, id)) = self.order.front() {
            if expires.checked_add(keep).is_some_and(|t| t > now) {
                break;
            }
            self.order.pop_front();
            if let Some(c) = self.by_id.remove(&id) {
                self.forget_client(c.client, &id);
                dropped += 1;
            }
        }
        dropped
    }

    /// Removes `id` from its client's list (at most `MAX_PENDING_PER_CLIENT`
    /// long).
    fn forget_client(&mut self, client: Option<ClientKey>, id: &Uuid) {
        let Some(key) = client else {
            return;
        };
        if let Some(ids) = self.by_client.get_mut(&key) {
            if let Some(i) = ids.iter().position(|x| x == id) {
                ids.remove(i);
            }
            if ids.is_empty() {
                self.by_client.remove(&key);
            }
        }
    }

    /// How many live challenges `key` holds, and when its oldest expires.
    /// Drops the expired ones from its list (they stay in `by_id` until the
    /// queue reaches them).
    fn live_for(&mut self, key: ClientKey, now: Instant) -> (usize, Option<Instant>) {
        let by_id = &self.by_id;
        let Some(ids) = self.by_client.get_mut(&key) else {
            return (0, None);
        };
        let expired = ids
            .iter()
            .take_while(|id| by_id.get(id).is_none_or(|c| c.expires <= now))
            .count();
        ids.drain(..expired);
        let oldest = ids.first().and_then(|id| by_id.get(id)).map(|c| c.expires);
        let live = ids.len();
        if live == 0 {
            self.by_client.remove(&key);
        }
        (live, oldest)
    }

    /// Drops taken ids from the front, so the front is the oldest held one.
    fn skip_taken(&mut self) {
        while let Some((_, id)) = self.order.front() {
            if self.by_id.contains_key(id) {
                break;
            }
            self.order.pop_front();
        }
    }

    /// Rebuilds `order` without taken ids once they outnumber the held ones.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.by_id.len() + ORDER_SLACK {
            let by_id = &self.by_id;
            self.order.retain(|(_, id)| by_id.contains_key(id));
        }
    }
}

/// Whole seconds from `now` until `then`, at least 1 (a `Retry-After`).
fn retry_after(then: Instant, now: Instant) -> u32 {
    (then.saturating_duration_since(now).as_secs_f64().ceil() as u32).max(1)
}

/// Issued challenges, in memory: each is answered once and lives `ttl`.
/// See the comment above for the limits and what they cost.
pub struct ChallengeStore {
    pending: Mutex<Pending>,
    ttl: Duration,
    grace: Duration,
    max_pending: usize,
    max_per_client: usize,
}

/// A new challenge as the client sees it.
pub struct IssuedChallenge {
    pub id: Uuid,
    pub bytes: [u8; 32],
    pub expires_at_ms: u64,
}

impl ChallengeStore {
    pub fn new(ttl: Duration) -> Self {
        Self::with_limits(ttl, MAX_PENDING_CHALLENGES, MAX_PENDING_PER_CLIENT)
    }

    /// A store with other caps than `MAX_PENDING_CHALLENGES` and
    /// `MAX_PENDING_PER_CLIENT` (at least 1 each).
    pub fn with_limits(ttl: Duration, max_pending: usize, max_per_client: usize) -> Self {
        ChallengeStore {
            pending: Mutex::new(Pending::default()),
            ttl,
            grace: EVICTION_GRACE.min(ttl),
            max_pending: max_pending.max(1),
            max_per_client: max_per_client.max(1),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A challenge for a client that is not counted per client (only the
    /// global cap applies). Prefer `issue_for`.
    pub fn issue(&self) -> Result<IssuedChallenge, HubError> {
        self.issue_for(None)
    }

    /// A challenge for `client` (see `ratelimit::client_key`): 429 when the
    /// client already holds `MAX_PENDING_PER_CLIENT` live challenges (retry
    /// when its oldest expires), or when the store is full of challenges
    /// younger than `EVICTION_GRACE`.
    pub fn issue_for(&self, client: Option<ClientKey>) -> Result<IssuedChallenge, HubError> {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let id = Uuid::new_v4();
        self.insert(id, bytes, client, Instant::now())?;
        Ok(IssuedChallenge {
            id,
            bytes,
            expires_at_ms: crate::model::now_ms() + self.ttl.as_millis() as u64,
        })
    }

    /// Stores a challenge issued at `now`, or says why not.
    fn insert(
        &self,
        id: Uuid,
        bytes: [u8; 32],
        client: Option<ClientKey>,
        now: Instant,
    ) -> Result<(), HubError> {
        let mut p = self.pending();
        p.pop_expired(now, true);
        if let Some(key) = client {
            let (live, oldest) = p.live_for(key, now);
            if live >= self.max_per_client {
                return Err(HubError::RateLimited {
                    retry_after: retry_after(oldest.unwrap_or(now), now),
                });
            }
        }
        if p.by_id.len() >= self.max_pending {
            // Expired ones make room first, then the oldest live one if it
            // is past the grace.
            p.pop_expired(now, false);
        }
        if p.by_id.len() >= self.max_pending {
            p.skip_taken();
            if let Some(&(oldest, oldest_id)) = p.order.front() {
                let evictable = oldest.checked_sub(self.ttl - self.grace).unwrap_or(now);
                if evictable > now {
                    return Err(HubError::RateLimited {
                        retry_after: retry_after(evictable, now),
                    });
                }
                p.order.pop_front();
                if let Some(c) = p.by_id.remove(&oldest_id) {
                    p.forget_client(c.client, &oldest_id);
                }
            }
        }
        // Never before the newest: the queue stays sorted even when two
        // threads read the clock in one order and take the lock in the other.
        let expires = p
            .order
            .back()
            .map_or(now + self.ttl, |&(newest, _)| newest.max(now + self.ttl));
        p.by_id.insert(
            id,
            PendingChallenge {
                bytes,
                expires,
                client,
            },
        );
        p.order.push_back((expires, id));
        if let Some(key) = client {
            p.by_client
                .entry(key)
                .or_insert_with(|| Vec::with_capacity(1))
                .push(id);
        }
        Ok(())
    }

    /// Consumes a challenge: whatever the outcome of this attempt, it cannot
    /// be used again.
    pub fn take(&self, id: &Uuid) -> Result<[u8; 32], HubError> {
        self.take_at(id, Instant::now())
    }

    fn take_at(&self, id: &Uuid, now: Instant) -> Result<[u8; 32], HubError> {
        let mut p = self.pending();
        let challenge = p.by_id.remove(id);
        if let Some(c) = &challenge {
            p.forget_client(c.client, id);
        }
        p.pop_expired(now, true);
        p.compact();
        drop(p);
        let challenge = challenge.ok_or(HubError::UnknownChallenge)?;
        if challenge.expires <= now {
            return Err(HubError::ChallengeExpired);
        }
        Ok(challenge.bytes)
    }

    /// Drops expired challenges; returns how many. Also gives back memory
    /// a flood left behind.
    pub fn purge_expired(&self) -> usize {
        let mut p = self.pending();
        let dropped = p.pop_expired(Instant::now(), false);
        p.compact();
        let held = p.by_id.len().max(ORDER_SLACK);
        if p.by_id.capacity() > 4 * held {
            p.by_id.shrink_to_fit();
            p.by_client.shrink_to_fit();
            p.order.shrink_to_fit();
        }
        dropped
    }

    /// Challenges held (live, or expired and not yet dropped); never more
    /// than `MAX_PENDING_CHALLENGES`.
    pub fn len(&self) -> usize {
        self.pending().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    pub fn issue(&self, user: &Pubkey) -> Result<(String, u64), HubError> {
        let iat = crate::model::now_ms() / 1000;
        let claims = Claims {
            sub: user.to_string(),
            iat,
            exp: iat + self.ttl_secs,
            iss: ISSUER.into(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(HubError::internal)?;
        Ok((token, self.ttl_secs))
    }

    /// Checks a token and returns its subject.
    pub fn verify(&self, token: &str) -> Result<Pubkey, HubError> {
        self.verify_with_expiry(token).map(|(user, _)| user)
    }

    /// Checks a token and returns its subject and `exp` (Unix seconds).
    pub fn verify_with_expiry(&self, token: &str) -> Result<(Pubkey, u64), HubError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => HubError::TokenExpired,
                _ => HubError::Unauthorized("invalid access token"),
            })?;
        let user = Pubkey::parse(&data.claims.sub)
            .map_err(|_| HubError::Unauthorized("invalid access token"))?;
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
    load_secret(path)
}

/// Reads the secret at `path`: its bytes less trailing whitespace, at least
/// [`MIN_SECRET_BYTES`]. Never creates it (cluster nodes must share one).
pub fn load_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context as _;
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
            Err(HubError::Unauthorized(_))
        ));
    }

    const TTL: Duration = Duration::from_secs(60);

    /// A client key per number: distinct /64s.
    fn client(n: u64) -> Option<ClientKey> {
        Some(ClientKey::V6Net(0x2001_0db8_0000_0000 | n))
    }

    /// Issues a challenge at `now` as the store would; its id.
    fn issue_at(
        store: &ChallengeStore,
        client: Option<ClientKey>,
        now: Instant,
    ) -> Result<Uuid, HubError> {
        let id = Uuid::new_v4();
        store.insert(id, [1; 32], client, now).map(|()| id)
    }

    fn retry_after_of(result: Result<Uuid, HubError>) -> u32 {
        match result {
            Err(HubError::RateLimited { retry_after }) => retry_after,
            Err(e) => panic!("expected 429, got {e:?}"),
            Ok(_) => panic!("expected 429, got a challenge"),
        }
    }

    #[test]
    fn expired_challenges_leave_from_the_front_and_late_answers_hear_why() {
        let store = ChallengeStore::new(TTL);
        let t0 = Instant::now();
        let ids: Vec<Uuid> = (0..1000)
            .map(|i| issue_at(&store, client(i % 100), t0 + Duration::from_millis(i)).unwrap())
            .collect();
        // Expired, but still recognised as such.
        let t1 = t0 + TTL + Duration::from_secs(1);
        assert!(matches!(
            store.take_at(&ids[0], t1),
            Err(HubError::ChallengeExpired)
        ));
        // Their clients hold no live challenge any more: each may ask again
        // for a full quota.
        for i in 0..MAX_PENDING_PER_CLIENT {
            issue_at(&store, client(7), t1 + Duration::from_millis(i as u64)).unwrap();
        }
        // Past the remembered window, one issue drops them all.
        let t2 = t1 + TTL + EXPIRED_REMEMBERED + Duration::from_secs(1);
        issue_at(&store, client(99), t2).unwrap();
        assert_eq!(store.len(), 1);
        let p = store.pending();
        assert_eq!(p.by_client.len(), 1, "no client list is left behind");
        assert_eq!(p.order.len(), 1);
        assert_eq!(p.by_client[&client(99).unwrap()].len(), 1);
    }

    #[test]
    fn a_client_over_its_cap_waits_for_its_oldest_and_others_do_not() {
        let store = ChallengeStore::new(TTL);
        let t0 = Instant::now();
        let a = client(1);
        let mut mine = Vec::new();
        for i in 0..MAX_PENDING_PER_CLIENT as u64 {
            mine.push(issue_at(&store, a, t0 + Duration::from_secs(i)).unwrap());
        }
        // The oldest expires at t0 + 60 s: 40 s after t0 + 20 s.
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(retry_after_of(issue_at(&store, a, t1)), 40);
        // Another client, and a client without a key, are not affected.
        issue_at(&store, client(2), t1).unwrap();
        issue_at(&store, None, t1).unwrap();
        // Answering one frees a place.
        store.take_at(&mine[5], t1).unwrap();
        issue_at(&store, a, t1).unwrap();
        assert_eq!(retry_after_of(issue_at(&store, a, t1)), 40);
        // So does the oldest expiring; Retry-After is at least 1 s.
        assert_eq!(
            retry_after_of(issue_at(&store, a, t0 + TTL - Duration::from_millis(1))),
            1
        );
        issue_at(&store, a, t0 + TTL).unwrap();
    }

    /// The bulk of the flood of `tests/api/abuse.rs`, on the store itself:
    /// 200,000 challenges from rotating /64s.
    #[test]
    fn a_flood_from_rotating_clients_stays_bounded_and_lets_an_honest_client_in() {
        let store = ChallengeStore::new(TTL);
        let honest = client(u64::from(u32::MAX) + 1);
        let started = Instant::now();
        let t0 = Instant::now();

        // At 5,000 a second (under MAX / GRACE = 10,000): the store fills
        // in 20 s; then each new challenge takes the place of one older
        // than the grace. Nobody is refused.
        let rate = 5_000u64;
        let at = |i: u64| t0 + Duration::from_micros(i * 1_000_000 / rate);
        for i in 0..200_000u64 {
            issue_at(&store, client(i), at(i)).unwrap();
            assert!(store.pending().by_id.len() <= MAX_PENDING_CHALLENGES);
        }
        assert_eq!(store.len(), MAX_PENDING_CHALLENGES);
        let t1 = at(200_000);
        let mine = issue_at(&store, honest, t1).unwrap();
        // The flood goes on while the honest client signs: its challenge
        // is younger than the grace, so it is still there.
        for i in 200_000..200_000 + rate {
            issue_at(&store, client(i), at(i)).unwrap();
        }
        store.take_at(&mine, at(200_000 + rate)).unwrap();

        // Faster than MAX / GRACE (all at one instant): the store fills,
        // then everyone is refused, for at most the grace, and no
        // challenge younger than the grace is evicted.
        let t2 = t1 + TTL + EXPIRED_REMEMBERED + Duration::from_secs(1);
        let mut refused = 0;
        for i in 0..200_000u64 {
            match issue_at(&store, client(i), t2) {
                Ok(_) => {}
                Err(HubError::RateLimited { retry_after }) => {
                    assert_eq!(retry_after, EVICTION_GRACE.as_secs() as u32);
                    refused += 1;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(refused, 200_000 - MAX_PENDING_CHALLENGES);
        assert_eq!(store.len(), MAX_PENDING_CHALLENGES);
        assert_eq!(
            retry_after_of(issue_at(&store, honest, t2 + Duration::from_secs(3))),
            7
        );
        let mine = issue_at(&store, honest, t2 + EVICTION_GRACE).unwrap();
        for i in 0..200_000u64 {
            let _ = issue_at(&store, client(i), t2 + EVICTION_GRACE);
        }
        store
            .take_at(&mine, t2 + EVICTION_GRACE + Duration::from_secs(1))
            .unwrap();
        assert!(store.len() <= MAX_PENDING_CHALLENGES);
        eprintln!(
            "{} challenges issued or refused directly on the store in {:?}",
            200_000 + 200_000 + rate + 200_000 + 3,
            started.elapsed()
        );
    }

    #[test]
    fn an_evicted_challenge_frees_its_clients_place() {
        let store = ChallengeStore::with_limits(TTL, 20, 16);
        let t0 = Instant::now();
        let a = client(1);
        let ids: Vec<Uuid> = (0..16).map(|_| issue_at(&store, a, t0).unwrap()).collect();
        for i in 0..4 {
            issue_at(&store, client(10 + i), t0).unwrap();
        }
        assert!(issue_at(&store, a, t0).is_err());
        // Past the grace, 16 others evict a's challenges, oldest first.
        let t1 = t0 + EVICTION_GRACE;
        for i in 0..16 {
            issue_at(&store, client(100 + i), t1).unwrap();
        }
        assert!(matches!(
            store.take_at(&ids[0], t1),
            Err(HubError::UnknownChallenge)
        ));
        for _ in 0..4 {
            issue_at(&store, a, t1 + EVICTION_GRACE).unwrap();
        }
        assert_eq!(store.len(), 20);
    }

    #[test]
    fn taken_challenges_do_not_grow_the_queue() {
        let store = ChallengeStore::new(TTL);
        let now = Instant::now();
        // One held challenge keeps the taken ones from reaching the front.
        issue_at(&store, None, now).unwrap();
        for i in 0..100_000u64 {
            let id = issue_at(&store, client(i % 1000), now).unwrap();
            store.take_at(&id, now).unwrap();
            let p = store.pending();
            assert!(p.order.len() <= 2 * p.by_id.len() + ORDER_SLACK + 1);
        }
        assert_eq!(store.len(), 1);
        assert!(store.pending().by_client.is_empty());
    }

    #[test]
    fn a_challenge_is_used_once() {
        let store = ChallengeStore::new(Duration::from_secs(60));
        let issued = store.issue().unwrap();
        assert_eq!(store.take(&issued.id).unwrap(), issued.bytes);
        assert!(matches!(
            store.take(&issued.id),
            Err(HubError::UnknownChallenge)
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
