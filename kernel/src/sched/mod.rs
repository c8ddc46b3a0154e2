//! Threads on the one CPU: a round-robin scheduler with preemption on the LAPIC timer.
//!
//! Nothing changes until the app spawns its first thread: a `no_std` image or a std program
//! without threads keeps the one-thread kernel (the idle loop in `timer`, interrupts only
//! inside HLT). The first [`spawn`] turns the scheduler on for good: the caller becomes the
//! main thread (slot 0), an idle thread is made ([`idle`]), app threads run with interrupts
//! enabled, and every timer and device interrupt goes through [`on_interrupt`].
//!
//! - **Who runs.** App threads take turns round robin (`runqueue`). A thread runs until it
//!   blocks (sleep, futex, join, a socket call waiting for the network), yields, exits or is
//!   preempted. The idle thread runs when no app thread is ready, and first whenever it is
//!   *due*: a NIC event is pending, the network's next poll or a blocked thread's deadline
//!   has come, or a finished thread's stack is to be freed.
//! - **Ticks.** While an app thread runs, the LAPIC timer is armed for the next multiple of
//!   [`TICK_NS`] of monotonic time (or an earlier deadline or network poll). The deadline
//!   only moves once per tick, so most switches write no MSR. A thread once switched in runs
//!   at least [`MIN_RUN_NS`] before an interrupt takes the CPU back, so a network flood
//!   (the idle thread due on every interrupt) still leaves the app its turns.
//! - **Preemption and the kernel's locks.** An interrupt switches threads only if the
//!   running thread holds no kernel lock (`sync::preemptible`); otherwise the switch happens
//!   when it releases the last one ([`preempt_point`]). So no kernel lock is ever found
//!   taken by another thread, the network's included: only the idle thread polls the network
//!   (`net::service`), never an interrupt handler, and never while anyone holds its lock.
//! - **Switching** is `arch::switch`; the scheduler's state is in an `IrqCell` (interrupts
//!   off). The FS base (thread-locals) is written only when it changes.

mod idle;

use crate::arch::{cpu, idt, switch, tls};
use crate::runqueue::{JoinState, MAIN_TID, NEVER, RunQueue, Wait, Woken};
use crate::sync::{self, IrqCell};
use crate::timer;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Preemption tick while app threads run: 10 ms, 100 interrupts a second at most.
pub const TICK_NS: u64 = 10_000_000;
/// An app thread runs at least this long before an interrupt takes the CPU back (unless it
/// blocks or yields first): under a flood the network would otherwise be due on every
/// interrupt and leave the app no time to take in what arrived.
const MIN_RUN_NS: u64 = 1_000_000;
/// The idle thread's stack: it runs the network (smoltcp, drivers, the control channel and
/// the guest agent), which ran on the app's 2 MiB stack before threads.
const IDLE_STACK: usize = 512 * 1024;
/// Smallest stack a thread gets.
const MIN_STACK: usize = 64 * 1024;
/// Largest stack a thread may ask for: more is refused rather than draining the heap.
const MAX_STACK: usize = 256 << 20;
/// Stack for `sys_spawn`, which names no size (std's own default, 1 MiB).
pub const DEFAULT_STACK: usize = 1 << 20;

/// Why a thread could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpawnError {
    /// No heap memory for its stack or TLS block.
    OutOfMemory,
    /// Every thread slot is taken.
    TooManyThreads,
    /// It asked for a stack larger than [`MAX_STACK`].
    StackTooLarge,
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::OutOfMemory => f.write_str("no heap memory for the thread's stack"),
            SpawnError::TooManyThreads => f.write_str("64 threads already exist"),
            SpawnError::StackTooLarge => f.write_str("the stack asked for is over 256 MiB"),
        }
    }
}

/// Why a futex wait returned without being woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FutexError {
    /// The word did not hold the expected value.
    ValueChanged,
    /// The timeout passed.
    TimedOut,
}

/// Why a join failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinError {
    /// No thread ever had this id.
    NoSuchThread,
    /// A thread cannot join itself.
    Itself,
}

