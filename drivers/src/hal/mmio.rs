//! Register access: the [`RegisterIo`] trait and its memory-mapped implementation [`Mmio`].
//!
//! Accesses outside a region, or not naturally aligned, behave like a PCI master abort:
//! reads return all ones and writes are dropped. Offsets come from device capabilities, which
//! are validated before a region is made, so this only guards against our own bugs without
//! turning them into wild memory accesses or panics.

use core::ptr::NonNull;

/// Register reads and writes at byte offsets inside one device region.
pub trait RegisterIo {
    /// Reads the 8-bit register at `offset`.
    fn read8(&self, offset: usize) -> u8;
    /// Reads the 16-bit register at `offset`.
    fn read16(&self, offset: usize) -> u16;
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 16-bit register at `offset`.
    fn write16(&mut self, offset: usize, value: u16);
    /// Writes the 32-bit register at `offset`.
    fn write32(&mut self, offset: usize, value: u32);
}

/// A mapped, uncached device register region.
#[derive(Debug)]
pub struct Mmio {
    base: NonNull<u8>,
    len: usize,
}

impl Mmio {
    /// Wraps the device registers at `base..base + len`.
    ///
    /// # Safety
    /// `base..base + len` must be device registers mapped uncached for as long as the
    /// returned value lives, with no Rust references into them (only volatile accesses).
    /// Other volatile accessors of the same registers may exist (virtio-drivers' transport
    /// uses the same BAR); the caller is responsible for not interleaving multi-register
    /// sequences with them.
    pub unsafe fn new(base: NonNull<u8>, len: usize) -> Mmio {
        Mmio { base, len }
    }

    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The register at `offset` as a pointer, if `size` bytes fit there and it is aligned.
    fn register<T>(&self, offset: usize) -> Option<*mut T> {
        let size = size_of::<T>();
        let end = offset.checked_add(size)?;
        if end > self.len || !offset.is_multiple_of(size) {
            return None;
        }
        let ptr = self.base.as_ptr().wrapping_add(offset).cast::<T>();
        ptr.is_aligned().then_some(ptr)
    }

    fn read<T: Copy>(&self, offset: usize, all_ones: T) -> T {
        match self.register::<T>(offset) {
            // SAFETY: the register lies inside the region (checked above), which `new`'s caller
            // guarantees is mapped device memory; the pointer is aligned for `T`.
            Some(ptr) => unsafe { ptr.read_volatile() },
            None => all_ones,
        }
    }

    fn write<T: Copy>(&mut self, offset: usize, value: T) {
        if let Some(ptr) = self.register::<T>(offset) {
            // SAFETY: as for `read`; device registers are not Rust memory, so the write cannot
            // break any reference.
            unsafe { ptr.write_volatile(value) }
        }
    }
}

impl RegisterIo for Mmio {
    fn read8(&self, offset: usize) -> u8 {
        self.read(offset, u8::MAX)
    }

    fn read16(&self, offset: usize) -> u16 {
        self.read(offset, u16::MAX)
    }

    fn read32(&self, offset: usize) -> u32 {
        self.read(offset, u32::MAX)
    }

    fn write16(&mut self, offset: usize, value: u16) {
        self.write(offset, value)
    }

    fn write32(&mut self, offset: usize, value: u32) {
        self.write(offset, value)
    }
}

// SAFETY: an `Mmio` is an address range of device registers; moving it to another CPU changes
// nothing about the accesses (they are volatile and self-contained).
unsafe impl Send for Mmio {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_inside_the_region() {
        let mut backing = [0u32; 4];
        {
            let base = NonNull::from(&mut backing).cast::<u8>();
            // SAFETY: `backing` outlives `io` and is only accessed through it meanwhile.
            let mut io = unsafe { Mmio::new(base, 16) };
            io.write32(4, 0xDEAD_BEEF);
            io.write16(8, 0x1234);
            assert_eq!(io.read32(4), 0xDEAD_BEEF);
            assert_eq!(io.read16(6), 0xDEAD);
            assert_eq!(io.read8(8), 0x34);
        }
        assert_eq!(backing[1], 0xDEAD_BEEF);
    }

    #[test]
    fn outside_or_misaligned_is_a_master_abort() {
        let mut backing = [0u32; 2];
        {
            let base = NonNull::from(&mut backing).cast::<u8>();
            // SAFETY: as above.
            let mut io = unsafe { Mmio::new(base, 8) };
            assert_eq!(io.read32(8), u32::MAX);
            assert_eq!(io.read32(6), u32::MAX);
            assert_eq!(io.read16(3), u16::MAX);
            io.write32(usize::MAX - 1, 1);
            io.write32(2, 1);
        }
        assert_eq!(backing, [0, 0]);
    }
}
