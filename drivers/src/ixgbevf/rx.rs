//! Receive queue 0: advanced one-buffer descriptors (`docs/ixgbevf.md` §6), one 2 KiB buffer per
//! descriptor, fixed for the ring's life (descriptor `i` always uses buffer slot `i`).
//!
//! Ownership around the ring, in order: the device owns `[next, tail)` (armed, some perhaps
//! already written back); `[g, next)` were seen by the driver and not yet given back (at most
//! the one frame lent to the stack); `[tail, g)` are free, always at least one descriptor, so
//! that `RDH == RDT` only ever means "empty". Giving a buffer back re-arms the descriptor at
//! `tail`, so buffers are re-armed in ring order. RDT writes (one VM exit each) are batched:
//! they happen when a poll finds the ring empty, or every [`FLUSH_AFTER`] buffers.

use crate::hal::RegisterIo;
use crate::hal::dma::{Dma, DmaArea};
use crate::net::Stats;
use ixgbevf_regs::{
    DESC_LEN, Q_TAIL, RXD_ERR_FRAME, RXD_ERR_TCPE, RXD_LENGTH_OFFSET, RXD_STAT_DD, RXD_STAT_EOP,
    RXD_STAT_L4CS, RXD_STATUS_OFFSET, rx_queue,
};

/// Descriptors in the ring (a multiple of 8, so the ring is a multiple of 128 bytes).
pub const ENTRIES: usize = 32;
/// Bytes per receive buffer (SRRCTL.BSIZEPACKET = 2 KiB).
pub const BUFFER_LEN: usize = 2048;
/// Largest frame accepted: the SET_LPE limit (1514 + a VLAN tag; the FCS is stripped).
pub const MAX_FRAME: usize = 1518;
/// Smallest frame accepted: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Buffers re-armed before RDT is written even in the middle of a burst.
const FLUSH_AFTER: usize = ENTRIES / 4;

/// The receive ring and its buffers.
pub struct RxRing<D: Dma> {
    area: DmaArea<D>,
    /// Next descriptor to look at.
    next: usize,
    /// One past the last armed descriptor (what RDT holds or will hold).
    tail: usize,
    /// Descriptors armed since RDT was last written.
    unflushed: usize,
    /// The descriptor before `next` is lent to the stack.
    lent: bool,
    /// Dropping the rest of a frame that spans descriptors.
    discarding: bool,
}

impl<D: Dma> RxRing<D> {
    /// Allocates the ring and its buffers; `None` without DMA memory.
    pub fn new(dma: D) -> Option<RxRing<D>> {
        Some(RxRing {
            area: DmaArea::for_receive(dma, ENTRIES * DESC_LEN, ENTRIES, BUFFER_LEN)?,
            next: 0,
            tail: 0,
            unflushed: 0,
            lent: false,
            discarding: false,
        })
    }

    /// Device address of the descriptor ring (RDBAL/RDBAH).
    pub fn ring_address(&self) -> u64 {
        self.area.ring_device_address()
    }

    /// Ring length in bytes (RDLEN).
    pub fn ring_len(&self) -> u32 {
        (ENTRIES * DESC_LEN) as u32
    }

    /// Starts over after a device reset (which stopped all DMA): arms every descriptor but
    /// one and returns the tail to write to RDT.
    pub fn start(&mut self) -> u32 {
        self.area.reclaim_all();
        self.next = 0;
        self.lent = false;
        self.discarding = false;
        for i in 0..ENTRIES - 1 {
            self.arm(i);
        }
        let last = (ENTRIES - 1) * DESC_LEN;
        self.area.ring_write64(last, 0);
        self.area.ring_write64(last + 8, 0);
        self.tail = ENTRIES - 1;
        self.unflushed = 0;
        self.tail as u32
    }

    /// Hands descriptor `i` and its buffer to the device: buffer address in qword 0, qword 1
    /// zeroed (no header buffer, and no stale write-back status).
    fn arm(&mut self, i: usize) {
        if let Some(address) = self.area.lend(i) {
            let d = i * DESC_LEN;
            self.area.ring_write64(d, address);
            self.area.ring_write64(d + 8, 0);
        }
    }

    /// One more buffer is free: re-arm the descriptor at `tail`.
    fn give_back(&mut self) {
        self.arm(self.tail);
        self.tail = (self.tail + 1) % ENTRIES;
        self.unflushed += 1;
    }

    /// Gives back the buffer lent by the last [`RxRing::next_frame`], if any.
    pub fn release_lent(&mut self) {
        if core::mem::take(&mut self.lent) {
            self.give_back();
        }
    }

    /// Writes RDT if buffers were re-armed since it was last written.
    pub fn flush(&mut self, io: &mut impl RegisterIo) {
        if self.unflushed > 0 {
            io.write32(rx_queue(0) + Q_TAIL, self.tail as u32);
            self.unflushed = 0;
        }
    }

    /// The next good frame, as (buffer slot, length, whether the device found its L4
    /// checksum right: L4CS without TCPE); the buffer stays lent until the next call. Frames the device marked bad, or with impossible lengths, are dropped and
    /// counted in `stats.rx_errors`.
    pub fn next_frame(
        &mut self,
        io: &mut impl RegisterIo,
        stats: &mut Stats,
    ) -> Option<(usize, usize, bool)> {
        self.release_lent();
        for _ in 0..ENTRIES {
            let i = self.next;
            let d = i * DESC_LEN;
            let status = self.area.ring_read32(d + RXD_STATUS_OFFSET);
            if status & RXD_STAT_DD == 0 {
                break;
            }
            self.area.reclaim(i);
            let len = (self.area.ring_read32(d + RXD_LENGTH_OFFSET) & 0xFFFF) as usize;
            self.next = (i + 1) % ENTRIES;
            let eop = status & RXD_STAT_EOP != 0;
            let continued = core::mem::replace(&mut self.discarding, !eop);
            if !eop
                || continued
                || status & RXD_ERR_FRAME != 0
                || !(MIN_FRAME..=MAX_FRAME).contains(&len)
            {
                // Count a bad frame once, at its first descriptor.
                if !continued {
                    stats.rx_errors += 1;
                }
                self.give_back();
                continue;
            }
            if self.unflushed >= FLUSH_AFTER {
                self.flush(io);
            }
            self.lent = true;
            stats.rx_frames += 1;
            let checked = status & (RXD_STAT_L4CS | RXD_ERR_TCPE) == RXD_STAT_L4CS;
            return Some((i, len, checked));
        }
        self.flush(io);
        None
    }

    /// The frame in buffer `slot` (as returned by [`RxRing::next_frame`]); empty if the slot
    /// is not the driver's (cannot happen for a slot just returned).
    pub fn frame(&self, slot: usize, len: usize) -> &[u8] {
        self.area.slot(slot, len).unwrap_or(&[])
    }

    /// Whether the device has written back the next descriptor (a frame is waiting).
    pub fn frame_waiting(&self) -> bool {
        self.area
            .ring_read32(self.next * DESC_LEN + RXD_STATUS_OFFSET)
            & RXD_STAT_DD
            != 0
    }
}
