//! The virtio devices' edge with virtio-drivers: the receive and transmit buffers lent to
//! virtio-net's `VirtIONetRaw` queues, and [`RootAccess`], our configuration access as
//! virtio-drivers' PCI code wants it (its trait has an `unsafe` method, hence here).
//!
//! [`NetQueues`] owns the device driver and two slabs of DMA memory, one slot per queue
//! entry. A receive slot is either posted to the device, or lent to the stack between one
//! `receive` and the next call into the queues (which posts it again: the borrow checker
//! guarantees the stack's frame reference has ended by then). A transmit slot is either free
//! or in flight until the device hands its token back. Tokens and lengths the device reports
//! are checked against this bookkeeping before any buffer is touched; a device that returns
//! a token it was never given is declared broken and no longer used.
//!
//! Checksum offloads ([`Offloads`], when the device agreed to `CSUM` / `GUEST_CSUM`): a TCP
//! segment goes out with the pseudo-header sum in its checksum field and `NEEDS_CSUM`,
//! `csum_start` and `csum_offset` in its header, for the device to finish. A received frame
//! whose header says `DATA_VALID` or `NEEDS_CSUM` (the host's own stack sent it with the
//! checksum left to the NIC) is vouched for if it is TCP; any other frame marked
//! `NEEDS_CSUM` has its checksum completed here, in software, so the stack can check it as
//! usual. A `csum_start`/`csum_offset` outside the frame drops it (counted in `rx_errors`).
//!
//! Receive buffers go back to the device in batches ([`RX_BATCH`] of them, or fewer when the
//! used ring runs dry, i.e. at the end of a burst), with at most one kick a batch
//! ([`RxKick`]); the transport holds virtio-drivers' per-buffer kicks meanwhile.

use super::VirtioHal;
use crate::hal::{Mmio, RegisterIo};
use crate::net::{Stats, checksum};
use crate::pci::bar::{BAR_COUNT, BAR0, Bar};
use crate::pci::{Bdf, ConfigAccess};
use crate::virtio_net::transport::{HeldKicks, RECEIVE_QUEUE, RoamTransport};
use alloc::sync::Arc;
use core::marker::PhantomData;
use core::ptr::NonNull;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};
use virtio_drivers::{BufferDirection, Error as VirtioError, PAGE_SIZE, PhysAddr};

/// Entries per virtqueue, and buffers per direction.
pub const QUEUE_SIZE: usize = 32;
/// Bytes per buffer: the 12-byte virtio-net header plus a 1514-byte frame fit in 2 KiB.
pub const BUFFER_LEN: usize = 2048;
const SLAB_PAGES: usize = QUEUE_SIZE * BUFFER_LEN / PAGE_SIZE;
/// "No slot" in the token tables.
const NO_SLOT: u16 = u16::MAX;
/// Receive buffers returned before they are posted again together: a quarter of the ring, so
/// the device never has fewer than three quarters to fill.
pub const RX_BATCH: usize = QUEUE_SIZE / 4;

/// virtio-drivers' view of our configuration access (virtio-net and virtio-console probe
/// through its `PciRoot`), with the probed function's BARs answered from the sizes read once
/// (`bars`): `PciTransport::new` sizes the BAR of each virtio structure again (four times
/// BAR 4, each with decoding off), and here those writes stay in this value (a pending
/// all-ones write makes the register read back its size mask) instead of reaching the device.
#[derive(Clone, Debug)]
pub(crate) struct RootAccess<C> {
    access: C,
    bdf: Bdf,
    bars: [Option<Bar>; BAR_COUNT as usize],
    /// The BAR register last written with all ones (sizing), until written again.
    sizing: Option<u8>,
}

impl<C> RootAccess<C> {
    /// `access` for virtio-drivers, with function `bdf`'s BARs known to be `bars`.
    pub(crate) fn new(access: C, bdf: Bdf, bars: [Option<Bar>; BAR_COUNT as usize]) -> Self {
        RootAccess {
            access,
            bdf,
            bars,
            sizing: None,
        }
    }

