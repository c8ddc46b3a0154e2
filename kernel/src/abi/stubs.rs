//! Every `sys_*` function hermit-abi declares that Roam does not support yet (files, name
//! resolution, semaphores, mmap...). Each has its exact C signature and fails cleanly:
//! `-ENOSYS` where it returns an error code, a no-op where it returns nothing, and an
//! explicit neutral value otherwise. None dereferences its pointer arguments.

use super::fail;
use core::ffi::c_char;
use hermit_abi::{ENOSYS, NORMAL_PRIO, Tid, addrinfo, dirent64, sem_t, stat, timespec};

/// Defines functions that only return `-ENOSYS` (as their integer return type).
macro_rules! enosys {
    ($($name:ident($($ty:ty),*) -> $ret:ty;)*) => {$(
        /// Not supported: returns `-ENOSYS`.
        #[unsafe(no_mangle)]
        pub extern "C" fn $name($(_: $ty),*) -> $ret {
            fail(ENOSYS) as $ret
        }
    )*};
}

/// Defines functions without a return value that do nothing.
macro_rules! no_op {
    ($($(#[$doc:meta])* $name:ident($($ty:ty),*);)*) => {$(
        $(#[$doc])*
        #[unsafe(no_mangle)]
        pub extern "C" fn $name($(_: $ty),*) {}
    )*};
}

enosys! {
    // Memory mappings.
    sys_mmap(usize, u32, &mut *mut u8) -> i32;
    sys_munmap(*mut u8, usize) -> i32;
    sys_mprotect(*mut u8, usize, u32) -> i32;
    // Semaphores, wait queues.
    sys_sem_init(*mut sem_t, i32, u32) -> i32;
    sys_sem_destroy(*mut sem_t) -> i32;
    sys_sem_post(*mut sem_t) -> i32;
    sys_sem_trywait(*mut sem_t) -> i32;
    sys_sem_timedwait(*mut sem_t, *const timespec) -> i32;
    sys_notify(usize, i32) -> i32;
    sys_add_queue(usize, i64) -> i32;
    sys_wait(usize) -> i32;
    sys_init_queue(usize) -> i32;
    sys_destroy_queue(usize) -> i32;
    // Files and directories.
    sys_open(*const c_char, i32, i32) -> i32;
    sys_opendir(*const c_char) -> i32;
    sys_unlink(*const c_char) -> i32;
    sys_rmdir(*const c_char) -> i32;
    sys_stat(*const c_char, *mut stat) -> i32;
    sys_lstat(*const c_char, *mut stat) -> i32;
    sys_fstat(i32, *mut stat) -> i32;
    sys_getdents64(i32, *mut dirent64, usize) -> i64;
    sys_mkdir(*const i8, u32) -> i32;
    sys_lseek(i32, isize, i32) -> isize;
    sys_fsync(i32) -> i32;
    sys_dup(i32) -> i32;
    sys_eventfd(u64, i16) -> i32;
    // Network.
    sys_getaddrbyname(*const c_char, *mut u8, usize) -> i32;
    sys_getaddrinfo(*const c_char, *const c_char, *const addrinfo, *mut *mut addrinfo) -> i32;
}

no_op! {
    /// Hermit's older task-blocking call (std uses futexes): does nothing.
    sys_block_current_task();
    /// Hermit's older task-blocking call (std uses futexes): does nothing.
    sys_block_current_task_with_timeout(u64);
    /// Hermit's older task wake-up (std uses futexes): does nothing.
    sys_wakeup_taskt(Tid);
    /// `sys_getaddrinfo` never returns a list, so there is nothing to free.
    sys_freeaddrinfo(*mut addrinfo);
    /// One priority for every thread: does nothing.
    sys_set_priority(Tid, u8);
}

/// Every thread runs at the normal priority.
#[unsafe(no_mangle)]
pub extern "C" fn sys_get_priority() -> u8 {
    NORMAL_PRIO.into()
}
