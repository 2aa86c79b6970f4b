//! A list of IP networks with a value each, searched by address: one
//! mask-and-compare per entry of the address's family, no allocation.

use std::net::IpAddr;

use ipnet::IpNet;

/// Networks in insertion order, split by family, each with a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IpTable<T> {
    v4: Vec<(u32, u32, usize)>,
    v6: Vec<(u128, u128, usize)>,
    entries: Vec<(IpNet, T)>,
}

impl<T> Default for IpTable<T> {
    fn default() -> Self {
        IpTable {
            v4: Vec::new(),
            v6: Vec::new(),
            entries: Vec::new(),
        }
    }
}

impl<T> IpTable<T> {
    pub(crate) fn push(&mut self, net: IpNet, value: T) {
        let index = self.entries.len();
        match net {
            IpNet::V4(n) => self
                .v4
                .push((u32::from(n.network()), u32::from(n.netmask()), index)),
            IpNet::V6(n) => self
                .v6
                .push((u128::from(n.network()), u128::from(n.netmask()), index)),
        }
        self.entries.push((net, value));
    }

    /// The first entry, in insertion order, whose network holds `addr` and
    /// whose value passes `accept`.
    pub(crate) fn find(&self, addr: IpAddr, accept: impl Fn(&T) -> bool) -> Option<&(IpNet, T)> {
        let index = match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .filter(|(net, mask, _)| a & mask == *net)
                    .map(|&(_, _, i)| i)
                    .find(|&i| accept(&self.entries[i].1))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .filter(|(net, mask, _)| a & mask == *net)
                    .map(|&(_, _, i)| i)
                    .find(|&i| accept(&self.entries[i].1))
            }
        }?;
        Some(&self.entries[index])
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &(IpNet, T)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_match_of_the_right_family() {
        let mut t = IpTable::default();
        t.push("10.0.0.0/8".parse().unwrap(), "a");
        t.push("10.1.0.0/16".parse().unwrap(), "b");
        t.push("::ffff:10.0.0.0/104".parse().unwrap(), "c");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(t.find(ip("10.1.2.3"), |_| true).unwrap().1, "a");
        assert_eq!(t.find(ip("10.1.2.3"), |v| *v != "a").unwrap().1, "b");
        assert_eq!(t.find(ip("::ffff:10.1.2.3"), |_| true).unwrap().1, "c");
        assert!(t.find(ip("11.0.0.1"), |_| true).is_none());
        assert!(t.find(ip("::1"), |_| true).is_none());
        let mut all = IpTable::default();
        all.push("0.0.0.0/0".parse().unwrap(), ());
        assert!(all.find(ip("255.255.255.255"), |_| true).is_some());
        assert!(all.find(ip("::"), |_| true).is_none());
    }
}
