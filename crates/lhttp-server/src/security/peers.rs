//! [`ConnectionsPerIp`]: how many connections each client address holds, so that one machine
//! cannot take every connection slot. The server keeps two counts: WebSocket connections
//! (`limits.max_connections_per_ip`) and TCP connections still speaking HTTP
//! (`limits.max_http_connections_per_ip`), which a connection leaves when it upgrades.
//!
//! IPv6 clients are counted per /64 network, the block one subscriber usually gets: counting
//! single addresses would let one host use 2^64 of them. IPv4-mapped IPv6 addresses count as
//! the IPv4 address they carry.

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
};

use dashmap::{DashMap, mapref::entry::Entry};

/// Open connections (of one kind) per client address.
#[derive(Debug)]
pub(crate) struct ConnectionsPerIp {
    /// 0: no limit, and nothing is counted.
    max: usize,
    /// Only addresses with at least one connection have an entry, so the map never holds more
    /// entries than there are connections.
    counts: DashMap<IpAddr, usize>,
}

/// One connection's place in its address's count; dropping it gives the place back, on every
/// path a connection ends (refused later, upgrade failed, session over, task panicked).
#[derive(Debug)]
pub(crate) struct IpSlot {
    owner: Option<(Arc<ConnectionsPerIp>, IpAddr)>,
}

impl IpSlot {
    /// No place in any count: for a peer that has no address (a Unix socket, in-process).
    pub(crate) fn none() -> IpSlot {
        IpSlot { owner: None }
    }
}

impl ConnectionsPerIp {
    pub(crate) fn new(max: usize) -> Self {
        ConnectionsPerIp {
            max,
            counts: DashMap::new(),
        }
    }

    /// A place for one more connection from `ip`, or `None` when it has `max` already.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        if self.max == 0 {
            return Some(IpSlot { owner: None });
        }
        let key = address_key(ip);
        match self.counts.entry(key) {
            Entry::Occupied(mut entry) => {
                if *entry.get() >= self.max {
                    return None;
                }
                *entry.get_mut() += 1;
            }
            Entry::Vacant(entry) => {
                entry.insert(1);
            }
        }
        Some(IpSlot {
            owner: Some((self.clone(), key)),
        })
    }

    /// Connections counted for `ip` (its /64 for IPv6).
    pub(crate) fn count(&self, ip: IpAddr) -> usize {
        self.counts.get(&address_key(ip)).map_or(0, |count| *count)
    }

    /// Addresses with at least one counted connection.
    pub(crate) fn addresses(&self) -> usize {
        self.counts.len()
    }

    fn release(&self, key: IpAddr) {
        if let Entry::Occupied(mut entry) = self.counts.entry(key) {
            if *entry.get() <= 1 {
                entry.remove();
            } else {
                *entry.get_mut() -= 1;
            }
        }
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((counts, key)) = self.owner.take() {
            counts.release(key);
        }
    }
}

/// The address a connection is counted under (also the one failed authentications are).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(network))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_up_to_the_limit_and_forgets_released_ones() {
        let counts = Arc::new(ConnectionsPerIp::new(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = counts.try_acquire(a).unwrap();
        let second = counts.try_acquire(a).unwrap();
        assert!(counts.try_acquire(a).is_none());
        let other = counts.try_acquire(b).unwrap();
        drop(first);
        let third = counts.try_acquire(a).unwrap();
        drop((second, third, other));
        assert_eq!(counts.addresses(), 0, "no entry outlives its connections");
    }

    #[test]
    fn ipv6_counts_per_64_network_and_mapped_ipv4_as_ipv4() {
        let counts = Arc::new(ConnectionsPerIp::new(1));
        let _one = counts
            .try_acquire("2001:db8:1:2::1".parse().unwrap())
            .unwrap();
        assert!(
            counts
                .try_acquire("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_none()
        );
        assert!(
            counts
                .try_acquire("2001:db8:1:3::1".parse().unwrap())
                .is_some()
        );
        let _v4 = counts.try_acquire("192.0.2.7".parse().unwrap()).unwrap();
        assert!(
            counts
                .try_acquire("::ffff:192.0.2.7".parse().unwrap())
                .is_none()
        );
    }

    #[test]
    fn zero_counts_nothing() {
        let counts = Arc::new(ConnectionsPerIp::new(0));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<_> = (0..10).map(|_| counts.try_acquire(ip).unwrap()).collect();
        assert_eq!(counts.count(ip), 0);
        drop(slots);
    }
}
