//! DMA memory for drivers that run their own descriptor rings (ixgbevf), and bounded waits.
//!
//! The kernel implements two small traits:
//! - [`Dma`]: allocate and free physically contiguous, aligned memory (zeroed, or as it is
//!   for buffers the device writes first), giving both the CPU's and the device's address of
//!   it;
//! - [`Delay`]: wait a number of microseconds (bring-up polls only, never the data path).
//!
//! [`DmaArea`] owns one allocation and splits it into a descriptor ring, which is only ever
//! accessed with volatile reads and writes (the device writes it at any time), and equal packet
//! buffers ("slots"). Each slot is either the driver's or lent to the device; slices of a slot
//! are handed out only while it is the driver's, and lending one needs `&mut self`, so no
//! slice can outlive the moment the device gets the buffer.

use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{Ordering, fence};

/// One block of DMA memory: where the CPU reaches it and where the device does.
#[derive(Debug)]
pub struct DmaChunk {
    /// CPU (virtual) address of the first byte.
    pub cpu: NonNull<u8>,
    /// Device (bus, physical) address of the first byte.
    pub device: u64,
}

/// An allocator of memory that devices read and write (descriptor rings, packet buffers).
///
/// Instances are cheap handles (the kernel's is a unit struct): a driver clones one per
/// allocation it keeps, and frees each allocation through its own clone.
///
/// # Implementation safety
/// For every `Some(chunk)` that `alloc_zeroed(len, align)` or `alloc(len, align)` returns:
/// - `chunk.cpu .. chunk.cpu + len` is valid for reads and writes, zeroed (`alloc_zeroed`;
///   `alloc`'s bytes are whatever the memory held), aligned to `align`, and used by nothing
///   else (no other allocation, no Rust reference) until it is given to [`Dma::free`], or for
///   ever if it never is;
/// - the device reaches the same bytes at `chunk.device .. chunk.device + len`: physically
///   contiguous and coherent with the CPU's caches (as all x86 DMA is), so no flush or bounce
///   copy is needed between CPU and device accesses.
pub unsafe trait Dma: Clone {
    /// `len` bytes (nonzero) of zeroed, physically contiguous memory aligned to `align` (a power
    /// of two, at most 4096); `None` when there is none.
    fn alloc_zeroed(&mut self, len: usize, align: usize) -> Option<DmaChunk>;

    /// Like [`Dma::alloc_zeroed`] without the clearing: for memory the device writes before
    /// anyone reads it (receive buffers). Clearing costs ~0.4 µs per 8 bytes where guest
    /// code is emulated; allocators that clear anyway need not override this.
    fn alloc(&mut self, len: usize, align: usize) -> Option<DmaChunk> {
        self.alloc_zeroed(len, align)
    }

    /// Gives back memory that [`Dma::alloc_zeroed`] or [`Dma::alloc`] returned.
    ///
    /// # Safety
    /// `chunk` came from `alloc_zeroed(len, align)` or `alloc(len, align)` of this allocator or
    /// a clone of it, with the same `len` and `align`; it is freed once; and neither the CPU
    /// nor the device uses it any more (the device was reset or is gone).
    unsafe fn free(&mut self, chunk: DmaChunk, len: usize, align: usize);
}

/// Waits for bring-up polls (reset, mailbox): a timer, a calibrated spin, or nothing at all
/// for a device model that answers at once.
pub trait Delay {
    /// Waits at least `us` microseconds.
    fn delay_us(&mut self, us: u32);
}

impl<F: FnMut(u32)> Delay for F {
    fn delay_us(&mut self, us: u32) {
        self(us)
    }
}

/// One DMA allocation: a descriptor ring followed by `slots` packet buffers of `slot_len`
/// bytes each (see the module doc). Freed on drop: its owner must have stopped the device
/// (reset it, or seen it removed) before dropping it.
pub struct DmaArea<D: Dma> {
    dma: D,
    chunk: Option<DmaChunk>,
    len: usize,
    ring_len: usize,
    slot_len: usize,
    /// Whether each slot is lent to the device.
    at_device: Vec<bool>,
}

/// Alignment of every area: rings want 128 bytes, Linux gives them a page.
const AREA_ALIGN: usize = 4096;

impl<D: Dma> DmaArea<D> {
    /// Allocates a ring of `ring_len` bytes and `slots` buffers of `slot_len` bytes. The ring
    /// is padded to a multiple of `slot_len`, so with a power-of-two `slot_len` every buffer is
    /// aligned to it. `None` when sizes overflow or the allocator has no memory.
    pub fn new(dma: D, ring_len: usize, slots: usize, slot_len: usize) -> Option<DmaArea<D>> {
        Self::allocate(dma, ring_len, slots, slot_len, false)
    }

