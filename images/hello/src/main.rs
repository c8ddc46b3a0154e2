//! `hello`: the smallest Roam app and the boot smoke test.
//!
//! It talks to the kernel only through hermit-abi. Its first line, `Hello from Roam`, is what
//! boot benchmarks wait for. Then it checks that the basic services are real: a 10 ms sleep
//! advances CLOCK_MONOTONIC by at least 10 ms, a few MiB of heap can be written and read
//! back page by page, RDRAND-backed entropy arrives, and CLOCK_REALTIME reads a plausible
//! date (only a note if not: without kvmclock it counts from boot). Any failed check prints
//! `hello: FAILED: ...` and exits 1; success exits 0.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod app {
    use core::fmt;
    use hermit_abi as abi;
    use kernel as _;

    const SLEEP_NS: u64 = 10_000_000;
    const HEAP_BYTES: usize = 4 << 20;
    const PAGE: usize = 4096;
    /// 2020-09-13 and 2100-01-01: a realtime clock outside this range is not set.
    const PLAUSIBLE_UNIX_SECS: core::ops::Range<i64> = 1_600_000_000..4_102_444_800;

    #[unsafe(no_mangle)]
    pub extern "C" fn runtime_entry(
        _argc: i32,
        _argv: *const *const u8,
        _env: *const *const u8,
    ) -> ! {
        // Monotonic time starts at kernel entry: this is how long boot took in the guest.
        let boot_ns = clock_ns(abi::CLOCK_MONOTONIC);
        write_stdout(b"Hello from Roam\n");
        say(format_args!(
            "hello: kernel entry to app entry took {} us\n",
            boot_ns / 1000
        ));
        check_sleep();
        check_heap();
        check_entropy();
        check_realtime();
        say(format_args!("hello: all checks passed\n"));
        exit(0)
    }

    fn check_sleep() {
        let before = clock_ns(abi::CLOCK_MONOTONIC);
        let request = abi::timespec {
            tv_sec: 0,
            tv_nsec: SLEEP_NS as i32,
        };
        // SAFETY: `request` is a valid timespec for the duration of the call.
        let ret = unsafe { abi::nanosleep(&request) };
        let elapsed = clock_ns(abi::CLOCK_MONOTONIC).saturating_sub(before);
        if ret != 0 {
            fail(format_args!("nanosleep(10 ms) returned {ret}"));
        }
        if elapsed < SLEEP_NS {
            fail(format_args!(
                "slept 10 ms but CLOCK_MONOTONIC advanced only {elapsed} ns"
            ));
        }
        say(format_args!(
            "hello: slept 10 ms, CLOCK_MONOTONIC advanced {}.{:03} ms\n",
            elapsed / 1_000_000,
            elapsed / 1000 % 1000
        ));
    }

    fn check_heap() {
        // SAFETY: malloc takes no pointers.
        let base = unsafe { abi::malloc(HEAP_BYTES, PAGE) };
        if base.is_null() {
            fail(format_args!("malloc({HEAP_BYTES}) returned null"));
        }
        let pages = HEAP_BYTES / PAGE;
        let pattern = |page: usize| (page as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ base as u64;
        for page in 0..pages {
            // SAFETY: base..base+HEAP_BYTES is ours, page-aligned; one aligned u64 per page.
            unsafe {
                base.add(page * PAGE)
                    .cast::<u64>()
                    .write_volatile(pattern(page))
            };
        }
        for page in 0..pages {
            // SAFETY: as above; written in the loop before.
            let found = unsafe { base.add(page * PAGE).cast::<u64>().read_volatile() };
            if found != pattern(page) {
                fail(format_args!(
                    "heap page {page} at {:p} read back {found:#x}",
                    base.wrapping_add(page * PAGE)
                ));
            }
        }
        // SAFETY: `base` came from malloc with this size and alignment and is not used again.
        unsafe { abi::free(base, HEAP_BYTES, PAGE) };
        say(format_args!(
            "hello: {} MiB of heap at {base:p} written and read back ({pages} pages)\n",
            HEAP_BYTES >> 20
        ));
    }

    fn check_entropy() {
        let mut bytes = [0u8; 16];
        // SAFETY: `bytes` is valid for writes of its length.
        let n = unsafe { abi::read_entropy(bytes.as_mut_ptr(), bytes.len(), 0) };
        if n != bytes.len() as isize || bytes == [0; 16] {
            fail(format_args!(
                "read_entropy(16) returned {n} and {bytes:02x?}"
            ));
        }
    }

    fn check_realtime() {
        let ns = clock_ns(abi::CLOCK_REALTIME);
        let secs = (ns / 1_000_000_000) as i64;
        if PLAUSIBLE_UNIX_SECS.contains(&secs) {
            say(format_args!(
                "hello: CLOCK_REALTIME is {secs} s after the Unix epoch\n"
            ));
        } else {
            say(format_args!(
                "hello: note: CLOCK_REALTIME reads {secs} s, not a plausible date (no kvmclock?)\n"
            ));
        }
    }

    fn clock_ns(clock: abi::clockid_t) -> u64 {
        let mut now = abi::timespec::default();
        // SAFETY: `now` is valid for writes.
        let ret = unsafe { abi::clock_gettime(clock, &mut now) };
        if ret != 0 {
            fail(format_args!("clock_gettime({clock}) returned {ret}"));
        }
        (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
    }

    fn write_stdout(bytes: &[u8]) {
        // SAFETY: `bytes` is valid for reads of its length.
        unsafe { abi::write(abi::STDOUT_FILENO, bytes.as_ptr(), bytes.len()) };
    }

    fn say(args: fmt::Arguments<'_>) {
        app_rt::print(args);
    }

    fn fail(what: fmt::Arguments<'_>) -> ! {
        app_rt::fail("hello", what)
    }

    fn exit(status: i32) -> ! {
        app_rt::exit(status)
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("hello is a Roam guest image: build it with `cargo xtask image hello`");
    std::process::exit(2);
}
