//! The heap's fast path for small blocks: size classes of 16 to 512 bytes, each a free list,
//! fed from chunks the general allocator (talc) hands over.
//!
//! Guest code is emulated on the development machines (~0.4 µs an instruction), and talc's
//! allocation costs ~84 instructions. A std program makes ~10 small allocations before
//! `main` and keeps making them (strings, collections, thread handles); here taking a block
//! is a pop or a bump, and giving it back a push, about a dozen instructions each.
//!
//! Blocks are powers of two and aligned to their size, so a layout whose alignment is at
//! most its class's size is served whatever it asks. A freed block stays in its class for
//! reuse and never goes back to talc: the memory held is the peak of small blocks in use,
//! rounded up to a power of two each.

use core::alloc::Layout;
use core::ptr::NonNull;

/// Classes: 16, 32, 64, 128, 256 and 512 bytes.
pub const CLASSES: usize = 6;
/// The smallest block (a free-list link fits in it).
const MIN_BLOCK: usize = 16;
/// The largest block the classes serve; larger layouts go to talc.
pub const MAX_BLOCK: usize = MIN_BLOCK << (CLASSES - 1);
/// What the classes take from talc at a time: one page-aligned chunk, carved on demand.
pub const CHUNK: Layout = match Layout::from_size_align(16 * 1024, 4096) {
    Ok(layout) => layout,
    Err(_) => panic!("a valid layout"),
};

/// The class that serves `layout`, if a class does.
pub fn class_of(layout: Layout) -> Option<usize> {
    let need = layout.size().max(layout.align()).max(MIN_BLOCK);
    (need <= MAX_BLOCK)
        .then(|| (need.next_power_of_two().trailing_zeros() - MIN_BLOCK.trailing_zeros()) as usize)
}

/// The block size of `class`.
pub const fn block_size(class: usize) -> usize {
    MIN_BLOCK << class
}

/// A free block's first bytes: the next free block of its class.
struct FreeBlock {
    next: Option<NonNull<FreeBlock>>,
}

/// Free lists per class and the chunk being carved.
#[derive(Debug)]
pub struct SizeClasses {
    free: [Option<NonNull<FreeBlock>>; CLASSES],
    /// The next uncarved byte of the current chunk, and its end (both 0 before the first).
    carve: usize,
    end: usize,
}

// SAFETY: the lists and the chunk are memory this value alone owns (blocks on a list are
// free, the chunk's uncarved tail is not handed out); nothing ties them to a thread.
unsafe impl Send for SizeClasses {}

impl SizeClasses {
    /// No blocks and no chunk yet.
    pub const fn new() -> SizeClasses {
        SizeClasses {
            free: [None; CLASSES],
            carve: 0,
            end: 0,
        }
    }

    /// A block of `class` (below [`CLASSES`]): the last one given back, else carved from the
    /// chunk; `None` when the chunk has no room left ([`SizeClasses::refill`], then ask again).
    pub fn take(&mut self, class: usize) -> Option<NonNull<u8>> {
        let list = self.free.get_mut(class)?;
        if let Some(block) = *list {
            // SAFETY: a block on a list is free and was written as a `FreeBlock` when it was
            // given back (`give_back`); nothing else references it.
            *list = unsafe { block.as_ref().next };
            return Some(block.cast());
        }
        let size = block_size(class);
        let start = self.carve.checked_next_multiple_of(size)?;
        let next = start.checked_add(size)?;
        if self.end == 0 || next > self.end {
            return None;
        }
        self.carve = next;
        NonNull::new(start as *mut u8)
    }

    /// Makes `chunk` (of [`CHUNK`]'s layout, from the general allocator) the one carved
    /// from; the uncarved rest of the last one is left unused.
    ///
    /// # Safety
    /// `chunk` is valid for reads and writes of `CHUNK.size()` bytes, aligned to
    /// `CHUNK.align()`, owned by nobody else, and never freed.
    pub unsafe fn refill(&mut self, chunk: NonNull<u8>) {
        self.carve = chunk.as_ptr() as usize;
        self.end = self.carve + CHUNK.size();
    }

    /// Puts `block` back on `class`'s list.
    ///
    /// # Safety
    /// `block` came from [`SizeClasses::take`] of this value with the same `class`, is given
    /// back once, and nobody uses it any more.
    pub unsafe fn give_back(&mut self, block: NonNull<u8>, class: usize) {
        let Some(list) = self.free.get_mut(class) else {
            return;
        };
        let block = block.cast::<FreeBlock>();
        // SAFETY: the block is at least MIN_BLOCK bytes, aligned to its size (>= the link's
        // alignment), and ours again (the caller's contract).
        unsafe { block.as_ptr().write(FreeBlock { next: *list }) };
        *list = Some(block);
    }
}