    /// Like [`DmaArea::new`] with only the ring cleared: for receive buffers, which the
    /// device writes before the driver reads them (it reads only the length the device
    /// reported). Saves clearing 64 KiB per 32 × 2 KiB ring (~3 ms of emulated guest code).
    pub fn for_receive(
        dma: D,
        ring_len: usize,
        slots: usize,
        slot_len: usize,
    ) -> Option<DmaArea<D>> {
        Self::allocate(dma, ring_len, slots, slot_len, true)
    }

    fn allocate(
        mut dma: D,
        ring_len: usize,
        slots: usize,
        slot_len: usize,
        device_writes_first: bool,
    ) -> Option<DmaArea<D>> {
        if slot_len == 0 {
            return None;
        }
        let ring_len_padded = ring_len.checked_next_multiple_of(slot_len)?;
        let len = slots
            .checked_mul(slot_len)?
            .checked_add(ring_len_padded)?
            .max(1);
        let chunk = if device_writes_first {
            let chunk = dma.alloc(len, AREA_ALIGN)?;
            // SAFETY: the `Dma` contract makes `len` bytes from `chunk.cpu` valid for writes,
            // and `ring_len <= len`; nothing else references the fresh block yet.
            unsafe { chunk.cpu.as_ptr().write_bytes(0, ring_len.min(len)) };
            chunk
        } else {
            dma.alloc_zeroed(len, AREA_ALIGN)?
        };
        Some(DmaArea {
            dma,
            chunk: Some(chunk),
            len,
            ring_len,
            slot_len,
            at_device: alloc::vec![false; slots],
        })
    }

    fn base(&self) -> Option<(NonNull<u8>, u64)> {
        self.chunk.as_ref().map(|c| (c.cpu, c.device))
    }

    /// Device address of the ring (the area's first byte).
    pub fn ring_device_address(&self) -> u64 {
        self.base().map_or(0, |(_, device)| device)
    }

    /// The ring location of a `T` at `offset`, if it lies inside the ring and is aligned.
    fn ring_ptr<T>(&self, offset: usize) -> Option<*mut T> {
        let end = offset.checked_add(size_of::<T>())?;
        if end > self.ring_len || !offset.is_multiple_of(size_of::<T>()) {
            return None;
        }
        let (cpu, _) = self.base()?;
        Some(cpu.as_ptr().wrapping_add(offset).cast::<T>())
    }

    /// Reads the ring dword at `offset` (0 outside the ring).
    pub fn ring_read32(&self, offset: usize) -> u32 {
        match self.ring_ptr::<u32>(offset) {
            // SAFETY: the dword lies inside the allocation (checked by `ring_ptr`), which the
            // `Dma` contract makes valid memory aligned to AREA_ALIGN, so the pointer is
            // aligned; the ring is never referenced, only accessed volatile, because the
            // device writes it concurrently.
            Some(p) => unsafe { p.read_volatile() },
            None => 0,
        }
    }

    /// Writes the ring dword at `offset` (dropped outside the ring).
    pub fn ring_write32(&mut self, offset: usize, value: u32) {
        if let Some(p) = self.ring_ptr::<u32>(offset) {
            // SAFETY: as in `ring_read32`.
            unsafe { p.write_volatile(value) }
        }
    }

    /// Writes the ring qword at `offset` (dropped outside the ring).
    pub fn ring_write64(&mut self, offset: usize, value: u64) {
        if let Some(p) = self.ring_ptr::<u64>(offset) {
            // SAFETY: as in `ring_read32`.
            unsafe { p.write_volatile(value) }
        }
    }

    /// Number of packet buffers.
    pub fn slots(&self) -> usize {
        self.at_device.len()
    }

    fn slot_offset(&self, slot: usize) -> Option<usize> {
        let ring = self.ring_len.checked_next_multiple_of(self.slot_len)?;
        (slot < self.at_device.len()).then(|| ring + slot * self.slot_len)
    }

    /// Lends slot `slot` to the device and returns its device address; `None` for a slot
    /// that does not exist. Everything the CPU wrote to it before is visible to the device
    /// once the caller publishes the address (descriptor, then tail register).
    pub fn lend(&mut self, slot: usize) -> Option<u64> {
        let offset = self.slot_offset(slot)?;
        let (_, device) = self.base()?;
        self.at_device[slot] = true;
        // The buffer's contents must be written before the descriptor and the tail register
        // that hand it over (x86 keeps stores in order; this keeps the compiler from moving
        // them).
        fence(Ordering::Release);
        Some(device + offset as u64)
    }

