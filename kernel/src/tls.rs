//! The layout of a thread's TLS block, from the image's TLS template (x86-64 ELF TLS,
//! variant II: the block ends at the thread pointer, FS base).
//!
//! The linker computes each thread-local variable's offset from the thread pointer, and the
//! kernel must place the template where the linker expects it. lld puts the thread pointer
//! at the template's end rounded up to the TLS alignment, in template addresses
//! (`tprel = st_value - p_memsz - ((-p_vaddr - p_memsz) & (p_align - 1))`), so the block is
//! laid out from that end, whatever the template's start. The 8 bytes at the thread pointer
//! hold the thread pointer itself (the TCB's self pointer, which `mov %fs:0` reads).
//! `arch::tls` allocates, fills and installs blocks; this module is the arithmetic.

/// Where things go in one thread's TLS block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// Bytes to allocate.
    pub size: usize,
    /// Alignment of the allocation.
    pub align: usize,
    /// Offset of the template's copy from the start of the allocation.
    pub image: usize,
    /// Offset of the thread pointer (the self pointer's address) from the start.
    pub tp: usize,
}

/// The thread-pointer-relative layout of the template `start..end` with alignment `align`;
/// `None` when there is no TLS (an empty template), or when the values make no sense
/// (alignment not a power of two, end before start, sizes that overflow).
pub fn block(start: usize, end: usize, align: usize) -> Option<Block> {
    if end <= start || !align.is_power_of_two() {
        return None;
    }
    let align = align.max(8);
    // Template bytes from its start to the thread pointer (lld's formula).
    let tp_from_start = end.checked_next_multiple_of(align)? - start;
    // The thread pointer must be aligned in the allocation too.
    let tp = tp_from_start.checked_next_multiple_of(align)?;
    Some(Block {
        size: tp.checked_add(8)?,
        align,
        image: tp - tp_from_start,
        tp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_template_no_block() {
        assert_eq!(block(0x1000, 0x1000, 8), None);
        assert_eq!(block(0x1000, 0x0800, 8), None);
    }

    #[test]
    fn nonsense_alignment_is_refused() {
        assert_eq!(block(0x1000, 0x1010, 0), None);
        assert_eq!(block(0x1000, 0x1010, 24), None);
        assert_eq!(block(usize::MAX - 8, usize::MAX - 1, 64), None);
    }

    #[test]
    fn aligned_template_ends_at_the_thread_pointer() {
        // 0x68 bytes aligned to 8 (std-hello's template).
        let b = block(0x1476f8, 0x1476f8 + 0x68, 8).unwrap();
        assert_eq!(
            b,
            Block {
                size: 0x70,
                align: 8,
                image: 0,
                tp: 0x68
            }
        );
    }

    #[test]
    fn unaligned_start_matches_lld() {
        // From an lld link: template 0x101020..0x101044 aligned to 64; lld gave the variable
        // at template offset 0 the tprel -0x60 and the one at 0x20 the tprel -0x40.
        let b = block(0x101020, 0x101044, 64).unwrap();
        assert_eq!(b.tp % 64, 0);
        assert_eq!(b.tp - b.image, 0x60);
        assert_eq!(b.image + 0x20, b.tp - 0x40);
        assert_eq!(b.size, b.tp + 8);
    }

    #[test]
    fn small_alignment_still_aligns_the_self_pointer() {
        let b = block(0x2001, 0x2004, 1).unwrap();
        assert_eq!(b.align, 8);
        assert_eq!(b.tp % 8, 0);
        assert_eq!(b.tp - b.image, 0x2008 - 0x2001);
    }
}
