//! Reading the boot structures the VMM left in guest memory (`hvm_start_info`, its memory
//! map, the command line). Parsing and validation live in [`crate::bootinfo`]; this module
//! only copies bytes out of physical memory.
//!
//! The VMM is trusted to pass addresses of RAM that the boot map covers (all RAM under
//! host-vmm, the first GiB under PVH); a bad address faults and is reported.

use crate::bootinfo::{MemmapEntry, StartInfo};
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

/// The longest command line the boot ABI allows, NUL included.
pub const CMDLINE_MAX: usize = 4096;

struct CmdlineBuffer(UnsafeCell<[u8; CMDLINE_MAX]>);

// SAFETY: written once by `copy_cmdline` during boot, before anyone reads it; read-only after.
unsafe impl Sync for CmdlineBuffer {}

static CMDLINE: CmdlineBuffer = CmdlineBuffer(UnsafeCell::new([0; CMDLINE_MAX]));
static CMDLINE_LEN: AtomicUsize = AtomicUsize::new(0);

/// Copies the `hvm_start_info` at `paddr` (the caller validates it).
pub fn read_start_info(paddr: u64) -> StartInfo {
    // SAFETY: the boot ABI puts a `hvm_start_info` at this identity-mapped address;
    // read_unaligned copes with any alignment, and every bit pattern is a valid StartInfo.
    unsafe { ptr::read_unaligned(paddr as *const StartInfo) }
}

/// Most memory map entries read: a sanity bound against a corrupt count.
pub const MEMMAP_MAX: u32 = 128;

/// The memory map entries of a validated `info`, copied one at a time.
pub fn memmap(info: &StartInfo) -> impl Iterator<Item = MemmapEntry> {
    let table = info.memmap_paddr as *const MemmapEntry;
    (0..info.memmap_entries.min(MEMMAP_MAX) as usize).map(move |i| {
        // SAFETY: a version-1 `hvm_start_info` (validated by the caller) points at
        // `memmap_entries` entries in RAM; i is below that count. Any bit pattern is valid.
        unsafe { ptr::read_unaligned(table.add(i)) }
    })
}

/// Copies the NUL-terminated command line at `paddr` (none if 0) out of low memory, where
/// nothing protects it, into the kernel's own buffer, and returns the copy. Longer lines are
/// cut at [`CMDLINE_MAX`] - 1 bytes. Call once, at boot.
pub fn copy_cmdline(paddr: u64) -> &'static [u8] {
    let buffer = CMDLINE.0.get().cast::<u8>();
    let mut len = 0;
    if paddr != 0 {
        let source = paddr as *const u8;
        while len < CMDLINE_MAX - 1 {
            // SAFETY: the boot ABI passes a NUL-terminated string of at most 4 KiB in RAM;
            // the loop stops at its NUL or at the buffer's end.
            let byte = unsafe { source.add(len).read() };
            if byte == 0 {
                break;
            }
            // SAFETY: len < CMDLINE_MAX; boot runs once on one CPU, before any reader.
            unsafe { buffer.add(len).write(byte) };
            len += 1;
        }
    }
    CMDLINE_LEN.store(len, Ordering::Relaxed);
    cmdline()
}

/// The command line copied at boot.
pub fn cmdline() -> &'static [u8] {
    let len = CMDLINE_LEN.load(Ordering::Relaxed);
    // SAFETY: the first `len` bytes were written by `copy_cmdline` and never change again.
    unsafe { core::slice::from_raw_parts(CMDLINE.0.get().cast::<u8>(), len) }
}

/// The first and one-past-last address of the loaded image, .bss included (link.ld).
pub fn image_bounds() -> (u64, u64) {
    unsafe extern "C" {
        static __roam_image_start: u8;
        static __roam_image_end: u8;
    }
    (
        (&raw const __roam_image_start) as u64,
        (&raw const __roam_image_end) as u64,
    )
}
