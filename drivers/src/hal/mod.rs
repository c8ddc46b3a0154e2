//! The hardware edge of the drivers: register access and the DMA buffers lent to devices.
//!
//! This is the only module of the crate with `unsafe` code (ARCHITECTURE.md). It owns:
//! - [`RegisterIo`], the small register-access trait the drivers program against, and
//!   [`Mmio`], its implementation over a mapped device region (`mmio`);
//! - the receive and transmit buffer rings that lend DMA memory to virtio-net's queues, and
//!   the PCI configuration access handed to virtio-drivers (`virtio`);
//! - `virtqueue`: a virtqueue with its own buffers, lent and taken back safely (the console);
//! - [`dma`]: the [`Dma`] allocator and [`Delay`] traits for drivers that run their own
//!   descriptor rings (ixgbevf), and `DmaArea`, the ring and buffers lent to such a device.
//!
//! Everything above this module is safe code over these primitives.

pub mod dma;
mod mmio;
pub(crate) mod virtio;
pub(crate) mod virtqueue;

pub use dma::{Delay, Dma, DmaChunk};
pub use mmio::{Mmio, RegisterIo};

use crate::pci::bar::Region;
use core::ptr::NonNull;
use virtio_drivers::transport::mmio::{MmioError, MmioTransport, VirtIOHeader};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// virtio-drivers' [`Hal`], plus DMA memory that is not cleared first: for receive buffers,
/// which the device writes before the driver reads what it said it wrote.
///
/// # Safety
/// As for [`Hal`]; [`VirtioHal::dma_alloc_uncleared`] returns pages exactly like
/// [`Hal::dma_alloc`] except that their content is unspecified, and they are freed with
/// [`Hal::dma_dealloc`].
pub unsafe trait VirtioHal: Hal {
    /// Like [`Hal::dma_alloc`] without the clearing (here clearing 64 KiB costs ~3 ms of
    /// emulated `rep stos` per slab). The default clears.
    fn dma_alloc_uncleared(pages: usize, direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        Self::dma_alloc(pages, direction)
    }
}

/// Maps a device region through the HAL (uncached, for as long as the kernel runs) and
/// returns register access to it.
pub fn map<H: Hal>(region: Region) -> Mmio {
    // SAFETY: a `Region` lies inside a memory BAR that the device was assigned (`Bar::region`
    // checks both), so it is device memory the HAL may map.
    let base = unsafe { H::mmio_phys_to_virt(region.phys(), region.len()) };
    // SAFETY: the HAL's implementation contract makes `base..base + len` valid, uncached
    // device memory that no Rust reference aliases, mapped for as long as the kernel runs.
    unsafe { Mmio::new(base, region.len()) }
}

/// virtio-drivers' MMIO transport over `region` (a checked command-line entry, which the
/// caller has mapped): refused unless the registers say virtio (magic, version, device ID).
pub fn mmio_transport<H: Hal>(region: Region) -> Result<MmioTransport<'static>, MmioError> {
    // SAFETY: as in `map`: the region is device memory the HAL may map, for as long as the
    // kernel runs.
    let base = unsafe { H::mmio_phys_to_virt(region.phys(), region.len()) };
    let header = base.cast::<VirtIOHeader>();
    if !header.as_ptr().is_aligned() {
        return Err(MmioError::MmioRegionTooSmall);
    }
    // SAFETY: `header` is aligned (checked) and points at `region.len()` bytes of mapped
    // device registers (the header, then the device configuration) that nothing else
    // references and that stay mapped for `'static`; `new` checks the length covers the header.
    unsafe { MmioTransport::new(header, region.len()) }
}
