//! Test guest for the kernel's system-call surface.
//!
//! Every `sys_*` symbol that hermit-abi declares must link, and every one the kernel does not
//! implement yet must fail cleanly (`-ENOSYS`, or nothing for calls that return nothing),
//! never crash. The implemented calls' error paths are checked too, the thread, futex and
//! socket calls among them: this guest boots without `ip=`, so there is no network and no socket, and every
//! call must say so with the right errno after checking its arguments. Prints one line per
//! mismatch and a summary; exits 0 only when everything held.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
use kernel as _;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("abi-check is a Roam guest image: build it with `cargo xtask image abi-check`");
}

#[cfg(target_os = "none")]
mod guest {
    use core::fmt::Write;
    use core::mem::size_of;
    use core::ptr::{null, null_mut};
    use hermit_abi as sys;

    /// Writes to the guest's stdout through hermit-abi.
    struct Stdout;

    impl Write for Stdout {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            // SAFETY: the pointer and length describe `s`, which outlives the call.
            let n = unsafe { sys::write(sys::STDOUT_FILENO, s.as_ptr(), s.len()) };
            if n == s.len() as isize {
                Ok(())
            } else {
                Err(core::fmt::Error)
            }
        }
    }

    struct Checker {
        checked: u32,
        failed: u32,
    }

    impl Checker {
        fn expect(&mut self, name: &str, got: i64, want: i64) {
            self.checked += 1;
            if got != want {
                self.failed += 1;
                let _ = writeln!(Stdout, "abi-check: {name} returned {got}, expected {want}");
            }
        }
    }

    extern "C" fn never_run(_: usize) {}

    const ENOSYS: i64 = -(sys::ENOSYS as i64);

    /// Calls each unimplemented function with arguments a real implementation would reject or
    /// ignore; null pointers make sure the stubs never dereference anything.
    #[allow(deprecated)]
    fn unimplemented_calls(c: &mut Checker) {
        macro_rules! enosys {
            ($name:literal, $call:expr) => {{
                // SAFETY: every stub named here returns without touching its arguments.
                let got = unsafe { $call } as i64;
                c.expect($name, got, ENOSYS);
            }};
        }
        let mut out = null_mut();
        enosys!("mmap", sys::mmap(4096, 0, &mut out));
        enosys!("munmap", sys::munmap(null_mut(), 4096));
        enosys!("mprotect", sys::mprotect(null_mut(), 4096, 0));
        enosys!("sem_init", sys::sem_init(null_mut(), 0, 0));
        enosys!("sem_destroy", sys::sem_destroy(null_mut()));
        enosys!("sem_post", sys::sem_post(null_mut()));
        enosys!("sem_trywait", sys::sem_trywait(null_mut()));
        enosys!("sem_timedwait", sys::sem_timedwait(null_mut(), null()));
        enosys!("open", sys::open(c"/x".as_ptr(), 0, 0));
        enosys!("opendir", sys::opendir(c"/".as_ptr()));
        enosys!("unlink", sys::unlink(c"/x".as_ptr()));
        enosys!("rmdir", sys::rmdir(c"/x".as_ptr()));
        enosys!("stat", sys::stat(c"/x".as_ptr(), null_mut()));
        enosys!("lstat", sys::lstat(c"/x".as_ptr(), null_mut()));
        enosys!("fstat", sys::fstat(1, null_mut()));
        enosys!("notify", sys::notify(0, 1));
        enosys!("add_queue", sys::add_queue(0, 0));
        enosys!("wait", sys::wait(0));
        enosys!("init_queue", sys::init_queue(0));
        enosys!("destroy_queue", sys::destroy_queue(0));
        enosys!(
            "getaddrbyname",
            sys::getaddrbyname(c"x".as_ptr(), null_mut(), 0)
        );
        enosys!("getdents64", sys::getdents64(3, null_mut(), 0));
        enosys!("mkdir", sys::mkdir(c"/x".as_ptr().cast(), 0));
        enosys!("lseek", sys::lseek(1, 0, sys::SEEK_SET));
        enosys!("fsync", sys::fsync(1));
        enosys!("dup", sys::dup(1));
        enosys!("eventfd", sys::eventfd(0, 0));
        let mut res = null_mut();
        enosys!(
            "getaddrinfo",
            sys::getaddrinfo(c"x".as_ptr(), null(), null(), &mut res)
        );

        // Calls whose return type cannot carry an errno: they must return, and do nothing.
        // SAFETY: as above; these stubs ignore their arguments.
        unsafe {
            sys::block_current_task();
            sys::block_current_task_with_timeout(0);
            sys::wakeup_task(1);
            sys::freeaddrinfo(null_mut());
            sys::set_priority(1, sys::NORMAL_PRIO);
            let _ = sys::get_priority();
        }
    }

    /// The futex word `waker` sets to 1 before waking the main thread.
    static WORD: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

    extern "C" fn waker(_: usize) {
        WORD.store(1, core::sync::atomic::Ordering::Release);
        // SAFETY: WORD is a live static u32.
        unsafe { sys::futex_wake(WORD.as_ptr(), 1) };
    }

    /// Threads and futexes: argument errors, timeouts, and a thread that wakes this one.
    fn thread_calls(c: &mut Checker) {
        let neg = |e: i32| -i64::from(e);
        let word = WORD.as_ptr();
        let ms = sys::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        let negative = sys::timespec {
            tv_sec: -1,
            tv_nsec: 0,
        };
        macro_rules! expect {
            ($name:literal, $call:expr, $want:expr) => {{
                // SAFETY: every pointer passed is null or points at a live local or static
                // of the type the call takes.
                let got = unsafe { $call } as i64;
                c.expect($name, got, $want);
            }};
        }
        expect!(
            "futex_wait (null)",
            sys::futex_wait(null_mut(), 0, null(), 0),
            neg(sys::EINVAL)
        );
        expect!(
            "futex_wake (null)",
            sys::futex_wake(null_mut(), 1),
            neg(sys::EINVAL)
        );
        expect!(
            "futex_wake (count -1)",
            sys::futex_wake(word, -1),
            neg(sys::EINVAL)
        );
        expect!(
            "futex_wait (unknown flag)",
            sys::futex_wait(word, 0, &ms, 2),
            neg(sys::EINVAL)
        );
        expect!(
            "futex_wait (negative timeout)",
            sys::futex_wait(word, 0, &negative, sys::FUTEX_RELATIVE_TIMEOUT),
            neg(sys::EINVAL)
        );
        expect!(
            "futex_wait (value differs)",
            sys::futex_wait(word, 1, null(), 0),
            neg(sys::EAGAIN)
        );
        expect!(
            "futex_wait (1 ms, one thread)",
            sys::futex_wait(word, 0, &ms, sys::FUTEX_RELATIVE_TIMEOUT),
            neg(sys::ETIMEDOUT)
        );
        expect!("futex_wake (nobody waits)", sys::futex_wake(word, 1), 0);
        expect!(
            "join (itself)",
            sys::join(sys::getpid() as sys::Tid),
            neg(sys::EDEADLK)
        );
        expect!(
            "join (never spawned)",
            sys::join(1_000_000),
            neg(sys::ESRCH)
        );
        expect!(
            "spawn2 (1 TiB stack)",
            sys::spawn2(never_run, 0, 2, 1 << 40, -1),
            0
        );

        let mut tid = 0;
        expect!("spawn", sys::spawn(&mut tid, never_run, 0, 2, -1), 0);
        c.expect("spawn (a new thread id)", i64::from(tid > 1), 1);
        expect!("join (spawn's thread)", sys::join(tid), 0);
        expect!("join (again: finished)", sys::join(tid), 0);
        // SAFETY: yield takes no arguments.
        unsafe { sys::yield_now() };

        // SAFETY: `waker` only touches WORD.
        let tid = unsafe { sys::spawn2(waker, 0, 2, 64 * 1024, -1) };
        c.expect("spawn2 (a new thread id)", i64::from(tid > 1), 1);
        // Woken by the thread (0); -EAGAIN if a tick let it run before this wait began.
        // SAFETY: WORD is a live static u32.
        let waited = unsafe { sys::futex_wait(word, 0, null(), 0) };
        let woken = i64::from(waited == 0 || waited == -sys::EAGAIN);
        c.expect("futex_wait (woken by another thread)", woken, 1);
        c.expect(
            "futex word set by the other thread",
            WORD.load(core::sync::atomic::Ordering::Acquire).into(),
            1,
        );
        expect!("join (spawn2's thread)", sys::join(tid), 0);
    }

    /// Socket calls without a network: argument errors first, then `-ENETDOWN` for calls
    /// that would create a socket and `-EBADF` for calls on one.
    #[allow(deprecated)] // shutdown_socket is deprecated but still part of the ABI
    fn socket_calls(c: &mut Checker) {
        let neg = |e: i32| -i64::from(e);
        let addr = sys::sockaddr_in {
            sin_len: size_of::<sys::sockaddr_in>() as u8,
            sin_family: sys::AF_INET as u8,
            sin_port: 7u16.to_be(),
            ..Default::default()
        };
        let name = (&raw const addr).cast::<sys::sockaddr>();
        let len = size_of::<sys::sockaddr_in>() as sys::socklen_t;
        let v6 = sys::sockaddr_in {
            sin_family: sys::AF_INET6 as u8,
            ..addr
        };
        let mut out = sys::sockaddr_in::default();
        let mut out_len = len;
        let out_name = (&raw mut out).cast::<sys::sockaddr>();
        let mut int = 1i32;
        let int_ptr = (&raw mut int).cast::<core::ffi::c_void>();
        let mut int_len = size_of::<i32>() as sys::socklen_t;
        let mut buf = [0u8; 8];
        macro_rules! expect {
            ($name:literal, $call:expr, $want:expr) => {{
                // SAFETY: every pointer passed is null or points at a live local of the
                // size passed with it.
                let got = unsafe { $call } as i64;
                c.expect($name, got, $want);
            }};
        }
        expect!(
            "network_init without ip=",
            sys::network_init(),
            neg(sys::EINVAL)
        );
        expect!(
            "socket(AF_INET6)",
            sys::socket(sys::AF_INET6, sys::SOCK_STREAM, 0),
            neg(sys::EAFNOSUPPORT)
        );
        expect!(
            "socket(type 99)",
            sys::socket(sys::AF_INET, 99, 0),
            neg(sys::EINVAL)
        );
        expect!(
            "socket(stream, UDP)",
            sys::socket(sys::AF_INET, sys::SOCK_STREAM, sys::IPPROTO_UDP),
            neg(sys::EPROTONOSUPPORT)
        );
        expect!(
            "socket without a network",
            sys::socket(sys::AF_INET, sys::SOCK_STREAM, 0),
            neg(sys::ENETDOWN)
        );
        expect!("bind(null)", sys::bind(3, null(), len), neg(sys::EFAULT));
        expect!("bind(short)", sys::bind(3, name, 4), neg(sys::EINVAL));
        expect!(
            "bind(AF_INET6)",
            sys::bind(3, (&raw const v6).cast(), len),
            neg(sys::EAFNOSUPPORT)
        );
        expect!("bind(bad fd)", sys::bind(3, name, len), neg(sys::EBADF));
        expect!(
            "connect(bad fd)",
            sys::connect(3, name, len),
            neg(sys::EBADF)
        );
        expect!("listen(bad fd)", sys::listen(3, 1), neg(sys::EBADF));
        expect!(
            "accept(bad fd)",
            sys::accept(3, null_mut(), null_mut()),
            neg(sys::EBADF)
        );
        expect!(
            "recv(bad fd)",
            sys::recv(3, buf.as_mut_ptr(), buf.len(), 0),
            neg(sys::EBADF)
        );
        expect!(
            "recvfrom(bad fd)",
            sys::recvfrom(3, buf.as_mut_ptr(), buf.len(), 0, out_name, &mut out_len),
            neg(sys::EBADF)
        );
        expect!(
            "send(bad fd)",
            sys::send(3, buf.as_ptr().cast(), buf.len(), 0),
            neg(sys::EBADF)
        );
        expect!(
            "sendto(bad fd)",
            sys::sendto(3, buf.as_ptr().cast(), buf.len(), 0, name, len),
            neg(sys::EBADF)
        );
        expect!(
            "sendto(short address)",
            sys::sendto(3, buf.as_ptr().cast(), 1, 0, name, 2),
            neg(sys::EINVAL)
        );
        expect!("shutdown(bad how)", sys::shutdown(3, 99), neg(sys::EINVAL));
        expect!(
            "shutdown(bad fd)",
            sys::shutdown(3, sys::SHUT_RDWR),
            neg(sys::EBADF)
        );
        expect!(
            "shutdown_socket(bad fd)",
            sys::shutdown_socket(3, sys::SHUT_WR),
            neg(sys::EBADF)
        );
        expect!("close(bad fd)", sys::close(3), neg(sys::EBADF));
        expect!("close(stdout)", sys::close(1), neg(sys::EBADF));
        expect!(
            "getsockname(null)",
            sys::getsockname(3, null_mut(), null_mut()),
            neg(sys::EFAULT)
        );
        expect!(
            "getsockname(bad fd)",
            sys::getsockname(3, out_name, &mut out_len),
            neg(sys::EBADF)
        );
        expect!(
            "getpeername(bad fd)",
            sys::getpeername(3, out_name, &mut out_len),
            neg(sys::EBADF)
        );
        expect!(
            "setsockopt(bad fd)",
            sys::setsockopt(3, sys::SOL_SOCKET, sys::SO_REUSEADDR, int_ptr, 4),
            neg(sys::EBADF)
        );
        expect!(
            "getsockopt(bad fd)",
            sys::getsockopt(3, sys::IPPROTO_TCP, sys::TCP_NODELAY, int_ptr, &mut int_len),
            neg(sys::EBADF)
        );
        expect!(
            "ioctl(FIONBIO, bad fd)",
            sys::ioctl(3, sys::FIONBIO, int_ptr),
            neg(sys::EBADF)
        );
        expect!(
            "fcntl(bad fd)",
            sys::fcntl(3, sys::F_GETFL, 0),
            neg(sys::EBADF)
        );
        expect!(
            "read(stdin)",
            sys::read(0, buf.as_mut_ptr(), buf.len()),
            neg(sys::EBADF)
        );
        expect!("poll(nothing, 0 ms)", sys::poll(null_mut(), 0, 0), 0);
        let mut fds = [
            sys::pollfd {
                fd: 3,
                events: sys::POLLIN,
                revents: 0,
            },
            sys::pollfd {
                fd: sys::STDOUT_FILENO,
                events: sys::POLLOUT | sys::POLLIN,
                revents: 0,
            },
            sys::pollfd {
                fd: -1,
                events: sys::POLLIN,
                revents: 7,
            },
        ];
        expect!(
            "poll(bad fd, stdout, -1)",
            sys::poll(fds.as_mut_ptr(), fds.len(), 0),
            2
        );
        c.expect(
            "poll revents(bad fd)",
            fds[0].revents.into(),
            sys::POLLNVAL.into(),
        );
        c.expect(
            "poll revents(stdout)",
            fds[1].revents.into(),
            sys::POLLOUT.into(),
        );
        c.expect("poll revents(-1)", fds[2].revents.into(), 0);
        expect!(
            "poll(null, 1)",
            sys::poll(null_mut(), 1, 0),
            neg(sys::EFAULT)
        );
    }

    /// `writev` writes its buffers in order; both vectored calls check their arguments.
    fn vectored_io(c: &mut Checker) {
        let neg = |e: i32| -i64::from(e);
        let parts: [&[u8]; 3] = [b"abi-check: writev ", b"", b"joins its buffers\n"];
        let iov = parts.map(|p| sys::iovec {
            iov_base: p.as_ptr().cast_mut().cast(),
            iov_len: p.len(),
        });
        let total: usize = parts.iter().map(|p| p.len()).sum();
        // SAFETY: each iovec describes a live byte string; writev only reads them.
        let got = unsafe { sys::writev(sys::STDOUT_FILENO, iov.as_ptr(), iov.len()) };
        c.expect("writev(stdout, 3 buffers)", got as i64, total as i64);
        // SAFETY: as above; fd 3 is not open.
        let got = unsafe { sys::writev(3, iov.as_ptr(), iov.len()) };
        c.expect("writev(3)", got as i64, neg(sys::EBADF));
        // SAFETY: a zero count reads no iovec.
        let got = unsafe { sys::writev(sys::STDOUT_FILENO, null(), 0) };
        c.expect("writev(stdout, none)", got as i64, 0);
        // SAFETY: a null array is refused before it is read.
        let got = unsafe { sys::writev(sys::STDOUT_FILENO, null(), 2) };
        c.expect("writev(null, 2)", got as i64, neg(sys::EFAULT));
        // SAFETY: a count above IOV_MAX is refused before the array is read.
        let got = unsafe { sys::writev(sys::STDOUT_FILENO, iov.as_ptr(), 1025) };
        c.expect("writev(1025 buffers)", got as i64, neg(sys::EINVAL));
        let mut buf = [0u8; 4];
        let into = [sys::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: the iovec describes `buf`, writable; stdin has no input.
        let got = unsafe { sys::readv(sys::STDIN_FILENO, into.as_ptr(), 1) };
        c.expect("readv(stdin)", got as i64, neg(sys::EBADF));
        // SAFETY: a null array is refused before it is read.
        let got = unsafe { sys::readv(sys::STDIN_FILENO, null(), 1) };
        c.expect("readv(null, 1)", got as i64, neg(sys::EFAULT));
    }

    /// The implemented calls work and still reject bad arguments with the right errno.
    #[allow(deprecated)] // get_processor_count is deprecated but still part of the ABI
    fn implemented_calls(c: &mut Checker) {
        let neg = |e: i32| -i64::from(e);
        let msg = b"x";
        // SAFETY: valid buffer; fd 3 is not open.
        let got = unsafe { sys::write(3, msg.as_ptr(), msg.len()) } as i64;
        c.expect("write to fd 3", got, neg(sys::EBADF));
        vectored_io(c);
        let mut ts = sys::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec; clock id 99 does not exist.
        let got = unsafe { sys::clock_gettime(99, &mut ts) };
        c.expect("clock_gettime(99)", got.into(), neg(sys::EINVAL));
        let bad = sys::timespec {
            tv_sec: 0,
            tv_nsec: 2_000_000_000,
        };
        // SAFETY: `bad` is a valid timespec with an out-of-range nanosecond field.
        let got = unsafe { sys::nanosleep(&bad) };
        c.expect("nanosleep(tv_nsec=2e9)", got.into(), neg(sys::EINVAL));
        let mut buf = [0u8; 16];
        // SAFETY: `buf` is writable for its length.
        let got = unsafe { sys::read_entropy(buf.as_mut_ptr(), buf.len(), 0) } as i64;
        c.expect("read_entropy(16)", got, 16);
        // SAFETY: no arguments.
        c.expect("getpagesize", unsafe { sys::getpagesize() }.into(), 4096);
        // SAFETY: no arguments.
        let cpus = unsafe { sys::available_parallelism() } as i64;
        c.expect("available_parallelism", cpus, 1);
        // SAFETY: no arguments.
        let cpus = unsafe { sys::get_processor_count() } as i64;
        c.expect("get_processor_count", cpus, 1);
        // SAFETY: no arguments.
        c.expect("getpid", unsafe { sys::getpid() }.into(), 1);
        // SAFETY: no arguments.
        c.expect("errno", unsafe { sys::errno() }.into(), 0);
        // SAFETY: no arguments.
        c.expect("get_errno", unsafe { sys::get_errno() }.into(), 0);
        // SAFETY: 10 µs of sleep, no pointers.
        unsafe { sys::usleep(10) };
        c.expect("allocator round trip", allocator_round_trip().into(), 1);
    }

    /// alloc_zeroed gives zeroes, realloc keeps contents, every free path returns the memory.
    fn allocator_round_trip() -> bool {
        const LEN: usize = 64 * 1024;
        // SAFETY: sizes and alignments are valid; every pointer is checked for null, used only
        // within its allocation, and freed once with the size and alignment it was allocated with.
        unsafe {
            let z = sys::alloc_zeroed(LEN, 64);
            if z.is_null() || !(z as usize).is_multiple_of(64) || (0..LEN).any(|i| *z.add(i) != 0) {
                return false;
            }
            z.add(LEN - 1).write(0xA5);
            let r = sys::realloc(z, LEN, 64, 2 * LEN);
            if r.is_null() || *r.add(LEN - 1) != 0xA5 {
                return false;
            }
            sys::dealloc(r, 2 * LEN, 64);
            let a = sys::alloc(128, 16);
            let m = sys::malloc(128, 16);
            let ok = !a.is_null() && !m.is_null() && a != m;
            if !a.is_null() {
                sys::free(a, 128, 16);
            }
            if !m.is_null() {
                sys::dealloc(m, 128, 16);
            }
            ok
        }
    }

    #[unsafe(no_mangle)]
    extern "C" fn runtime_entry(_argc: i32, _argv: *const *const u8, _env: *const *const u8) -> ! {
        let mut c = Checker {
            checked: 0,
            failed: 0,
        };
        unimplemented_calls(&mut c);
        thread_calls(&mut c);
        implemented_calls(&mut c);
        socket_calls(&mut c);
        let _ = writeln!(
            Stdout,
            "abi-check: {} checks, {} failed",
            c.checked, c.failed
        );
        // SAFETY: ends the guest; nothing runs after it.
        unsafe { sys::exit(if c.failed == 0 { 0 } else { 1 }) }
    }
}
