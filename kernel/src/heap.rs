//! The kernel heap: talc over the RAM the boot memory map lists above the image.
//!
//! Boot only records the free RAM ranges ([`init`]); talc claims them when the first
//! allocation needs memory (its `Source::acquire` hook). Setting up talc's bins costs a few
//! hundred instructions, and apps that print their first line before allocating should not
//! wait for it. RAM above the static page tables' 4 GiB is mapped at that point too.
//!
//! The heap is the global allocator for kernel and app code, and backs the `sys_malloc`
//! family. Blocks of at most 512 bytes come from size classes (`crate::size_classes`), fed
//! from talc in 16 KiB chunks; everything larger from talc itself.

use crate::arch::paging::{self, Memory, STATIC_LIMIT};
use crate::memmap::Ranges;
use crate::size_classes::{self, SizeClasses};
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, Ordering};
use talc::TalcLock;
use talc::base::Talc;
use talc::base::binning::Binning;
use talc::lock_api::{GuardSend, RawMutex};
use talc::source::Source;

/// The global allocator.
#[global_allocator]
pub static HEAP: Heap = Heap {
    talc: TalcLock::new(BootRam::EMPTY),
    small: talc::lock_api::Mutex::new(SizeClasses::new()),
};

/// Hands talc the RAM ranges it may use, to be claimed on first demand.
pub fn init(ranges: Ranges) {
    HEAP.talc.lock().source = BootRam { ranges, next: 0 };
}

/// talc, with size classes in front for small blocks.
pub struct Heap {
    talc: TalcLock<HeapLock, BootRam>,
    small: talc::lock_api::Mutex<HeapLock, SizeClasses>,
}

impl Heap {
    /// A block of `class`; a new chunk from talc when the classes have none.
    fn alloc_small(&self, class: usize) -> *mut u8 {
        let mut small = self.small.lock();
        if let Some(block) = small.take(class) {
            return block.as_ptr();
        }
        // SAFETY: CHUNK has a nonzero size. talc's lock is another one than `small`'s.
        let Some(chunk) = NonNull::new(unsafe { self.talc.alloc(size_classes::CHUNK) }) else {
            return ptr::null_mut();
        };
        // SAFETY: a fresh talc block of CHUNK's layout, handed over for good.
        unsafe { small.refill(chunk) };
        small.take(class).map_or(ptr::null_mut(), NonNull::as_ptr)
    }
}

