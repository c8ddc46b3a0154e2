//! Locks for a one-CPU kernel that never takes a lock in an interrupt handler.
//!
//! Such a lock can never be contended: finding it taken means the code re-entered itself,
//! which is a bug reported as a panic (naming the lock) rather than a silent deadlock.

use core::sync::atomic::{AtomicBool, Ordering};
use talc::lock_api::{self, GuardSend, RawMutex};

/// The raw lock: one flag.
pub struct OneCpuLock(AtomicBool);

// SAFETY: `lock` and `try_lock` give the lock to one holder at a time (an atomic swap) and
// `unlock` releases it; the acquire/release orderings order the protected accesses.
unsafe impl RawMutex for OneCpuLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: OneCpuLock = OneCpuLock(AtomicBool::new(false));
    type GuardMarker = GuardSend;

    fn lock(&self) {
        if !self.try_lock() {
            panic!("a kernel lock was re-entered while held (one CPU: this is a bug)");
        }
    }

    fn try_lock(&self) -> bool {
        !self.0.swap(true, Ordering::Acquire)
    }

    unsafe fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A mutex over [`OneCpuLock`].
pub type Mutex<T> = lock_api::Mutex<OneCpuLock, T>;