/// The scheduler's state (interrupts off).
struct Sched {
    queue: RunQueue,
    /// The idle thread's saved stack pointer.
    idle_rsp: u64,
    /// The idle thread's stack (lowest address), for its canary.
    idle_stack: u64,
    /// The FS base loaded now.
    loaded_tp: u64,
    /// The network progress count the idle thread last woke network waiters for.
    net_seen: u64,
    /// When the running app thread was switched in (monotonic ns).
    switched_in: u64,
}

static SCHED: IrqCell<Sched> = IrqCell::new(Sched {
    queue: RunQueue::new(),
    idle_rsp: 0,
    idle_stack: 0,
    loaded_tp: 0,
    net_seen: 0,
    switched_in: 0,
});

/// Whether threads exist (the first spawn happened).
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// An interrupt wanted to switch while the running thread held a kernel lock.
static PENDING: AtomicBool = AtomicBool::new(false);
/// The running thread's id (0: the idle thread), readable without the scheduler's state.
static CURRENT_TID: AtomicU32 = AtomicU32::new(MAIN_TID);

/// Whether threads exist: until then the kernel runs the one-thread idle loop.
#[inline]
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// The running thread's id (the main thread's is 1).
pub fn current_tid() -> u32 {
    CURRENT_TID.load(Ordering::Relaxed)
}

/// A decided switch: where to save the running thread's stack pointer, and what to load.
struct Switch {
    save: *mut u64,
    rsp: u64,
    tp: u64,
}

impl Sched {
    /// Whether the idle thread has work now.
    fn idle_due(&self, now: u64) -> bool {
        idt::net_events_pending()
            || now >= self.queue.next_deadline()
            || now >= crate::net::next_poll_ns()
            || self.queue.has_exited()
    }

    /// Decides who runs next, after the running thread's state was updated (ready,
    /// blocked, exited; `preempted` by an interrupt). `None` when the running thread goes on.
    fn choose(&mut self, preempted: bool) -> Option<Switch> {
        let now = timer::now_ns();
        let from = self.queue.current();
        if let Some(i) = from
            && preempted
            && now < self.switched_in.saturating_add(MIN_RUN_NS)
        {
            // Too soon: it goes on, and the timer comes back when its minimum is up.
            self.queue.run(i);
            timer::arm_at(Some(self.switched_in.saturating_add(MIN_RUN_NS)), now);
            return None;
        }
        let to = match from {
            Some(_) if self.idle_due(now) => None,
            _ => self.queue.pick(),
        };
        match from {
            Some(i) => {
                let (base, size) = self.queue.thread(i).stack;
                if size != 0 && !switch::canary_intact(base) {
                    panic!(
                        "thread {} overflowed its {size}-byte stack",
                        self.queue.thread(i).tid
                    );
                }
            }
            None => {
                if !switch::canary_intact(self.idle_stack) {
                    panic!("the idle thread overflowed its {IDLE_STACK}-byte stack");
                }
            }
        }
        if to == from {
            if let Some(i) = to {
                self.queue.run(i);
                self.arm_tick(now);
            }
            return None;
        }
        let save = match from {
            Some(i) => &raw mut self.queue.thread_mut(i).rsp,
            None => &raw mut self.idle_rsp,
        };
        let (rsp, tp) = match to {
            Some(i) => {
                self.queue.run(i);
                self.switched_in = now;
                self.arm_tick(now);
                let t = self.queue.thread(i);
                CURRENT_TID.store(t.tid, Ordering::Relaxed);
                (t.rsp, t.tp)
            }
            None => {
                self.queue.run_idle();
                CURRENT_TID.store(0, Ordering::Relaxed);
                (self.idle_rsp, 0)
            }
        };
        let tp = if tp != 0 && tp != self.loaded_tp {
            self.loaded_tp = tp;
            tp
        } else {
            0
        };
        Some(Switch { save, rsp, tp })
    }

    /// An app thread is about to run: the timer fires at the next tick boundary, or
    /// sooner for a deadline or the network.
    fn arm_tick(&self, now: u64) {
        let tick = (now / TICK_NS + 1).saturating_mul(TICK_NS);
        let at = tick
            .min(self.queue.next_deadline())
            .min(crate::net::next_poll_ns());
        timer::arm_at(Some(at), now);
    }
}

/// With interrupts off: `prepare` updates the running thread's state and says whether to
/// reschedule; then the CPU switches to whoever runs next. Returns after this thread runs
/// again, with `prepare`'s answer.
fn schedule(prepare: impl FnOnce(&mut Sched) -> bool) -> bool {
    reschedule(false, prepare)
}

