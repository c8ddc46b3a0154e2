//! Clocks and sleeping.

use super::fail;
use crate::{clock, timer};
use hermit_abi::{CLOCK_MONOTONIC, CLOCK_REALTIME, EFAULT, EINVAL, clockid_t, timespec};

/// Reads `CLOCK_MONOTONIC` (time since boot) or `CLOCK_REALTIME` (Unix time) into `*tp`;
/// other clocks get `-EINVAL`.
///
/// # Safety
/// `tp` must be valid for a write of a `timespec` (or null, which gets `-EFAULT`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_clock_gettime(clockid: clockid_t, tp: *mut timespec) -> i32 {
    let ns = match clockid {
        CLOCK_MONOTONIC => timer::now_ns(),
        CLOCK_REALTIME => timer::realtime_ns(),
        _ => return fail(EINVAL),
    };
    if tp.is_null() {
        return fail(EFAULT);
    }
    let (tv_sec, tv_nsec) = clock::split_ns(ns);
    // SAFETY: the caller guarantees `tp` is valid for writes; it is non-null.
    unsafe { tp.write(timespec { tv_sec, tv_nsec }) };
    0
}

/// Sleeps for the duration `*req` (halting the CPU); `-EINVAL` if it is negative or
/// malformed.
///
/// # Safety
/// `req` must be valid for a read of a `timespec` (or null, which gets `-EFAULT`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_nanosleep(req: *const timespec) -> i32 {
    if req.is_null() {
        return fail(EFAULT);
    }
    // SAFETY: the caller guarantees `req` is valid for reads; it is non-null.
    let req = unsafe { req.read() };
    match clock::timespec_ns(req.tv_sec, req.tv_nsec) {
        Some(ns) => {
            timer::sleep_ns(ns);
            0
        }
        None => fail(EINVAL),
    }
}

/// Sleeps for `usecs` microseconds (halting the CPU).
#[unsafe(no_mangle)]
pub extern "C" fn sys_usleep(usecs: u64) {
    timer::sleep_ns(usecs.saturating_mul(1000));
}