// SAFETY: a layout's class is a function of the layout alone, so a block goes back where it
// came from (its class, or talc); classes serve blocks at least as large and as aligned as
// the layout (`size_classes`), and talc serves the rest.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match size_classes::class_of(layout) {
            Some(class) => self.alloc_small(class),
            // SAFETY: the caller's contract (nonzero size) passes on.
            None => unsafe { self.talc.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match size_classes::class_of(layout) {
            Some(class) => {
                let block = self.alloc_small(class);
                if !block.is_null() {
                    // SAFETY: the block has at least `layout.size()` bytes, ours.
                    unsafe { block.write_bytes(0, layout.size()) };
                }
                block
            }
            // SAFETY: as in `alloc`.
            None => unsafe { self.talc.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        match (size_classes::class_of(layout), NonNull::new(block)) {
            // SAFETY: allocated with this layout, so from this class, and given back once.
            (Some(class), Some(block)) => unsafe { self.small.lock().give_back(block, class) },
            (Some(_), None) => {}
            // SAFETY: allocated by talc with this layout (the caller's contract).
            (None, _) => unsafe { self.talc.dealloc(block, layout) },
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract: `new_size`, rounded up to the alignment, fits isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (
            size_classes::class_of(layout),
            size_classes::class_of(new_layout),
        ) {
            // Same block size: nothing to do.
            (Some(a), Some(b)) if a == b => block,
            // SAFETY: talc's block with this layout, resized by talc.
            (None, None) => unsafe { self.talc.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: as in `alloc`.
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: both blocks hold at least the smaller size and do not overlap
                    // (the new one is live, the old one not yet freed); the old one is
                    // freed once, with its layout.
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}

/// A zeroed, 4 KiB-aligned page for a page table (never freed); its physical address.
pub fn page_table() -> Option<u64> {
    // SAFETY: the layout has a nonzero size.
    let page = unsafe { HEAP.alloc_zeroed(PAGE_LAYOUT) };
    (!page.is_null()).then_some(page as u64)
}

/// One 4 KiB page, page-aligned.
const PAGE_LAYOUT: Layout = match Layout::from_size_align(4096, 4096) {
    Ok(layout) => layout,
    Err(_) => panic!("4096 is a power of two"),
};

/// talc's memory source: the boot RAM ranges, claimed one per `acquire`, lowest first.
#[derive(Debug)]
pub struct BootRam {
    ranges: Ranges,
    next: usize,
}

impl BootRam {
    const EMPTY: BootRam = BootRam {
        ranges: Ranges::EMPTY,
        next: 0,
    };
}

// SAFETY: `acquire` uses only the `talc` it is given (never `HEAP`, which is locked while it
// runs), and claims only RAM that nothing else uses: above the image and 1 MiB, as listed
// by the boot memory map.
unsafe impl Source for BootRam {
    fn acquire<B: Binning>(talc: &mut Talc<Self, B>, _layout: Layout) -> Result<(), ()> {
        while let Some(range) = talc.source.ranges.as_slice().get(talc.source.next).copied() {
            talc.source.next += 1;
            if range.end > STATIC_LIMIT {
                // Page tables for RAM above 4 GiB come from what talc already has.
                let mut new_table = || {
                    // SAFETY: the layout has a nonzero size.
                    let page = unsafe { talc.allocate(PAGE_LAYOUT) }?.as_ptr();
                    // SAFETY: talc just handed out these 4096 bytes.
                    unsafe { page.write_bytes(0, 4096) };
                    Some(page as u64)
                };
                if paging::map(
                    range.start.max(STATIC_LIMIT),
                    range.end,
                    Memory::Ram,
                    &mut new_table,
                )
                .is_err()
                {
                    log::warn!(
                        "heap: cannot map RAM {:#x}..{:#x}; not using it",
                        range.start,
                        range.end
                    );
                    continue;
                }
            }
            let size = (range.end - range.start) as usize;
            // SAFETY: the range is RAM (boot memory map), identity-mapped (paging::init or the
            // map above), outside the image and low memory (memmap::heap), and claimed once.
            if unsafe { talc.claim(range.start as *mut u8, size) }.is_some() {
                log::debug!("heap: claimed {:#x}..{:#x}", range.start, range.end);
                return Ok(());
            }
        }
        Err(())
    }
}

/// The heap's lock. There is one CPU and no allocation from interrupt handlers, so it is
/// never contended; finding it taken means the allocator was re-entered, which is a bug
/// reported as a panic (the panic path does not allocate) instead of a silent hang.
pub struct HeapLock(AtomicBool);

// SAFETY: `lock` and `try_lock` give the lock to one holder at a time (an atomic swap) and
// `unlock` releases it; the acquire/release orderings order the protected accesses.
unsafe impl RawMutex for HeapLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: HeapLock = HeapLock(AtomicBool::new(false));
    type GuardMarker = GuardSend;

    fn lock(&self) {
        if !self.try_lock() {
            panic!("the kernel heap was re-entered while in use");
        }
    }

    fn try_lock(&self) -> bool {
        // No thread is preempted while it holds the heap (crate::sync): counted before it
        // is taken, so no interrupt in between sees a preemptible thread holding it.
        crate::sync::acquiring();
        let taken = !self.0.swap(true, Ordering::Acquire);
        if !taken {
            crate::sync::not_acquired();
        }
        taken
    }

    unsafe fn unlock(&self) {
        self.0.store(false, Ordering::Release);
        crate::sync::released();
    }
}
