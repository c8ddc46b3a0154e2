//! The mobility binding list (RFC 5944 §3.8.1): per home address, where it is now (care-of
//! address), until when, and the last registration accepted for it; plus, for every home
//! address ever registered, the highest Identification accepted (replay protection, kept
//! also when the home address has no binding).
//!
//! One binding per home address: simultaneous bindings (S=1) are not kept, so a new
//! registration always replaces the old binding (S=0 semantics). Lifetimes are absolute
//! wall-clock deadlines so they survive a restart; the caller passes the time in, so this
//! file does no I/O and never reads a clock.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

/// The longest lifetime granted, in seconds: a request for more (0xFFFF, "infinite",
/// included) is shortened to this, as RFC 5944 §3.8.3 allows, so a mobile node that
/// vanished without deregistering is forgotten within ten minutes.
pub const MAX_LIFETIME: u16 = 600;

/// One binding: `home` is reachable through a tunnel to `care_of` until `expires`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The mobile node's home address.
    pub home: Ipv4Addr,
    /// Where packets for it are tunnelled.
    pub care_of: Ipv4Addr,
    /// The lifetime granted, in seconds.
    pub lifetime: u16,
    /// When it ends.
    pub expires: SystemTime,
    /// The Identification of the registration that made it.
    pub identification: u64,
    /// The security association (SPI) that registration was authenticated with.
    pub spi: u32,
    /// Reverse tunnelling requested (T): packets tunnelled from `care_of` with source `home`
    /// are decapsulated and forwarded.
    pub reverse: bool,
}

impl Binding {
    /// Time left at `now` (zero once expired).
    pub fn left(&self, now: SystemTime) -> Duration {
        self.expires.duration_since(now).unwrap_or(Duration::ZERO)
    }
}

/// What [`BindingList::bind`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bound {
    /// The home address had no binding: the mobile node just left home, so the data path
    /// starts capturing its packets (route, proxy ARP, gratuitous ARP).
    Left,
    /// It replaced this binding (a move to another care-of address, or a renewal).
    Replaced(Binding),
}

/// The bindings and the Identification high-water marks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindingList {
    bindings: BTreeMap<Ipv4Addr, Binding>,
    identifications: BTreeMap<Ipv4Addr, u64>,
}

impl BindingList {
    /// An empty list.
    pub fn new() -> BindingList {
        BindingList::default()
    }

    /// The lifetime granted for `requested` seconds (never more than [`MAX_LIFETIME`]).
    pub fn grant(requested: u16) -> u16 {
        requested.min(MAX_LIFETIME)
    }

    /// Installs `binding`, replacing whatever `binding.home` had (S=0), and records its
    /// Identification as the highest accepted.
    pub fn bind(&mut self, binding: Binding) -> Bound {
        self.accept_identification(binding.home, binding.identification);
        match self.bindings.insert(binding.home, binding) {
            None => Bound::Left,
            Some(previous) => Bound::Replaced(previous),
        }
    }

    /// An accepted deregistration (lifetime 0) of `home` at `care_of`, Identification `id`:
    /// with `care_of == home` (the mobile node is home) every binding of `home` goes, else
    /// only the one at `care_of`. Returns the removed binding, if any.
    pub fn deregister(&mut self, home: Ipv4Addr, care_of: Ipv4Addr, id: u64) -> Option<Binding> {
        self.accept_identification(home, id);
        let matches = self
            .bindings
            .get(&home)
            .is_some_and(|b| care_of == home || b.care_of == care_of);
        if matches {
            self.bindings.remove(&home)
        } else {
            None
        }
    }

    /// Removes and returns every binding whose lifetime has ended at `now`.
    pub fn expire(&mut self, now: SystemTime) -> Vec<Binding> {
        let ended: Vec<Ipv4Addr> = self
            .bindings
            .values()
            .filter(|b| b.expires <= now)
            .map(|b| b.home)
            .collect();
        ended
            .iter()
            .filter_map(|home| self.bindings.remove(home))
            .collect()
    }

