//! The kernel's one implementation of the drivers' HAL (`virtio_drivers::Hal`): DMA memory
//! from the heap and device BARs mapped uncached.
//!
//! Why this is simple here:
//! - Memory is identity-mapped (`arch::paging`): a heap address *is* the physical address
//!   the device uses. The only exception is the app stack, translated by
//!   `paging::virt_to_phys`.
//! - There is no IOMMU and x86 DMA is cache-coherent, so sharing a buffer with the device
//!   needs neither a mapping nor a cache flush nor a bounce copy: `share` returns the
//!   physical address and `unshare` does nothing.
//! - BARs are mapped by the kernel before a driver asks (see `net`), so
//!   `mmio_phys_to_virt` only confirms the mapping; it cannot fail then.

use crate::arch::paging;
use crate::heap::HEAP;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use drivers::hal::VirtioHal;
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

/// The kernel's DMA and MMIO provider for drivers.
#[derive(Debug)]
pub struct KernelHal;

fn pages_layout(pages: usize) -> Option<Layout> {
    Layout::from_size_align(pages.checked_mul(PAGE_SIZE)?, PAGE_SIZE).ok()
}

/// A fresh heap block of `layout` (cleared or not); `None` for a zero size or no memory.
fn heap_block(layout: Layout, clear: bool) -> Option<NonNull<u8>> {
    if layout.size() == 0 {
        return None;
    }
    // SAFETY: the layout has a nonzero size.
    let ptr = unsafe {
        if clear {
            HEAP.alloc_zeroed(layout)
        } else {
            HEAP.alloc(layout)
        }
    };
    NonNull::new(ptr)
}

/// `pages` pages of heap (cleared or not) at their identity address, or physical address 0.
fn heap_pages(pages: usize, clear: bool) -> (PhysAddr, NonNull<u8>) {
    match pages_layout(pages).and_then(|layout| heap_block(layout, clear)) {
        // Heap memory is identity-mapped: virtual == physical.
        Some(p) => (p.as_ptr() as PhysAddr, p),
        None => (0, NonNull::dangling()),
    }
}

// SAFETY: the implementation safety of each method holds:
// - `dma_alloc` returns zeroed, page-aligned heap memory that nothing else references until
//   `dma_dealloc` (the heap never hands it out twice), and its identity-mapped address as
//   the physical one; on failure it returns physical address 0, which the callers check.
// - `mmio_phys_to_virt` returns the identity address of a range mapped uncached by
//   `paging::map_mmio`; device memory is not Rust memory, so it aliases no allocation.
// - `share` returns the physical address of a buffer the caller keeps valid; coherent DMA
//   without an IOMMU needs nothing else, and `unshare` has nothing to undo.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        heap_pages(pages, true)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let Some(layout) = pages_layout(pages) else {
            return -1;
        };
        // SAFETY: the caller passes back what `dma_alloc` returned for `pages` pages, so it is
        // a live heap block with this layout.
        unsafe { HEAP.dealloc(vaddr.as_ptr(), layout) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // Normally a no-op: `net` mapped every BAR of the device before probing it. A
        // failure here is a kernel bug (a region outside those BARs), not a device error.
        let mapped = paging::map_mmio(paddr, size as u64)
            .unwrap_or_else(|e| panic!("cannot map device memory {paddr:#x}+{size:#x}: {e}"));
        NonNull::new(mapped).unwrap_or_else(|| panic!("device memory at address 0"))
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let addr = buffer.cast::<u8>().as_ptr() as u64;
        // Buffers live in the identity map or on the app stack; anything else is a kernel bug.
        paging::virt_to_phys(addr)
            .unwrap_or_else(|| panic!("DMA buffer at {addr:#x} has no physical address"))
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

// SAFETY: `dma_alloc_uncleared` is `dma_alloc` without the clearing: the same heap layout,
// identity address and failure value, freed by the same `dma_dealloc`.
unsafe impl VirtioHal for KernelHal {
    fn dma_alloc_uncleared(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        heap_pages(pages, false)
    }
}

/// A heap block of `len` bytes aligned to `align` (cleared or not), as a DMA chunk.
fn dma_chunk(len: usize, align: usize, clear: bool) -> Option<drivers::hal::DmaChunk> {
    let cpu = heap_block(Layout::from_size_align(len, align).ok()?, clear)?;
    Some(drivers::hal::DmaChunk {
        cpu,
        device: cpu.as_ptr() as u64,
    })
}

/// The kernel's DMA allocator for drivers that run their own rings (the VF): heap memory
/// (zeroed, except receive buffers the device writes first), identity-mapped, so the CPU and
/// device addresses are the same number.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelDma;

// SAFETY: `alloc_zeroed` and `alloc` return a fresh heap block of `len` bytes aligned to
// `align` (zeroed by `alloc_zeroed`) that nothing else references until `free`; the heap is identity-mapped (virtual ==
// physical) and x86 DMA without an IOMMU is cache-coherent, so the device reaches the same
// bytes at the same address.
unsafe impl drivers::hal::Dma for KernelDma {
    fn alloc_zeroed(&mut self, len: usize, align: usize) -> Option<drivers::hal::DmaChunk> {
        dma_chunk(len, align, true)
    }

    fn alloc(&mut self, len: usize, align: usize) -> Option<drivers::hal::DmaChunk> {
        dma_chunk(len, align, false)
    }

    unsafe fn free(&mut self, chunk: drivers::hal::DmaChunk, len: usize, align: usize) {
        if let Ok(layout) = Layout::from_size_align(len, align) {
            // SAFETY: the caller passes back a block `alloc_zeroed(len, align)` returned, once,
            // that neither the CPU nor the device uses any more.
            unsafe { HEAP.dealloc(chunk.cpu.as_ptr(), layout) };
        }
    }
}
