//! Block arithmetic: the cluster prefix cut into equal blocks, one per
//! host. Block `i` of the IPv4 prefix pairs with block `i` of the IPv6
//! prefix, and a vassal's IPv6 address has the same offset in its block as
//! its IPv4 address, so one index and one offset name both.

use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Most blocks a prefix may be cut into (the claim scans them).
pub const MAX_BLOCKS: u32 = 1 << 16;

/// The prefix cannot be cut as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The block length is not longer than the prefix, or too long.
    #[error("/{block} must be longer than the prefix /{prefix} and at most /30")]
    Length {
        /// Block length.
        block: u8,
        /// Prefix length.
        prefix: u8,
    },
    /// More than [`MAX_BLOCKS`] blocks.
    #[error("/{block} cuts /{prefix} into more than {MAX_BLOCKS} blocks")]
    TooMany {
        /// Block length.
        block: u8,
        /// Prefix length.
        prefix: u8,
    },
    /// The IPv6 prefix is too small for as many blocks.
    #[error("the IPv6 prefix {0} is too long: its blocks would be longer than /126")]
    Prefix6(Ipv6Net),
}

/// A cluster prefix (and optional IPv6 prefix) cut into blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    prefix: Ipv4Net,
    prefix6: Option<Ipv6Net>,
    len: u8,
}

/// One host's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Block {
    /// Its index in the prefix.
    pub index: u32,
    /// Its IPv4 network.
    pub net: Ipv4Net,
    /// Its IPv6 network, when the cluster has an IPv6 prefix.
    pub net6: Option<Ipv6Net>,
}

impl Blocks {
    /// Cuts `prefix` (a network address) into blocks of length `block`.
    pub fn new(prefix: Ipv4Net, prefix6: Option<Ipv6Net>, block: u8) -> Result<Blocks, BlockError> {
        let p = prefix.prefix_len();
        if block <= p || block > 30 {
            return Err(BlockError::Length { block, prefix: p });
        }
        if block - p > 16 {
            return Err(BlockError::TooMany { block, prefix: p });
        }
        if let Some(p6) = prefix6 {
            if u32::from(p6.prefix_len()) + u32::from(block - p) > 126 {
                return Err(BlockError::Prefix6(p6));
            }
        }
        Ok(Blocks {
            prefix: prefix.trunc(),
            prefix6: prefix6.map(|n| n.trunc()),
            len: block,
        })
    }

    /// The IPv4 prefix.
    pub fn prefix(&self) -> Ipv4Net {
        self.prefix
    }

    /// The IPv6 prefix.
    pub fn prefix6(&self) -> Option<Ipv6Net> {
        self.prefix6
    }

    /// Length of a block.
    pub fn block_len(&self) -> u8 {
        self.len
    }

    /// How many blocks there are.
    pub fn count(&self) -> u32 {
        1 << (self.len - self.prefix.prefix_len())
    }

    fn len6(&self) -> Option<u8> {
        self.prefix6
            .map(|p| p.prefix_len() + (self.len - self.prefix.prefix_len()))
    }

    /// Block `index`, when it exists.
    pub fn block(&self, index: u32) -> Option<Block> {
        if index >= self.count() {
            return None;
        }
        let base = u32::from(self.prefix.network()) + (index << (32 - self.len));
        let net = Ipv4Net::new(Ipv4Addr::from(base), self.len).ok()?;
        let net6 = match (self.prefix6, self.len6()) {
            (Some(p6), Some(l6)) => {
                let base6 = u128::from(p6.network()) + (u128::from(index) << (128 - u32::from(l6)));
                Some(Ipv6Net::new(Ipv6Addr::from(base6), l6).ok()?)
            }
            _ => None,
        };
        Some(Block { index, net, net6 })
    }

    /// The block whose IPv4 network is `net`, when it is one of these.
    pub fn index_of(&self, net: Ipv4Net) -> Option<u32> {
        if net.prefix_len() != self.len
            || !self.prefix.contains(&net.network())
            || net.addr() != net.network()
        {
            return None;
        }
        Some((u32::from(net.network()) - u32::from(self.prefix.network())) >> (32 - self.len))
    }
}

impl Block {
    /// The router's gateway in this block: its first address.
    pub fn gateway(&self) -> Ipv4Net {
        let a = Ipv4Addr::from(u32::from(self.net.network()) + 1);
        Ipv4Net::new(a, self.net.prefix_len()).unwrap_or(self.net)
    }