/// [`schedule`], saying whether an interrupt (rather than the thread itself) asks.
fn reschedule(preempted: bool, prepare: impl FnOnce(&mut Sched) -> bool) -> bool {
    let was = cpu::disable_interrupts();
    let mut switch_to = None;
    let went = SCHED.with(|s| {
        let go = prepare(s);
        if go {
            switch_to = s.choose(preempted);
        }
        go
    });
    if let Some(sw) = switch_to {
        if sw.tp != 0 {
            tls::set_thread_pointer(sw.tp);
        }
        // SAFETY: interrupts are off; `save` points into the scheduler's static state (the
        // running thread's record or the idle thread's), and `rsp` was saved by an earlier
        // switch of a thread that is not running, or made by `switch::new_stack`.
        unsafe { switch::switch(sw.save, sw.rsp) };
    }
    cpu::restore_interrupts(was);
    went
}

/// Blocks the running app thread on `wait` until woken or until `deadline`; how it ended.
fn block(wait: Wait, deadline: u64) -> Woken {
    assert!(
        sync::preemptible(),
        "a thread blocked while holding a kernel lock (a bug)"
    );
    schedule(|s| {
        s.queue.block(wait, deadline);
        true
    });
    SCHED.with(|s| s.queue.current_woken())
}

/// Called by the timer and device interrupt stubs once threads run (interrupts off, on the
/// interrupted thread's stack): preempts the running app thread if it holds no kernel lock,
/// else asks for the switch at its last unlock. The idle thread is never preempted: it
/// looks at what woke it itself.
pub fn on_interrupt() {
    if current_tid() == 0 {
        return;
    }
    if !sync::preemptible() {
        PENDING.store(true, Ordering::Relaxed);
        return;
    }
    preempt();
}

/// The running app thread is preempted: it stays ready, and someone else may run.
fn preempt() {
    reschedule(true, |s| {
        s.queue.yield_current();
        true
    });
}

/// Called when the running thread released its last kernel lock: does a switch an
/// interrupt asked for meanwhile (only where interrupts are on: app threads).
pub fn preempt_point() {
    if PENDING.load(Ordering::Relaxed) && active() && cpu::interrupts_enabled() {
        PENDING.store(false, Ordering::Relaxed);
        preempt();
    }
}

/// Turns threads on (once): the running thread becomes the main thread, the idle thread is
/// made, interrupts come on and start preempting.
fn activate() -> Result<(), SpawnError> {
    if active() {
        return Ok(());
    }
    let idle = switch::new_stack(IDLE_STACK, idle::run, 0, idle::never_exits)
        .ok_or(SpawnError::OutOfMemory)?;
    timer::prepare_interrupts();
    SCHED.with(|s| {
        s.idle_rsp = idle.rsp;
        s.idle_stack = idle.base;
        let main_tp = tls::main_thread_pointer();
        s.queue.thread_mut(0).tp = main_tp;
        s.loaded_tp = main_tp;
    });
    ACTIVE.store(true, Ordering::Relaxed);
    idt::enable_preemption();
    log::debug!("sched: threads on; tick {} ms", TICK_NS / 1_000_000);
    cpu::restore_interrupts(true);
    Ok(())
}

/// Starts a thread running `func(arg)` on a stack of at least `stack_size` bytes, with its
/// own TLS block from the image's template; its id.
pub fn spawn(func: extern "C" fn(usize), arg: usize, stack_size: usize) -> Result<u32, SpawnError> {
    if stack_size > MAX_STACK {
        return Err(SpawnError::StackTooLarge);
    }
    activate()?;
    let tp = tls::new_block()
        .map_err(|_| SpawnError::OutOfMemory)?
        .unwrap_or(0);
    let free_tls = |tp: u64| {
        if tp != 0 {
            // SAFETY: `tp` was just made by `new_block` and no thread ever used it.
            unsafe { tls::free_block(tp) };
        }
    };
    let Some(stack) = switch::new_stack(stack_size.max(MIN_STACK), func, arg, thread_exit) else {
        free_tls(tp);
        return Err(SpawnError::OutOfMemory);
    };
    match SCHED.with(|s| s.queue.add((stack.base, stack.size), stack.rsp, tp)) {
        Some(tid) => Ok(tid),
        None => {
            free_tls(tp);
            // SAFETY: the stack was just made and no thread ever ran on it.
            unsafe { switch::free_stack(stack.base, stack.size) };
            Err(SpawnError::TooManyThreads)
        }
    }
}

