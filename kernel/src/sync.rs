//! Locks for a one-CPU kernel that never takes a lock in an interrupt handler, and what
//! makes them safe once threads are preempted.
//!
//! Such a lock can never be contended: finding it taken means the code re-entered itself,
//! which is a bug reported as a panic (naming the lock) rather than a silent deadlock. With
//! threads that stays true because a thread is never preempted while it holds a kernel lock
//! (or a [`PreemptOff`]): [`preemptible`] counts them, the scheduler only switches on an
//! interrupt when the count is 0, and otherwise switches when the last one is released
//! (`crate::sched::preempt_point`). A thread never blocks holding one (`sched` checks).
//!
//! The scheduler's own state is shared with the interrupt path, so it lives in an
//! [`IrqCell`], reached only with interrupts off.

use crate::arch::cpu;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use talc::lock_api::{self, GuardSend, RawMutex};

/// Kernel locks and [`PreemptOff`] guards held right now.
static HELD: AtomicU32 = AtomicU32::new(0);

/// Whether the running thread holds no kernel lock, so it may be switched out anywhere.
#[inline]
pub fn preemptible() -> bool {
    HELD.load(Ordering::Relaxed) == 0
}

/// A kernel lock (or [`PreemptOff`]) is about to be taken: counted first, so no interrupt
/// between taking it and counting it finds the thread preemptible.
#[inline]
pub fn acquiring() {
    HELD.fetch_add(1, Ordering::Relaxed);
}

/// [`acquiring`] was for a lock that turned out taken (the caller panics next).
#[inline]
pub fn not_acquired() {
    HELD.fetch_sub(1, Ordering::Relaxed);
}

/// A kernel lock (or [`PreemptOff`]) was released: the last one lets a switch that an
/// interrupt asked for meanwhile happen now.
#[inline]
pub fn released() {
    if HELD.fetch_sub(1, Ordering::Relaxed) == 1 {
        crate::sched::preempt_point();
    }
}

/// Keeps the running thread from being preempted while it lives: for kernel work that is
/// not under one lock but must not interleave with another thread's (network bring-up).
pub struct PreemptOff(());

impl PreemptOff {
    /// No preemption until the guard drops.
    pub fn new() -> Self {
        acquiring();
        PreemptOff(())
    }
}

impl Drop for PreemptOff {
    fn drop(&mut self) {
        released();
    }
}

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
        acquiring();
        let taken = !self.0.swap(true, Ordering::Acquire);
        if !taken {
            not_acquired();
        }
        taken
    }

    unsafe fn unlock(&self) {
        self.0.store(false, Ordering::Release);
        released();
    }
}

/// A mutex over [`OneCpuLock`].
pub type Mutex<T> = lock_api::Mutex<OneCpuLock, T>;

/// State shared by threads and the interrupt path: reached only through [`IrqCell::with`],
/// with interrupts off, so on one CPU nothing else can reach it meanwhile.
pub struct IrqCell<T> {
    busy: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: every access goes through `with`, which runs with interrupts off on the one CPU
// and refuses re-entry, so at most one reference to the value exists at a time.
unsafe impl<T: Send> Sync for IrqCell<T> {}

impl<T> IrqCell<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        IrqCell {
            busy: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Runs `f` on the value with interrupts off (restored afterwards).
    pub fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let was = cpu::disable_interrupts();
        if self.busy.swap(true, Ordering::Acquire) {
            panic!("the scheduler's state was re-entered (one CPU: this is a bug)");
        }
        // SAFETY: interrupts are off and `busy` was clear: on this one CPU no other
        // reference to the value exists until `busy` is cleared below.
        let result = f(unsafe { &mut *self.value.get() });
        self.busy.store(false, Ordering::Release);
        cpu::restore_interrupts(was);
        result
    }
}
