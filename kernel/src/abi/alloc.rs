//! The `sys_malloc` family, on the kernel heap.
//!
//! Hermit passes the size and alignment back on free, like Rust's allocator API, so these
//! map one to one onto `GlobalAlloc`. A zero size returns a dangling, aligned pointer that
//! must not be dereferenced (free ignores it), as Rust's allocator API does for
//! zero-sized allocations; an invalid alignment returns null.

use crate::heap::HEAP;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr;

fn layout(size: usize, align: usize) -> Option<Layout> {
    Layout::from_size_align(size, align).ok()
}

/// Allocates `size` bytes aligned to `align` (a power of two); null when out of memory.
#[unsafe(no_mangle)]
pub extern "C" fn sys_malloc(size: usize, align: usize) -> *mut u8 {
    sys_alloc(size, align)
}

/// Same as `sys_malloc`.
#[unsafe(no_mangle)]
pub extern "C" fn sys_alloc(size: usize, align: usize) -> *mut u8 {
    match layout(size, align) {
        None => ptr::null_mut(),
        Some(l) if l.size() == 0 => ptr::without_provenance_mut(l.align()),
        // SAFETY: the layout is valid and its size nonzero.
        Some(l) => unsafe { HEAP.alloc(l) },
    }
}

/// Like `sys_malloc`, with the memory zeroed.
#[unsafe(no_mangle)]
pub extern "C" fn sys_alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    match layout(size, align) {
        None => ptr::null_mut(),
        Some(l) if l.size() == 0 => ptr::without_provenance_mut(l.align()),
        // SAFETY: the layout is valid and its size nonzero.
        Some(l) => unsafe { HEAP.alloc_zeroed(l) },
    }
}

/// Resizes the allocation at `ptr` (of `size` bytes, aligned to `align`) to `new_size`,
/// moving it if needed; null (and the old allocation intact) when out of memory.
///
/// # Safety
/// `ptr` must come from this allocator with exactly `size` and `align`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_realloc(
    ptr: *mut u8,
    size: usize,
    align: usize,
    new_size: usize,
) -> *mut u8 {
    let Some(old) = layout(size, align) else {
        return ptr::null_mut();
    };
    if layout(new_size, align).is_none() {
        return ptr::null_mut();
    }
    match (size, new_size) {
        (0, _) => sys_alloc(new_size, align),
        (_, 0) => {
            // SAFETY: the caller guarantees `ptr` was allocated with `old`.
            unsafe { HEAP.dealloc(ptr, old) };
            ptr::without_provenance_mut(align)
        }
        // SAFETY: the caller guarantees `ptr` was allocated with `old`; both sizes are
        // nonzero and `new_size` rounded up to `align` fits (checked above).
        _ => unsafe { HEAP.realloc(ptr, old, new_size) },
    }
}

/// Frees `ptr`, allocated with `size` and `align`.
///
/// # Safety
/// `ptr` must come from this allocator with exactly `size` and `align`, and not be used
/// again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_free(ptr: *mut u8, size: usize, align: usize) {
    if let Some(l) = layout(size, align).filter(|l| l.size() != 0) {
        // SAFETY: the caller guarantees `ptr` was allocated with this layout.
        unsafe { HEAP.dealloc(ptr, l) };
    }
}

/// Same as `sys_free`.
///
/// # Safety
/// As for `sys_free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_dealloc(ptr: *mut u8, size: usize, align: usize) {
    // SAFETY: the same contract.
    unsafe { sys_free(ptr, size, align) }
}
