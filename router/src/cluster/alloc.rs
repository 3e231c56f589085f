//! Automatic addresses: a reservation per (project, vassal name) in a pool
//! of addresses (the block's, or the configured subnet's), so a vassal
//! relaunched under the same name gets the same address back. Pure: the
//! caller says which addresses are in use.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// A reservation, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// The vassal's project.
    pub project: String,
    /// The vassal's name.
    pub name: String,
    /// Its address.
    pub ipv4: Ipv4Addr,
}

/// Reservations within a pool.
#[derive(Debug, Default)]
pub struct Allocator {
    pool: Vec<Ipv4Addr>,
    by_name: HashMap<(String, String), (Ipv4Addr, u64)>,
    by_addr: HashMap<Ipv4Addr, (String, String)>,
    clock: u64,
}

impl Allocator {
    /// An allocator handing out `pool`, in order.
    pub fn new(pool: Vec<Ipv4Addr>) -> Allocator {
        Allocator {
            pool,
            ..Allocator::default()
        }
    }

    /// Restores reservations (already validated against the pool).
    pub fn restore(&mut self, saved: &[Reservation]) {
        for r in saved {
            if self.pool.contains(&r.ipv4) && !self.by_addr.contains_key(&r.ipv4) {
                self.insert(&r.project, &r.name, r.ipv4);
            }
        }
    }

    fn insert(&mut self, project: &str, name: &str, addr: Ipv4Addr) {
        self.clock += 1;
        self.by_name
            .insert((project.to_owned(), name.to_owned()), (addr, self.clock));
        self.by_addr
            .insert(addr, (project.to_owned(), name.to_owned()));
    }

    /// The address of `project`/`name`: its reservation, or the first
    /// address of the pool neither reserved nor `busy`; when none is left,
    /// the least recently leased reservation whose address is not `busy`
    /// is taken over. `None` when every address is busy.
    pub fn lease(
        &mut self,
        project: &str,
        name: &str,
        busy: impl Fn(Ipv4Addr) -> bool,
    ) -> Option<Ipv4Addr> {
        let key = (project.to_owned(), name.to_owned());
        if let Some((addr, _)) = self.by_name.get(&key).copied() {
            self.insert(project, name, addr);
            return Some(addr);
        }
        let free = self
            .pool
            .iter()
            .copied()
            .find(|a| !self.by_addr.contains_key(a) && !busy(*a));
        let addr = match free {
            Some(a) => a,
            None => {
                let (victim, addr) = self
                    .by_name
                    .iter()
                    .filter(|(_, (a, _))| !busy(*a))
                    .min_by_key(|(_, (_, t))| *t)
                    .map(|(k, (a, _))| (k.clone(), *a))?;
                self.by_name.remove(&victim);
                self.by_addr.remove(&addr);
                addr
            }
        };
        self.insert(project, name, addr);
        Some(addr)
    }

    /// The project whose reservation holds `addr`.
    pub fn reserved_by(&self, addr: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&addr).map(|(p, _)| p.as_str())
    }

    /// Every reservation, for persisting.
    pub fn reservations(&self) -> Vec<Reservation> {
        let mut v: Vec<Reservation> = self
            .by_name
            .iter()
            .map(|((project, name), (ipv4, _))| Reservation {
                project: project.clone(),
                name: name.clone(),
                ipv4: *ipv4,
            })
            .collect();
        v.sort_by_key(|r| r.ipv4);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u8) -> Vec<Ipv4Addr> {
        (2..2 + n).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect()
    }

    #[test]
    fn same_name_same_address_and_no_collisions() {
        let mut a = Allocator::new(pool(10));
        let x = a.lease("p", "web", |_| false).unwrap();
        let y = a.lease("p", "db", |_| false).unwrap();
        let z = a.lease("q", "web", |_| false).unwrap();
        assert!(x != y && y != z && x != z);
        assert_eq!(a.lease("p", "web", |_| false), Some(x));
        assert_eq!(a.reserved_by(z), Some("q"));
    }

    #[test]
    fn busy_addresses_are_skipped() {
        let mut a = Allocator::new(pool(3));
        let busy = Ipv4Addr::new(10, 0, 0, 2);
        assert_eq!(
            a.lease("p", "a", |x| x == busy),
            Some(Ipv4Addr::new(10, 0, 0, 3))
        );
    }

    #[test]
    fn a_full_pool_recycles_the_oldest_idle_reservation() {
        let mut a = Allocator::new(pool(2));
        let first = a.lease("p", "a", |_| false).unwrap();
        let second = a.lease("p", "b", |_| false).unwrap();
        a.lease("p", "a", |_| false);
        // "b" is the least recently leased, and idle.
        assert_eq!(a.lease("p", "c", |_| false), Some(second));
        // Everything busy: nothing.
        assert_eq!(a.lease("p", "d", |_| true), None);
        assert_eq!(a.lease("p", "a", |_| true), Some(first));
    }

    #[test]
    fn restore_keeps_what_fits_the_pool() {
        let mut a = Allocator::new(pool(2));
        a.restore(&[
            Reservation {
                project: "p".into(),
                name: "a".into(),
                ipv4: Ipv4Addr::new(10, 0, 0, 3),
            },
            Reservation {
                project: "p".into(),
                name: "b".into(),
                ipv4: Ipv4Addr::new(10, 9, 0, 3),
            },
        ]);
        assert_eq!(
            a.lease("p", "a", |_| false),
            Some(Ipv4Addr::new(10, 0, 0, 3))
        );
        assert_eq!(a.reservations().len(), 1);
    }
}
