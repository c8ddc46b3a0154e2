//! The hardware edge of the drivers: register access and the DMA buffers lent to devices.
//!
//! This is the only module of the crate with `unsafe` code (ARCHITECTURE.md). It owns:
//! - [`RegisterIo`], the small register-access trait the drivers program against, and
//!   [`Mmio`], its implementation over a mapped device region (`mmio`);
//! - the receive and transmit buffer rings that lend DMA memory to virtio-net's queues, and
//!   the PCI configuration access handed to virtio-drivers (`virtio`);
//! - [`dma`]: the [`Dma`] allocator and [`Delay`] traits for drivers that run their own
//!   descriptor rings (ixgbevf), and `DmaArea`, the ring and buffers lent to such a device.
//!
//! Everything above this module is safe code over these primitives.

pub mod dma;
mod mmio;
pub(crate) mod virtio;

pub use dma::{Delay, Dma, DmaChunk};
pub use mmio::{Mmio, RegisterIo};

use crate::pci::bar::Region;
use virtio_drivers::Hal;

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
