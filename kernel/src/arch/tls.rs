//! Thread-local storage for the app: one block per thread, copied from the image's TLS
//! template (link.ld's `__roam_tls_*` symbols; the layout is [`crate::tls`]), and installed
//! as the FS base, which is the thread pointer on x86-64.
//!
//! Only std programs have a template (`no_std` images have no thread-locals), so for the
//! others this costs one comparison at boot.

use super::msr;
use crate::heap::HEAP;
use crate::tls::{self, Block};
use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU64, Ordering};

/// `IA32_FS_BASE`: the FS segment's base, the thread pointer.
const IA32_FS_BASE: u32 = 0xC000_0100;

/// Why a thread got no TLS block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsError {
    /// The heap had no room for the block.
    OutOfMemory,
}

impl core::fmt::Display for TlsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TlsError::OutOfMemory => f.write_str("no heap memory for a thread's TLS block"),
        }
    }
}

/// The template: its start, the end of its initialised part (`.tdata`), its end (`.tbss`
/// included) and its alignment.
fn template() -> (usize, usize, usize, usize) {
    unsafe extern "C" {
        static __roam_tls_start: u8;
        static __roam_tdata_end: u8;
        static __roam_tls_end: u8;
        /// An absolute symbol: its address is the alignment.
        static __roam_tls_align: u8;
    }
    (
        (&raw const __roam_tls_start) as usize,
        (&raw const __roam_tdata_end) as usize,
        (&raw const __roam_tls_end) as usize,
        (&raw const __roam_tls_align) as usize,
    )
}

/// The block layout for this image; `None` without thread-locals.
fn layout() -> Option<Block> {
    let (start, _, end, align) = template();
    tls::block(start, end, align)
}

/// A new thread's TLS block, initialised from the template: its thread pointer, to be
/// installed with [`set_thread_pointer`] when the thread runs. `Ok(None)` when the image
/// has no thread-locals.
pub fn new_block() -> Result<Option<u64>, TlsError> {
    let Some(block) = layout() else {
        return Ok(None);
    };
    let (start, tdata_end, _, _) = template();
    let layout =
        Layout::from_size_align(block.size, block.align).map_err(|_| TlsError::OutOfMemory)?;
    // SAFETY: the layout's size is nonzero (at least the 8-byte self pointer).
    let base = unsafe { HEAP.alloc_zeroed(layout) };
    if base.is_null() {
        return Err(TlsError::OutOfMemory);
    }
    // SAFETY: `base` is a fresh, zeroed allocation of `block.size` bytes; the template's
    // initialised part (`start..tdata_end`, inside the loaded image) fits before the thread
    // pointer (`image + (tdata_end - start) <= tp`), and the self pointer is the 8 aligned
    // bytes at `tp`, the allocation's last.
    unsafe {
        core::ptr::copy_nonoverlapping(
            start as *const u8,
            base.add(block.image),
            tdata_end - start,
        );
        let tp = base.add(block.tp);
        tp.cast::<u64>().write(tp as u64);
        Ok(Some(tp as u64))
    }
}

/// Frees a block [`new_block`] made, given its thread pointer (a finished thread's).
///
/// # Safety
/// `tp` came from [`new_block`], no thread uses the block any more, and it is freed once.
pub unsafe fn free_block(tp: u64) {
    let Some(block) = layout() else { return };
    let Ok(layout) = Layout::from_size_align(block.size, block.align) else {
        return;
    };
    // SAFETY: the caller guarantees `tp` is `new_block`'s allocation plus `block.tp`, made
    // with this layout, and unused.
    unsafe { HEAP.dealloc((tp as usize - block.tp) as *mut u8, layout) };
}

/// The main thread's thread pointer (0 without thread-locals).
static MAIN_TP: AtomicU64 = AtomicU64::new(0);

/// The main thread's thread pointer, for the scheduler (0 without thread-locals).
pub fn main_thread_pointer() -> u64 {
    MAIN_TP.load(Ordering::Relaxed)
}

/// Makes `tp` (from [`new_block`]) the running thread's thread pointer.
pub fn set_thread_pointer(tp: u64) {
    // SAFETY: FS base only changes what FS-relative accesses reach; the kernel makes none,
    // and the app's point at the block `tp` heads, which new_block made for this purpose.
    unsafe { msr::wrmsr(IA32_FS_BASE, tp) };
}

/// Gives the thread that is about to run the app (the main thread) its TLS block.
pub fn init_main_thread() -> Result<(), TlsError> {
    if let Some(tp) = new_block()? {
        set_thread_pointer(tp);
        MAIN_TP.store(tp, Ordering::Relaxed);
    }
    Ok(())
}
