//! Rate limits: per client on `/api/auth/*`; per user on sends, reads, key
//! publications and conversation creations (both transports). Over the limit is 429 `rate_limited` with `Retry-After`.
//!
//! The client's address is the TCP peer address. `X-Forwarded-For` is
//! believed only when the peer is a `--trusted-proxy` (addresses or CIDR
//! blocks), and then the client is the last hop that is not a trusted proxy,
//! reading every `X-Forwarded-For` line in order from the end (contract §8):
//! what a client writes itself stands before what its first proxy appends,
//! so it cannot pick its own key, whether the proxy appends to the client's
//! line or adds a line of its own.
//!
//! A client is counted by [`client_key`]: an IPv4 address is itself, an IPv6
//! address counts as its /64 (one subscriber usually holds a whole /64, so
//! keying on the full address would give each of them 2^64 budgets).
//!
//! The keyed limiters keep one entry per client seen recently. They are
//! pruned here, on the request path, at most every [`PRUNE_INTERVAL`]: a
//! flood from rotating addresses leaves at most about (requests per second)
//! × (`PRUNE_INTERVAL` + burst / rate) entries, not an hour of them.

use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Settings;
use crate::error::HubError;
use crate::model::Pubkey;
use crate::net::{forwarded_client, IpNet};

/// How often the keyed limiters forget clients that are back to a full burst.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(5);

/// Who a per-client limit counts: an IPv4 address, or the /64 network of an
/// IPv6 address. Built by [`client_key`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(Ipv4Addr),
    /// The upper 64 bits of the address.
    V6Net(u64),
}

/// The key of a client address: an IPv4 address stays itself, an
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) counts as its IPv4 address,
/// any other IPv6 address counts as its /64.
pub fn client_key(ip: IpAddr) -> ClientKey {
    match ip {
        IpAddr::V4(v4) => ClientKey::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => ClientKey::V4(v4),
            None => ClientKey::V6Net((u128::from(v6) >> 64) as u64),
        },
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::V4(v4) => write!(f, "{v4}"),
            ClientKey::V6Net(net) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*net) << 64)),
        }
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({self})")
    }
}

pub struct RateLimits {
    /// Per client key on `/api/auth/*`; `None` when `--auth-rate 0`.
    auth: Option<DefaultKeyedRateLimiter<ClientKey>>,
    /// Per user on sends; `None` when `--send-rate 0`.
    send: Option<DefaultKeyedRateLimiter<Pubkey>>,
    /// Per user on reads (history, conversation lists, offline fetches);
    /// `None` when `--read-rate 0`.
    read: Option<DefaultKeyedRateLimiter<Pubkey>>,
    /// Per user on key publications; `None` when `--key-rate 0`.
    key: Option<DefaultKeyedRateLimiter<Pubkey>>,
    /// Per user on conversation creations; `None` when
    /// `--conversation-rate 0`.
    conversation: Option<DefaultKeyedRateLimiter<Pubkey>>,
    trusted_proxies: Vec<IpNet>,
    clock: DefaultClock,
    /// Origin of `next_prune_ms`.
    started: Instant,
    /// Milliseconds after `started` when the next check prunes.
    next_prune_ms: AtomicU64,
    prune_interval: Duration,
}

