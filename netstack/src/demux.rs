//! [`TcpSockets`]: the stack's TCP sockets, each in a smoltcp `SocketSet` of its own, so a
//! frame or a timer costs the same with 1,000 connections as with one.
//!
//! smoltcp looks for a frame's socket by trying every socket of the set it is given, and
//! its egress and `poll_at` walk every socket too. In this guest each instruction costs
//! ~0.4 µs (docs/kvm.md §2): with 1,000 connections that is tens of milliseconds per frame
//! and per egress pass. Here instead:
//!
//! - **Ingress** reads the frame's IPv4 and TCP header and picks the socket itself: the
//!   connection with that 4-tuple (an ordered map), else, for a SYN, a socket in Listen on
//!   that port; smoltcp then processes the frame against that one socket's set. A SYN for
//!   a port that is listened on but has no socket in Listen right now is dropped (the
//!   client sends it again), as Linux drops SYNs when its queues are full; a SYN for a
//!   listener whose handshake queue is full is dropped unless it is a resend
//!   ([`crate::synguard`]); any other segment without a socket gets smoltcp's RST.
//! - **Egress** runs only for sockets that something touched (an app call, a frame) and
//!   for those whose timer is due (a min-heap of `poll_at` instants).
//! - **State changes** (every socket touched is compared with the state last seen) are
//!   queued for the socket table, which re-arms listeners and frees closed sockets.

use crate::phy::OneFrame;
use crate::synguard::SynGuard;
use alloc::collections::{BTreeMap, BTreeSet, BinaryHeap};
use alloc::vec::Vec;
use core::cmp::Reverse;
use drivers::net::TxToken;
use smoltcp::iface::{Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::IpAddress;

/// A TCP socket of the stack: a slot and its generation, so a handle to a freed socket
/// never reaches the socket that reuses the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TcpHandle {
    index: u32,
    generation: u32,
}

/// What the indexes hold for a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Indexed {
    Nothing,
    /// In Listen on this port (a port that is listened on).
    Listen(u16),
    /// A connection: [`conn_key`].
    Conn(u64),
}

struct Slot {
    generation: u32,
    /// Exactly one socket: `handle`.
    set: SocketSet<'static>,
    handle: SocketHandle,
    indexed: Indexed,
    /// The `poll_at` instant (µs) the timer heap holds for it.
    due: Option<i64>,
    /// In `dirty` already.
    dirty: bool,
    /// In `unindexed` already.
    unindexed: bool,
    /// The state last seen.
    state: tcp::State,
    /// The owner's word about it ([`TcpSockets::set_tag`]).
    tag: u64,
    /// In `woken` already.
    woken: bool,
}

impl Slot {
    fn socket(&self) -> &tcp::Socket<'static> {
        self.set.get::<tcp::Socket>(self.handle)
    }
}

/// A connection's key: the peer's address and port and our port (the stack has one
/// address).
fn conn_key(remote: u32, remote_port: u16, local_port: u16) -> u64 {
    (u64::from(remote) << 32) | (u64::from(remote_port) << 16) | u64::from(local_port)
}

/// Where a received frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Not TCP (or not for a TCP socket): the datagram sockets' set; smoltcp answers ARP,
    /// ping, and a TCP segment nobody wants with RST.
    Other,
    /// This TCP socket's set.
    Tcp(u32),
    /// A SYN for a listened-on port with no socket in Listen, or a first SYN while its
    /// listener's handshake queue is full: dropped.
    Drop,
}

const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const PROTO_TCP: u8 = 6;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// The TCP sockets, their indexes, timers and state changes.
#[derive(Default)]
pub struct TcpSockets {
    slots: Vec<Option<Slot>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    conns: BTreeMap<u64, u32>,
    /// Listened-on ports and their sockets in Listen.
    listening: BTreeMap<u16, Vec<u32>>,
    /// Listened-on ports whose handshake queue is full: SYNs pass [`SynGuard`] first.
    full: BTreeSet<u16>,
    guard: SynGuard,
    timers: BinaryHeap<Reverse<(i64, u32)>>,
    dirty: Vec<u32>,
    /// Sockets changed by their owner since [`TcpSockets::reindex_touched`] last ran.
    unindexed: Vec<u32>,
    /// An ARP frame came in: sockets with a timer get an egress pass (one waiting for that
    /// neighbour would otherwise wait for smoltcp's 1 s of silence to end).
    recheck: bool,
    changed: Vec<TcpHandle>,
    /// Sockets smoltcp worked on (a frame, a timer, an egress pass) since the last
    /// [`TcpSockets::take_woken`]: whose readiness may have changed.
    woken: Vec<TcpHandle>,
    /// Times smoltcp worked on a socket (each frame, timer or egress pass; never reset).
    touches: u64,
    open: usize,
    /// Freed sockets kept for reuse (at most [`POOL`]): a new socket's 32 KiB of buffers
    /// cost more to allocate and clear here than a whole handshake.
    pool: Vec<SocketSet<'static>>,
}

