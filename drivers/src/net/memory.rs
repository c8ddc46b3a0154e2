//! An in-memory Ethernet link for host tests: two [`MemoryNic`]s whose transmitted frames
//! arrive at the other end, with a link switch, a hot-unplug switch per end and a frame log.
//! An end may act as a NIC with TCP checksum offload ([`MemoryNic::set_checksum_offload`]):
//! it completes the checksum of what it sends and vouches for the TCP checksums it finds
//! right in what it receives ([`MemoryNic::corrupt_next`] corrupts a frame on the wire).

use super::{Capabilities, Events, MacAddress, NetDevice, RxToken, Stats, TxToken};
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

/// Frames in flight in one direction, and everything ever sent that way.
#[derive(Debug, Default)]
struct Wire {
    queue: VecDeque<Vec<u8>>,
    log: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct Shared {
    wires: [Wire; 2],
    link_up: bool,
    /// Per end: the card is unplugged (see [`MemoryNic::set_removed`]).
    removed: [bool; 2],
    /// Per end: what an interrupt signalled and `ack_interrupt` has not yet returned.
    pending: [Events; 2],
    /// Per end: every how many frames it sends one is lost on the way (0: none).
    lose_every: [usize; 2],
    /// Per end: it offloads TCP checksums (both ways).
    offload: [bool; 2],
    /// Per end: flip a bit in the last byte of the next frame it sends, after any checksum.
    corrupt_next: [bool; 2],
}

/// One end of an in-memory link.
#[derive(Debug)]
pub struct MemoryNic {
    shared: Rc<RefCell<Shared>>,
    side: usize,
    mac: MacAddress,
    stats: Stats,
}

/// Two connected cards with the given MAC addresses; the link starts up.
pub fn pair(a: MacAddress, b: MacAddress) -> (MemoryNic, MemoryNic) {
    let shared = Rc::new(RefCell::new(Shared {
        wires: [Wire::default(), Wire::default()],
        link_up: true,
        removed: [false; 2],
        pending: [Events::default(); 2],
        lose_every: [0; 2],
        offload: [false; 2],
        corrupt_next: [false; 2],
    }));
    let nic = |side, mac| MemoryNic {
        shared: Rc::clone(&shared),
        side,
        mac,
        stats: Stats::default(),
    };
    (nic(0, a), nic(1, b))
}

impl MemoryNic {
    /// Sets the link state (both ends see it).
    pub fn set_link(&self, up: bool) {
        self.shared.borrow_mut().link_up = up;
    }

    /// Unplugs this end (`true`) or plugs it back (`false`), as a hot-removed card looks to
    /// its driver: it reports the link down, receives nothing and sends nothing, and the
    /// frames in flight to it are lost. The other end still sees the link's own state.
    pub fn set_removed(&self, removed: bool) {
        let mut s = self.shared.borrow_mut();
        s.removed[self.side] = removed;
        if removed {
            s.wires[1 - self.side].queue.clear();
        }
    }

    /// Raises an interrupt on this end: the next [`NetDevice::ack_interrupt`] returns
    /// `events` (merged with anything not yet acknowledged) and clears them.
    pub fn raise_interrupt(&self, events: Events) {
        let pending = &mut self.shared.borrow_mut().pending[self.side];
        pending.queue |= events.queue;
        pending.config |= events.config;
    }

    /// Loses every `n`th frame this end sends from now on (0: none), as a congested
    /// path would: for tests of recovery by retransmission.
    pub fn lose_every(&self, n: usize) {
        self.shared.borrow_mut().lose_every[self.side] = n;
    }

    /// Makes this end a NIC with TCP checksum offload (`true`) or without.
    pub fn set_checksum_offload(&self, on: bool) {
        self.shared.borrow_mut().offload[self.side] = on;
    }

    /// Flips a bit in the last byte of the next frame this end sends (after its checksum
    /// is complete): corruption on the wire.
    pub fn corrupt_next(&self) {
        self.shared.borrow_mut().corrupt_next[self.side] = true;
    }

    /// Whether this end is unplugged.
    pub fn removed(&self) -> bool {
        self.shared.borrow().removed[self.side]
    }

    /// Every frame this end has sent.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.shared.borrow().wires[self.side].log.clone()
    }

    /// How many frames are waiting to be received by this end.
    pub fn waiting(&self) -> usize {
        self.shared.borrow().wires[1 - self.side].queue.len()
    }
}

/// A received frame, and whether this end vouches for its checksum.
#[derive(Debug)]
pub struct MemoryRx(Vec<u8>, bool);

impl RxToken for MemoryRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }

    fn checksum_valid(&self) -> bool {
        self.1
    }
}

/// The right to send on one end.
#[derive(Debug)]
pub struct MemoryTx<'a> {
    nic: &'a mut MemoryNic,
}

