//! `SessionRegistry`: who is online. Maps each pubkey to every live session
//! of that user (one per device).
//!
//! It is a shared map behind a lock rather than an actor: the
//! `ConversationActor` must know, at the moment it assigns a sequence,
//! whether the recipient has a live session (that decides whether the
//! offline entry goes into the same transaction). An actor round trip there
//! would put every conversation behind one mailbox.
//!
//! # Architecture Invariant
//! A session is registered from its `started()` to its `stopping()`, and a
//! session whose push fails is removed at once: the registry never keeps a
//! dead session, so "online" is never a lie for longer than one push.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use actix::Message;
use bytes::Bytes;

use crate::metrics::Metrics;
use crate::model::Pubkey;
use crate::ratelimit::ClientKey;

/// One encoded event `Envelope`, the same bytes for every recipient.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Deliver {
    pub event: Bytes,
    /// When the push was made (for `united_send_stage_seconds{stage="to_session"}`).
    pub queued_at: std::time::Instant,
}

/// Asks a session to close with a WebSocket close code.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct Kick {
    pub code: u16,
    /// Let the session's in-flight requests answer before it closes.
    pub drain: bool,
}

/// WebSocket close codes the hub uses.
pub mod close_code {
    /// The hub is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Too many bad frames in a row.
    pub const POLICY: u16 = 1008;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The session fell too far behind (try again later).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The session's access token expired and no fresh one came in band
    /// (an application code: 4000-4999 are free for applications).
    pub const TOKEN_EXPIRED: u16 = 4001;
}

/// Why a session did not take a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// It is `--session-buffer` events behind.
    Full,
    /// It has stopped.
    Closed,
}

/// How the registry reaches a session. `actors::session` implements it for
/// the session's address, so the registry names no session type (and the
/// session and the registry do not import each other).
pub trait SessionSink: Send + Sync {
    /// Hands a push over without waiting.
    fn deliver(&self, msg: Deliver) -> Result<(), Refused>;
    /// Asks the session to close; gets through even when it is full.
    fn kick(&self, msg: Kick);
}

/// What the registry keeps of one session.
#[derive(Clone)]
pub struct SessionHandle {
    pub id: u64,
    /// The session's address, behind [`SessionSink`]: one address, not a
    /// `Recipient` per message type (each `Recipient` is a boxed sender with
    /// two allocations of its own, about 110 bytes a session).
    pub sink: Arc<dyn SessionSink>,
    /// Bytes handed to the session and not yet written by it: at most
    /// `--session-buffer-bytes`, or the session is cut off like a full one.
    pub pending_bytes: Arc<AtomicUsize>,
}

/// Holds one admitted session's place in the per-user and per-IP counts;
/// dropping it (when the session ends) gives the place back.
pub struct Admission {
    admissions: Arc<Admissions>,
    user: Pubkey,
    ip: Option<ClientKey>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut counts = self.admissions.counts();
        if let Some(n) = counts.0.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.0.remove(&self.user);
            }
        }
        if let Some(ip) = &self.ip {
            if let Some(n) = counts.1.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    counts.1.remove(ip);
                }
            }
        }
    }
}

/// Live WebSocket sessions per user and per client IP, and their caps.
struct Admissions {
    counts: Mutex<(HashMap<Pubkey, usize>, HashMap<ClientKey, usize>)>,
    per_user: usize,
    per_ip: usize,
}

type AdmissionCounts = (HashMap<Pubkey, usize>, HashMap<ClientKey, usize>);

impl Admissions {
    fn counts(&self) -> std::sync::MutexGuard<'_, AdmissionCounts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The caps on sessions, from the settings (0 turns a cap off).
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    pub bytes_per_session: usize,
    pub sessions_per_user: usize,
    pub connections_per_ip: usize,
}

/// Outcome of pushing one event to one user's sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pushed {
    pub delivered: usize,
    pub failed: usize,
}

pub struct SessionRegistry {
    /// pubkey → that user's live sessions.
    users: RwLock<HashMap<Pubkey, Vec<SessionHandle>>>,
    next_id: AtomicU64,
    /// Set once shutdown begins; new sessions are turned away.
    closing: AtomicBool,
    /// Sessions admitted per user and per IP.
    admissions: Arc<Admissions>,
    /// Most bytes one session may have waiting (0: no byte cap).
    bytes_per_session: usize,
    metrics: Arc<Metrics>,
}

impl SessionRegistry {
    pub fn new(metrics: Arc<Metrics>, limits: SessionLimits) -> Self {
        SessionRegistry {
            users: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            admissions: Arc::new(Admissions {
                counts: Mutex::new((HashMap::new(), HashMap::new())),
                per_user: limits.sessions_per_user,
                per_ip: limits.connections_per_ip,
            }),
            bytes_per_session: limits.bytes_per_session,
            metrics,
        }
    }

