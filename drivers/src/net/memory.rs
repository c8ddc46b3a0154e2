//! An in-memory Ethernet link for host tests: two [`MemoryNic`]s whose transmitted frames
//! arrive at the other end, with a link switch and a frame log.

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

    /// Every frame this end has sent.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.shared.borrow().wires[self.side].log.clone()
    }

    /// How many frames are waiting to be received by this end.
    pub fn waiting(&self) -> usize {
        self.shared.borrow().wires[1 - self.side].queue.len()
    }
}

/// A received frame.
#[derive(Debug)]
pub struct MemoryRx(Vec<u8>);

impl RxToken for MemoryRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

/// The right to send on one end.
#[derive(Debug)]
pub struct MemoryTx<'a> {
    nic: &'a mut MemoryNic,
}

impl TxToken for MemoryTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = alloc::vec![0; len];
        let r = f(&mut frame);
        let mut s = self.nic.shared.borrow_mut();
        if s.link_up {
            let wire = &mut s.wires[self.nic.side];
            wire.log.push(frame.clone());
            wire.queue.push_back(frame);
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
        }
    }

    fn link_up(&self) -> bool {
        self.shared.borrow().link_up
    }

    fn receive(&mut self) -> Option<(MemoryRx, MemoryTx<'_>)> {
        let frame = self.shared.borrow_mut().wires[1 - self.side]
            .queue
            .pop_front()?;
        self.stats.rx_frames += 1;
        Some((MemoryRx(frame), MemoryTx { nic: self }))
    }

    fn transmit(&mut self) -> Option<MemoryTx<'_>> {
        Some(MemoryTx { nic: self })
    }

    fn ack_interrupt(&mut self) -> Events {
        Events::default()
    }

    fn stats(&self) -> Stats {
        self.stats
    }
}