    /// Takes slot `slot` back from the device (after it reported the buffer done). Reads of
    /// the buffer that follow see what the device wrote.
    pub fn reclaim(&mut self, slot: usize) {
        if let Some(s) = self.at_device.get_mut(slot) {
            *s = false;
        }
        fence(Ordering::Acquire);
    }

    /// Takes every slot back (after a device reset, which stops all DMA).
    pub fn reclaim_all(&mut self) {
        self.at_device.iter_mut().for_each(|s| *s = false);
        fence(Ordering::Acquire);
    }

    /// The first `len` bytes of slot `slot`, if it exists, is the driver's and is that long.
    pub fn slot(&self, slot: usize, len: usize) -> Option<&[u8]> {
        let offset = self.slot_offset(slot)?;
        if len > self.slot_len || *self.at_device.get(slot)? {
            return None;
        }
        let (cpu, _) = self.base()?;
        // SAFETY: the bytes lie inside the allocation (slot exists, len within the slot), which
        // the `Dma` contract makes valid and exclusively ours; the slot is not lent to the
        // device, and lending it again needs `&mut self`, so nothing writes it while this
        // shared borrow lives.
        Some(unsafe { core::slice::from_raw_parts(cpu.as_ptr().add(offset), len) })
    }

    /// The first `len` bytes of slot `slot` for writing, under the same conditions as
    /// [`DmaArea::slot`].
    pub fn slot_mut(&mut self, slot: usize, len: usize) -> Option<&mut [u8]> {
        let offset = self.slot_offset(slot)?;
        if len > self.slot_len || *self.at_device.get(slot)? {
            return None;
        }
        let (cpu, _) = self.base()?;
        // SAFETY: as in `slot`; `&mut self` makes this the only reference to the slot.
        Some(unsafe { core::slice::from_raw_parts_mut(cpu.as_ptr().add(offset), len) })
    }
}

impl<D: Dma> Drop for DmaArea<D> {
    fn drop(&mut self) {
        if let Some(chunk) = self.chunk.take() {
            // SAFETY: the chunk came from `alloc_zeroed(self.len, AREA_ALIGN)` of this
            // allocator and is freed once (taken out of the option). No slice of it is live
            // (they borrow `self`), and the owner stopped the device before dropping the area
            // (the type's documented contract; `Ixgbevf`'s `Drop` resets the VF first).
            unsafe { self.dma.free(chunk, self.len, AREA_ALIGN) };
        }
    }
}

impl<D: Dma> core::fmt::Debug for DmaArea<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaArea")
            .field("device", &self.ring_device_address())
            .field("len", &self.len)
            .field("slots", &self.slots())
            .finish()
    }
}

// SAFETY: the area is memory this value owns exclusively (the `Dma` contract); nothing ties
// it to a CPU or thread, and the allocator handle moves along with it.
unsafe impl<D: Dma + Send> Send for DmaArea<D> {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::rc::Rc;
    use core::alloc::Layout;
    use core::cell::RefCell;

    /// A heap-backed allocator (device address = CPU address) that records what is live.
    #[derive(Clone, Default)]
    pub(crate) struct HeapDma {
        live: Rc<RefCell<Vec<(usize, usize)>>>,
    }

    impl HeapDma {
        pub(crate) fn live(&self) -> usize {
            self.live.borrow().len()
        }
    }

    // SAFETY: memory comes from the global allocator, zeroed, with the requested layout, and
    // is freed with the same layout; the device address is the CPU address (no device here).
    unsafe impl Dma for HeapDma {
        fn alloc_zeroed(&mut self, len: usize, align: usize) -> Option<DmaChunk> {
            let layout = Layout::from_size_align(len, align).ok()?;
            // SAFETY: `len` is nonzero (callers' contract, and DmaArea makes it at least 1).
            let cpu = NonNull::new(unsafe { alloc::alloc::alloc_zeroed(layout) })?;
            self.live.borrow_mut().push((cpu.as_ptr() as usize, len));
            Some(DmaChunk {
                device: cpu.as_ptr() as u64,
                cpu,
            })
        }

