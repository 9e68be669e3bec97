//! Which local address each session connects from.
//!
//! A TCP connection to one hub address and port needs a local port of its
//! own, and a local address has only the system's ephemeral ports (32768 to
//! 60999 on Linux: 28,232). Past that, connects fail with "Cannot assign
//! requested address". A hub on loopback can be reached from any 127.x.y.z
//! address, so sessions past the first address's share connect from
//! 127.0.0.2, 127.0.0.3, and so on. The first share keeps the system's
//! choice of address, so runs that fit are unchanged. A hub elsewhere is
//! reached from one address: a run that needs more ports than it has is
//! refused before anything starts.

use std::net::{IpAddr, Ipv4Addr};

/// Ephemeral ports of this machine (`ip_local_port_range`), or Linux's
/// default where that cannot be read.
pub fn ephemeral_ports() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| {
            let mut ends = range.split_whitespace().map(str::parse::<usize>);
            match (ends.next(), ends.next()) {
                (Some(Ok(low)), Some(Ok(high))) if high >= low => Some(high - low + 1),
                _ => None,
            }
        })
        .unwrap_or(60999 - 32768 + 1)
}

/// Sessions one source address carries to one hub: its ports, less a
/// thousand for the run's HTTP connections and other programs.
pub fn per_source(ports: usize) -> usize {
    ports.saturating_sub(1000).max(1)
}

/// Whether `url`'s host is an IPv4 loopback address (or `localhost`), which
/// any 127.x.y.z source can reach.
pub fn is_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<actix_web::http::Uri>() else {
        return false;
    };
    match uri.host() {
        Some("localhost") => true,
        Some(host) => host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// The source address of the `index`th session (counted per hub address)
/// when each source carries `per_source` sessions: the system's choice for
/// the first share, then 127.0.0.2, 127.0.0.3, …
pub fn source_for(index: usize, per_source: usize) -> Option<IpAddr> {
    let share = index / per_source.max(1);
    if share == 0 {
        return None;
    }
    // 127.0.0.2 to 127.255.255.254: more shares than any run has.
    let host = share as u32 + 1;
    Some(IpAddr::V4(Ipv4Addr::from(
        0x7f00_0000 | (host & 0x00ff_ffff),
    )))
}

/// Checks, before anything starts, that the sessions to each hub address of
/// `ws_urls` can all get a port when one local address carries `per_source`:
/// refuses a run past that to a hub that is not on loopback, and says how to
/// run it instead.
pub fn check(
    ws_urls: &[String],
    sessions_per_node: &[usize],
    per_source: usize,
) -> anyhow::Result<()> {
    for (url, &sessions) in ws_urls.iter().zip(sessions_per_node) {
        anyhow::ensure!(
            sessions <= per_source || is_loopback(url),
            "{sessions} sessions to {url} need more local ports than one address has \
             (it carries {per_source}): run the generator on the hub's \
             machine against 127.0.0.1 (it then spreads its sockets over 127.0.0.x), or split \
             the sessions between generators on several machines"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_past_a_share_move_to_the_next_loopback_address() {
        assert_eq!(source_for(0, 100), None);
        assert_eq!(source_for(99, 100), None);
        assert_eq!(source_for(100, 100), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(source_for(250, 100), Some("127.0.0.3".parse().unwrap()));
        assert_eq!(
            source_for(256 * 100, 100),
            Some("127.0.1.1".parse().unwrap())
        );
        assert_eq!(per_source(28_232), 27_232);
    }

    #[test]
    fn only_a_loopback_hub_is_reached_from_several_addresses() {
        assert!(is_loopback("ws://127.0.0.1:1984/ws"));
        assert!(is_loopback("ws://localhost:1984/ws"));
        assert!(is_loopback("wss://127.3.0.1:443/ws"));
        assert!(!is_loopback("ws://10.0.0.5:1984/ws"));
        assert!(!is_loopback("wss://hub.example.org/ws"));
        assert!(!is_loopback("ws://[::1]:1984/ws"));

        let urls = ["ws://10.0.0.5:1984/ws".to_owned()];
        assert!(check(&urls, &[1000], 1000).is_ok());
        let refused = check(&urls, &[1001], 1000).unwrap_err().to_string();
        assert!(
            refused.contains("1001 sessions to ws://10.0.0.5:1984/ws"),
            "{refused}"
        );
        let local = ["ws://127.0.0.1:1984/ws".to_owned()];
        assert!(check(&local, &[50_000], 1000).is_ok());
    }

    /// The reference client's connector honours the source address: a
    /// listener on 127.0.0.1 sees the connection come from 127.0.0.3.
    #[actix_web::test]
    async fn a_session_connects_from_the_address_it_was_given() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer.ip()));
        let source = source_for(2, 1);
        assert_eq!(source, Some("127.0.0.3".parse().unwrap()));
        // Nothing answers the upgrade; only where the connection came from counts.
        let _ = actix_web::rt::time::timeout(
            std::time::Duration::from_secs(2),
            crate::client::WsClient::connect_from(
                &format!("ws://127.0.0.1:{port}/ws"),
                None,
                source,
            ),
        )
        .await;
        assert_eq!(accepted.join().unwrap().unwrap(), source.unwrap());
    }
}
