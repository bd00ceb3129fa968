//! CIDR blocks for the status endpoint's allow list.
//!
//! Owns parsing `10.0.0.0/8` / `::1/128` and matching Envoy's `source.address`
//! text (`127.0.0.1:5678`, `[::1]:5678`). Never resolves names.

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| {
            format!("\"{text}\" is not an IP address or CIDR block, e.g. \"10.0.0.0/8\"")
        })?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("\"{text}\" has a prefix length outside 0..={max}"))?,
        };
        Ok(Cidr {
            network,
            prefix_len,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_equal(&net.octets(), &ip.octets(), self.prefix_len)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_equal(&net.octets(), &ip.octets(), self.prefix_len)
            }
            (IpAddr::V4(_), IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
                Some(v4) => self.contains(IpAddr::V4(v4)),
                None => false,
            },
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

fn prefix_equal(a: &[u8], b: &[u8], prefix_len: u8) -> bool {
    let full = usize::from(prefix_len / 8);
    let rest = prefix_len % 8;
    if a.get(..full) != b.get(..full) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (a.get(full), b.get(full)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

/// The IP part of Envoy's `source.address` property (`1.2.3.4:80`, `[::1]:80`).
pub fn ip_of_socket_address(text: &str) -> Option<IpAddr> {
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    match text.rsplit_once(':') {
        Some((ip, port)) if port.bytes().all(|b| b.is_ascii_digit()) => ip.parse().ok(),
        _ => text.parse().ok(),
    }
}

/// The IP of the connection's direct peer, from Envoy's `source.address`
/// (`ip:port`), or `None` when that address cannot be the connection's.
///
/// Envoy replaces the connection's address with one taken from a header
/// (`x-forwarded-for` without `use_remote_address`, or with
/// `xff_num_trusted_hops`; the original-IP-detection extensions) and such an
/// address has no port: Envoy renders it as `ip:0`. A TCP peer always has a
/// port, so a port of 0 (or none) means the address came from a header and
/// proves nothing about who connected.
pub fn peer_ip_of_socket_address(text: &str) -> Option<IpAddr> {
    let port = match text.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.1.strip_prefix(':')?,
        None => text.rsplit_once(':')?.1,
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 => ip_of_socket_address(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_peer_has_a_port_a_header_address_does_not() {
        assert_eq!(
            peer_ip_of_socket_address("127.0.0.2:41234"),
            Some(ip("127.0.0.2"))
        );
        assert_eq!(peer_ip_of_socket_address("[::1]:5"), Some(ip("::1")));
        assert_eq!(peer_ip_of_socket_address("127.0.0.1:0"), None);
        assert_eq!(peer_ip_of_socket_address("[::1]:0"), None);
        assert_eq!(peer_ip_of_socket_address("127.0.0.1"), None);
        assert_eq!(peer_ip_of_socket_address("::1"), None);
        assert_eq!(peer_ip_of_socket_address(""), None);
        assert_eq!(peer_ip_of_socket_address("x:80"), None);
    }

    #[test]
    fn matches_v4_blocks() {
        let lo = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(lo.contains(ip("127.1.2.3")));
        assert!(!lo.contains(ip("128.0.0.1")));
        let odd = Cidr::parse("10.0.0.0/9").unwrap();
        assert!(odd.contains(ip("10.127.0.1")));
        assert!(!odd.contains(ip("10.128.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
    }

    #[test]
    fn matches_v6_and_mapped_v4() {
        assert!(Cidr::parse("::1/128").unwrap().contains(ip("::1")));
        assert!(Cidr::parse("127.0.0.0/8")
            .unwrap()
            .contains(ip("::ffff:127.0.0.1")));
        assert!(!Cidr::parse("::1").unwrap().contains(ip("127.0.0.1")));
    }

    #[test]
    fn refuses_bad_blocks() {
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("localhost").is_err());
        assert!(Cidr::parse("10.0.0/8").is_err());
    }

    #[test]
    fn reads_envoy_socket_addresses() {
        assert_eq!(
            ip_of_socket_address("127.0.0.1:5678"),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(ip_of_socket_address("[::1]:5678"), Some(ip("::1")));
        assert_eq!(ip_of_socket_address("10.1.1.1"), Some(ip("10.1.1.1")));
        assert_eq!(ip_of_socket_address("nonsense"), None);
        // A bare IPv6 address whose last group is not a port.
        assert_eq!(ip_of_socket_address("fe80::abcd"), Some(ip("fe80::abcd")));
    }
}