/// Freed sockets kept for reuse.
pub const POOL: usize = 64;

impl TcpSockets {
    /// Sockets held (in any state).
    pub fn len(&self) -> usize {
        self.open
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.open == 0
    }

    /// Adds `socket`; `None` if there is no memory for its slot.
    pub fn add(&mut self, socket: tcp::Socket<'static>) -> Option<TcpHandle> {
        let mut storage = Vec::new();
        storage.try_reserve_exact(1).ok()?;
        let mut set = SocketSet::new(storage);
        let handle = set.add(socket);
        self.install(set, handle)
    }

    /// A freed socket again, if one is kept: closed, with its buffers and its options as
    /// they were (`listen` and `connect` clear its state and buffers).
    pub fn reuse(&mut self) -> Option<TcpHandle> {
        let mut set = self.pool.pop()?;
        let old = set.iter().next().map(|(h, _)| h)?;
        let socket = set.remove(old);
        let handle = set.add(socket);
        set.get_mut::<tcp::Socket>(handle).abort();
        self.install(set, handle)
    }

    /// Forgets what smoltcp remembers beside socket `h` about its last peer (a neighbour it
    /// could not resolve makes it wait up to 1 s before sending again): for a socket that
    /// starts over with another peer.
    pub fn forget_peer(&mut self, h: TcpHandle) {
        if let Some(slot) = self.slot_mut(h) {
            let socket = slot.set.remove(slot.handle);
            slot.handle = slot.set.add(socket);
        }
    }