    /// When the next binding ends, if any is left.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.bindings.values().map(|b| b.expires).min()
    }

    /// The binding of `home`.
    pub fn get(&self, home: Ipv4Addr) -> Option<&Binding> {
        self.bindings.get(&home)
    }

    /// The care-of address packets for `home` go to, if it is bound.
    pub fn care_of(&self, home: Ipv4Addr) -> Option<Ipv4Addr> {
        self.bindings.get(&home).map(|b| b.care_of)
    }

    /// Whether a packet tunnelled from `care_of` with inner source `home` may be
    /// decapsulated: `home` is bound there with reverse tunnelling.
    pub fn reverse_allowed(&self, care_of: Ipv4Addr, home: Ipv4Addr) -> bool {
        self.bindings
            .get(&home)
            .is_some_and(|b| b.reverse && b.care_of == care_of)
    }

    /// Every binding, by home address.
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values()
    }

    /// The highest Identification accepted for `home`, bound or not.
    pub fn last_identification(&self, home: Ipv4Addr) -> Option<u64> {
        self.identifications.get(&home).copied()
    }

    /// Every high-water mark, by home address.
    pub fn identifications(&self) -> impl Iterator<Item = (Ipv4Addr, u64)> + '_ {
        self.identifications.iter().map(|(h, id)| (*h, *id))
    }

    /// Records `id` as accepted for `home`; the mark only ever rises.
    pub fn accept_identification(&mut self, home: Ipv4Addr, id: u64) {
        let mark = self.identifications.entry(home).or_insert(id);
        *mark = (*mark).max(id);
    }

    /// Puts back a binding read from the state file (its Identification counts as accepted).
    pub fn restore(&mut self, binding: Binding) {
        self.bind(binding);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const FA: Ipv4Addr = Ipv4Addr::new(198, 18, 21, 2);
    const FB: Ipv4Addr = Ipv4Addr::new(198, 18, 22, 2);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn binding(care_of: Ipv4Addr, now: u64, lifetime: u16, id: u64) -> Binding {
        Binding {
            home: HOME,
            care_of,
            lifetime,
            expires: at(now + u64::from(lifetime)),
            identification: id,
            spi: 256,
            reverse: true,
        }
    }

    #[test]
    fn lifetimes_are_capped_and_zero_stays_zero() {
        assert_eq!(BindingList::grant(300), 300);
        assert_eq!(BindingList::grant(600), 600);
        assert_eq!(BindingList::grant(601), MAX_LIFETIME);
        assert_eq!(BindingList::grant(0xFFFF), MAX_LIFETIME);
        assert_eq!(BindingList::grant(0), 0);
    }

    #[test]
    fn the_first_binding_leaves_home_and_a_second_replaces_it() {
        let mut list = BindingList::new();
        assert_eq!(list.bind(binding(FA, 0, 300, 10)), Bound::Left);
        assert_eq!(list.care_of(HOME), Some(FA));
        // S=0: a registration from another care-of address replaces the binding.
        let old = binding(FA, 0, 300, 10);
        assert_eq!(list.bind(binding(FB, 5, 300, 11)), Bound::Replaced(old));
        assert_eq!(list.care_of(HOME), Some(FB));
        assert_eq!(list.bindings().count(), 1);
        assert_eq!(list.last_identification(HOME), Some(11));
        // A renewal at the same address replaces it too, with the new deadline.
        assert!(matches!(
            list.bind(binding(FB, 100, 300, 12)),
            Bound::Replaced(_)
        ));
        assert_eq!(list.get(HOME).unwrap().expires, at(400));
    }

    #[test]
    fn bindings_expire_at_their_deadline_and_not_before() {
        let mut list = BindingList::new();
        list.bind(binding(FA, 0, 2, 1));
        let other = Binding {
            home: Ipv4Addr::new(198, 18, 0, 11),
            ..binding(FB, 0, 300, 1)
        };
        list.bind(other.clone());
        assert_eq!(list.next_expiry(), Some(at(2)));
        assert_eq!(list.get(HOME).unwrap().left(at(1)), Duration::from_secs(1));
        assert!(list.expire(at(1)).is_empty());
        let gone = list.expire(at(2));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].home, HOME);
        assert_eq!(list.care_of(HOME), None);
        assert_eq!(list.next_expiry(), Some(other.expires));
        assert_eq!(list.get(other.home).unwrap().left(at(301)), Duration::ZERO);
        // The high-water mark outlives the binding.
        assert_eq!(list.last_identification(HOME), Some(1));
    }

    #[test]
    fn deregistering_at_home_removes_the_binding_whatever_its_care_of() {
        let mut list = BindingList::new();
        list.bind(binding(FA, 0, 300, 1));
        let removed = list.deregister(HOME, HOME, 2);
        assert_eq!(removed.map(|b| b.care_of), Some(FA));
        assert_eq!(list.care_of(HOME), None);
        assert_eq!(list.last_identification(HOME), Some(2));
        // Nothing left to remove: still accepted, the mark still rises.
        assert_eq!(list.deregister(HOME, HOME, 3), None);
        assert_eq!(list.last_identification(HOME), Some(3));
    }

    #[test]
    fn deregistering_one_care_of_leaves_a_binding_elsewhere() {
        let mut list = BindingList::new();
        list.bind(binding(FB, 0, 300, 1));
        assert_eq!(list.deregister(HOME, FA, 2), None);
        assert_eq!(list.care_of(HOME), Some(FB));
        assert_eq!(list.deregister(HOME, FB, 3).map(|b| b.care_of), Some(FB));
        assert_eq!(list.care_of(HOME), None);
    }

    #[test]
    fn reverse_tunnelled_packets_need_t_and_the_bound_care_of() {
        let mut list = BindingList::new();
        list.bind(binding(FA, 0, 300, 1));
        assert!(list.reverse_allowed(FA, HOME));
        assert!(!list.reverse_allowed(FB, HOME));
        assert!(!list.reverse_allowed(FA, Ipv4Addr::new(198, 18, 0, 11)));
        list.bind(Binding {
            reverse: false,
            ..binding(FA, 0, 300, 2)
        });
        assert!(!list.reverse_allowed(FA, HOME));
    }

    #[test]
    fn the_identification_mark_never_goes_down() {
        let mut list = BindingList::new();
        list.accept_identification(HOME, 50);
        list.accept_identification(HOME, 40);
        assert_eq!(list.last_identification(HOME), Some(50));
        assert_eq!(list.identifications().collect::<Vec<_>>(), vec![(HOME, 50)]);
    }
}
