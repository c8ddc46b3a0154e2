//! Compile-time proof that every `sys_*` function has hermit-abi's exact signature.
//!
//! Each line coerces both our function and hermit-abi's declaration (the one carrying that
//! `link_name`) to the same function-pointer type: a function item only coerces to a pointer
//! of exactly its own signature, so a mismatch in any argument or return type fails the
//! build. The host test `abi_coverage` checks that this list names every function hermit-abi
//! declares, by reading hermit-abi's source.
//!
//! `sys_get_priority` and `sys_set_priority` are private in hermit-abi; their types are
//! spelled out from its source instead.

// Naming the deprecated declarations (opendir, get_processor_count, shutdown_socket) is the
// point here.
#![allow(deprecated)]

use super::{alloc, entropy, futex, io, net, process, socket, stubs, thread, time};
use core::ffi::{c_char, c_void};
use hermit_abi as h;
use hermit_abi::{
    Tid, addrinfo, clockid_t, dirent64, iovec, nfds_t, pid_t, pollfd, sem_t, sockaddr, socklen_t,
    stat, timespec,
};

macro_rules! same_signature {
    ($($ours:path = $theirs:path : $ty:ty;)*) => {$(
        const _: $ty = $ours;
        const _: $ty = $theirs;
    )*};
}

type Fn0<R> = unsafe extern "C" fn() -> R;