    fn install(&mut self, set: SocketSet<'static>, handle: SocketHandle) -> Option<TcpHandle> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.try_reserve(1).ok()?;
                self.generations.try_reserve(1).ok()?;
                self.dirty.try_reserve(1).ok()?;
                self.slots.push(None);
                self.generations.push(0);
                u32::try_from(self.slots.len() - 1).ok()?
            }
        };
        let generation = self.generations[index as usize].wrapping_add(1);
        self.generations[index as usize] = generation;
        let state = set.get::<tcp::Socket>(handle).state();
        self.slots[index as usize] = Some(Slot {
            generation,
            set,
            handle,
            indexed: Indexed::Nothing,
            due: None,
            dirty: false,
            unindexed: false,
            state,
            tag: 0,
            woken: false,
        });
        self.open += 1;
        self.touch(index);
        Some(TcpHandle { index, generation })
    }

    fn slot(&self, h: TcpHandle) -> Option<&Slot> {
        self.slots
            .get(h.index as usize)?
            .as_ref()
            .filter(|s| s.generation == h.generation)
    }

    fn slot_mut(&mut self, h: TcpHandle) -> Option<&mut Slot> {
        self.slots
            .get_mut(h.index as usize)?
            .as_mut()
            .filter(|s| s.generation == h.generation)
    }

    /// The socket, if `h` is still held.
    pub fn get(&self, h: TcpHandle) -> Option<&tcp::Socket<'static>> {
        self.slot(h).map(Slot::socket)
    }

    /// The socket, to change it: it gets an egress pass (and its indexes and state are
    /// looked at again) on the next [`TcpSockets::egress`].
    pub fn get_mut(&mut self, h: TcpHandle) -> Option<&mut tcp::Socket<'static>> {
        self.slot(h)?;
        self.touch(h.index);
        let slot = self.slot_mut(h)?;
        Some(slot.set.get_mut::<tcp::Socket>(slot.handle))
    }

    fn touch(&mut self, index: u32) {
        if let Some(Some(slot)) = self.slots.get_mut(index as usize) {
            if !slot.dirty {
                slot.dirty = true;
                self.dirty.push(index);
            }
            if !slot.unindexed {
                slot.unindexed = true;
                self.unindexed.push(index);
            }
        }
    }

    /// Frees the socket (nothing more is sent for it).
    pub fn remove(&mut self, h: TcpHandle) {
        let Some(slot) = self.slot(h) else { return };
        let indexed = slot.indexed;
        self.unindex(h.index, indexed);
        if let Some(slot) = self.slots[h.index as usize].take()
            && self.pool.len() < POOL
        {
            self.pool.push(slot.set);
        }
        self.free.push(h.index);
        self.open -= 1;
    }

    /// SYNs for `port` go to its sockets in Listen from now on (and are dropped while it
    /// has none).
    pub fn listen_port(&mut self, port: u16) {
        self.listening.entry(port).or_default();
    }

    /// Nobody listens on `port` any more: SYNs for it get RST.
    pub fn unlisten_port(&mut self, port: u16) {
        self.full.remove(&port);
        if let Some(spares) = self.listening.remove(&port) {
            for i in spares {
                if let Some(Some(slot)) = self.slots.get_mut(i as usize) {
                    slot.indexed = Indexed::Nothing;
                }
            }
        }
    }

    /// Whether `port`'s listener has as many handshakes under way as its backlog: new SYNs
    /// are then taken only when resent ([`crate::synguard`]).
    pub fn set_handshakes_full(&mut self, port: u16, full: bool) {
        if full {
            self.full.insert(port);
        } else {
            self.full.remove(&port);
        }
    }

    /// First SYNs dropped because their listener's handshake queue was full.
    pub fn first_syns_dropped(&self) -> u64 {
        self.guard.dropped()
    }

    /// Whether a socket's state changed since the last [`TcpSockets::swap_changed`].
    pub fn has_changed(&self) -> bool {
        !self.changed.is_empty()
    }

    /// Swaps the sockets whose state changed (in order) with `into`, which must be empty:
    /// two vectors take turns, so reporting never allocates once they have grown.
    pub fn swap_changed(&mut self, into: &mut Vec<TcpHandle>) {
        core::mem::swap(&mut self.changed, into);
    }

    /// How many times smoltcp has worked on a socket so far: moves whenever a socket's
    /// readiness may have changed, and only then.
    pub fn touches(&self) -> u64 {
        self.touches
    }

    /// Moves the sockets smoltcp worked on since the last call into `into` (each once).
    pub fn take_woken(&mut self, into: &mut Vec<TcpHandle>) {
        for h in self.woken.drain(..) {
            if let Some(Some(slot)) = self.slots.get_mut(h.index as usize)
                && slot.generation == h.generation
            {
                slot.woken = false;
                into.push(h);
            }
        }
    }

    /// The owner's word about `h` (0 until set, and for a freed socket).
    pub fn tag(&self, h: TcpHandle) -> u64 {
        self.slot(h).map_or(0, |s| s.tag)
    }

    /// Records the owner's word about `h` (the socket table: who holds it).
    pub fn set_tag(&mut self, h: TcpHandle, tag: u64) {
        if let Some(s) = self.slot_mut(h) {
            s.tag = tag;
        }
    }

    /// Whether any socket satisfies `f` (given its tag): a walk over all of them.
    pub fn any(&self, f: impl Fn(u64, &tcp::Socket<'static>) -> bool) -> bool {
        self.slots.iter().flatten().any(|s| f(s.tag, s.socket()))
    }

    /// Where a received Ethernet frame goes, at `now`.
    pub(crate) fn route(&mut self, frame: &[u8], now: Instant) -> Route {
        let (Some(ethertype), Some(ip)) = (frame.get(12..14), frame.get(14..)) else {
            return Route::Other;
        };
        if ethertype != ETHERTYPE_IPV4 || ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != PROTO_TCP {
            return Route::Other;
        }
        // Fragments are smoltcp's to drop (no reassembly here).
        if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
            return Route::Other;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let Some(tcp) = ip.get(ihl..ihl + 14) else {
            return Route::Other;
        };
        let remote = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
        let remote_port = u16::from_be_bytes([tcp[0], tcp[1]]);
        let local_port = u16::from_be_bytes([tcp[2], tcp[3]]);
        if let Some(&i) = self.conns.get(&conn_key(remote, remote_port, local_port)) {
            return Route::Tcp(i);
        }
        if tcp[13] & (SYN | ACK | RST) == SYN
            && let Some(spares) = self.listening.get(&local_port)
        {
            let Some(&spare) = spares.last() else {
                return Route::Drop;
            };
            let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            let key = conn_key(remote, remote_port, local_port);
            if self.full.contains(&local_port) && !self.guard.admit(key, seq, now.total_millis()) {
                return Route::Drop;
            }
            return Route::Tcp(spare);
        }
        Route::Other
    }

    /// Lets smoltcp process `frame` (routed to `index`) against that socket alone; replies
    /// leave through `tx`. Returns whether the socket's state changed.
    pub(crate) fn ingress<T: TxToken>(
        &mut self,
        index: u32,
        iface: &mut Interface,
        now: Instant,
        frame: &[u8],
        tx: T,
        caps: &DeviceCapabilities,
    ) -> bool {
        let Some(Some(slot)) = self.slots.get_mut(index as usize) else {
            return false;
        };
        let mut one = OneFrame::new(frame, tx, caps);
        iface.poll_ingress_single(now, &mut one, &mut slot.set);
        self.settle(index, iface, now)
    }

    /// Sockets with a timer get an egress pass on the next [`TcpSockets::egress`] (a walk
    /// over all of them, after an ARP frame only).
    pub(crate) fn neighbor_learned(&mut self) {
        self.recheck = true;
    }

    /// Sends what touched sockets and those with a due timer have to send. Returns
    /// whether anything went out.
    pub(crate) fn egress(
        &mut self,
        iface: &mut Interface,
        device: &mut impl phy::Device,
        now: Instant,
    ) -> bool {
        let mut work = core::mem::take(&mut self.dirty);
        if core::mem::take(&mut self.recheck) {
            for (i, slot) in self.slots.iter_mut().enumerate() {
                if let Some(slot) = slot
                    && slot.due.is_some()
                    && !slot.dirty
                {
                    slot.dirty = true;
                    work.push(i as u32);
                }
            }
        }
        let now_us = now.total_micros();
        while let Some(&Reverse((at, i))) = self.timers.peek() {
            if at > now_us {
                break;
            }
            self.timers.pop();
            if let Some(Some(slot)) = self.slots.get_mut(i as usize)
                && slot.due == Some(at)
            {
                // Taken: `settle` arms it again if it still needs a poll.
                slot.due = None;
                if !slot.dirty {
                    slot.dirty = true;
                    work.push(i);
                }
            }
        }
        let mut sent = false;
        for &i in &work {
            let Some(Some(slot)) = self.slots.get_mut(i as usize) else {
                continue;
            };
            slot.dirty = false;
            // One segment per call; a socket's window bounds the loop.
            while iface.poll_egress(now, device, &mut slot.set) == PollResult::SocketStateChanged {
                sent = true;
            }
            self.settle(i, iface, now);
        }
        work.clear();
        if self.dirty.is_empty() {
            self.dirty = work;
        } else {
            self.dirty.append(&mut work);
        }
        sent
    }

    /// When a socket's timer is next due (a past instant means now), or `None`.
    pub(crate) fn poll_at(&mut self) -> Option<Instant> {
        if !self.dirty.is_empty() {
            return Some(Instant::from_micros(0));
        }
        while let Some(&Reverse((at, i))) = self.timers.peek() {
            match self.slots.get(i as usize) {
                Some(Some(slot)) if slot.due == Some(at) => {
                    return Some(Instant::from_micros(at));
                }
                _ => {
                    self.timers.pop();
                }
            }
        }
        None
    }

    /// Indexes the sockets touched since the last egress as they are now (a socket that
    /// listens again after an eviction takes the next SYN): called before routing a frame.
    pub(crate) fn reindex_touched(&mut self) {
        while let Some(index) = self.unindexed.pop() {
            if let Some(Some(slot)) = self.slots.get_mut(index as usize) {
                slot.unindexed = false;
            }
            self.reindex(index);
        }
    }

    /// Puts socket `index` in the indexes its state calls for, and reports a state change
    /// (also one an app call made); returns whether there was one.
    fn reindex(&mut self, index: u32) -> bool {
        let Some(Some(slot)) = self.slots.get_mut(index as usize) else {
            return false;
        };
        let socket = slot.set.get::<tcp::Socket>(slot.handle);
        let state = socket.state();
        let indexed = match state {
            tcp::State::Listen => {
                let port = socket.listen_endpoint().port;
                if self.listening.contains_key(&port) {
                    Indexed::Listen(port)
                } else {
                    Indexed::Nothing
                }
            }
            tcp::State::Closed => Indexed::Nothing,
            _ => match (socket.remote_endpoint(), socket.local_endpoint()) {
                (Some(remote), Some(local)) => {
                    let IpAddress::Ipv4(ip) = remote.addr;
                    Indexed::Conn(conn_key(ip.to_bits(), remote.port, local.port))
                }
                _ => Indexed::Nothing,
            },
        };
        let changed = state != slot.state;
        slot.state = state;
        let (old, generation) = (slot.indexed, slot.generation);
        if old != indexed {
            self.unindex(index, old);
            self.index(index, indexed);
        }
        if changed {
            self.changed.push(TcpHandle { index, generation });
        }
        changed
    }

    /// After smoltcp worked on socket `index`: its indexes (its tuple appears and goes
    /// with a change of state), a state change, its readiness, its timer.
    fn settle(&mut self, index: u32, iface: &mut Interface, now: Instant) -> bool {
        let changed = match self.slots.get(index as usize) {
            Some(Some(slot)) if slot.socket().state() != slot.state => self.reindex(index),
            _ => false,
        };
        let Some(Some(slot)) = self.slots.get_mut(index as usize) else {
            return false;
        };
        self.touches += 1;
        if !slot.woken {
            slot.woken = true;
            self.woken.push(TcpHandle {
                index,
                generation: slot.generation,
            });
        }
        let due = iface
            .poll_at(now, &slot.set)
            .map(|t| t.total_micros().max(0));
        if due != slot.due {
            slot.due = due;
            if let Some(at) = due {
                self.timers.push(Reverse((at, index)));
            }
        }
        self.compact_timers();
        changed
    }

    fn index(&mut self, index: u32, indexed: Indexed) {
        match indexed {
            Indexed::Nothing => {}
            Indexed::Listen(port) => {
                if let Some(spares) = self.listening.get_mut(&port) {
                    spares.push(index);
                }
            }
            Indexed::Conn(key) => {
                // A newer socket with the same 4-tuple takes it over.
                self.conns.insert(key, index);
            }
        }
        if let Some(Some(slot)) = self.slots.get_mut(index as usize) {
            slot.indexed = indexed;
        }
    }

    fn unindex(&mut self, index: u32, indexed: Indexed) {
        match indexed {
            Indexed::Nothing => {}
            Indexed::Listen(port) => {
                if let Some(spares) = self.listening.get_mut(&port) {
                    spares.retain(|&i| i != index);
                }
            }
            Indexed::Conn(key) => {
                if self.conns.get(&key) == Some(&index) {
                    self.conns.remove(&key);
                }
            }
        }
        if let Some(Some(slot)) = self.slots.get_mut(index as usize) {
            slot.indexed = Indexed::Nothing;
        }
    }

    /// Drops stale timer entries once they outnumber the sockets (each settle may leave
    /// one behind).
    fn compact_timers(&mut self) {
        if self.timers.len() <= 2 * self.open + 64 {
            return;
        }
        let slots = &self.slots;
        self.timers.retain(
            |&Reverse((at, i))| matches!(slots.get(i as usize), Some(Some(s)) if s.due == Some(at)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(src: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4);
        f[14] = 0x45;
        f[14 + 9] = PROTO_TCP;
        f[14 + 12..14 + 16].copy_from_slice(&src);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&dport.to_be_bytes());
        f[34 + 13] = flags;
        f
    }

    #[test]
    fn frames_are_routed_by_4_tuple_then_listened_port() {
        let mut t = TcpSockets::default();
        let syn = frame([198, 18, 0, 2], 40000, 80, SYN);
        assert_eq!(
            t.route(&syn, Instant::ZERO),
            Route::Other,
            "nobody listens: RST"
        );
        t.listen_port(80);
        assert_eq!(
            t.route(&syn, Instant::ZERO),
            Route::Drop,
            "listened on, no spare: dropped"
        );
        t.listening.get_mut(&80).unwrap().push(7);
        assert_eq!(t.route(&syn, Instant::ZERO), Route::Tcp(7));
        t.set_handshakes_full(80, true);
        assert_eq!(
            t.route(&syn, Instant::ZERO),
            Route::Drop,
            "full: a first SYN is dropped"
        );
        let later = Instant::from_millis(1000);
        assert_eq!(t.route(&syn, later), Route::Tcp(7), "and its resend taken");
        t.set_handshakes_full(80, false);
        let ack = frame([198, 18, 0, 2], 40000, 80, ACK);
        assert_eq!(
            t.route(&ack, Instant::ZERO),
            Route::Other,
            "only a SYN goes to a listener"
        );
        t.conns.insert(conn_key(0xC612_0002, 40000, 80), 3);
        assert_eq!(t.route(&ack, Instant::ZERO), Route::Tcp(3));
        assert_eq!(
            t.route(&syn, Instant::ZERO),
            Route::Tcp(3),
            "a connection's own SYN"
        );
        let mut fragment = syn.clone();
        fragment[14 + 6] = 0x20;
        assert_eq!(t.route(&fragment, Instant::ZERO), Route::Other);
        assert_eq!(
            t.route(&syn[..40], Instant::ZERO),
            Route::Other,
            "truncated"
        );
        let mut udp = syn;
        udp[14 + 9] = 17;
        assert_eq!(t.route(&udp, Instant::ZERO), Route::Other);
    }
}
