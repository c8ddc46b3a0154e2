//! The `sys_*` functions `hermit-abi` 0.5 declares: the whole interface between an app and
//! the kernel. Each is defined here with the exact C signature (checked at compile time
//! against hermit-abi's own declarations in `check`).
//!
//! Implemented: console output and vectored I/O (`io`), clocks and sleep (`time`), the heap
//! (`alloc`), entropy (`entropy`), exit/abort/getpid (`process`), the app's arguments and
//! environment (`args`), sockets (`net`, `socket`), threads (`thread`), futexes (`futex`)
//! and the small queries below. Everything else (files, name resolution, semaphores...) is
//! in `stubs` and fails cleanly with `-ENOSYS`.
//!
//! Errors are returned directly as `-errno`, the way Rust's std for Hermit consumes them.
//! The kernel keeps no separate errno, so `sys_errno`/`sys_get_errno` always return 0.

mod alloc;
mod args;
mod check;
mod entropy;
mod futex;
mod io;
mod net;
mod process;
mod socket;
mod stubs;
mod thread;
mod time;

pub(crate) use entropy::random_u64;

use crate::arch::{self, cpuid::Features};
use core::ffi::c_char;

/// The error return for `errno`: `-errno`.
fn fail(errno: i32) -> i32 {
    -errno
}

/// Sets up the ABI's CPU-dependent parts.
pub fn init(features: &Features) {
    entropy::init(features.rdrand);
}

unsafe extern "C" {
    /// The app's entry point (Hermit's convention).
    fn runtime_entry(argc: i32, argv: *const *const c_char, env: *const *const c_char) -> !;
}

/// Calls the app's `runtime_entry(argc, argv, env)` (arguments and environment from the
/// command line, `args`), on the guarded app stack when there is one (`stack_top`), else on
/// the boot stack.
pub fn start_app(stack_top: Option<u64>) -> ! {
    match stack_top {
        // SAFETY: boot mapped this stack (arch::paging::map_stack): 2 MiB of RAM, writable,
        // used by nothing else, its top 16-byte aligned.
        Some(top) => unsafe { arch::cpu::run_on_stack(top, enter_app) },
        None => enter_app(),
    }
}

extern "C" fn enter_app() -> ! {
    let app = args::from_cmdline();
    // SAFETY: every image defines `runtime_entry` with this signature (it is the link-time
    // contract of a Roam image; std defines it for std programs); argv and env are
    // NULL-terminated arrays of NUL-terminated strings that are never freed.
    unsafe { runtime_entry(app.argc, app.argv, app.env) }
}

/// The thread's errno: always 0, because every call returns its error directly.
#[unsafe(no_mangle)]
pub extern "C" fn sys_get_errno() -> i32 {
    0
}

/// Same as `sys_get_errno`: 0.
#[unsafe(no_mangle)]
pub extern "C" fn sys_errno() -> i32 {
    0
}

/// The page size: 4096 (the heap hands out memory at this granularity at most).
#[unsafe(no_mangle)]
pub extern "C" fn sys_getpagesize() -> i32 {
    4096
}

/// One CPU.
#[unsafe(no_mangle)]
pub extern "C" fn sys_available_parallelism() -> usize {
    1
}

/// One CPU.
#[unsafe(no_mangle)]
pub extern "C" fn sys_get_processor_count() -> usize {
    1
}
