//! Client addresses behind reverse proxies (contract §8): `--trusted-proxy`
//! blocks ([`IpNet`]) and the client's hop of `X-Forwarded-For`
//! ([`forwarded_client`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `%XX` escapes of a URL part decoded (a password may hold `@`, `:` or `/`
/// that way); anything else is kept as it is.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An address or a CIDR block (`10.0.0.0/8`, `2001:db8::/32`, `127.0.0.1`):
/// one `--trusted-proxy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    /// The network's first address (host bits cleared).
    network: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is in this block (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_v4(ip, self.prefix) == net,
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_v6(ip, self.prefix) == net,
            _ => false,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let keep = match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p)),
    };
    Ipv4Addr::from(u32::from(ip) & keep)
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let keep = match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p)),
    };
    Ipv6Addr::from(u128::from(ip) & keep)
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let addr = canonical(addr);
        let most = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => most,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= most)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {most}"))?,
        };
        let network = match addr {
            IpAddr::V4(v4) => IpAddr::V4(mask_v4(v4, prefix)),
            IpAddr::V6(v6) => IpAddr::V6(mask_v6(v6, prefix)),
        };
        Ok(IpNet { network, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy;
/// then the hops of every `X-Forwarded-For` line, read from the last, are
/// skipped while they are trusted proxies, and the first that is not is the
/// client. A hop that does not parse ends the walk at the last trusted one
/// (a trusted proxy only ever appends addresses).
pub fn forwarded_client<'a>(
    peer: IpAddr,
    lines: impl DoubleEndedIterator<Item = &'a actix_web::http::header::HeaderValue>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer;
    if !is_trusted(client) {
        return client;
    }
    for line in lines.rev() {
        let Ok(line) = line.to_str() else {
            return client;
        };
        for hop in line.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                return client;
            };
            client = canonical(ip);
            if !is_trusted(client) {
                return client;
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn client_of(peer: &str, lines: &[&str], trusted: &[&str]) -> IpAddr {
        let values: Vec<_> = lines
            .iter()
            .map(|l| actix_web::http::header::HeaderValue::from_str(l).unwrap())
            .collect();
        forwarded_client(ip(peer), values.iter(), &nets(trusted))
    }

    #[test]
    fn cidr_blocks_parse_and_match() {
        let net: IpNet = "10.1.2.3/16".parse().unwrap();
        assert_eq!(net.to_string(), "10.1.0.0/16");
        assert!(net.contains(ip("10.1.255.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        assert!(!net.contains(ip("10.2.0.1")));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!("0.0.0.0/0"
            .parse::<IpNet>()
            .unwrap()
            .contains(ip("8.8.8.8")));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0", "proxy", "10.0.0.0/x"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_last_hop_that_is_not_a_trusted_proxy() {
        let proxy = ["127.0.0.1"];
        // Not behind a trusted proxy: the header is ignored.
        assert_eq!(
            client_of("192.0.2.1", &["10.0.0.1"], &proxy),
            ip("192.0.2.1")
        );
        assert_eq!(client_of("192.0.2.1", &["10.0.0.1"], &[]), ip("192.0.2.1"));
        // The proxy appends to the client's line.
        assert_eq!(
            client_of("127.0.0.1", &["6.6.6.6, 10.0.0.1"], &proxy),
            ip("10.0.0.1")
        );
        // HAProxy-style: the proxy adds its own line after the client's.
        assert_eq!(
            client_of("127.0.0.1", &["6.6.6.6", "10.0.0.1"], &proxy),
            ip("10.0.0.1")
        );
        // A chain of trusted proxies is skipped, by address or by block.
        assert_eq!(
            client_of(
                "127.0.0.1",
                &["6.6.6.6, 198.51.100.7", "10.1.2.3, 10.1.9.9"],
                &["127.0.0.1", "10.1.0.0/16"]
            ),
            ip("198.51.100.7")
        );
        // Garbage where the client's address should be: the last trusted hop.
        assert_eq!(
            client_of(
                "127.0.0.1",
                &["6.6.6.6, junk", "10.1.2.3"],
                &["127.0.0.1", "10.1.0.0/16"]
            ),
            ip("10.1.2.3")
        );
        // No header from a trusted peer: the peer.
        assert_eq!(client_of("127.0.0.1", &[], &proxy), ip("127.0.0.1"));
    }
}
