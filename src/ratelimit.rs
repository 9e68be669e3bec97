//! Rate limits: per client IP on `/api/auth/*`, per user on sends (both
//! transports). Over the limit is 429 `rate_limited` with `Retry-After`.
//!
//! The IP is the TCP peer address. `X-Forwarded-For` is believed only when
//! the peer is the configured `--trusted-proxy`, and then only its last entry
//! (the one that proxy appended): a client cannot pick its own key.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;

use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Settings;
use crate::error::ApiError;
use crate::model::Pubkey;

pub struct RateLimits {
    /// Per client IP on `/api/auth/*`; `None` when `--auth-rate 0`.
    auth: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Per user on sends; `None` when `--send-rate 0`.
    send: Option<DefaultKeyedRateLimiter<Pubkey>>,
    trusted_proxy: Option<IpAddr>,
    clock: DefaultClock,
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
        RateLimits {
            auth: limiter(settings.auth_rate, settings.auth_burst),
            send: limiter(settings.send_rate, settings.send_burst),
            trusted_proxy: settings.trusted_proxy,
            clock: DefaultClock::default(),
        }
    }

    fn check<K: Hash + Eq + Clone>(
        &self,
        limiter: &Option<DefaultKeyedRateLimiter<K>>,
        key: &K,
    ) -> Result<(), ApiError> {
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            ApiError::RateLimited {
                retry_after: (wait.as_secs_f64().ceil() as u32).max(1),
            }
        })
    }

    /// Counts one auth request from the request's client.
    pub fn check_auth(&self, req: &HttpRequest) -> Result<(), ApiError> {
        match self.client_ip(req) {
            Some(ip) => self.check(&self.auth, &ip),
            None => Ok(()),
        }
    }

    /// Counts one send by `user`.
    pub fn check_send(&self, user: &Pubkey) -> Result<(), ApiError> {
        self.check(&self.send, user)
    }

    /// The client's address: the peer, or the proxy's last forwarded hop.
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        if Some(peer) != self.trusted_proxy {
            return Some(peer);
        }
        let forwarded = req
            .headers()
            .get("X-Forwarded-For")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|ip| ip.trim().parse().ok());
        Some(forwarded.unwrap_or(peer))
    }

    /// Forgets keys that are back to a full burst (the janitor calls this).
    pub fn retain_recent(&self) {
        if let Some(l) = &self.auth {
            l.retain_recent();
        }
        if let Some(l) = &self.send {
            l.retain_recent();
        }
    }
}