    /// BAR register `reg` (0x10..0x28) as the device would answer: its value, or the size
    /// mask while it is being sized.
    fn bar_register(&self, reg: u8) -> u32 {
        let index = usize::from((reg - BAR0) / 4);
        let sizing = self.sizing == Some(reg);
        // The upper half of a 64-bit memory BAR.
        if let Some(Some(Bar::Memory {
            address,
            size,
            is_64: true,
            ..
        })) = index.checked_sub(1).map(|i| self.bars[i])
        {
            let value = if sizing {
                !size.wrapping_sub(1)
            } else {
                address
            };
            return (value >> 32) as u32;
        }
        match self.bars[index] {
            Some(Bar::Memory {
                address,
                size,
                is_64,
                prefetchable,
            }) => {
                let flags = if is_64 { 0b100 } else { 0 } | if prefetchable { 0b1000 } else { 0 };
                let value = if sizing {
                    !size.wrapping_sub(1)
                } else {
                    address
                };
                (value as u32 & !0xF) | flags
            }
            Some(Bar::Io { port, size }) => {
                (if sizing { !size.wrapping_sub(1) } else { port } & !0b11) | 1
            }
            None => 0,
        }
    }
}

/// Whether `reg` is a BAR register of a type-0 header.
fn is_bar_register(reg: u8) -> bool {
    (BAR0..BAR0 + 4 * BAR_COUNT).contains(&reg)
}

impl<C: ConfigAccess + Clone> ConfigurationAccess for RootAccess<C> {
    fn read_word(&self, df: DeviceFunction, register_offset: u8) -> u32 {
        match Bdf::new(df.bus, df.device, df.function) {
            Some(bdf) if bdf == self.bdf && is_bar_register(register_offset & !3) => {
                self.bar_register(register_offset & !3)
            }
            Some(bdf) => self.access.read32(bdf, register_offset),
            None => u32::MAX,
        }
    }

    fn write_word(&mut self, df: DeviceFunction, register_offset: u8, data: u32) {
        match Bdf::new(df.bus, df.device, df.function) {
            Some(bdf) if bdf == self.bdf && is_bar_register(register_offset & !3) => {
                // Sizing writes all ones, then the value it read: neither changes the BAR.
                self.sizing = (data == u32::MAX).then_some(register_offset & !3);
            }
            Some(bdf) => self.access.write32(bdf, register_offset, data),
            None => {}
        }
    }

    /// # Safety
    /// None needed beyond the trait's: configuration access is stateless port I/O, so a
    /// clone is as good as the original.
    unsafe fn unsafe_clone(&self) -> Self {
        self.clone()
    }
}

/// The device driver with our queue size and transport.
pub(crate) type Raw<H> = VirtIONetRaw<H, RoamTransport, QUEUE_SIZE>;

/// Page-aligned DMA memory from the HAL, freed on drop.
struct DmaSlab<H: VirtioHal> {
    paddr: PhysAddr,
    vaddr: NonNull<u8>,
    _hal: PhantomData<H>,
}

impl<H: VirtioHal> DmaSlab<H> {
    /// Receive buffers are not cleared: the device writes a frame before the driver reads
    /// the length it reported, and nothing beyond it is read. Transmit buffers are, so no
    /// stale heap byte can ever reach the wire.
    fn new(direction: BufferDirection) -> Option<DmaSlab<H>> {
        let (paddr, vaddr) = match direction {
            BufferDirection::DeviceToDriver => H::dma_alloc_uncleared(SLAB_PAGES, direction),
            _ => H::dma_alloc(SLAB_PAGES, direction),
        };
        (paddr != 0).then_some(DmaSlab {
            paddr,
            vaddr,
            _hal: PhantomData,
        })
    }

    /// Slot `slot` (below [`QUEUE_SIZE`]) as a mutable slice.
    ///
    /// # Safety
    /// The slot must not be lent to the device, and no other reference to it may be live.
    unsafe fn slot_mut(&mut self, slot: u16) -> &mut [u8] {
        debug_assert!(usize::from(slot) < QUEUE_SIZE);
        let start = usize::from(slot) % QUEUE_SIZE * BUFFER_LEN;
        // SAFETY: `start + BUFFER_LEN` lies inside the slab (slot < QUEUE_SIZE, enforced by the
        // modulo); `dma_alloc` gave us valid, exclusive memory; the caller guarantees the
        // device is not using the slot and nothing else references it.
        unsafe { core::slice::from_raw_parts_mut(self.vaddr.as_ptr().add(start), BUFFER_LEN) }
    }

