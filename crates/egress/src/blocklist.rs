//! IP blocklists: which destination addresses a direct connection may not reach.
//!
//! Built like Synapse's `generate_ip_set`: every IPv4 range also covers its
//! IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`) and 6to4
//! (`2002:aabb:ccdd::`) IPv6 forms, in the blocklist and in the allowlist.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::ip_table::IpTable;

/// Synapse's default `ip_range_blacklist`.
pub const DEFAULT_IP_RANGE_BLOCKLIST: &[&str] = &[
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "169.254.0.0/16",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
    "fec0::/10",
];

/// Addresses every blocklist blocks, whatever it is configured to.
pub(crate) const ALWAYS_BLOCKED: &[&str] = &["0.0.0.0/32", "::/128"];

/// A blocklist with its allowlist holes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocklist {
    name: Cow<'static, str>,
    /// Covered network → the range as configured.
    blocked: IpTable<IpNet>,
    allowed: IpTable<IpNet>,
}

/// Why an address is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// The address checked.
    pub addr: IpAddr,
    /// The range as configured (an IPv4 range for its IPv6 forms).
    pub range: IpNet,
    /// The IPv6 form of `range` that matched, when it is not `range` itself.
    pub via: Option<IpNet>,
    /// The setting the range comes from, by the caller's name for it, e.g.
    /// `ip_range_blacklist` (the blocklist's [`Blocklist::name`]).
    pub list: Cow<'static, str>,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is in {} ", self.addr, self.range)?;
        if let Some(via) = self.via {
            write!(f, "(as {via}) ")?;
        }
        write!(f, "of {}", self.list)
    }
}

impl Blocklist {
    /// A blocklist named after the setting it comes from (the caller's
    /// key, e.g. `ip_range_blacklist` or `global.ip_range_denylist`), from
    /// ranges already parsed. `0.0.0.0` and `::` are always added.
    pub fn new(
        name: impl Into<Cow<'static, str>>,
        blocked: &[IpNet],
        allowed: &[IpNet],
    ) -> Blocklist {
        let always = ALWAYS_BLOCKED.iter().map(|r| r.parse().expect("valid"));
        Blocklist {
            name: name.into(),
            blocked: expand(blocked.iter().copied().chain(always)),
            allowed: expand(allowed.iter().copied()),
        }
    }

    /// Synapse's default list, with no allowlist.
    pub fn synapse_default(name: impl Into<Cow<'static, str>>) -> Blocklist {
        Blocklist::new(name, &default_ranges(), &[])
    }

    /// The setting this list comes from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Some` with the range that blocks `addr`, unless an allowlist range
    /// covers it.
    pub fn check(&self, addr: IpAddr) -> Option<Blocked> {
        let &(net, range) = self.blocked.find(addr, |_| true)?;
        if self.allowed.find(addr, |_| true).is_some() {
            return None;
        }
        Some(Blocked {
            addr,
            range,
            via: (net != range).then_some(net),
            list: self.name.clone(),
        })
    }

    /// The blocked ranges as configured (IPv6 forms of IPv4 ranges, and the
    /// always-blocked `0.0.0.0` and `::`, not repeated).
    pub fn ranges(&self) -> impl Iterator<Item = IpNet> + '_ {
        configured(&self.blocked)
    }

    /// The allowlist ranges as configured.
    pub fn allowed_ranges(&self) -> impl Iterator<Item = IpNet> + '_ {
        configured(&self.allowed)
    }

    /// True when `addr` is blocked.
    pub fn blocks(&self, addr: IpAddr) -> bool {
        self.check(addr).is_some()
    }
}

fn configured(list: &IpTable<IpNet>) -> impl Iterator<Item = IpNet> + '_ {
    let always: [IpNet; 2] = [
        IpNet::from(IpAddr::from([0u8; 4])),
        IpNet::from(IpAddr::from([0u8; 16])),
    ];
    list.iter()
        .filter(move |(net, range)| net == range && !always.contains(net))
        .map(|&(_, range)| range)
}

/// The parsed default ranges.
pub(crate) fn default_ranges() -> Vec<IpNet> {
    DEFAULT_IP_RANGE_BLOCKLIST
        .iter()
        .map(|r| r.parse().expect("the default list is valid"))
        .collect()
}

fn expand(ranges: impl Iterator<Item = IpNet>) -> IpTable<IpNet> {
    let mut table = IpTable::default();
    for range in ranges {
        table.push(range, range);
        if let IpNet::V4(v4) = range {
            for net in ipv6_forms(v4) {
                table.push(IpNet::V6(net), range);
            }
        }
    }
    table
}