impl Default for SizeClasses {
    fn default() -> Self {
        SizeClasses::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::alloc::{alloc, dealloc};

    /// Chunks from the host's allocator, freed when the test ends.
    struct Chunks(Vec<NonNull<u8>>);

    impl Chunks {
        fn feed(&mut self, classes: &mut SizeClasses) {
            // SAFETY: CHUNK has a nonzero size.
            let chunk = NonNull::new(unsafe { alloc(CHUNK) }).expect("host memory");
            self.0.push(chunk);
            // SAFETY: a fresh allocation of CHUNK's layout, kept until `drop`.
            unsafe { classes.refill(chunk) };
        }

        fn take(&mut self, classes: &mut SizeClasses, class: usize) -> NonNull<u8> {
            classes.take(class).unwrap_or_else(|| {
                self.feed(classes);
                classes.take(class).expect("a fresh chunk has room")
            })
        }
    }

    impl Drop for Chunks {
        fn drop(&mut self) {
            for &c in &self.0 {
                // SAFETY: allocated with CHUNK in `feed`, freed once.
                unsafe { dealloc(c.as_ptr(), CHUNK) };
            }
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn classes_cover_size_and_alignment_up_to_512_bytes() {
        assert_eq!(class_of(layout(1, 1)), Some(0));
        assert_eq!(class_of(layout(16, 8)), Some(0));
        assert_eq!(class_of(layout(17, 1)), Some(1));
        assert_eq!(class_of(layout(8, 64)), Some(2), "alignment counts as size");
        assert_eq!(class_of(layout(512, 16)), Some(5));
        assert_eq!(class_of(layout(513, 1)), None);
        assert_eq!(
            class_of(layout(16, 4096)),
            None,
            "page alignment goes to talc"
        );
        assert_eq!(block_size(5), MAX_BLOCK);
    }

    #[test]
    fn an_empty_allocator_asks_for_a_chunk_and_a_given_back_block_is_reused_first() {
        let mut classes = SizeClasses::new();
        assert_eq!(classes.take(0), None, "no chunk yet");
        let mut chunks = Chunks(Vec::new());
        let a = chunks.take(&mut classes, 3);
        let b = chunks.take(&mut classes, 3);
        assert_ne!(a, b);
        // SAFETY: `a` came from class 3 and is given back once.
        unsafe { classes.give_back(a, 3) };
        assert_eq!(classes.take(3), Some(a));
        assert_eq!(classes.take(CLASSES), None, "no such class");
    }

    #[test]
    fn a_full_chunk_is_replaced() {
        let mut classes = SizeClasses::new();
        let mut chunks = Chunks(Vec::new());
        let per_chunk = CHUNK.size() / MAX_BLOCK;
        for _ in 0..per_chunk * 3 {
            chunks.take(&mut classes, CLASSES - 1);
        }
        assert_eq!(chunks.0.len(), 3, "whole chunks used, none wasted");
    }

    proptest! {
        /// Blocks in use never overlap, are aligned as asked, keep what was written into
        /// them, and lie inside a chunk.
        #[test]
        fn blocks_never_overlap_and_keep_their_bytes(
            ops in proptest::collection::vec((1usize..=600, 0u32..=7, any::<bool>()), 1..300)
        ) {
            let mut classes = SizeClasses::new();
            let mut chunks = Chunks(Vec::new());
            let mut live: Vec<(NonNull<u8>, usize, usize, u8)> = Vec::new();
            for (i, (size, align_log, free_one)) in ops.into_iter().enumerate() {
                if free_one && !live.is_empty() {
                    let (p, len, class, tag) = live.swap_remove(i % live.len());
                    // SAFETY: `p` holds `len` bytes written below.
                    let bytes = unsafe { core::slice::from_raw_parts(p.as_ptr(), len) };
                    prop_assert!(bytes.iter().all(|&b| b == tag), "a block's bytes changed");
                    // SAFETY: taken from `class`, given back once.
                    unsafe { classes.give_back(p, class) };
                    continue;
                }
                let l = layout(size, 1 << align_log);
                let Some(class) = class_of(l) else {
                    let large = size.max(1 << align_log) > MAX_BLOCK;
                    prop_assert!(large, "{} bytes aligned to {} had no class", size, 1 << align_log);
                    continue;
                };
                let p = chunks.take(&mut classes, class);
                let addr = p.as_ptr() as usize;
                prop_assert_eq!(addr % l.align(), 0);
                let inside = chunks.0.iter().any(|c| {
                    let c = c.as_ptr() as usize;
                    addr >= c && addr + block_size(class) <= c + CHUNK.size()
                });
                prop_assert!(inside, "block {:#x} outside every chunk", addr);
                for &(q, _, qc, _) in &live {
                    let q = q.as_ptr() as usize;
                    let apart = addr + block_size(class) <= q || q + block_size(qc) <= addr;
                    prop_assert!(apart, "blocks {:#x} and {:#x} overlap", addr, q);
                }
                let tag = i as u8;
                // SAFETY: the block has block_size(class) >= size bytes, ours.
                unsafe { p.as_ptr().write_bytes(tag, size) };
                live.push((p, size, class, tag));
            }
        }
    }
}