/// Where a thread goes when its function returns (std ran its TLS destructors before):
/// it is marked finished, joiners wake, and the idle thread frees its stack.
extern "C" fn thread_exit() -> ! {
    schedule(|s| {
        s.queue.exit_current();
        true
    });
    unreachable!("a finished thread was switched back to");
}

/// Waits for thread `tid` to finish (at once if it already has).
pub fn join(tid: u32) -> Result<(), JoinError> {
    if tid == current_tid() {
        return Err(JoinError::Itself);
    }
    let mut unknown = false;
    schedule(|s| match s.queue.join_state(tid) {
        JoinState::Alive(_) => {
            s.queue.block(Wait::Join(tid), NEVER);
            true
        }
        JoinState::Finished => false,
        JoinState::Unknown => {
            unknown = true;
            false
        }
    });
    if unknown {
        Err(JoinError::NoSuchThread)
    } else {
        Ok(())
    }
}

/// Lets the other ready threads run first (nothing without threads).
pub fn yield_now() {
    if active() {
        schedule(|s| {
            s.queue.yield_current();
            true
        });
    }
}

/// Sleeps until monotonic time `deadline` while other threads run.
pub fn sleep_until(deadline: u64) {
    if timer::now_ns() < deadline {
        block(Wait::Sleep, deadline);
    }
}

/// Waits (with threads) until `done` holds, re-checking after each network step, or until
/// `deadline`: `timer::idle`'s meaning for an app thread. Returns whether `done` held.
pub fn wait(deadline: Option<u64>, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        let deadline = deadline.unwrap_or(NEVER);
        if timer::now_ns() >= deadline {
            return false;
        }
        block(Wait::Network, deadline);
    }
}

/// Remembers, for the running thread, the network's progress count its socket call just
/// saw under the network's lock. Its next [`net_progress_seen`] starts from there: another
/// thread (or the idle thread) may move the network between the call and the wait.
pub fn remember_net_progress(progress: u64) {
    if active() {
        SCHED.with(|s| {
            if let Some(t) = s.queue.current_mut() {
                t.net_seen = progress;
            }
        });
    }
}

/// What [`remember_net_progress`] last recorded for the running thread (`None` without
/// threads: then nothing moves between a call and its wait).
pub fn net_progress_seen() -> Option<u64> {
    if !active() {
        return None;
    }
    SCHED.with(|s| s.queue.current_mut().map(|t| t.net_seen))
}

/// Waits on the futex word `word` while it holds `expected`, until a [`futex_wake`] on it
/// or until `deadline` (monotonic ns).
pub fn futex_wait(
    word: &core::sync::atomic::AtomicU32,
    expected: u32,
    deadline: Option<u64>,
) -> Result<(), FutexError> {
    let address = word.as_ptr() as usize;
    let deadline = deadline.unwrap_or(NEVER);
    if !active() {
        // One thread: nobody can wake it, so only the timeout ends the wait.
        if word.load(Ordering::Acquire) != expected {
            return Err(FutexError::ValueChanged);
        }
        timer::sleep_until(deadline);
        return Err(FutexError::TimedOut);
    }
    assert!(
        sync::preemptible(),
        "a thread blocked while holding a kernel lock (a bug)"
    );
    let blocked = schedule(|s| {
        // Interrupts are off: no wake can slip in between this check and blocking.
        if word.load(Ordering::Acquire) != expected {
            return false;
        }
        s.queue.block(Wait::Futex(address), deadline);
        true
    });
    if !blocked {
        return Err(FutexError::ValueChanged);
    }
    match SCHED.with(|s| s.queue.current_woken()) {
        Woken::Notified => Ok(()),
        Woken::TimedOut => Err(FutexError::TimedOut),
    }
}

/// Wakes up to `count` threads waiting on the futex word at `address`; how many.
pub fn futex_wake(address: usize, count: usize) -> usize {
    if !active() {
        return 0;
    }
    SCHED.with(|s| s.queue.wake_futex(address, count))
}