fn limiter<K: Hash + Eq + Clone>(rate: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    let rate = NonZeroU32::new(rate)?;
    let burst = NonZeroU32::new(burst).unwrap_or(rate);
    Some(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

impl RateLimits {
    pub fn new(settings: &Settings) -> Self {
        Self::with_prune_interval(settings, PRUNE_INTERVAL)
    }

    fn with_prune_interval(settings: &Settings, prune_interval: Duration) -> Self {
        RateLimits {
            auth: limiter(settings.auth_rate, settings.auth_burst),
            send: limiter(settings.send_rate, settings.send_burst),
            read: limiter(settings.read_rate, settings.read_burst),
            key: limiter(settings.key_rate, settings.key_burst),
            conversation: limiter(settings.conversation_rate, settings.conversation_burst),
            trusted_proxies: settings.trusted_proxy.clone(),
            clock: DefaultClock::default(),
            started: Instant::now(),
            next_prune_ms: AtomicU64::new(prune_interval.as_millis() as u64),
            prune_interval,
        }
    }

    fn check<K: Hash + Eq + Clone>(
        &self,
        limiter: &Option<DefaultKeyedRateLimiter<K>>,
        key: &K,
    ) -> Result<(), HubError> {
        let Some(limiter) = limiter else {
            return Ok(());
        };
        self.maybe_prune();
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            HubError::RateLimited {
                retry_after: (wait.as_secs_f64().ceil() as u32).max(1),
            }
        })
    }

    /// Prunes when `prune_interval` has passed since the last prune: one
    /// clock read and one relaxed load on the hot path; of the checks that
    /// find it due, exactly one prunes.
    fn maybe_prune(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        let due = self.next_prune_ms.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        let next = now + self.prune_interval.as_millis() as u64;
        if self
            .next_prune_ms
            .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.retain_recent();
        }
    }

    /// Counts one auth request from the request's client.
    pub fn check_auth(&self, req: &HttpRequest) -> Result<(), HubError> {
        match self.client_key(req) {
            Some(key) => self.check_auth_key(key),
            None => Ok(()),
        }
    }

    /// Counts one auth request from `key`.
    pub fn check_auth_key(&self, key: ClientKey) -> Result<(), HubError> {
        self.check(&self.auth, &key)
    }

    /// Counts one send by `user`.
    pub fn check_send(&self, user: &Pubkey) -> Result<(), HubError> {
        self.check(&self.send, user)
    }

    /// Counts one read by `user` (history, conversation list, offline page).
    pub fn check_read(&self, user: &Pubkey) -> Result<(), HubError> {
        self.check(&self.read, user)
    }

    /// Counts one key publication by `user`.
    pub fn check_key(&self, user: &Pubkey) -> Result<(), HubError> {
        self.check(&self.key, user)
    }

    /// Counts one conversation creation by `user`.
    pub fn check_conversation(&self, user: &Pubkey) -> Result<(), HubError> {
        self.check(&self.conversation, user)
    }

    /// The client's address: the peer, or, behind trusted proxies, the last
    /// forwarded hop that is not one of them.
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        Some(forwarded_client(
            peer,
            req.headers().get_all("X-Forwarded-For"),
            &self.trusted_proxies,
        ))
    }

    /// The key the request's client is counted under (see [`client_key`]).
    pub fn client_key(&self, req: &HttpRequest) -> Option<ClientKey> {
        self.client_ip(req).map(client_key)
    }

    /// The key the challenge store counts this request's challenges under
    /// (`auth::MAX_PENDING_PER_CLIENT`): the client key, or `None` when
    /// `--auth-rate 0` turns the per-client auth limits off.
    pub fn challenge_client(&self, req: &HttpRequest) -> Option<ClientKey> {
        self.auth.as_ref()?;
        self.client_key(req)
    }

    /// Forgets keys that are back to a full burst. Linear in the keys held,
    /// which the pruning on the request path keeps to a few seconds' worth;
    /// the janitor calls it too.
    pub fn retain_recent(&self) {
        if let Some(l) = &self.auth {
            l.retain_recent();
        }
        if let Some(l) = &self.send {
            l.retain_recent();
        }
        for l in [&self.read, &self.key, &self.conversation]
            .into_iter()
            .flatten()
        {
            l.retain_recent();
        }
    }

    /// Clients the auth limiter holds state for (an estimate under
    /// concurrent use); for tests and diagnostics.
    pub fn auth_keys(&self) -> usize {
        self.auth.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_is_itself_and_ipv6_counts_as_its_64() {
        assert_eq!(
            client_key(ip("203.0.113.9")),
            ClientKey::V4("203.0.113.9".parse().unwrap())
        );
        assert_ne!(
            client_key(ip("203.0.113.9")),
            client_key(ip("203.0.113.10"))
        );
        // Same /64, different interface ids.
        assert_eq!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        // Neighbouring /64s.
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db9:1:2::1"))
        );
        assert_eq!(
            client_key(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn an_ipv4_mapped_ipv6_address_counts_as_its_ipv4_address() {
        assert_eq!(
            client_key(ip("::ffff:10.0.0.1")),
            client_key(ip("10.0.0.1"))
        );
        assert_ne!(
            client_key(ip("::ffff:10.0.0.1")),
            client_key(ip("::ffff:10.0.0.2"))
        );
        // Every mapped address lies in ::/64: they must not share one key.
        assert_ne!(client_key(ip("::ffff:10.0.0.1")), client_key(ip("::1")));
        assert_eq!(client_key(ip("::ffff:10.0.0.1")).to_string(), "10.0.0.1");
    }

    #[test]
    fn challenges_are_counted_per_client_only_while_auth_limits_are_on() {
        use actix_web::test::TestRequest;
        let proxy: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let req = TestRequest::default()
            .peer_addr(proxy)
            .insert_header(("X-Forwarded-For", "10.9.9.9, 2001:db8:5:5::7"))
            .to_http_request();
        let settings = Settings {
            trusted_proxy: vec![proxy.ip().to_string().parse().unwrap()],
            ..Settings::default()
        };
        let on = RateLimits::new(&settings);
        assert_eq!(
            on.challenge_client(&req),
            Some(client_key(ip("2001:db8:5:5::1")))
        );
        let off = RateLimits::new(&Settings {
            auth_rate: 0,
            ..settings
        });
        assert_eq!(off.challenge_client(&req), None);
        assert!(off.client_key(&req).is_some());
    }

    #[test]
    fn one_64_shares_one_budget() {
        let settings = Settings {
            auth_rate: 1,
            auth_burst: 2,
            ..Settings::default()
        };
        let limits = RateLimits::new(&settings);
        let a = client_key(ip("2001:db8:7:7::1"));
        let b = client_key(ip("2001:db8:7:7::2"));
        let other = client_key(ip("2001:db8:7:8::1"));
        assert!(limits.check_auth_key(a).is_ok());
        assert!(limits.check_auth_key(b).is_ok());
        assert!(matches!(
            limits.check_auth_key(a),
            Err(HubError::RateLimited { retry_after: 1 })
        ));
        assert!(limits.check_auth_key(other).is_ok());
    }

    #[test]
    fn the_request_path_prunes_clients_back_to_a_full_burst() {
        let settings = Settings {
            auth_rate: 1000,
            auth_burst: 1,
            ..Settings::default()
        };
        let limits = RateLimits::with_prune_interval(&settings, Duration::from_millis(500));
        for i in 0..5_000u32 {
            let key = client_key(IpAddr::V6(Ipv6Addr::from((u128::from(i) + 1) << 64)));
            let _ = limits.check_auth_key(key);
        }
        assert!(limits.auth_keys() > 1_000, "{}", limits.auth_keys());
        // Every key is back to a full burst after 1 ms; the first check
        // after the interval prunes them.
        std::thread::sleep(Duration::from_millis(600));
        limits.check_auth_key(client_key(ip("192.0.2.1"))).unwrap();
        assert!(limits.auth_keys() <= 2, "{} keys left", limits.auth_keys());
    }
}