    /// Bytes `range` of slot `slot`.
    ///
    /// # Safety
    /// The slot must not be lent to the device and not be mutably referenced.
    unsafe fn slot(&self, slot: u16, start: usize, len: usize) -> &[u8] {
        let base = usize::from(slot) % QUEUE_SIZE * BUFFER_LEN;
        let start = start.min(BUFFER_LEN);
        let len = len.min(BUFFER_LEN - start);
        // SAFETY: the range lies inside the slot (clamped above), the slot inside the slab;
        // the caller guarantees nothing writes it meanwhile.
        unsafe { core::slice::from_raw_parts(self.vaddr.as_ptr().add(base + start), len) }
    }
}

// SAFETY: the slab is memory this value owns exclusively; nothing ties it to a CPU or thread.
unsafe impl<H: VirtioHal> Send for DmaSlab<H> {}

impl<H: VirtioHal> Drop for DmaSlab<H> {
    fn drop(&mut self) {
        // SAFETY: paddr and vaddr came from `dma_alloc` with SLAB_PAGES pages and are freed
        // once, here.
        unsafe { H::dma_dealloc(self.paddr, self.vaddr, SLAB_PAGES) };
    }
}

/// Receive buffers: which slot each posted token uses, the slot lent to the stack, and
/// the slots waiting to be posted again.
struct RxRing<H: VirtioHal> {
    slab: DmaSlab<H>,
    slot_of: [u16; QUEUE_SIZE],
    lent: Option<u16>,
    returned: [u16; QUEUE_SIZE],
    returned_len: usize,
}

/// The receive queue's notify register, written once per batch of posted buffers while the
/// transport holds the per-buffer kicks.
pub(crate) struct RxKick {
    /// A view of the notify region.
    pub io: Mmio,
    /// The receive queue's register in it.
    pub offset: usize,
    /// Written as 32 bits (virtio-mmio's `QueueNotify`), else 16 (PCI's notify region).
    pub wide: bool,
    /// The transport's switch for the receive queue's kicks.
    pub held: Arc<HeldKicks>,
}

/// Transmit buffers: free slots, and the slot and length of each token in flight.
struct TxRing<H: VirtioHal> {
    slab: DmaSlab<H>,
    slot_of: [u16; QUEUE_SIZE],
    len_of: [u16; QUEUE_SIZE],
    free: [u16; QUEUE_SIZE],
    free_len: usize,
}

