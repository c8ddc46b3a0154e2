//! `sys_read_entropy`: RDRAND.
//!
//! RDRAND is present on every CPU these guests run on (and emulated correctly at ring 0).
//! If CPUID says it is absent, the kernel falls back to a splitmix64 generator seeded and
//! re-mixed with the TSC: unpredictable enough to vary hash seeds between boots, but NOT
//! cryptographically secure. A warning says so when it is first used.

use super::fail;
use crate::arch::cpu;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use hermit_abi::{EINVAL, EIO};

/// `GRND_NONBLOCK | GRND_RANDOM`: accepted and ignored (the source never blocks).
const KNOWN_FLAGS: u32 = 0b11;
/// Intel's advice: retry RDRAND up to 10 times before calling it broken.
const RDRAND_RETRIES: u32 = 10;

static HAVE_RDRAND: AtomicBool = AtomicBool::new(false);
static FALLBACK_STATE: AtomicU64 = AtomicU64::new(0);
static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

/// Records whether RDRAND exists (CPUID.1:ECX[30]).
pub fn init(rdrand: bool) {
    HAVE_RDRAND.store(rdrand, Ordering::Relaxed);
}

/// 64 random bits: RDRAND when the CPU has it (and it answers), else the TSC-seeded
/// fallback generator.
pub fn random_u64() -> u64 {
    if HAVE_RDRAND.load(Ordering::Relaxed)
        && let Some(value) = rdrand()
    {
        return value;
    }
    fallback()
}

fn rdrand() -> Option<u64> {
    (0..RDRAND_RETRIES).find_map(|_| cpu::rdrand())
}

fn fallback() -> u64 {
    if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
        log::warn!(
            "entropy: no RDRAND; using a TSC-seeded generator that is not cryptographically secure"
        );
    }
    let state = FALLBACK_STATE.load(Ordering::Relaxed) ^ cpu::rdtsc();
    let next = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    FALLBACK_STATE.store(next, Ordering::Relaxed);
    let mut z = next;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `len` bytes at `buf` with random data; returns `len`, `-EINVAL` for unknown flags,
/// `-EIO` if RDRAND keeps failing.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_read_entropy(buf: *mut u8, len: usize, flags: u32) -> isize {
    if flags & !KNOWN_FLAGS != 0 || isize::try_from(len).is_err() {
        return fail(EINVAL) as isize;
    }
    if len == 0 {
        return 0;
    }
    let have_rdrand = HAVE_RDRAND.load(Ordering::Relaxed);
    let mut done = 0;
    while done < len {
        let word = if have_rdrand {
            match rdrand() {
                Some(w) => w,
                None => return fail(EIO) as isize,
            }
        } else {
            fallback()
        };
        let bytes = word.to_ne_bytes();
        let n = bytes.len().min(len - done);
        // SAFETY: the caller guarantees `buf` is valid for `len` bytes; done + n <= len.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.add(done), n) };
        done += n;
    }
    len as isize
}
