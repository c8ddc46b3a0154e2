//! Futexes: what std's `Mutex`, `Condvar`, `RwLock`, `Once`, channels and `park` wait on.

use super::fail;
use crate::{clock, sched, timer};
use core::sync::atomic::AtomicU32;
use hermit_abi::{EAGAIN, EINVAL, ETIMEDOUT, FUTEX_RELATIVE_TIMEOUT, timespec};

/// If `*address == expected`, waits until a `sys_futex_wake` on `address` (0) or until the
/// timeout passes (`-ETIMEDOUT`); `-EAGAIN` at once if the value differs. `timeout` null:
/// no timeout; else relative with `FUTEX_RELATIVE_TIMEOUT` in `flags`, else an absolute
/// `CLOCK_MONOTONIC` time. `-EINVAL` for a null or misaligned address, a negative or
/// malformed timeout, or unknown flags.
///
/// # Safety
/// `address` must be valid for atomic reads of a `u32` for the call's duration; `timeout`
/// null or valid for a read of a `timespec`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_futex_wait(
    address: *mut u32,
    expected: u32,
    timeout: *const timespec,
    flags: u32,
) -> i32 {
    if address.is_null() || !address.is_aligned() || flags & !FUTEX_RELATIVE_TIMEOUT != 0 {
        return fail(EINVAL);
    }
    let deadline = if timeout.is_null() {
        None
    } else {
        // SAFETY: the caller guarantees a non-null `timeout` is valid for reads.
        let t = unsafe { timeout.read() };
        let Some(ns) = clock::timespec_ns(t.tv_sec, t.tv_nsec) else {
            return fail(EINVAL);
        };
        Some(if flags & FUTEX_RELATIVE_TIMEOUT != 0 {
            timer::now_ns().saturating_add(ns)
        } else {
            ns
        })
    };
    // SAFETY: the caller guarantees `address` stays valid for atomic access; it is
    // non-null and aligned (checked above).
    let word = unsafe { AtomicU32::from_ptr(address) };
    match sched::futex_wait(word, expected, deadline) {
        Ok(()) => 0,
        Err(sched::FutexError::ValueChanged) => fail(EAGAIN),
        Err(sched::FutexError::TimedOut) => fail(ETIMEDOUT),
    }
}

/// Wakes up to `count` threads waiting on `address` (all with `i32::MAX`); how many.
/// `-EINVAL` for a null address or a negative count.
#[unsafe(no_mangle)]
pub extern "C" fn sys_futex_wake(address: *mut u32, count: i32) -> i32 {
    if address.is_null() || count < 0 {
        return fail(EINVAL);
    }
    let woken = sched::futex_wake(address as usize, count as usize);
    i32::try_from(woken).unwrap_or(i32::MAX)
}