/// `virtio_net_hdr.flags`: the checksum from `csum_start` on is left to the other side.
const HDR_F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.flags`: the device checked the checksums.
const HDR_F_DATA_VALID: u8 = 2;
/// Offsets of `csum_start` and `csum_offset` in `virtio_net_hdr` (both layouts).
const HDR_CSUM_START: usize = 6;
const HDR_CSUM_OFFSET: usize = 8;

/// The checksum offloads agreed with the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    /// `CSUM`: the device completes TCP checksums we leave partial.
    pub tx: bool,
    /// `GUEST_CSUM`: the device may mark frames checked (`DATA_VALID`) or partial.
    pub rx: bool,
}

impl Offloads {
    /// The offloads in the negotiated feature bits.
    pub fn from_features(features: u64) -> Offloads {
        Offloads {
            tx: features & crate::virtio_net::F_CSUM != 0,
            rx: features & crate::virtio_net::F_GUEST_CSUM != 0,
        }
    }
}

/// What a received frame's header says about its checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxChecksum {
    /// Nothing: the stack checks as usual.
    Unknown,
    /// Checksums the device vouches for (`DATA_VALID`, or a TCP one left partial).
    Vouched,
    /// Impossible offsets: the frame is dropped.
    Bad,
}

/// Reads a received header (`frame` follows it in `buffer`) and completes a partial
/// checksum the stack would otherwise reject.
fn rx_checksum(buffer: &mut [u8], header: usize, len: usize) -> RxChecksum {
    let flags = buffer.first().copied().unwrap_or(0);
    if flags & HDR_F_NEEDS_CSUM == 0 {
        // DATA_VALID vouches for every checksum; the stack relies on it for TCP only.
        return match flags & HDR_F_DATA_VALID {
            0 => RxChecksum::Unknown,
            _ => RxChecksum::Vouched,
        };
    }
    let Some(frame) = buffer.get_mut(header..header + len) else {
        return RxChecksum::Bad;
    };
    if checksum::tcp_segment(frame).is_some() {
        return RxChecksum::Vouched;
    }
    let field = |at: usize| usize::from(u16::from_le_bytes([buffer[at], buffer[at + 1]]));
    let (start, offset) = (field(HDR_CSUM_START), field(HDR_CSUM_OFFSET));
    match checksum::complete_partial(&mut buffer[header..header + len], start, offset) {
        true => RxChecksum::Unknown,
        false => RxChecksum::Bad,
    }
}

/// Why the queues stopped working.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// No DMA memory for the buffers.
    NoMemory,
    /// The driver refused a buffer (a bug, or a queue smaller than expected).
    Driver(VirtioError),
    /// The device returned a descriptor it was not given.
    UnknownToken(u16),
}

impl core::fmt::Display for QueueError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            QueueError::NoMemory => write!(f, "no DMA memory for the packet buffers"),
            QueueError::Driver(e) => write!(f, "virtqueue error: {e}"),
            QueueError::UnknownToken(t) => write!(f, "the device returned unknown descriptor {t}"),
        }
    }
}

/// The virtio-net driver and the buffers lent to it.
pub(crate) struct NetQueues<H: VirtioHal> {
    // Declared first, so dropped first: dropping the transport (virtio-drivers'
    // `PciTransport`) resets the device, which then stops using the slabs below before they
    // are freed.
    raw: Raw<H>,
    rx: RxRing<H>,
    tx: TxRing<H>,
    rx_kick: RxKick,
    offloads: Offloads,
    stats: Stats,
    broken: Option<QueueError>,
}

impl<H: VirtioHal> NetQueues<H> {
    /// Takes over the driver, allocates the buffers and posts every receive buffer (one
    /// kick, through `rx_kick`).
    pub fn new(
        raw: Raw<H>,
        rx_kick: RxKick,
        offloads: Offloads,
    ) -> Result<NetQueues<H>, QueueError> {
        let rx = DmaSlab::new(BufferDirection::DeviceToDriver).ok_or(QueueError::NoMemory)?;
        let tx = DmaSlab::new(BufferDirection::DriverToDevice).ok_or(QueueError::NoMemory)?;
        let mut free = [0; QUEUE_SIZE];
        for (i, f) in free.iter_mut().enumerate() {
            *f = i as u16;
        }
        let mut queues = NetQueues {
            raw,
            rx: RxRing {
                slab: rx,
                slot_of: [NO_SLOT; QUEUE_SIZE],
                lent: None,
                returned: free,
                returned_len: QUEUE_SIZE,
            },
            tx: TxRing {
                slab: tx,
                slot_of: [NO_SLOT; QUEUE_SIZE],
                len_of: [0; QUEUE_SIZE],
                free,
                free_len: QUEUE_SIZE,
            },
            rx_kick,
            offloads,
            stats: Stats::default(),
            broken: None,
        };
        queues.post_returned();
        match queues.broken {
            Some(e) => Err(e),
            None => Ok(queues),
        }
    }

    /// The driver (for MAC address and interrupt acknowledgement).
    pub fn raw(&mut self) -> &mut Raw<H> {
        &mut self.raw
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The checksum offloads agreed with the device.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    fn fail(&mut self, error: QueueError) {
        if self.broken.is_none() {
            log::error!("virtio-net: {error}; the device is no longer used");
            self.broken = Some(error);
        }
    }

    /// Posts receive slot `slot` (not posted, not lent) to the device.
    fn post_rx(&mut self, slot: u16) {
        // SAFETY: the caller hands over a slot that is neither posted nor lent, so nothing
        // references it.
        let buffer = unsafe { self.rx.slab.slot_mut(slot) };
        // SAFETY: the slab outlives the device's use of it (`raw` is reset before the slabs
        // are freed, see the field order), and the slot is not touched again until
        // `receive_complete` returns it under the token recorded here.
        match unsafe { self.raw.receive_begin(buffer) } {
            Ok(token) => match self.rx.slot_of.get_mut(usize::from(token)) {
                Some(entry) => *entry = slot,
                None => self.fail(QueueError::UnknownToken(token)),
            },
            Err(e) => self.fail(QueueError::Driver(e)),
        }
    }

    /// Queues receive slot `slot` (not posted, not lent) to be posted with the next batch.
    fn return_rx(&mut self, slot: u16) {
        if let Some(entry) = self.rx.returned.get_mut(self.rx.returned_len) {
            *entry = slot;
            self.rx.returned_len += 1;
        }
    }

    /// Posts every returned slot, with at most one kick.
    fn post_returned(&mut self) {
        if self.rx.returned_len == 0 {
            return;
        }
        self.rx_kick.held.hold();
        for i in 0..core::mem::take(&mut self.rx.returned_len) {
            self.post_rx(self.rx.returned[i]);
        }
        if self.rx_kick.held.release() {
            let kick = &mut self.rx_kick;
            if kick.wide {
                kick.io.write32(kick.offset, u32::from(RECEIVE_QUEUE));
            } else {
                kick.io.write16(kick.offset, RECEIVE_QUEUE);
            }
        }
    }

    /// Returns the slot the previous `receive` lent out, if any; posts the returned slots
    /// once a batch is full.
    fn return_lent(&mut self) {
        if let Some(slot) = self.rx.lent.take() {
            self.return_rx(slot);
        }
        if self.rx.returned_len >= RX_BATCH {
            self.post_returned();
        }
    }

    /// The next received frame and a transmit queue to answer it with. Frames with
    /// impossible lengths are dropped (and counted) on the way. When none is left, the
    /// returned buffers go back to the device.
    /// The flag says whether the device vouched for the frame's TCP checksum.
    pub fn receive(&mut self) -> Option<(&[u8], bool, TxQueue<'_, H>)> {
        self.return_lent();
        let Some((slot, start, len, vouched)) = self.next_rx() else {
            self.post_returned();
            return None;
        };
        self.rx.lent = Some(slot);
        self.stats.rx_frames += 1;
        // SAFETY: the slot came back from the device (`receive_complete` succeeded) and is
        // only posted again by `repost_lent`, which needs `&mut self`, so not while this
        // shared borrow lives.
        let frame = unsafe { self.rx.slab.slot(slot, start, len) };
        Some((
            frame,
            vouched,
            TxQueue {
                raw: &mut self.raw,
                tx: &mut self.tx,
                stats: &mut self.stats,
                offload: self.offloads.tx,
            },
        ))
    }

    /// Pops used receive buffers until one holds a valid frame: (slot, start, length,
    /// vouched for).
    fn next_rx(&mut self) -> Option<(u16, usize, usize, bool)> {
        if self.broken.is_some() {
            return None;
        }
        for _ in 0..QUEUE_SIZE {
            let token = self.raw.poll_receive()?;
            let slot = match self.rx.slot_of.get_mut(usize::from(token)) {
                Some(entry) if *entry != NO_SLOT => core::mem::replace(entry, NO_SLOT),
                _ => {
                    self.fail(QueueError::UnknownToken(token));
                    return None;
                }
            };
            // SAFETY: the device is done with the slot (its token is at the head of the used
            // ring) and nothing else references it.
            let buffer = unsafe { self.rx.slab.slot_mut(slot) };
            // SAFETY: `buffer` is the very slice posted under `token` (slot_of recorded it).
            match unsafe { self.raw.receive_complete(token, buffer) } {
                Ok((header, len))
                    if header.checked_add(len).is_some_and(|end| end <= BUFFER_LEN) =>
                {
                    let status = if self.offloads.rx {
                        rx_checksum(buffer, header, len)
                    } else {
                        RxChecksum::Unknown
                    };
                    if status != RxChecksum::Bad {
                        return Some((slot, header, len, status == RxChecksum::Vouched));
                    }
                    self.stats.rx_errors += 1;
                    self.return_rx(slot);
                }
                // The buffer came back, with a length shorter than the header or longer than
                // the buffer: drop the frame, post the buffer again.
                Ok(_) | Err(VirtioError::IoError) => {
                    self.stats.rx_errors += 1;
                    self.return_rx(slot);
                }
                Err(e) => {
                    self.fail(QueueError::Driver(e));
                    return None;
                }
            }
        }
        None
    }

    /// A transmit queue, if a buffer is free (after taking back the ones the device has
    /// sent).
    pub fn transmit(&mut self) -> Option<TxQueue<'_, H>> {
        self.return_lent();
        if self.broken.is_some() {
            return None;
        }
        let mut tx = TxQueue {
            raw: &mut self.raw,
            tx: &mut self.tx,
            stats: &mut self.stats,
            offload: self.offloads.tx,
        };
        if let Err(e) = tx.reclaim() {
            self.fail(e);
            return None;
        }
        (self.tx.free_len > 0).then_some(TxQueue {
            raw: &mut self.raw,
            tx: &mut self.tx,
            stats: &mut self.stats,
            offload: self.offloads.tx,
        })
    }
}

/// The transmit side, borrowed for one frame.
pub(crate) struct TxQueue<'a, H: VirtioHal> {
    raw: &'a mut Raw<H>,
    tx: &'a mut TxRing<H>,
    stats: &'a mut Stats,
    /// The device completes TCP checksums.
    offload: bool,
}

impl<H: VirtioHal> TxQueue<'_, H> {
    /// Whether the device completes a TCP segment's checksum (the caller leaves it).
    pub fn checksum_offload(&self) -> bool {
        self.offload
    }

    /// Takes back every buffer the device has finished sending.
    fn reclaim(&mut self) -> Result<(), QueueError> {
        for _ in 0..QUEUE_SIZE {
            let Some(token) = self.raw.poll_transmit() else {
                return Ok(());
            };
            let index = usize::from(token);
            let slot = match self.tx.slot_of.get_mut(index) {
                Some(entry) if *entry != NO_SLOT => core::mem::replace(entry, NO_SLOT),
                _ => return Err(QueueError::UnknownToken(token)),
            };
            let len = usize::from(self.tx.len_of[index]);
            // SAFETY: the device has finished with the slot (its token is at the head of the
            // used ring); we only read it to name the buffer.
            let buffer = unsafe { self.tx.slab.slot(slot, 0, len) };
            // SAFETY: `buffer` is the slice passed to `transmit_begin` under this token (same
            // slot and length, recorded when it was sent).
            unsafe { self.raw.transmit_complete(token, buffer) }.map_err(QueueError::Driver)?;
            if let Some(f) = self.tx.free.get_mut(self.tx.free_len) {
                *f = slot;
                self.tx.free_len += 1;
            }
        }
        Ok(())
    }

    /// Lends `f` a buffer of `len` bytes and sends what it writes. Without a free buffer, or
    /// for a frame longer than a buffer, `f` fills a scratch buffer and the frame is dropped.
    pub fn send<R>(mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        if self.tx.free_len == 0
            && let Err(e) = self.reclaim()
        {
            log::error!("virtio-net: {e}");
        }
        let Some(slot) = self.take_free() else {
            return self.drop_frame(len, f);
        };
        // SAFETY: a free slot is not in flight and nothing references it.
        let buffer = unsafe { self.tx.slab.slot_mut(slot) };
        let header = match self.raw.fill_buffer_header(buffer) {
            Ok(h) if h.checked_add(len).is_some_and(|end| end <= BUFFER_LEN) => h,
            _ => {
                self.give_back(slot);
                return self.drop_frame(len, f);
            }
        };
        let result = f(&mut buffer[header..header + len]);
        if self.offload
            && let Some(segment) = checksum::tcp_segment(&buffer[header..header + len])
        {
            checksum::write_pseudo_header(&mut buffer[header..header + len], &segment);
            buffer[0] = HDR_F_NEEDS_CSUM;
            // Both below 1514 (the frame fits a buffer).
            buffer[HDR_CSUM_START..HDR_CSUM_START + 2]
                .copy_from_slice(&(segment.start as u16).to_le_bytes());
            buffer[HDR_CSUM_OFFSET..HDR_CSUM_OFFSET + 2]
                .copy_from_slice(&(checksum::TCP_CSUM_OFFSET as u16).to_le_bytes());
        }
        let frame = &buffer[..header + len];
        // SAFETY: the slot stays out of the free list, untouched, until `reclaim` gets its
        // token back from the device; the slab outlives the device's use (NetQueues' field
        // order).
        match unsafe { self.raw.transmit_begin(frame) } {
            Ok(token) => {
                let index = usize::from(token);
                if let (Some(s), Some(l)) = (
                    self.tx.slot_of.get_mut(index),
                    self.tx.len_of.get_mut(index),
                ) {
                    *s = slot;
                    *l = (header + len) as u16;
                    self.stats.tx_frames += 1;
                } else {
                    log::error!("virtio-net: driver returned transmit token {token}");
                    self.stats.tx_dropped += 1;
                }
            }
            Err(_) => {
                self.give_back(slot);
                self.stats.tx_dropped += 1;
            }
        }
        result
    }

    fn take_free(&mut self) -> Option<u16> {
        self.tx.free_len = self.tx.free_len.checked_sub(1)?;
        Some(self.tx.free[self.tx.free_len])
    }

    fn give_back(&mut self, slot: u16) {
        if let Some(f) = self.tx.free.get_mut(self.tx.free_len) {
            *f = slot;
            self.tx.free_len += 1;
        }
    }

    fn drop_frame<R>(self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        self.stats.tx_dropped += 1;
        let mut scratch = alloc::vec![0; len];
        f(&mut scratch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: usize = 12;

    /// A buffer: a header with `flags`, `csum_start` and `csum_offset`, then a 60-byte
    /// IPv4 frame of protocol `proto` (TCP 6 has a segment the checksum code accepts).
    fn buffer(flags: u8, start: u16, offset: u16, proto: u8) -> alloc::vec::Vec<u8> {
        let mut b = alloc::vec![0u8; HEADER + 60];
        b[0] = flags;
        b[HDR_CSUM_START..HDR_CSUM_START + 2].copy_from_slice(&start.to_le_bytes());
        b[HDR_CSUM_OFFSET..HDR_CSUM_OFFSET + 2].copy_from_slice(&offset.to_le_bytes());
        let f = &mut b[HEADER..];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&46u16.to_be_bytes());
        f[23] = proto;
        f[46] = 5 << 4;
        b
    }

    #[test]
    fn the_devices_checksum_flags_are_read_and_checked() {
        let check = |b: &mut alloc::vec::Vec<u8>| rx_checksum(b, HEADER, 60);
        assert_eq!(check(&mut buffer(0, 0, 0, 6)), RxChecksum::Unknown);
        assert_eq!(
            check(&mut buffer(HDR_F_DATA_VALID, 0, 0, 17)),
            RxChecksum::Vouched
        );
        assert_eq!(
            check(&mut buffer(HDR_F_NEEDS_CSUM, 34, 16, 6)),
            RxChecksum::Vouched,
            "a partial TCP checksum from the host's own stack"
        );
        // Another protocol left partial is completed here, for the stack to check.
        let mut udp = buffer(HDR_F_NEEDS_CSUM, 34, 6, 17);
        udp[HEADER + 40..HEADER + 42].copy_from_slice(&0x1234u16.to_be_bytes());
        assert_eq!(check(&mut udp), RxChecksum::Unknown);
        assert_ne!(&udp[HEADER + 40..HEADER + 42], &[0x12, 0x34], "completed");
        // A field outside the frame drops it.
        assert_eq!(
            check(&mut buffer(HDR_F_NEEDS_CSUM, 34, 30, 17)),
            RxChecksum::Bad
        );
        assert_eq!(
            check(&mut buffer(HDR_F_NEEDS_CSUM, u16::MAX, u16::MAX, 17)),
            RxChecksum::Bad
        );
    }
}