    /// The IPv6 gateway: the block's first address after the network one.
    pub fn gateway6(&self) -> Option<Ipv6Net> {
        self.net6.map(|n| {
            let a = Ipv6Addr::from(u128::from(n.network()) + 1);
            Ipv6Net::new(a, n.prefix_len()).unwrap_or(n)
        })
    }

    /// Vassal addresses of the block, in order: all but the network,
    /// gateway and broadcast addresses.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.net.network()) + 2;
        let last = u32::from(self.net.broadcast());
        (first..last).map(Ipv4Addr::from)
    }

    /// The IPv6 address paired with a vassal address of this block.
    pub fn pair6(&self, v4: Ipv4Addr) -> Option<Ipv6Addr> {
        let n6 = self.net6?;
        if !self.net.contains(&v4) {
            return None;
        }
        let offset = u32::from(v4) - u32::from(self.net.network());
        Some(Ipv6Addr::from(
            u128::from(n6.network()) + u128::from(offset),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(p: &str, p6: Option<&str>, len: u8) -> Result<Blocks, BlockError> {
        Blocks::new(p.parse().unwrap(), p6.map(|p| p.parse().unwrap()), len)
    }

    #[test]
    fn blocks_tile_the_prefix_without_overlap() {
        let b = blocks("10.200.0.0/16", Some("fd00:200::/48"), 24).unwrap();
        assert_eq!(b.count(), 256);
        let all: Vec<Block> = (0..b.count()).map(|i| b.block(i).unwrap()).collect();
        assert_eq!(all[0].net.to_string(), "10.200.0.0/24");
        assert_eq!(all[3].net.to_string(), "10.200.3.0/24");
        assert_eq!(all[255].net.to_string(), "10.200.255.0/24");
        assert_eq!(all[3].net6.unwrap().to_string(), "fd00:200:0:300::/56");
        assert!(b.block(256).is_none());
        for (i, x) in all.iter().enumerate() {
            assert_eq!(b.index_of(x.net), Some(i as u32));
            for y in &all[i + 1..] {
                assert!(!x.net.contains(&y.net.network()) && !y.net.contains(&x.net.network()));
                assert!(!x.net6.unwrap().contains(&y.net6.unwrap().network()));
            }
        }
        assert_eq!(b.index_of("10.200.3.0/25".parse().unwrap()), None);
        assert_eq!(b.index_of("10.201.3.0/24".parse().unwrap()), None);
        assert_eq!(b.index_of("10.200.3.1/24".parse().unwrap()), None);
    }

    #[test]
    fn gateway_hosts_and_ipv6_pairs() {
        let b = blocks("10.200.0.0/16", Some("fd00:200::/48"), 24)
            .unwrap()
            .block(7)
            .unwrap();
        assert_eq!(b.gateway().to_string(), "10.200.7.1/24");
        assert_eq!(b.gateway6().unwrap().to_string(), "fd00:200:0:700::1/56");
        let hosts: Vec<_> = b.hosts().collect();
        assert_eq!(hosts.len(), 253);
        assert_eq!(hosts[0], Ipv4Addr::new(10, 200, 7, 2));
        assert_eq!(*hosts.last().unwrap(), Ipv4Addr::new(10, 200, 7, 254));
        assert_eq!(b.pair6(hosts[0]).unwrap().to_string(), "fd00:200:0:700::2");
        assert!(b.pair6(Ipv4Addr::new(10, 200, 8, 2)).is_none());
        let small = blocks("10.0.0.0/24", None, 30).unwrap().block(1).unwrap();
        assert_eq!(
            small.hosts().collect::<Vec<_>>(),
            vec![Ipv4Addr::new(10, 0, 0, 6)]
        );
    }

    #[test]
    fn impossible_cuts_are_refused() {
        assert!(matches!(
            blocks("10.0.0.0/24", None, 24),
            Err(BlockError::Length { .. })
        ));
        assert!(matches!(
            blocks("10.0.0.0/24", None, 31),
            Err(BlockError::Length { .. })
        ));
        assert!(matches!(
            blocks("10.0.0.0/8", None, 25),
            Err(BlockError::TooMany { .. })
        ));
        assert!(matches!(
            blocks("10.0.0.0/16", Some("fd00::/120"), 24),
            Err(BlockError::Prefix6(_))
        ));
        assert!(blocks("10.0.0.0/16", Some("fd00::/118"), 24).is_ok());
    }
}