same_signature! {
    super::sys_get_errno = h::get_errno : Fn0<i32>;
    super::sys_errno = h::errno : Fn0<i32>;
    super::sys_getpagesize = h::getpagesize : Fn0<i32>;
    stubs::sys_mmap = h::mmap : unsafe extern "C" fn(usize, u32, &mut *mut u8) -> i32;
    stubs::sys_munmap = h::munmap : unsafe extern "C" fn(*mut u8, usize) -> i32;
    stubs::sys_mprotect = h::mprotect : unsafe extern "C" fn(*mut u8, usize, u32) -> i32;
    futex::sys_futex_wait = h::futex_wait : unsafe extern "C" fn(*mut u32, u32, *const timespec, u32) -> i32;
    futex::sys_futex_wake = h::futex_wake : unsafe extern "C" fn(*mut u32, i32) -> i32;
    stubs::sys_sem_init = h::sem_init : unsafe extern "C" fn(*mut sem_t, i32, u32) -> i32;
    stubs::sys_sem_destroy = h::sem_destroy : unsafe extern "C" fn(*mut sem_t) -> i32;
    stubs::sys_sem_post = h::sem_post : unsafe extern "C" fn(*mut sem_t) -> i32;
    stubs::sys_sem_trywait = h::sem_trywait : unsafe extern "C" fn(*mut sem_t) -> i32;
    stubs::sys_sem_timedwait = h::sem_timedwait : unsafe extern "C" fn(*mut sem_t, *const timespec) -> i32;
    process::sys_getpid = h::getpid : Fn0<pid_t>;
    process::sys_exit = h::exit : unsafe extern "C" fn(i32) -> !;
    process::sys_abort = h::abort : unsafe extern "C" fn() -> !;
    time::sys_usleep = h::usleep : unsafe extern "C" fn(u64);
    time::sys_nanosleep = h::nanosleep : unsafe extern "C" fn(*const timespec) -> i32;
    thread::sys_spawn = h::spawn : unsafe extern "C" fn(*mut Tid, extern "C" fn(usize), usize, u8, isize) -> i32;
    thread::sys_spawn2 = h::spawn2 : unsafe extern "C" fn(extern "C" fn(usize), usize, u8, usize, isize) -> Tid;
    thread::sys_join = h::join : unsafe extern "C" fn(Tid) -> i32;
    thread::sys_yield = h::yield_now : Fn0<()>;
    time::sys_clock_gettime = h::clock_gettime : unsafe extern "C" fn(clockid_t, *mut timespec) -> i32;
    stubs::sys_open = h::open : unsafe extern "C" fn(*const c_char, i32, i32) -> i32;
    stubs::sys_opendir = h::opendir : unsafe extern "C" fn(*const c_char) -> i32;
    stubs::sys_unlink = h::unlink : unsafe extern "C" fn(*const c_char) -> i32;
    stubs::sys_rmdir = h::rmdir : unsafe extern "C" fn(*const c_char) -> i32;
    stubs::sys_stat = h::stat : unsafe extern "C" fn(*const c_char, *mut stat) -> i32;
    stubs::sys_lstat = h::lstat : unsafe extern "C" fn(*const c_char, *mut stat) -> i32;
    stubs::sys_fstat = h::fstat : unsafe extern "C" fn(i32, *mut stat) -> i32;
    super::sys_available_parallelism = h::available_parallelism : Fn0<usize>;
    super::sys_get_processor_count = h::get_processor_count : Fn0<usize>;
    alloc::sys_malloc = h::malloc : unsafe extern "C" fn(usize, usize) -> *mut u8;
    alloc::sys_alloc = h::alloc : unsafe extern "C" fn(usize, usize) -> *mut u8;
    alloc::sys_alloc_zeroed = h::alloc_zeroed : unsafe extern "C" fn(usize, usize) -> *mut u8;
    alloc::sys_realloc = h::realloc : unsafe extern "C" fn(*mut u8, usize, usize, usize) -> *mut u8;
    alloc::sys_free = h::free : unsafe extern "C" fn(*mut u8, usize, usize);
    alloc::sys_dealloc = h::dealloc : unsafe extern "C" fn(*mut u8, usize, usize);
    stubs::sys_notify = h::notify : unsafe extern "C" fn(usize, i32) -> i32;
    stubs::sys_add_queue = h::add_queue : unsafe extern "C" fn(usize, i64) -> i32;
    stubs::sys_wait = h::wait : unsafe extern "C" fn(usize) -> i32;
    stubs::sys_init_queue = h::init_queue : unsafe extern "C" fn(usize) -> i32;
    stubs::sys_destroy_queue = h::destroy_queue : unsafe extern "C" fn(usize) -> i32;
    net::sys_network_init = h::network_init : Fn0<i32>;
    stubs::sys_block_current_task = h::block_current_task : Fn0<()>;
    stubs::sys_block_current_task_with_timeout = h::block_current_task_with_timeout : unsafe extern "C" fn(u64);
    stubs::sys_wakeup_taskt = h::wakeup_task : unsafe extern "C" fn(Tid);
    stubs::sys_getaddrbyname = h::getaddrbyname : unsafe extern "C" fn(*const c_char, *mut u8, usize) -> i32;
    socket::sys_accept = h::accept : unsafe extern "C" fn(i32, *mut sockaddr, *mut socklen_t) -> i32;
    socket::sys_bind = h::bind : unsafe extern "C" fn(i32, *const sockaddr, socklen_t) -> i32;
    socket::sys_connect = h::connect : unsafe extern "C" fn(i32, *const sockaddr, socklen_t) -> i32;
    io::sys_read = h::read : unsafe extern "C" fn(i32, *mut u8, usize) -> isize;
    io::sys_readv = h::readv : unsafe extern "C" fn(i32, *const iovec, usize) -> isize;
    stubs::sys_getdents64 = h::getdents64 : unsafe extern "C" fn(i32, *mut dirent64, usize) -> i64;
    stubs::sys_mkdir = h::mkdir : unsafe extern "C" fn(*const i8, u32) -> i32;
    entropy::sys_read_entropy = h::read_entropy : unsafe extern "C" fn(*mut u8, usize, u32) -> isize;
    socket::sys_recv = h::recv : unsafe extern "C" fn(i32, *mut u8, usize, i32) -> isize;
    socket::sys_recvfrom = h::recvfrom : unsafe extern "C" fn(i32, *mut u8, usize, i32, *mut sockaddr, *mut socklen_t) -> isize;
    stubs::sys_lseek = h::lseek : unsafe extern "C" fn(i32, isize, i32) -> isize;
    io::sys_write = h::write : unsafe extern "C" fn(i32, *const u8, usize) -> isize;
    io::sys_writev = h::writev : unsafe extern "C" fn(i32, *const iovec, usize) -> isize;
    socket::sys_close = h::close : unsafe extern "C" fn(i32) -> i32;
    stubs::sys_fsync = h::fsync : unsafe extern "C" fn(i32) -> i32;
    stubs::sys_dup = h::dup : unsafe extern "C" fn(i32) -> i32;
    socket::sys_getpeername = h::getpeername : unsafe extern "C" fn(i32, *mut sockaddr, *mut socklen_t) -> i32;
    socket::sys_getsockname = h::getsockname : unsafe extern "C" fn(i32, *mut sockaddr, *mut socklen_t) -> i32;
    socket::sys_getsockopt = h::getsockopt : unsafe extern "C" fn(i32, i32, i32, *mut c_void, *mut socklen_t) -> i32;
    socket::sys_setsockopt = h::setsockopt : unsafe extern "C" fn(i32, i32, i32, *const c_void, socklen_t) -> i32;
    socket::sys_ioctl = h::ioctl : unsafe extern "C" fn(i32, i32, *mut c_void) -> i32;
    socket::sys_fcntl = h::fcntl : unsafe extern "C" fn(i32, i32, i32) -> i32;
    stubs::sys_eventfd = h::eventfd : unsafe extern "C" fn(u64, i16) -> i32;
    socket::sys_poll = h::poll : unsafe extern "C" fn(*mut pollfd, nfds_t, i32) -> i32;
    socket::sys_listen = h::listen : unsafe extern "C" fn(i32, i32) -> i32;
    socket::sys_send = h::send : unsafe extern "C" fn(i32, *const c_void, usize, i32) -> isize;
    socket::sys_sendto = h::sendto : unsafe extern "C" fn(i32, *const c_void, usize, i32, *const sockaddr, socklen_t) -> isize;
    socket::sys_shutdown = h::shutdown : unsafe extern "C" fn(i32, i32) -> i32;
    socket::sys_shutdown_socket = h::shutdown_socket : unsafe extern "C" fn(i32, i32) -> i32;
    socket::sys_socket = h::socket : unsafe extern "C" fn(i32, i32, i32) -> i32;
    stubs::sys_freeaddrinfo = h::freeaddrinfo : unsafe extern "C" fn(*mut addrinfo);
    stubs::sys_getaddrinfo = h::getaddrinfo : unsafe extern "C" fn(*const c_char, *const c_char, *const addrinfo, *mut *mut addrinfo) -> i32;
}

// Private in hermit-abi: `fn sys_get_priority() -> u8; fn sys_set_priority(tid: Tid, prio: u8);`
const _: Fn0<u8> = stubs::sys_get_priority;
const _: unsafe extern "C" fn(Tid, u8) = stubs::sys_set_priority;
