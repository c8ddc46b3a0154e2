//! Exit, abort and the thread id.

use crate::{fault, serial, status};

/// Ends the VM with the app's status, clamped to 0..=100 (`status::app`).
#[unsafe(no_mangle)]
pub extern "C" fn sys_exit(status: i32) -> ! {
    fault::exit(status::app(status))
}

/// Ends the VM as a failure, with the panic status: abort is how a Rust std app ends after
/// printing its panic message.
#[unsafe(no_mangle)]
pub extern "C" fn sys_abort() -> ! {
    serial::print(format_args!("roam: the app called abort()\n"));
    fault::exit(status::PANIC)
}

/// The calling thread's id, as hermit-abi defines it: 1 for the main thread.
#[unsafe(no_mangle)]
pub extern "C" fn sys_getpid() -> hermit_abi::pid_t {
    crate::sched::current_tid() as hermit_abi::pid_t
}