        unsafe fn free(&mut self, chunk: DmaChunk, len: usize, align: usize) {
            let addr = chunk.cpu.as_ptr() as usize;
            self.live.borrow_mut().retain(|&(a, _)| a != addr);
            let layout = Layout::from_size_align(len, align).unwrap();
            // SAFETY: the caller passes back a chunk from `alloc_zeroed` with this layout.
            unsafe { alloc::alloc::dealloc(chunk.cpu.as_ptr(), layout) };
        }
    }

    #[test]
    fn layout_lending_and_freeing() {
        let dma = HeapDma::default();
        let mut area = DmaArea::new(dma.clone(), 512, 4, 2048).unwrap();
        assert_eq!(dma.live(), 1);
        let base = area.ring_device_address();
        assert_eq!(base % 4096, 0);
        // Buffers start after the ring, padded to a slot.
        assert_eq!(area.lend(0), Some(base + 2048));
        assert_eq!(area.lend(3), Some(base + 2048 + 3 * 2048));
        assert_eq!(area.lend(4), None);
        // Lent slots are not handed out; the driver's are.
        assert!(area.slot(0, 10).is_none());
        assert!(area.slot_mut(3, 10).is_none());
        area.slot_mut(1, 4).unwrap().copy_from_slice(b"roam");
        assert_eq!(area.slot(1, 4).unwrap(), b"roam");
        assert!(area.slot(1, 2049).is_none());
        area.reclaim(0);
        assert_eq!(area.slot(0, 2048).unwrap().len(), 2048);
        area.reclaim_all();
        assert!(area.slot(3, 1).is_some());
        drop(area);
        assert_eq!(dma.live(), 0);
    }

    #[test]
    fn ring_accesses_stay_inside_the_ring() {
        let mut area = DmaArea::new(HeapDma::default(), 32, 1, 64).unwrap();
        area.ring_write64(8, 0x1122_3344_5566_7788);
        area.ring_write32(28, 7);
        assert_eq!(area.ring_read32(8), 0x5566_7788);
        assert_eq!(area.ring_read32(12), 0x1122_3344);
        assert_eq!(area.ring_read32(28), 7);
        // Past the ring (into the buffers), misaligned: ignored, reads 0.
        area.ring_write32(32, 1);
        area.ring_write64(28, 1);
        area.ring_write32(2, 1);
        assert_eq!(area.ring_read32(32), 0);
        assert_eq!(area.ring_read32(2), 0);
        assert!(area.slot(0, 64).unwrap().iter().all(|b| *b == 0));
        assert_eq!(area.ring_read32(usize::MAX - 1), 0);
    }

    #[test]
    fn impossible_sizes_allocate_nothing() {
        let dma = HeapDma::default();
        assert!(DmaArea::new(dma.clone(), 512, usize::MAX, 2048).is_none());
        assert!(DmaArea::new(dma.clone(), 512, 1, 0).is_none());
        assert_eq!(dma.live(), 0);
    }

    /// An allocator whose `alloc` hands out memory full of stale bytes (0xA5), as reused
    /// heap memory may be.
    #[derive(Clone, Default)]
    struct StaleDma(HeapDma);

    // SAFETY: as HeapDma's; `alloc` only fills the block it got before handing it out.
    unsafe impl Dma for StaleDma {
        fn alloc_zeroed(&mut self, len: usize, align: usize) -> Option<DmaChunk> {
            self.0.alloc_zeroed(len, align)
        }

        fn alloc(&mut self, len: usize, align: usize) -> Option<DmaChunk> {
            let chunk = self.0.alloc_zeroed(len, align)?;
            // SAFETY: `len` bytes of the fresh block are ours to write.
            unsafe { chunk.cpu.as_ptr().write_bytes(0xA5, len) };
            Some(chunk)
        }

        unsafe fn free(&mut self, chunk: DmaChunk, len: usize, align: usize) {
            // SAFETY: forwarded unchanged from our caller.
            unsafe { self.0.free(chunk, len, align) }
        }
    }

    #[test]
    fn a_receive_area_clears_its_ring_and_leaves_the_buffers_to_the_device() {
        let area = DmaArea::for_receive(StaleDma::default(), 512, 4, 2048).unwrap();
        for offset in (0..512).step_by(4) {
            assert_eq!(area.ring_read32(offset), 0, "ring dword at {offset}");
        }
        assert_eq!(area.slot(3, 4), Some(&[0xA5; 4][..]), "not cleared");
        let area = DmaArea::new(StaleDma::default(), 512, 4, 2048).unwrap();
        assert_eq!(
            area.slot(3, 4),
            Some(&[0; 4][..]),
            "a transmit area is cleared"
        );
    }
}