impl TxToken for MemoryTx<'_> {
    fn checksum_offload(&self) -> bool {
        self.nic.shared.borrow().offload[self.nic.side]
    }

    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = alloc::vec![0; len];
        let r = f(&mut frame);
        let mut s = self.nic.shared.borrow_mut();
        let side = self.nic.side;
        if s.offload[side]
            && let Some(seg) = super::checksum::tcp_segment(&frame)
        {
            // As the NIC would, from the pseudo-header sum the driver left.
            super::checksum::fill_tcp(&mut frame, &seg);
        }
        if core::mem::take(&mut s.corrupt_next[side])
            && let Some(last) = frame.last_mut()
        {
            *last ^= 1;
        }
        if s.link_up && !s.removed[side] {
            // A frame to an unplugged card goes out but is lost on the way.
            let every = s.lose_every[side];
            let wire = &mut s.wires[side];
            let lost = every != 0 && (wire.log.len() + 1).is_multiple_of(every);
            let deliver = !s.removed[1 - side] && !lost;
            let wire = &mut s.wires[side];
            wire.log.push(frame.clone());
            if deliver {
                wire.queue.push_back(frame);
            }
            self.nic.stats.tx_frames += 1;
        } else {
            self.nic.stats.tx_dropped += 1;
        }
        r
    }
}

impl NetDevice for MemoryNic {
    type RxToken<'a> = MemoryRx;
    type TxToken<'a> = MemoryTx<'a>;

    fn mac_address(&self) -> MacAddress {
        self.mac
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_frame_len: 1514,
            max_burst: None,
            tx_checksum: self.shared.borrow().offload[self.side],
        }
    }

    fn link_up(&self) -> bool {
        let s = self.shared.borrow();
        s.link_up && !s.removed[self.side]
    }

    fn receive(&mut self) -> Option<(MemoryRx, MemoryTx<'_>)> {
        let mut s = self.shared.borrow_mut();
        if s.removed[self.side] {
            return None;
        }
        let frame = s.wires[1 - self.side].queue.pop_front()?;
        // As a NIC that checks: it vouches only for a TCP checksum it found right.
        let vouched = s.offload[self.side]
            && super::checksum::tcp_segment(&frame)
                .is_some_and(|seg| super::checksum::verify_tcp(&frame, &seg));
        drop(s);
        self.stats.rx_frames += 1;
        Some((MemoryRx(frame, vouched), MemoryTx { nic: self }))
    }

    fn transmit(&mut self) -> Option<MemoryTx<'_>> {
        Some(MemoryTx { nic: self })
    }

    fn ack_interrupt(&mut self) -> Events {
        core::mem::take(&mut self.shared.borrow_mut().pending[self.side])
    }

    fn stats(&self) -> Stats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddress = MacAddress([2, 0, 0, 0, 0, 1]);
    const B: MacAddress = MacAddress([2, 0, 0, 0, 0, 2]);

    fn send(nic: &mut MemoryNic, byte: u8) {
        nic.transmit().unwrap().consume(2, |b| b.fill(byte));
    }

    fn recv(nic: &mut MemoryNic) -> Option<Vec<u8>> {
        let (rx, _tx) = nic.receive()?;
        Some(rx.consume(<[u8]>::to_vec))
    }

    #[test]
    fn frames_cross_and_link_down_drops() {
        let (mut a, mut b) = pair(A, B);
        send(&mut a, 1);
        assert_eq!(b.waiting(), 1);
        assert_eq!(recv(&mut b), Some(vec![1, 1]));
        assert_eq!(recv(&mut b), None);
        b.set_link(false);
        assert!(!a.link_up() && !b.link_up());
        send(&mut a, 2);
        assert_eq!((a.stats().tx_frames, a.stats().tx_dropped), (1, 1));
        assert_eq!(b.waiting(), 0);
        assert_eq!(a.sent(), vec![vec![1, 1]]);
    }

    #[test]
    fn removed_end_is_silent_and_loses_frames_in_flight() {
        let (mut a, mut b) = pair(A, B);
        send(&mut a, 1);
        b.set_removed(true);
        assert!(b.removed() && !a.removed());
        assert!(!b.link_up());
        assert!(a.link_up(), "the other end sees the link itself");
        assert_eq!(recv(&mut b), None, "frames in flight are lost");
        send(&mut a, 2);
        assert_eq!(a.stats().tx_frames, 2, "sent, but lost on the way");
        send(&mut b, 3);
        assert_eq!(b.stats().tx_dropped, 1);
        assert_eq!(a.waiting(), 0);
        b.set_removed(false);
        assert!(b.link_up());
        assert_eq!(recv(&mut b), None);
        send(&mut a, 4);
        assert_eq!(recv(&mut b), Some(vec![4, 4]));
    }

    #[test]
    fn interrupts_are_acknowledged_once_per_end() {
        let (mut a, mut b) = pair(A, B);
        assert_eq!(a.ack_interrupt(), Events::default());
        a.raise_interrupt(Events {
            queue: true,
            config: false,
        });
        a.raise_interrupt(Events {
            queue: false,
            config: true,
        });
        assert_eq!(b.ack_interrupt(), Events::default());
        assert_eq!(
            a.ack_interrupt(),
            Events {
                queue: true,
                config: true
            }
        );
        assert_eq!(a.ack_interrupt(), Events::default());
    }
}
