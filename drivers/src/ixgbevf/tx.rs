//! Transmit queue 0: one advanced data descriptor per frame (`docs/ixgbevf.md` §6: DTYP data, DEXT,
//! IFCS, EOP, RS; PAYLEN = frame length), one 2 KiB buffer per descriptor (descriptor `i` always
//! uses buffer slot `i`).
//!
//! TCP checksum offload: [`TxRing::start`] puts one advanced context descriptor (slot 0:
//! IPv4, TCP, MACLEN 14, IPLEN 20) first in the ring, consumed with the first frame; every
//! TCP segment after it (unfragmented IPv4 without options, all smoltcp sends) goes out with
//! the pseudo-header sum in its checksum field and TXSM|CC in its data descriptor, for the
//! device to finish. The context lasts as long as the queue (until the next reset).
//!
//! The driver owns `[tail, clean)` (free, always at least one descriptor so `TDH == TDT`
//! means empty); `[clean, tail)` is in flight. Finished descriptors are reclaimed lazily,
//! only when the ring is full: a frame costs a descriptor write and one TDT write.

use crate::hal::RegisterIo;
use crate::hal::dma::{Dma, DmaArea};
use crate::net::{Stats, checksum};
use ixgbevf_regs::{
    DESC_LEN, Q_TAIL, TXD_CMD_DEXT, TXD_CMD_EOP, TXD_CMD_IFCS, TXD_CMD_RS, TXD_CTX_MACLEN_SHIFT,
    TXD_DTYP_CTXT, TXD_DTYP_DATA, TXD_OLINFO_CC, TXD_PAYLEN_SHIFT, TXD_POPTS_TXSM, TXD_STAT_DD,
    TXD_TUCMD_IPV4, TXD_TUCMD_L4T_TCP, tx_queue,
};

/// Descriptors in the ring (a multiple of 8).
pub const ENTRIES: usize = 32;
/// Bytes per transmit buffer.
pub const BUFFER_LEN: usize = 2048;
/// Largest frame sent: 1500-byte MTU plus the Ethernet header (the device adds the FCS).
pub const MAX_FRAME: usize = 1514;

/// Command and type bits of every data descriptor.
const CMD: u32 = TXD_DTYP_DATA | TXD_CMD_DEXT | TXD_CMD_IFCS | TXD_CMD_EOP | TXD_CMD_RS;
/// IPv4 header length the checksum context describes (smoltcp sends no options).
const CONTEXT_IPLEN: usize = 20;

/// The transmit ring and its buffers.
pub struct TxRing<D: Dma> {
    area: DmaArea<D>,
    /// Next descriptor to fill (what TDT holds).
    tail: usize,
    /// Oldest descriptor in flight.
    clean: usize,
    /// Descriptor 0 holds the checksum context (no buffer, never written back) and the
    /// device may not have read it yet.
    context_in_flight: bool,
}

impl<D: Dma> TxRing<D> {
    /// Allocates the ring and its buffers; `None` without DMA memory.
    pub fn new(dma: D) -> Option<TxRing<D>> {
        Some(TxRing {
            area: DmaArea::new(dma, ENTRIES * DESC_LEN, ENTRIES, BUFFER_LEN)?,
            tail: 0,
            clean: 0,
            context_in_flight: false,
        })
    }

    /// Device address of the descriptor ring (TDBAL/TDBAH).
    pub fn ring_address(&self) -> u64 {
        self.area.ring_device_address()
    }

    /// Ring length in bytes (TDLEN).
    pub fn ring_len(&self) -> u32 {
        (ENTRIES * DESC_LEN) as u32
    }

    /// Starts over after a device reset (which stopped all DMA): everything is free but
    /// descriptor 0, the TCP checksum context (see the module docs), which the device reads
    /// before the first frame. It never gets a write-back: it is reclaimed when the frame
    /// after it is (the device works in ring order).
    pub fn start(&mut self) {
        self.area.reclaim_all();
        for d in (0..ENTRIES * DESC_LEN).step_by(8) {
            self.area.ring_write64(d, 0);
        }
        let maclen_iplen =
            (checksum::ETH_HLEN as u32) << TXD_CTX_MACLEN_SHIFT | CONTEXT_IPLEN as u32;
        self.area.ring_write32(0, maclen_iplen);
        self.area.ring_write32(
            8,
            TXD_TUCMD_IPV4 | TXD_TUCMD_L4T_TCP | TXD_DTYP_CTXT | TXD_CMD_DEXT,
        );
        self.tail = 1;
        self.clean = 0;
        self.context_in_flight = true;
    }

    fn free(&self) -> usize {
        ENTRIES - 1 - (self.tail + ENTRIES - self.clean) % ENTRIES
    }

    /// Takes back every descriptor the device has written back (DD), oldest first.
    fn reclaim(&mut self) {
        while self.clean != self.tail {
            let context = self.context_in_flight && self.clean == 0;
            // The context's own status is its parameters: look at the frame after it.
            let done = if context { 1 } else { self.clean };
            if done == self.tail {
                break;
            }
            let status = self.area.ring_read32(done * DESC_LEN + 12);
            if status & TXD_STAT_DD == 0 {
                break;
            }
            if context {
                self.context_in_flight = false;
            } else {
                self.area.reclaim(self.clean);
            }
            self.clean = (self.clean + 1) % ENTRIES;
        }
    }

    /// Whether a frame can be queued (reclaiming finished descriptors if the ring is full).
    pub fn has_room(&mut self) -> bool {
        if self.free() == 0 {
            self.reclaim();
        }
        self.free() > 0
    }

    /// Free descriptors (at most a burst of this many frames fits).
    pub fn capacity(&self) -> usize {
        ENTRIES - 1
    }

    /// Lends `f` a buffer of `len` bytes and queues what it writes. Without room, or for a
    /// frame too long or empty, `f` fills a scratch buffer and the frame is dropped (counted
    /// in `stats.tx_dropped`).
    pub fn send<R>(
        &mut self,
        io: &mut impl RegisterIo,
        stats: &mut Stats,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        let slot = self.tail;
        let fits = (1..=MAX_FRAME).contains(&len) && self.has_room();
        let Some(buffer) = self.area.slot_mut(slot, len).filter(|_| fits) else {
            stats.tx_dropped += 1;
            let mut scratch = alloc::vec![0; len];
            return f(&mut scratch);
        };
        let result = f(buffer);
        let mut olinfo = (len as u32) << TXD_PAYLEN_SHIFT;
        if let Some(segment) = checksum::tcp_segment(buffer).filter(|s| s.ip_len == CONTEXT_IPLEN) {
            checksum::write_pseudo_header(buffer, &segment);
            olinfo |= TXD_OLINFO_CC | TXD_POPTS_TXSM;
        } else if let Some(segment) = checksum::tcp_segment(buffer) {
            // Not what the context describes: done here.
            checksum::fill_tcp(buffer, &segment);
        }
        if let Some(address) = self.area.lend(slot) {
            let d = slot * DESC_LEN;
            self.area.ring_write64(d, address);
            self.area.ring_write32(d + 8, CMD | len as u32);
            self.area.ring_write32(d + 12, olinfo);
            self.tail = (slot + 1) % ENTRIES;
            io.write32(tx_queue(0) + Q_TAIL, self.tail as u32);
            stats.tx_frames += 1;
        }
        result
    }
}