/// The IPv4-compatible, IPv4-mapped and 6to4 forms of an IPv4 range.
fn ipv6_forms(net: Ipv4Net) -> [Ipv6Net; 3] {
    let [a, b, c, d] = net.network().octets();
    let len = net.prefix_len();
    let compat = Ipv6Addr::from(u128::from(u32::from(net.network())));
    let mapped = net.network().to_ipv6_mapped();
    let six_to_four = Ipv6Addr::new(
        0x2002,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
        0,
        0,
        0,
        0,
        0,
    );
    let v6 = |addr, prefix| Ipv6Net::new(addr, prefix).expect("prefix within 128");
    [
        v6(compat, len + 96),
        v6(mapped, len + 96),
        v6(six_to_four, len + 16),
    ]
}

/// Parses one range of a blocklist or allowlist setting: CIDR or a single
/// address. Host bits are cleared (`10.1.2.3/8` means `10.0.0.0/8`), as
/// netaddr does.
pub(crate) fn parse_range(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| "not an IP address or CIDR range".to_owned())
}

impl Default for Blocklist {
    /// Synapse's default `ip_range_blacklist`.
    fn default() -> Blocklist {
        Blocklist::synapse_default("ip_range_blacklist")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_list_blocks_private_and_special_ranges() {
        let list = Blocklist::default();
        for blocked in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "224.0.0.1",
            "0.0.0.0",
            "::",
            "::1",
            "fe80::1",
            "fd00::1",
            "2001:db8::1",
            "ff02::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "2002:7f00:1::",
            "::ffff:10.0.0.1",
            "2002:c0a8:101::1",
        ] {
            assert!(list.blocks(ip(blocked)), "{blocked} should be blocked");
        }
        for allowed in ["8.8.8.8", "2606:4700::1111", "172.32.0.1", "::ffff:8.8.8.8"] {
            assert!(!list.blocks(ip(allowed)), "{allowed} should pass");
        }
    }

    #[test]
    fn check_names_the_range() {
        let list = Blocklist::default();
        let hit = list.check(ip("::ffff:127.0.0.1")).unwrap();
        assert_eq!(hit.range, "127.0.0.0/8".parse::<IpNet>().unwrap());
        assert_eq!(hit.via, Some("::ffff:127.0.0.0/104".parse().unwrap()));
        assert_eq!(hit.list, "ip_range_blacklist");
        assert_eq!(
            hit.to_string(),
            "::ffff:127.0.0.1 is in 127.0.0.0/8 (as ::ffff:127.0.0.0/104) of ip_range_blacklist"
        );
        let hit = list.check(ip("2002:7f00:1::")).unwrap();
        assert_eq!(hit.via, Some("2002:7f00::/24".parse().unwrap()));
        let hit = list.check(ip("::127.0.0.1")).unwrap();
        assert_eq!(hit.via, Some("::127.0.0.0/104".parse().unwrap()));
        let hit = list.check(ip("10.0.0.1")).unwrap();
        assert_eq!(hit.via, None);
        assert_eq!(
            hit.to_string(),
            "10.0.0.1 is in 10.0.0.0/8 of ip_range_blacklist"
        );
    }

    #[test]
    fn allowlist_punches_holes_in_every_form() {
        let loopback: IpNet = "127.0.0.0/8".parse().unwrap();
        let list = Blocklist::new("ip_range_blacklist", &default_ranges(), &[loopback]);
        assert!(!list.blocks(ip("127.0.0.1")));
        assert!(!list.blocks(ip("::ffff:127.0.0.1")));
        assert!(!list.blocks(ip("2002:7f00:1::")));
        assert!(list.blocks(ip("10.0.0.1")));
        assert!(list.blocks(ip("::1")));
        assert_eq!(list.allowed_ranges().collect::<Vec<_>>(), [loopback]);
        assert_eq!(list.ranges().count(), DEFAULT_IP_RANGE_BLOCKLIST.len());
    }

    #[test]
    fn zero_addresses_are_always_blocked() {
        let list = Blocklist::new("federation_ip_range_blacklist", &[], &[]);
        assert!(list.blocks(ip("0.0.0.0")));
        assert!(list.blocks(ip("::")));
        assert!(list.blocks(ip("::ffff:0.0.0.0")));
        assert!(!list.blocks(ip("127.0.0.1")));
        assert!(!list.blocks(ip("0.0.0.1")));
    }

    #[test]
    fn parse_range_accepts_cidr_and_addresses() {
        assert_eq!(
            parse_range("10.1.2.3/8").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_range("::1").unwrap(),
            "::1/128".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_range(" 1.2.3.4 ").unwrap(),
            "1.2.3.4/32".parse::<IpNet>().unwrap()
        );
        assert!(parse_range("10.0.0.0/33").is_err());
        assert!(parse_range("example.com").is_err());
    }
}
