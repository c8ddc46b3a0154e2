//! Threads: spawn, join, yield (the scheduler is `crate::sched`).

use super::fail;
use crate::sched::{self, JoinError, SpawnError};
use hermit_abi::{EAGAIN, EDEADLK, EINVAL, ENOMEM, ESRCH, Tid};

fn spawn_errno(e: SpawnError) -> i32 {
    match e {
        SpawnError::OutOfMemory => ENOMEM,
        SpawnError::TooManyThreads => EAGAIN,
        SpawnError::StackTooLarge => EINVAL,
    }
}

/// Starts a thread running `func(arg)` on a stack of at least `stack_size` bytes; its id,
/// or 0 (no thread) when it cannot be made. Priority and core are ignored: one CPU, one
/// priority.
#[unsafe(no_mangle)]
pub extern "C" fn sys_spawn2(
    func: extern "C" fn(usize),
    arg: usize,
    _prio: u8,
    stack_size: usize,
    _core_id: isize,
) -> Tid {
    match sched::spawn(func, arg, stack_size) {
        Ok(tid) => tid,
        Err(e) => {
            log::info!("sys_spawn2: {e}");
            0
        }
    }
}

/// Like `sys_spawn2` with the default stack (1 MiB); the id goes to `*id` (if not null).
/// Returns 0, or `-ENOMEM`, `-EAGAIN`.
///
/// # Safety
/// `id` must be null or valid for a write of a `Tid`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_spawn(
    id: *mut Tid,
    func: extern "C" fn(usize),
    arg: usize,
    _prio: u8,
    _core_id: isize,
) -> i32 {
    match sched::spawn(func, arg, sched::DEFAULT_STACK) {
        Ok(tid) => {
            if !id.is_null() {
                // SAFETY: the caller guarantees a non-null `id` is valid for writes.
                unsafe { id.write(tid) };
            }
            0
        }
        Err(e) => fail(spawn_errno(e)),
    }
}

/// Waits until thread `id` has finished (at once if it has): 0, `-ESRCH` for an id never
/// handed out, `-EDEADLK` for the calling thread's own.
#[unsafe(no_mangle)]
pub extern "C" fn sys_join(id: Tid) -> i32 {
    match sched::join(id) {
        Ok(()) => 0,
        Err(JoinError::NoSuchThread) => fail(ESRCH),
        Err(JoinError::Itself) => fail(EDEADLK),
    }
}

/// Lets the other ready threads run first.
#[unsafe(no_mangle)]
pub extern "C" fn sys_yield() {
    sched::yield_now();
}
