//! WebSocket tickets (contract §8): `POST /api/auth/ws-ticket` gives a
//! single-use ticket, valid 30 seconds and bound to the caller, and
//! `GET /ws?ticket=` opens a session with it. A browser cannot set headers
//! on a WebSocket; with a ticket its access token never appears in a URL,
//! which proxies and load balancers log.
//!
//! A ticket is 32 random bytes in unpadded base64url; the hub keeps only its
//! SHA-256, with the user and the expiry of the access token that asked for
//! it (the session lives as long as that token would have). The embedded
//! store keeps tickets in memory ([`TicketStore`]); the cluster keeps them in
//! PostgreSQL, so a ticket from one node opens a session on any other, once.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::error::HubError;
use crate::model::Pubkey;

/// How long a ticket can be used (`--ws-ticket-ttl`).
pub const TICKET_TTL: Duration = Duration::from_secs(30);

/// Unused tickets one user may hold; past that, 429 until one expires.
pub const MAX_TICKETS_PER_USER: usize = 16;

/// A new ticket: what the client gets, and the hash the hub keeps.
pub fn new_ticket() -> (String, [u8; 32]) {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let ticket = URL_SAFE_NO_PAD.encode(bytes);
    (ticket, Sha256::digest(bytes).into())
}

/// The hash a presented ticket is stored under; `None` when it cannot be a
/// ticket at all.
pub fn ticket_hash(ticket: &str) -> Option<[u8; 32]> {
    let bytes = URL_SAFE_NO_PAD.decode(ticket).ok()?;
    (bytes.len() == 32).then(|| Sha256::digest(&bytes).into())
}

/// What a ticket stands for once taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketHolder {
    pub user: Pubkey,
    /// The asking access token's expiry, Unix seconds.
    pub token_expires_at: u64,
}

/// The answer to a used, expired or unknown ticket (contract §8: 401).
pub fn refused() -> HubError {
    HubError::Unauthorized("the ticket is unknown, used or expired")
}

struct Held {
    holder: TicketHolder,
    expires: Instant,
}

#[derive(Default)]
struct Tickets {
    by_hash: HashMap<[u8; 32], Held>,
    /// Issue order, for expiry from the front; taken tickets stay here
    /// until they reach the front.
    order: VecDeque<([u8; 32], Instant)>,
    per_user: HashMap<Pubkey, usize>,
}

impl Tickets {
    fn forget(&mut self, hash: &[u8; 32]) -> Option<Held> {
        let held = self.by_hash.remove(hash)?;
        if let Some(n) = self.per_user.get_mut(&held.holder.user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&held.holder.user);
            }
        }
        Some(held)
    }

    fn purge_expired(&mut self, now: Instant) -> usize {
        let mut purged = 0;
        while let Some((hash, expires)) = self.order.front().copied() {
            if expires > now {
                break;
            }
            self.order.pop_front();
            purged += usize::from(self.forget(&hash).is_some());
        }
        purged
    }
}

/// Tickets in memory: one process is the whole hub.
#[derive(Default)]
pub struct TicketStore {
    tickets: Mutex<Tickets>,
}

impl TicketStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tickets> {
        self.tickets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new ticket for `holder`, valid `ttl` (the same for every call): the
    /// ticket and its expiry (Unix ms).
    pub fn issue(&self, holder: TicketHolder, ttl: Duration) -> Result<(String, u64), HubError> {
        let now = Instant::now();
        let mut tickets = self.lock();
        tickets.purge_expired(now);
        let held = tickets.per_user.get(&holder.user).copied().unwrap_or(0);
        if held >= MAX_TICKETS_PER_USER {
            return Err(HubError::RateLimited {
                retry_after: ttl.as_secs().max(1) as u32,
            });
        }
        let (ticket, hash) = new_ticket();
        *tickets.per_user.entry(holder.user.clone()).or_default() += 1;
        let expires = now + ttl;
        tickets.order.push_back((hash, expires));
        tickets.by_hash.insert(hash, Held { holder, expires });
        Ok((ticket, crate::model::now_ms() + ttl.as_millis() as u64))
    }

    /// Takes a ticket: once, within its lifetime.
    pub fn take(&self, ticket: &str) -> Result<TicketHolder, HubError> {
        let hash = ticket_hash(ticket).ok_or_else(refused)?;
        let held = self.lock().forget(&hash).ok_or_else(refused)?;
        if held.expires <= Instant::now() {
            return Err(refused());
        }
        Ok(held.holder)
    }

    /// Drops expired tickets; returns how many.
    pub fn purge_expired(&self) -> usize {
        self.lock().purge_expired(Instant::now())
    }

    /// Unused, unexpired-or-not-yet-purged tickets (for tests).
    pub fn len(&self) -> usize {
        self.lock().by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(n: u8) -> TicketHolder {
        TicketHolder {
            user: Pubkey::parse(&hex::encode([n; 32])).unwrap(),
            token_expires_at: 1_900_000_000,
        }
    }

    #[test]
    fn a_ticket_opens_once_for_its_user() {
        let store = TicketStore::default();
        let (ticket, expires_at) = store.issue(holder(1), TICKET_TTL).unwrap();
        assert!(expires_at > crate::model::now_ms());
        assert_eq!(ticket.len(), 43);
        assert_eq!(store.take(&ticket).unwrap(), holder(1));
        assert!(matches!(
            store.take(&ticket),
            Err(HubError::Unauthorized(_))
        ));
        assert!(store.take("not a ticket").is_err());
        assert!(store.take(&new_ticket().0).is_err(), "unknown");
        assert!(store.is_empty());
    }

    #[test]
    fn an_expired_ticket_is_refused_and_purged() {
        let store = TicketStore::default();
        let short = Duration::from_millis(20);
        let (late, _) = store.issue(holder(1), short).unwrap();
        let (never, _) = store.issue(holder(1), short).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert!(store.take(&late).is_err());
        assert_eq!(store.purge_expired(), 1);
        assert!(store.take(&never).is_err());
    }

    #[test]
    fn a_user_holds_a_bounded_number_of_tickets() {
        let store = TicketStore::default();
        let mut tickets = Vec::new();
        for _ in 0..MAX_TICKETS_PER_USER {
            tickets.push(store.issue(holder(1), TICKET_TTL).unwrap().0);
        }
        assert!(matches!(
            store.issue(holder(1), TICKET_TTL),
            Err(HubError::RateLimited { retry_after: 30 })
        ));
        store.issue(holder(2), TICKET_TTL).expect("another user");
        store.take(&tickets[0]).unwrap();
        store
            .issue(holder(1), TICKET_TTL)
            .expect("a used ticket gives its place back");
    }
}