    /// Takes a place for a new session of `user` from `ip` (an IPv4 address
    /// or an IPv6 /64), or says which
    /// cap it would break (429, so the client knows to wait or close one).
    pub fn admit(
        &self,
        user: &Pubkey,
        ip: Option<ClientKey>,
    ) -> Result<Admission, crate::error::HubError> {
        let a = &self.admissions;
        let mut counts = a.counts();
        let user_count = counts.0.get(user).copied().unwrap_or(0);
        if a.per_user > 0 && user_count >= a.per_user {
            return Err(crate::error::HubError::TooManySessions(format!(
                "this user already has {user_count} live sessions (--max-sessions-per-user)"
            )));
        }
        if let Some(ip) = &ip {
            let ip_count = counts.1.get(ip).copied().unwrap_or(0);
            if a.per_ip > 0 && ip_count >= a.per_ip {
                return Err(crate::error::HubError::TooManySessions(format!(
                    "this address already has {ip_count} live sessions (--max-connections-per-ip)"
                )));
            }
            *counts.1.entry(*ip).or_default() += 1;
        }
        *counts.0.entry(user.clone()).or_default() += 1;
        Ok(Admission {
            admissions: a.clone(),
            user: user.clone(),
            ip,
        })
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a session; `false` when the hub is shutting down.
    pub fn register(&self, user: &Pubkey, handle: SessionHandle) -> bool {
        if self.closing.load(Ordering::Acquire) {
            return false;
        }
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        // Most users have one device: room for one, not the default four.
        users
            .entry(user.clone())
            .or_insert_with(|| Vec::with_capacity(1))
            .push(handle);
        self.metrics.live_sessions.inc();
        true
    }

    /// Removes a session; idempotent.
    pub fn unregister(&self, user: &Pubkey, session: u64) {
        let mut users = self.users.write().unwrap_or_else(|e| e.into_inner());
        if let Some(sessions) = users.get_mut(user) {
            let before = sessions.len();
            sessions.retain(|s| s.id != session);
            if sessions.len() < before {
                self.metrics.live_sessions.dec();
            }
            if sessions.is_empty() {
                users.remove(user);
            }
        }
    }

    pub fn is_online(&self, user: &Pubkey) -> bool {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        users.get(user).is_some_and(|s| !s.is_empty())
    }

    pub fn session_count(&self, user: &Pubkey) -> usize {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        users.get(user).map_or(0, Vec::len)
    }

    pub fn total_sessions(&self) -> usize {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        users.values().map(Vec::len).sum()
    }

    /// Hands `event` to every live session of `user` without blocking.
    ///
    /// A session whose buffer is full is removed and told to close with 1013;
    /// a closed one is removed. Neither counts as delivered.
    pub fn push(&self, user: &Pubkey, event: &Bytes) -> Pushed {
        let mut pushed = Pushed::default();
        let mut dead = Vec::new();
        let queued_at = std::time::Instant::now();
        {
            let users = self.users.read().unwrap_or_else(|e| e.into_inner());
            let Some(sessions) = users.get(user) else {
                return pushed;
            };
            for session in sessions {
                let size = event.len();
                let waiting = session.pending_bytes.fetch_add(size, Ordering::AcqRel) + size;
                let over_budget = self.bytes_per_session > 0 && waiting > self.bytes_per_session;
                let sent = if over_budget {
                    Err(true)
                } else {
                    session
                        .sink
                        .deliver(Deliver {
                            event: event.clone(),
                            queued_at,
                        })
                        .map_err(|why| why == Refused::Full)
                };
                match sent {
                    Ok(()) => pushed.delivered += 1,
                    Err(full) => {
                        session.pending_bytes.fetch_sub(size, Ordering::AcqRel);
                        pushed.failed += 1;
                        if full {
                            tracing::warn!(
                                session = session.id,
                                "session too slow; closing with 1013"
                            );
                            // `do_send` ignores the full mailbox; sent once,
                            // since the session leaves the registry below.
                            session.sink.kick(Kick {
                                code: close_code::TRY_AGAIN_LATER,
                                drain: false,
                            });
                        }
                        dead.push(session.id);
                    }
                }
            }
        }
        self.metrics.pushes.inc_by(pushed.delivered as u64);
        self.metrics.pushes_failed.inc_by(pushed.failed as u64);
        for id in dead {
            self.unregister(user, id);
        }
        pushed
    }

    /// Starts shutdown: refuses new sessions and asks every live one to
    /// close with 1001 once its in-flight requests have answered.
    pub fn close_all(&self) {
        self.closing.store(true, Ordering::Release);
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        for session in users.values().flatten() {
            session.sink.kick(Kick {
                code: close_code::GOING_AWAY,
                drain: true,
            });
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}
